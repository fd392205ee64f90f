"""VAE training runs: the loss goes down, resume is bit-for-bit, NaN stops cleanly, configs run.

Tiny sizes throughout: digits, or MNIST-format files of random images that the tests write
(``small_idx_dir``), so nothing here needs the real MNIST or the internet.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from experiments import _config as cfg
from experiments import run_experiment, vae
from experiments._workdir import WorkdirError
from experiments.vae import compare as vae_compare
from experiments.vae import data
from experiments.vae import train as vae_train

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
def _no_download(monkeypatch):
    """A test that reached for the internet would fail here, naming the URL."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)


def _small_mnist(folder: Path) -> list[str]:
    """Overrides that read the test's own MNIST-format files (random pixels, so unverified)."""
    return [f"data_dir={folder}", "verify_checksums=false"]


def _config(name: str, *extra: str):
    config = cfg.load_config(name)
    cfg.apply_overrides(config, [*TINY, *extra])
    return config


def _final_entries(workdir: Path) -> dict[str, np.ndarray]:
    """The newest checkpoint's entries, by name, as saved."""
    manager = vae.checkpoint.manager(workdir)
    tree = manager.restore(manager.latest_step())
    return {name: np.asarray(v) for name, v in tree["state"].items()}


def test_digits_training_lowers_the_loss_and_writes_everything(tmp_path):
    config = _config("vae_digits", "num_epochs=6", "train_examples=0", "figures=true")
    results = run_experiment(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["step"] == 6 * (1500 // 50)
    # Loss of the last epoch well below the first (a 64-pixel image starts near 44 nats).
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 3
    assert np.isfinite(results["test_log_likelihood"])
    # First epoch, every grad_var_every_epochs = 2, the last.
    assert [r["epoch"] for r in rows if "own_params_grad_var_per_sample" in r] == [1, 2, 4, 6]
    assert all(r.get("own_params_grad_var_per_sample", 1) > 0 for r in rows)
    for name in ("samples", "reconstructions", "manifold", "elbo_curves"):
        assert (tmp_path / "run" / f"{name}.png").exists(), name
    assert (tmp_path / "run" / "grad_variance_own_params.png").exists()
    (tmp_path / "run" / "samples.png").unlink()
    from experiments import redraw

    assert tmp_path / "run" / "samples.png" in redraw(tmp_path / "run")
    with pytest.raises(WorkdirError, match="already holds results"):
        run_experiment(config, tmp_path / "run")


@pytest.mark.parametrize("estimator", ["score_function+nvil"])
def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch, estimator):
    """Interrupted after epoch 2 (checkpoint on exit), then resumed: same final state exactly."""
    config = _config("vae_digits", f"estimator={estimator}", "num_epochs=4")
    run_experiment(config, tmp_path / "straight")

    real = vae_train.epoch_keys

    def interrupting(seed, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(seed, epoch)

    monkeypatch.setattr(vae_train, "epoch_keys", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "resumed")
    monkeypatch.setattr(vae_train, "epoch_keys", real)
    assert vae.checkpoint.latest_step(tmp_path / "resumed") == 2 * 6
    run_experiment(config, tmp_path / "resumed", resume=True)

    a, b = _final_entries(tmp_path / "straight"), _final_entries(tmp_path / "resumed")
    assert "estimator/params/layers/0/kernel/value" in a  # NVIL's network is saved too
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "straight" / "results.json").read_text())
    rb = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert ra["test_elbo"] == rb["test_elbo"] and ra["steps"] == rb["steps"] == 4 * 6
    assert ra["epochs"] == rb["epochs"] == 4

    def untimed(workdir):
        rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]

    assert untimed(tmp_path / "straight") == untimed(tmp_path / "resumed")


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = vae_train.make_train_epoch

    def poisoned(setup, mesh=None):
        jitted = real(setup, mesh)
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

    monkeypatch.setattr(vae_train, "make_train_epoch", poisoned)
    config = _config("vae_digits", "estimator=score_function")
    # The message names where it happened and both causes (divergence, or an invalid
    # distribution parameter, which under jit shows only as NaN).
    cause = r"optimisation diverged.*distribution parameter became invalid.*disable_jit"
    with pytest.raises(
        vae_train.TrainingDiverged, match=r"score_function.* step 10 \(epoch 2\).*" + cause
    ):
        run_experiment(config, tmp_path / "run")
    assert vae.checkpoint.latest_step(tmp_path / "run") == 6  # the end of epoch 1, kept


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
            _config("vae_digits", "estimator=score_function+loo", "num_samples=1"), tmp_path / "r"
        )
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


