"""VAE training runs: the loss goes down, resume is bit-for-bit, NaN stops cleanly, configs run.

Tiny sizes throughout (digits, or a 256-image MNIST slice from ``$MNIST_DIR``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _config as cfg
from experiments import _vae_train, run_experiment, vae, vae_compare
from experiments._workdir import WorkdirError

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "num_epochs=3",
    "train_examples=300",
    "test_examples=24",
    "batch_size=50",
    "hidden=(16,)",
    "latent_dim=2",
    "ll_num_samples=20",
    "ll_chunk_size=10",
    "grad_var_num_estimates=3",
    "grad_var_batch_size=16",
    "grad_var_every_epochs=2",
    "checkpoint_every_steps=6",
    "progress=false",
    "figures=false",
]


@pytest.fixture(autouse=True)
def _mnist_env(monkeypatch):
    if not os.environ.get("MNIST_DIR"):
        monkeypatch.setenv("MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))


def _config(name: str, *extra: str):
    config = cfg.load_config(name)
    cfg.apply_overrides(config, [*TINY, *extra])
    return config


def _final_leaves(workdir: Path) -> list[np.ndarray]:
    manager = vae._manager(workdir)
    tree = manager.restore(manager.latest_step())
    return [np.asarray(tree["leaves"][k]) for k in sorted(tree["leaves"])]


def test_digits_training_lowers_the_loss_and_writes_everything(tmp_path):
    config = _config("vae_digits", "num_epochs=6", "train_examples=0", "figures=true")
    results = run_experiment(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["step"] == 6 * (1500 // 50)
    # Loss of the last epoch well below the first (a 64-pixel image starts near 44 nats).
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 3
    assert np.isfinite(results["test_log_likelihood"]) and results["grad_var_mean"] > 0
    for name in ("samples", "reconstructions", "manifold", "elbo_curves", "grad_variance_curves"):
        assert (tmp_path / "run" / f"{name}.png").exists(), name
    (tmp_path / "run" / "samples.png").unlink()
    from experiments import redraw

    assert tmp_path / "run" / "samples.png" in redraw(tmp_path / "run")
    with pytest.raises(WorkdirError, match="already holds results"):
        run_experiment(config, tmp_path / "run")


@pytest.mark.parametrize("estimator", ["score_function_nvil"])
def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch, estimator):
    """Interrupted after epoch 2 (checkpoint on exit), then resumed: same final state exactly."""
    config = _config("vae_digits", f"estimator={estimator}", "num_epochs=4")
    run_experiment(config, tmp_path / "straight")

    real = _vae_train.epoch_keys

    def interrupting(seed, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(seed, epoch)

    monkeypatch.setattr(_vae_train, "epoch_keys", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "resumed")
    monkeypatch.setattr(_vae_train, "epoch_keys", real)
    assert vae._manager(tmp_path / "resumed").latest_step() == 2 * 6
    run_experiment(config, tmp_path / "resumed", resume=True)

    a, b = _final_leaves(tmp_path / "straight"), _final_leaves(tmp_path / "resumed")
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    ra = json.loads((tmp_path / "straight" / "results.json").read_text())
    rb = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert ra["test_elbo"] == rb["test_elbo"] and ra["steps"] == rb["steps"] == 4 * 6
    assert ra["epochs"] == rb["epochs"] == 4

    def untimed(workdir):
        rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]

    assert untimed(tmp_path / "straight") == untimed(tmp_path / "resumed")


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = _vae_train.make_train_epoch

    def poisoned(setup):
        jitted = real(setup)
        calls = []

        def epoch(state, train, key):
            calls.append(1)
            state, losses = jitted(state, train, key)
            if len(calls) == 2:
                losses = losses.at[3].set(jnp.nan)
            return state, losses

        class Lowered:
            def lower(self, *args):
                return self

            def compile(self):
                return epoch

        return Lowered()

    monkeypatch.setattr(_vae_train, "make_train_epoch", poisoned)
    config = _config("vae_digits", "estimator=score_function")
    with pytest.raises(_vae_train.TrainingDiverged, match=r"score_function.* step 10 \(epoch 2\)"):
        run_experiment(config, tmp_path / "run")
    assert vae._manager(tmp_path / "run").latest_step() == 6  # the end of epoch 1, kept


def test_bad_values_are_refused_before_anything_is_written(tmp_path):
    for override, match in (
        ("estimator=reinforce", "unknown estimator 'reinforce'"),
        ("dataset=cifar", "unknown dataset 'cifar'"),
        ("ll_num_samples=25", "multiple of"),
        ("binarization=soft", "binarization"),
    ):
        with pytest.raises(ValueError, match=match):
            run_experiment(_config("vae_digits", override), tmp_path / "run")
    with pytest.raises(ValueError, match="num_samples must be an int >= 2"):
        run_experiment(
            _config("vae_digits", "estimator=score_function_loo", "num_samples=1"), tmp_path / "r"
        )
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


def test_data_dir_without_files_is_a_clear_error(tmp_path):
    config = _config("vae_mnist", f"data_dir={tmp_path}")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        run_experiment(config, tmp_path / "run")


@pytest.mark.parametrize("name", ["vae_mnist", "vae_mnist_burda"])
def test_mnist_configs_smoke(tmp_path, name):
    config = _config(name, "num_epochs=1", "train_examples=256", "hidden=(32,)")
    if name == "vae_mnist_burda":
        cfg.apply_overrides(config, ["hidden=(16, 16)", "latent_dim=5"])
    results = run_experiment(config, tmp_path / "run")
    assert results["epochs"] == 1 and np.isfinite(results["test_elbo"])


def test_compare_configs_smoke(tmp_path):
    """Both comparison configs, tiny. With the other tests of this file, every estimator runs
    through the runner: pathwise (training test), score_function (NaN test), NVIL (resume
    test), moving average and leave-one-out (digits here), IWAE (MNIST here)."""
    two = ("score_function_moving_average", "score_function_loo")
    config = _config("vae_compare_digits", "num_epochs=2", f"estimators={two!r}")
    results = run_experiment(config, tmp_path / "digits")
    assert tuple(r["estimator"] for r in results["runs"]) == two
    table = (tmp_path / "digits" / "table.md").read_text()
    assert all(e in table for e in two) and "test log p(x)" in table
    assert (tmp_path / "digits" / "table.csv").read_text().count("\n") == 3
    assert (tmp_path / "digits" / "elbo_curves.png").exists()  # drawn even with figures=false
    config = _config("vae_compare", "num_epochs=1", "train_examples=128", "estimators=('iwae',)")
    assert run_experiment(config, tmp_path / "mnist")["runs"][0]["estimator"] == "iwae"
    for name in ("vae_compare", "vae_compare_digits"):  # the full lists are valid
        vae_compare.validate(_config(name))
    with pytest.raises(ValueError, match="unknown estimator"):
        vae_compare.validate(_config("vae_compare", "estimators=('pathwise', 'nvil')"))


def test_gradient_variance_trace_is_mean_times_number_of_encoder_weights():
    """The two summaries of the variance measurement are consistent."""
    config = _config("vae_digits")
    pieces, state = _vae_train.init_state(config, 64, jax.random.key(0))
    setup = _vae_train.Setup(
        estimator="pathwise",
        num_samples=1,
        batch_size=8,
        num_batches=1,
        dynamic=False,
        ma_decay=0.9,
        **pieces,
    )
    xs = jnp.ones((8, 64))
    gv = _vae_train.make_grad_variance(setup, 4)(state, xs, jax.random.key(1))
    assert float(gv["mean"]) > 0 and float(gv["trace"]) == pytest.approx(
        float(gv["mean"]) * sum(x.size for x in jax.tree.leaves(state["params"]["encoder"])),
        rel=1e-4,
    )
