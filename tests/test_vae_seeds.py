"""Seeds in one program (``config.num_seeds > 1``, :mod:`experiments.vae.seeds`): seed ``s`` of
the vmapped program is the one-seed run of ``s``; a diverged seed is reported and left out
while the others train on; resume is bit for bit. Tiny digits sizes, as in test_vae_train."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _config as cfg
from experiments import run_experiment, vae
from experiments.vae import seeds as vae_seeds
from experiments.vae import train as vae_train
from tests import test_vae_train as _vae_train_tests
from tests.test_vae_train import TINY, _final_entries


def _config(*extra: str):
    """The tiny digits config of test_vae_train (every test here sets its epochs if it runs
    any)."""
    return _vae_train_tests._config("vae_digits", *extra)


def test_seed_s_of_the_program_is_the_one_seed_run_of_s():
    """Two epochs of seeds 3 and 4 in one program against each seed's own program, from the
    states vae.run starts from and with its keys (the moving average's state too).
    Float32 tolerance: the batched matmuls may sum in another order (rtol 2e-5, atol 1e-6)."""
    config = _config("estimator=score_function+moving_average")
    _, train_np, _ = vae.load_data(config)
    seeds = [3, 4]
    inits = [
        vae.init_run(vae_seeds.seed_config(config, s), train_np.shape[1], len(train_np) // 50)
        for s in seeds
    ]
    setup = inits[0][0]
    train_x = jnp.asarray(train_np)
    config.num_seeds, config.seed = 2, 3
    _, both = vae_seeds.init_seeds(config, train_np.shape[1], len(train_np) // 50)
    for i, (_, state) in enumerate(inits):  # the seeds' initial states, vmapped: bit for bit
        mine = jax.tree.leaves(vae_seeds.unstack(both, i))
        for a, b in zip(mine, jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    program = vae_train.make_seeds_epoch(setup)
    single = vae_train.make_train_epoch(setup)
    ones = [state for _, state in inits]
    for epoch in range(2):
        both, losses = program(
            both, train_x, jnp.stack([vae_train.epoch_keys(s, epoch) for s in seeds])
        )
        for i, s in enumerate(seeds):
            ones[i], loss = single(ones[i], train_x, vae_train.epoch_keys(s, epoch))
            np.testing.assert_allclose(
                np.asarray(losses[i]), np.asarray(loss), rtol=2e-5, atol=1e-6
            )
    for i in range(2):
        mine = jax.tree.leaves(vae_seeds.unstack(both, i))
        for a, b in zip(mine, jax.tree.leaves(ones[i]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
    kernel = np.asarray(jax.tree.leaves(both["params"]["encoder"])[0])
    assert not np.allclose(kernel[0], kernel[1])  # the seeds are different runs


def _poison_seed_1_in_epoch_2(monkeypatch):
    """Seed 1's losses become NaN in its second epoch (the program's result, as a real
    divergence would show it); the runner must keep its state of epoch 1."""
    real = vae_train.make_seeds_epoch

    def poisoned(setup, mesh=None):
        jitted = real(setup, mesh)

        def epoch(states, train, keys):
            new, losses = jitted(states, train, keys)
            if int(states["step"][1]) == 6:  # seed 1 starts its second epoch
                losses = losses.at[1, 2].set(jnp.nan)
                new = jax.tree.map(
                    lambda a: a.at[1].set(jnp.nan) if a.dtype == jnp.float32 else a, new
                )
            return new, losses

        class Lowered:
            def lower(self, *args):
                return self

            def compile(self):
                return epoch

        return Lowered()

    monkeypatch.setattr(vae_train, "make_seeds_epoch", poisoned)


@pytest.mark.slow  # three tiny runs, about 20 s on 2 cores
def test_a_diverged_seed_is_reported_the_others_train_on_and_resume_is_bit_for_bit(
    tmp_path, monkeypatch
):
    config = _config("estimator=score_function", "num_epochs=3", "num_seeds=2", "seed=7")
    _poison_seed_1_in_epoch_2(monkeypatch)
    straight = run_experiment(config, tmp_path / "straight")

    assert straight["diverged_in_epoch"] == [None, 2] and straight["seeds_averaged"] == 1
    seed_7 = json.loads((tmp_path / "straight" / "seed_7" / "results.json").read_text())
    assert straight["test_elbo"] == seed_7["test_elbo"]  # seed 8 never averaged in
    assert np.isnan(straight["test_elbo_se"])  # one seed: no SE across seeds
    assert seed_7["epochs"] == 3 and seed_7["steps"] == 18
    gone = json.loads((tmp_path / "straight" / "seed_8" / "diverged.json").read_text())
    assert gone["diverged_in_epoch"] == 2 and gone["epochs"] == 1
    assert len(vae.read_metrics(tmp_path / "straight" / "seed_8")) == 1
    entries = _final_entries(tmp_path / "straight")
    assert entries["diverged"].tolist() == [0, 2]
    kernel = entries["seeds/params/encoder/layers/0/kernel/value"]
    assert np.isfinite(kernel).all()  # seed 8 kept its last good state
    assert entries["seeds/step"].tolist() == [18, 6]
    assert "| mean ± SE (1 of 2 seeds)" in (tmp_path / "straight" / "seeds.md").read_text()

    real = vae_train.epoch_keys

    def interrupting(seed, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(seed, epoch)

    monkeypatch.setattr(vae_train, "epoch_keys", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "resumed")
    monkeypatch.setattr(vae_train, "epoch_keys", real)
    assert vae.checkpoint.latest_step(tmp_path / "resumed") == 12
    resumed = run_experiment(config, tmp_path / "resumed", resume=True)
    b = _final_entries(tmp_path / "resumed")
    assert entries.keys() == b.keys() and all(np.array_equal(entries[k], b[k]) for k in b)
    assert resumed["test_elbo"] == straight["test_elbo"]
    assert resumed["diverged_in_epoch"] == [None, 2]


@pytest.mark.slow  # two estimators x two seeds and the protocol, about 30 s on 2 cores
def test_comparison_runs_each_estimators_seeds_in_one_program(tmp_path):
    """vae_compare with num_seeds = 2: each estimator's seeds in one program, the table the
    mean ± SE across seeds, and the protocol at the reference's FIRST seed's parameters, its
    replay (the same 2-seed program) bit for bit equal to the reference run's checkpoint."""
    config = cfg.load_config("vae_compare_digits")
    cfg.apply_overrides(
        config,
        [
            *TINY,
            "num_epochs=2",
            "num_seeds=2",
            "estimators=('pathwise', 'score_function')",
            "grad_var_checkpoint_epochs=(1,)",
            "grad_var_warmup_steps=2",
        ],
    )
    results = run_experiment(config, tmp_path / "cmp")
    protocol = results["grad_variance"]
    assert protocol["replay_matches_reference_run"] is True
    assert {r["estimator"] for r in protocol["rows"]} == {"pathwise", "score_function"}
    for run in results["runs"]:
        assert run["num_seeds"] == 2 and run["seeds_averaged"] == 2
        assert (tmp_path / "cmp" / run["estimator"] / "seed_1" / "results.json").exists()
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert table.count("(2 of 2 seeds)") == 2 and "standard error across those seeds" in table