def test_data_dir_without_files_is_a_clear_error(tmp_path):
    config = _config("vae_mnist", f"data_dir={tmp_path}")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        run_experiment(config, tmp_path / "run")


def test_mnist_config_smoke(tmp_path, small_idx_dir):
    """vae_mnist at a tiny size (Burda et al.'s configs: tests/test_vae_burda.py)."""
    config = _config(
        "vae_mnist",
        "num_epochs=1",
        "train_examples=256",
        "hidden=(32,)",
        *_small_mnist(small_idx_dir),
    )
    results = run_experiment(config, tmp_path / "run")
    assert results["epochs"] == 1 and np.isfinite(results["test_elbo"])


# A user's own estimator, defined outside the package and reached by its importable path: the
# score function, its surrogate derived by the interface from the per-sample form (not the
# library's score_function_surrogate).
MY_SCORE_FUNCTION = estimators.gradient_estimator(
    "my_score_function", estimators.score_function, requires=(estimators.HasScore,)
)
MINE = "tests.test_vae_train:MY_SCORE_FUNCTION"
DISCRETE_ONLY = estimators.gradient_estimator(
    "discrete_only", estimators.score_function, requires=(estimators.Discrete,)
)


def test_compare_configs_smoke(tmp_path, small_idx_dir):
    """Both comparison configs, tiny. With the other tests of this file, every estimator runs
    through the runner: pathwise (training test), score_function (NaN test), NVIL (resume
    test), moving average, leave-one-out and a user's estimator given by its importable path
    (digits here: configuration alone, no edit of the package), IWAE (MNIST here)."""
    three = ("score_function+moving_average", "score_function+loo", MINE)
    warmup = "grad_var_warmup_steps=5"  # the protocol's baseline warm-up, kept short here
    config = _config("vae_compare_digits", "num_epochs=2", f"estimators={three!r}", warmup)
    results = run_experiment(config, tmp_path / "digits")
    assert tuple(r["estimator"] for r in results["runs"]) == three
    assert np.isfinite(results["runs"][2]["test_elbo"]) and results["runs"][2]["num_samples"] == 1
    assert (
        tmp_path / "digits" / "tests.test_vae_train_MY_SCORE_FUNCTION" / "results.json"
    ).exists()
    rows = results["grad_variance"]["rows"]
    assert [r["estimator"] for r in rows if r["epoch"] == 2] == ["pathwise", *three]
    assert [r["samples_per_example"] for r in rows if r["epoch"] == 2] == [1, 1, 5, 1]
    table = (tmp_path / "digits" / "table.md").read_text()
    assert all(e in table for e in three) and "test log p(x)" in table
    assert (tmp_path / "digits" / "table.csv").read_text().count("\n") == 4
    assert (tmp_path / "digits" / "elbo_curves.png").exists()  # drawn even with figures=false
    config = _config(
        "vae_compare",
        "num_epochs=1",
        "train_examples=128",
        "estimators=('iwae',)",
        warmup,
        *_small_mnist(small_idx_dir),
    )
    assert run_experiment(config, tmp_path / "mnist")["runs"][0]["estimator"] == "iwae"
    for name in ("vae_compare", "vae_compare_digits"):  # the full lists are valid
        vae_compare.validate(_config(name))
    with pytest.raises(ValueError, match="unknown estimator"):
        vae_compare.validate(_config("vae_compare", "estimators=('pathwise', 'nvil')"))
    with pytest.raises(ValueError, match="'loo' changes only estimators that take a baseline"):
        vae_compare.validate(_config("vae_compare", "estimators=('pathwise+loo',)"))
    discrete = "tests.test_vae_train:DISCRETE_ONLY"
    with pytest.raises(ValueError, match="posterior is Gaussian.*needs a distribution that is"):
        vae_compare.validate(_config("vae_compare", f"estimators=('pathwise', {discrete!r})"))


def test_variances_are_charged_for_every_cost_evaluation():
    """Per-sample variances multiply by K times the estimator's cost evaluations per sample:
    K for leave-one-out, 4 L for measure-valued (L = 2 latents here), 1 for pathwise."""
    setup, _ = _tiny_setup("score_function+loo", 3)
    assert setup.evaluations_per_example == 3
    mv = dataclasses.replace(setup, est=estimators.registry.get("measure_valued"), num_samples=1)
    assert mv.evaluations_per_example == 4 * 2
    assert _tiny_setup("pathwise")[0].evaluations_per_example == 1


def test_users_estimator_gives_the_library_score_functions_gradient():
    """The user's estimator of ``test_compare_configs_smoke`` (the score function with the
    interface's derived surrogate) and the library's ``score_function`` give the same gradient
    of the batch loss, every weight of encoder and decoder, on the same key: the derived
    surrogate pulls the per-sample form back through the encoder and passes the decoder's
    gradient through. The tolerance is float32 rounding; dropping the score term (the
    encoder's gradient would be the KL's alone) is off by far more, as the last assert shows."""
    from flax import nnx

    xs, key = _binary_batch(4), jax.random.key(3)

    def grads(setup, state):
        g = jax.grad(lambda p: vae_train.batch_loss(setup, p, state, xs, key)[0])(state["params"])
        return {part: np.concatenate([np.ravel(v) for v in jax.tree.leaves(g[part])]) for part in g}

    mine, ref = grads(*_tiny_setup(MINE)), grads(*_tiny_setup("score_function"))
    for part in ("encoder", "decoder"):
        scale = np.max(np.abs(ref[part]))
        np.testing.assert_allclose(mine[part], ref[part], rtol=0, atol=1e-5 * scale)
    setup, state = _tiny_setup("score_function")

    def kl(params):
        model = nnx.merge(setup.graphdef, params)
        return jnp.mean(jax.vmap(lambda x: model.latent.kl(model.encoder_params(x)))(xs))

    kl_only = jax.grad(kl)(state["params"])["encoder"]
    kl_only = np.concatenate([np.ravel(v) for v in jax.tree.leaves(kl_only)])
    scale = np.max(np.abs(ref["encoder"]))
    assert np.max(np.abs(kl_only - ref["encoder"])) > 1e-2 * scale


def _tiny_setup(estimator: str, num_samples: int = 1, seed: int = 0):
    """A 64-16-2 VAE (digits sizes) and its initial state; ``ma_decay`` 0.9; ``num_samples``
    for the estimators that use their samples jointly."""
    config = _config(
        "vae_digits",
        f"estimator={estimator}",
        "hidden=(16,)",
        "latent_dim=2",
        "ma_decay=0.9",
        f"num_samples={num_samples}",
    )
    pieces, state = vae_train.init_state(config, 64, jax.random.key(seed))
    setup = vae_train.Setup(
        estimator=estimator,
        num_samples=vae_train.num_samples(config, pieces["est"]),
        batch_size=8,
        num_batches=1,
        dynamic=False,
        latent_dim=2,
        **pieces,
    )
    assert setup.num_samples == num_samples
    return setup, state


def _binary_batch(seed: int, n: int = 8) -> jax.Array:
    return jax.random.bernoulli(jax.random.key(seed), 0.3, (n, 64)).astype(jnp.float32)


def _direct_estimates(setup, state, xs, key, num_estimates: int) -> np.ndarray:
    """``[M, P]`` encoder-gradient estimates, written out here: estimate ``m`` is the batch mean
    of ``jax.grad`` of the per-example surrogate, example ``b`` with key ``split(k_m, B)[b]``."""
    from flax import nnx

    @jax.jit
    def example_grad(x, k):
        def loss(params):
            model = nnx.merge(setup.graphdef, params)
            return vae_train.example_loss(setup, model, x, k, state["estimator"])[0]

        g = jax.grad(loss)(state["params"])["encoder"]
        return jnp.concatenate([v.ravel() for v in jax.tree.leaves(g)])

    out = []
    for k_m in jax.random.split(key, num_estimates):
        keys = jax.random.split(k_m, xs.shape[0])
        per_example = [np.asarray(example_grad(xs[b], keys[b]), np.float64) for b in range(len(xs))]
        out.append(np.mean(per_example, axis=0))
    return np.stack(out)


def _numpy_trace_and_jackknife(g: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Trace of the sample covariance (ddof 1), the leave-one-out traces by deletion, their SE."""
    m = len(g)
    trace = float(np.var(g, axis=0, ddof=1).sum())
    loo = np.array([np.var(np.delete(g, i, axis=0), axis=0, ddof=1).sum() for i in range(m)])
    return trace, loo, float(np.sqrt((m - 1) / m * np.sum((loo - loo.mean()) ** 2)))


def test_protocol_variance_value_and_k_normalisation_match_an_independent_computation():
    """The reported variance of one estimate, its per-sample value (x K) and their jackknife SEs
    equal numpy's on M estimates computed here with jax.grad of the per-example surrogate (same
    keys); so does the paired ratio to pathwise. Tolerances are float32 rounding (the two sides
    see the same draws, so no sampling error enters): a ddof of 0 (factor M/(M-1) = 1.09), a
    missing K (factor 3) or a wrong SE formula is off by far more than 1e-3."""
    m, k = 12, 3
    xs, key = _binary_batch(5), jax.random.key(7)
    sq = {}
    for estimator, samples in (("pathwise", 1), ("score_function+loo", k)):
        setup, state = _tiny_setup(estimator, samples)
        reported = vae_train.make_grad_variance(setup, m)(state, xs, key)
        summary = vae_train.variance_summary(reported["sq_dev"], setup.num_samples)
        g = _direct_estimates(setup, state, xs, key, m)
        trace, loo, se = _numpy_trace_and_jackknife(g)
        assert summary["num_estimates"] == m and summary["samples_per_example"] == samples
        assert summary["variance"] == pytest.approx(trace, rel=1e-3)
        assert summary["variance_se"] == pytest.approx(se, rel=1e-3)
        # K-normalisation: per sample = K x the variance of one K-sample estimate (numpy's).
        assert summary["per_sample_variance"] == pytest.approx(samples * trace, rel=1e-3)
        assert summary["per_sample_variance_se"] == pytest.approx(samples * se, rel=1e-3)
        sq[estimator] = (reported["sq_dev"], loo, trace)
    ratio, ratio_se = vae_train.variance_ratio(sq["score_function+loo"][0], k, sq["pathwise"][0], 1)
    loo_ratio = k * sq["score_function+loo"][1] / sq["pathwise"][1]
    exact = k * sq["score_function+loo"][2] / sq["pathwise"][2]
    assert ratio == pytest.approx(exact, rel=1e-3)
    assert ratio_se == pytest.approx(
        np.sqrt((m - 1) / m * np.sum((loo_ratio - loo_ratio.mean()) ** 2)), rel=1e-3
    )
    with pytest.raises(ValueError, match="at least 3 estimates"):
        vae_train.variance_summary(np.ones(2), 1)


@pytest.mark.parametrize("estimator", ["score_function+moving_average", "score_function+nvil"])
def test_vae_loop_reads_the_estimator_state_before_updating_it(estimator):
    """Deterministic: a train_step's gradient is the estimator's at the OLD state, and the new
    state is ``est.update(old, the batch's costs, context=the batch)``. With SGD at rate 1 the
    step's gradient is ``params - new params``. A loop that updated first would take the
    gradient at the updated state, which the last assert shows differs by far more than the
    rounding the first tolerates."""
    import optax

    import estimators

    setup, state = _tiny_setup(estimator)
    setup = dataclasses.replace(setup, optimizer=optax.sgd(1.0))
    average = estimators.MovingAverage(
        jnp.asarray(3.0), jnp.asarray(4, jnp.int32), jnp.asarray(0.4)
    )  # zero-debiased value 3.0 / 0.4 = 7.5, far below the costs (about 44 nats)
    est_state = state["estimator"]
    if isinstance(est_state, estimators.MovingAverage):
        est_state = average
    else:
        est_state = est_state._replace(average=average)
    state = dict(state, opt=setup.optimizer.init(state["params"]), estimator=est_state)
    xs, key = _binary_batch(3), jax.random.key(2)
    new, _, aux = jax.jit(lambda s, x, k: vae_train.train_step_with_aux(setup, s, x, k))(
        state, xs, key
    )
    updated = setup.est.update(est_state, aux["costs"], context=xs)
    for a, b in zip(jax.tree.leaves(new["estimator"]), jax.tree.leaves(updated), strict=True):
        b = np.asarray(b)  # float32 rounding of the entries' own scale
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-6 * np.max(np.abs(b)))

    def encoder_grad(st):
        g = jax.grad(lambda p: vae_train.batch_loss(setup, p, st, xs, key)[0])(st["params"])
        return np.concatenate([np.ravel(v) for v in jax.tree.leaves(g["encoder"])])

    used = np.concatenate(
        [
            np.ravel(a - b)
            for a, b in zip(
                jax.tree.leaves(state["params"]["encoder"]),
                jax.tree.leaves(new["params"]["encoder"]),
                strict=True,
            )
        ]
    )
    at_old, at_new = encoder_grad(state), encoder_grad(dict(state, estimator=updated))
    scale = np.max(np.abs(at_old))
    np.testing.assert_allclose(used, at_old, rtol=0, atol=1e-5 * scale)
    assert np.max(np.abs(at_new - at_old)) > 1e-2 * scale  # the other order is caught


def test_compare_measures_every_estimator_at_the_same_parameters_batch_and_keys(
    tmp_path, monkeypatch
):
    """The protocol's rows of one checkpoint share the parameters' hash, the batch's hash and
    the key; the replayed reference equals the pathwise run's final checkpoint bit for bit; a
    diverged run is reported as diverged (and still measured under the protocol)."""
    real = vae.run

    def nvil_diverges(config, workdir, resume=False):
        if config.estimator == "score_function+nvil":
            raise vae_train.TrainingDiverged("loss is nan at step 3 (epoch 1)")
        return real(config, workdir, resume=resume)

    monkeypatch.setattr(vae, "run", nvil_diverges)
    config = _config(
        "vae_compare_digits",
        "num_epochs=2",
        "estimators=('pathwise', 'score_function+nvil')",
        "grad_var_checkpoint_epochs=(1,)",
        "grad_var_warmup_steps=5",
        "grad_var_num_estimates=4",
    )
    out = run_experiment(config, tmp_path / "cmp")
    assert out["runs"][1] == {
        "estimator": "score_function+nvil",
        "diverged": True,
        "message": "loss is nan at step 3 (epoch 1)",
        "num_samples": 1,
        "epochs": 0,
    }
    protocol = json.loads((tmp_path / "cmp" / "grad_variance.json").read_text())
    assert protocol["checkpoint_epochs"] == [1, 2] and protocol["replay_matches_reference_run"]
    by_epoch = {e: [r for r in protocol["rows"] if r["epoch"] == e] for e in (1, 2)}
    for rows in by_epoch.values():
        assert [r["estimator"] for r in rows] == ["pathwise", "score_function+nvil"]
        for key in ("params_sha256", "batch_sha256", "key_data", "num_estimates"):
            assert rows[0][key] == rows[1][key], key
        assert rows[1]["baseline_warmup_steps"] == 5 and rows[1]["per_sample_variance"] > 0
    assert by_epoch[1][0]["params_sha256"] != by_epoch[2][0]["params_sha256"]
    assert by_epoch[1][0]["key_data"] != by_epoch[2][0]["key_data"]
    # The last checkpoint's hash is that of the pathwise run's own final parameters.
    _, state = _tiny_setup("pathwise")
    restored = vae.checkpoint.restore(vae.checkpoint.manager(tmp_path / "cmp" / "pathwise"), state)
    assert vae_compare._sha256(restored.state["params"]) == by_epoch[2][0]["params_sha256"]
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| score_function+nvil | 1 | diverged in epoch 1 | — | — |" in table
    assert (tmp_path / "cmp" / "grad_variance.png").exists()
    # --resume reuses everything: finished, diverged and the protocol.
    again = run_experiment(config, tmp_path / "cmp", resume=True)
    assert again["grad_variance"] == protocol and again["runs"][1]["diverged"]


# ----------------------------------------------------------------------------------------------
# Checkpoints: the state saved by name


def _saved(tmp_path: Path, state, epoch: int = 4):
    manager = vae.checkpoint.manager(tmp_path / "run")
    vae.checkpoint.save(manager, state, epoch)
    return manager


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=True)
    )


def test_checkpoint_round_trip_by_name(tmp_path):
    """Every entry of an NVIL run's state (NNX params, Adam's state, the moving average, the
    baseline network and its Adam state, the step) comes back under its name, bit for bit,
    into a template of other values; the names are the key paths."""
    _, state = _tiny_setup("score_function+nvil")
    trained = jax.tree.map(lambda v: v + 1, state)  # every entry differs from the template
    manager = _saved(tmp_path, trained, epoch=3)
    names = set(vae.checkpoint.flatten(state))
    assert {"step", "opt/0/count", "params/encoder/layers/0/kernel/value"} <= names
    assert {"estimator/average/value", "estimator/params/layers/1/bias/value"} <= names
    restored = vae.checkpoint.restore(manager, state)
    assert restored.epoch == 3 and restored.missing == ()
    assert _same(restored.state, trained) and not _same(restored.state, state)
    assert vae.checkpoint.restore(vae.checkpoint.manager(tmp_path / "empty"), state) is None


def test_checkpoint_without_a_new_entry_restores_the_rest_and_names_it(tmp_path):
    """A checkpoint written before a state entry existed: the old entries come back as saved,
    the new one takes the template's (initial) value, and ``missing`` names it."""
    _, state = _tiny_setup("score_function+moving_average")
    trained = jax.tree.map(lambda v: v + 1, state)
    manager = _saved(tmp_path, trained)
    grown = dict(state, extra={"w": jnp.full((3,), 7.0)})
    restored = vae.checkpoint.restore(manager, grown)
    assert restored.missing == ("extra/w",)
    np.testing.assert_array_equal(restored.state["extra"]["w"], np.full(3, 7.0))
    rest = {k: v for k, v in restored.state.items() if k != "extra"}
    assert _same(rest, trained)


def test_checkpoint_with_renamed_or_reshaped_entries_is_a_clear_error(tmp_path):
    _, state = _tiny_setup("score_function+moving_average")
    manager = _saved(tmp_path, state)
    renamed = {("baseline" if k == "estimator" else k): v for k, v in state.items()}
    match = "'estimator/value' is in the checkpoint"
    with pytest.raises(vae.checkpoint.CheckpointMismatch, match=match):
        vae.checkpoint.restore(manager, renamed)
    config = _config("vae_digits", "hidden=(17,)", "latent_dim=2")
    _, wider = vae.train.init_state(config, 64, jax.random.key(0))
    match = r"'params/encoder/layers/0/kernel/value' has shape \(64, 16\).*\(64, 17\) and float32"
    with pytest.raises(vae.checkpoint.CheckpointMismatch, match=match):
        vae.checkpoint.restore(manager, wider)


def test_checkpoint_of_the_old_positional_format_is_still_read(tmp_path):
    """Checkpoints written before the state was saved by name (leaves by position) restore
    into the same state; into another state they are a clear error."""
    import orbax.checkpoint as ocp

    _, state = _tiny_setup("score_function+moving_average")
    trained = jax.tree.map(lambda v: v + 1, state)
    leaves = {f"{i:04d}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(trained))}
    manager = vae.checkpoint.manager(tmp_path / "old")
    tree = {"leaves": leaves, "epoch": np.asarray(2, np.int64)}
    manager.save(int(trained["step"]), args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()
    restored = vae.checkpoint.restore(manager, state)
    assert restored.epoch == 2 and restored.missing == () and _same(restored.state, trained)
    _, nvil = _tiny_setup("score_function+nvil")
    with pytest.raises(vae.checkpoint.CheckpointMismatch, match="by position"):
        vae.checkpoint.restore(manager, nvil)
