"""The binary-latent VAE benchmark: the model's bounds and the training gradients against
enumeration over the latents, the seeds vmapped as independent runs, and the runner's outputs
(table, protocol, divergence, bad configs)."""

from __future__ import annotations

import itertools
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import estimators
import estimators.testing
from experiments import _config
from experiments import binary_vae as runner
from experiments.binary_vae import train
from models import binary_vae

D, L = 4, 3  # a model small enough to enumerate its 2^L latents


def _tiny(hidden=()):
    mean = jnp.asarray([0.2, 0.5, 0.7, 0.4])
    model = binary_vae.BinaryVAE(mean, L, hidden, rngs=nnx.Rngs(params=jax.random.key(3)))
    # Move the prior off zero so the test sees its gradient path too.
    model.prior_logits[...] = jnp.asarray([0.3, -0.5, 0.1])
    return model


X = jnp.asarray([1.0, 0.0, 1.0, 1.0])
CORNERS = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=L)))  # [2^L, L]


def _exact_elbo(model, x):
    logits = model.encoder_logits(x)
    q = estimators.Bernoulli(logits)
    f = jax.vmap(lambda b: binary_vae.elbo_integrand(model, x, logits, b))(CORNERS)
    return jnp.sum(jnp.exp(q.log_prob(CORNERS)) * f)


def _exact_log_px(model, x):
    def log_joint(b):
        return models_ll(model, x, b) + model.log_prior(b)

    return jax.scipy.special.logsumexp(jax.vmap(log_joint)(CORNERS))


def models_ll(model, x, b):
    logits = model.decode(b)
    return jnp.sum(x * logits - jax.nn.softplus(logits))


def test_elbo_integrand_is_log_joint_minus_log_q():
    model = _tiny()
    logits = model.encoder_logits(X)
    b = jnp.asarray([1.0, 0.0, 1.0])
    p = jax.nn.sigmoid(model.decode(b))
    log_px = np.sum(np.where(np.asarray(X) > 0, np.log(p), np.log1p(-p)))
    prior = jax.nn.sigmoid(model.prior_logits[...])
    q = jax.nn.sigmoid(logits)
    log_pb = np.sum(np.where(np.asarray(b) > 0, np.log(prior), np.log1p(-prior)))
    log_qb = np.sum(np.where(np.asarray(b) > 0, np.log(q), np.log1p(-q)))
    f = binary_vae.elbo_integrand(model, X, logits, b)
    np.testing.assert_allclose(f, log_px + log_pb - log_qb, rtol=1e-5)
    # The decoder starts at the mean image: its output bias is the mean's logit.
    np.testing.assert_allclose(
        model.decoder.layers[-1].bias[...],
        np.log(np.asarray([0.2, 0.5, 0.7, 0.4]) / (1 - np.asarray([0.2, 0.5, 0.7, 0.4]))),
        rtol=1e-5,
    )


@pytest.mark.parametrize("k", [1, 4])
def test_bound_draws_average_to_the_exact_bound(k):
    """The mean of many draws of the K-sample bound equals its expectation, computed exactly
    by enumerating the K-tuples of latents (2^(L K) of them), within 4.4 SE (Bonferroni, 2
    checks); a companion shows the check rejects a 1% shift of it."""
    model = _tiny()
    logits = model.encoder_logits(X)
    q = estimators.Bernoulli(logits)
    f = jax.vmap(lambda b: binary_vae.elbo_integrand(model, X, logits, b))(CORNERS)
    logq = q.log_prob(CORNERS)
    tuples = jnp.asarray(list(itertools.product(range(len(CORNERS)), repeat=k)))
    weights = jnp.exp(jnp.sum(logq[tuples], axis=1))
    values = jax.scipy.special.logsumexp(f[tuples], axis=1) - math.log(k)
    exact = float(jnp.sum(weights * values))
    if k == 1:
        np.testing.assert_allclose(exact, _exact_elbo(model, X), rtol=1e-5)
    assert exact <= float(_exact_log_px(model, X)) + 1e-5
    draws = jax.vmap(lambda key: binary_vae.iwae_bound(model, X, key, num_samples=k))(
        jax.random.split(jax.random.key(7), 20_000)
    )
    mean, se = float(jnp.mean(draws)), float(jnp.std(draws) / math.sqrt(draws.size))
    z = estimators.testing.bonferroni_z(2)
    assert abs(mean - exact) <= z * se, (mean, exact, se)
    assert abs(mean - 1.01 * exact) > z * se  # the companion: 1% off is rejected


GRAD_ENTRIES = ("disarm", "relax", "score_function+loo@2", "rodeo@3", "vimco@2")
_SLOW_GRAD = ("score_function+loo@2", "rodeo@3")  # the battery holds both to enumeration


def _setup(entry, model):
    spec, k = train.parse_entry(entry)
    est = estimators.registry.get(spec)
    graphdef, _, fixed = nnx.split(model, nnx.Param, ...)
    return train.Setup(
        entry,
        est,
        train.entry_samples(est, entry, k),
        1,
        1,
        graphdef,
        fixed,
        train.make_optimizer(1e-3, 1e-2),
        L,
    )


def _exact_objective(model, entry):
    """The exact objective the entry's gradient estimates, by enumeration: minus the ELBO, or
    for VIMCO minus the K-sample bound (K-tuples of latents enumerated)."""
    spec, k = train.parse_entry(entry)
    logits = model.encoder_logits(X)
    q = estimators.Bernoulli(logits)
    f = jax.vmap(lambda b: binary_vae.elbo_integrand(model, X, logits, b))(CORNERS)
    logq = q.log_prob(CORNERS)
    if spec != "vimco":
        return -jnp.sum(jnp.exp(logq) * f)
    tuples = jnp.asarray(list(itertools.product(range(len(CORNERS)), repeat=k)))
    w = jnp.exp(jnp.sum(logq[tuples], axis=1))
    return -jnp.sum(w * (jax.scipy.special.logsumexp(f[tuples], axis=1) - math.log(k)))


@pytest.mark.parametrize(
    "entry",
    [pytest.param(e, marks=pytest.mark.slow) if e in _SLOW_GRAD else e for e in GRAD_ENTRIES],
)
def test_training_gradient_is_unbiased_for_every_parameter(entry):
    """The gradient the training step follows (encoder through the estimator, decoder and
    prior through the cost), averaged over 4000 keys, equals the exact gradient of the
    objective by enumeration, every coordinate within the Bonferroni z of its SE (over all
    coordinates of all entries); a companion shows the check rejects a 10% error."""
    model = _tiny((2,))
    setup = _setup(entry, model)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)

    def exact(p):
        return _exact_objective(train.merge(setup, p), entry)

    g_exact = jnp.concatenate([a.ravel() for a in jax.tree.leaves(jax.grad(exact)(params))])
    est_state = setup.est.init()
    xs = X[None, :]

    def one(key):
        g = jax.grad(lambda p: train.batch_loss(setup, p, est_state, xs, key)[0])(params)
        return jnp.concatenate([a.ravel() for a in jax.tree.leaves(g)])

    g = jax.lax.map(one, jax.random.split(jax.random.key(11), 4000), batch_size=500)
    mean = jnp.mean(g, axis=0)
    se = jnp.std(g, axis=0) / math.sqrt(g.shape[0])
    z = estimators.testing.bonferroni_z(g_exact.size * len(GRAD_ENTRIES))
    err = np.asarray(jnp.abs(mean - g_exact) / jnp.maximum(se, 1e-12))
    assert err.max() <= z, (entry, err.max(), z)
    wrong = np.asarray(jnp.abs(mean - 0.9 * g_exact) / jnp.maximum(se, 1e-12))
    assert wrong.max() > z, (entry, wrong.max())


def test_seeds_in_one_program_are_the_independent_runs():
    """Seed 1 of a 2-seed vmapped program ends where a 1-seed program of that seed ends."""
    data = jax.random.uniform(jax.random.key(0), (200, D))
    mean = jnp.mean(data, axis=0)
    est = estimators.registry.get("relax")
    opt = train.make_optimizer(1e-3, 1e-2)
    graphdef, fixed = train.graph_pieces(mean, L, (5,))
    setup = train.Setup("relax", est, 1, 10, 20, graphdef, fixed, opt, L)
    pieces = {"optimizer": opt, "est": est}
    keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    both = train.init_states(pieces, mean, L, (5,), keys)
    one = train.init_states(pieces, mean, L, (5,), keys[1:])
    epoch = train.make_train_epoch(setup, 20)
    both, _ = epoch(both, data, keys, 0)
    one, _ = epoch(one, data, keys[1:], 0)
    for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(np.asarray(a)[1], np.asarray(b)[0], rtol=2e-5, atol=1e-6)
    # ... and the two seeds differ.
    p = both["params"]["encoder"]["layers"][0]["kernel"]
    assert not np.allclose(p[0], p[1])


def _config_for(tmp_path, **overrides):
    config = _config.load_config("binary_vae_digits")
    config.models = ("linear",)
    config.estimators = ("disarm", "relax")
    config.num_steps = 24  # one epoch of the 1200 training digits
    config.num_seeds = 2
    config.progress = False
    config.figures = True
    config.grad_var_epochs = (0, -1)
    config.latent_dim = 8
    config.eval_num_samples = 4
    config.grad_var_num_estimates = 4
    config.grad_var_run_estimates = 3
    config.grad_var_warmup_steps = 2
    for k, v in overrides.items():
        config[k] = v
    return config


NAN_ESTIMATOR = """
import jax.numpy as jnp
import estimators

_score = estimators.registry.get("score_function")


def _per_sample(function, params, dist_builder, key, *, num_samples, state=(), context=None):
    g = _score.per_sample(function, params, dist_builder, key, num_samples=num_samples)
    return {k: v * jnp.nan for k, v in g.items()}


nan = estimators.gradient_estimator("nan", _per_sample, requires=(estimators.HasScore,))
"""


def test_runner_writes_the_table_protocol_and_figures_and_reports_divergence(tmp_path, monkeypatch):
    """One tiny run (digits, linear, 2 seeds, 1 epoch) of DisARM (the reference), RELAX
    (adaptive) and a user estimator, given by import path, whose gradient is NaN: the table,
    the shared-parameter protocol, the figures; the NaN runs reported as diverged, never
    averaged."""
    from experiments import _cli

    (tmp_path / "nan_estimators.py").write_text(NAN_ESTIMATOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nan_estimators", raising=False)
    config = _config_for(tmp_path, estimators=("disarm", "relax", "nan_estimators:nan"))
    _cli.run_experiment(config, tmp_path / "run")
    run = tmp_path / "run"
    table = (run / "table.md").read_text()
    assert "| disarm | 2 | 2 |" in table and "| relax | 3 | 2 |" in table
    assert "| nan_estimators:nan | 1 | 0 (2 diverged) |" in table
    protocol = json.loads((run / "linear" / "grad_variance.json").read_text())
    assert protocol["epochs"] == [0, 1] and protocol["reference"] == "disarm"
    assert protocol["rows"]["disarm"]["1"]["ratio_to_reference"] == pytest.approx(1.0)
    for entry in ("disarm", "relax"):
        res = json.loads((run / "linear" / entry / "results.json").read_text())
        assert res["steps"] == 24 and res["diverged"] == [None, None]
        assert len(res["validation_bound"]) == 2
        assert all(np.isfinite(res["test_bound"]))
        assert [r["epoch"] for r in runner.read_metrics(run / "linear" / entry)] == [0, 1]
    res = json.loads((run / "linear" / "nan_estimators_nan" / "results.json").read_text())
    assert res["diverged"] == [1, 1]
    row = [r for r in runner.table_rows(run, config) if r["estimator"] == "nan_estimators:nan"]
    assert row[0]["seeds"] == 0 and row[0]["diverged"] == 2
    assert math.isnan(row[0]["train_elbo"])
    for name in ("linear_elbo.png", "linear_variance.png", "table.csv"):
        assert (run / name).exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"estimators": ("disarm", "nope")}, "nope"),
        ({"estimators": ("disarm", "pathwise")}, "Bernoulli"),
        ({"estimators": ("disarm", "vimco@1")}, "K >= 2"),
        ({"estimators": ("disarm", "arm@3")}, "independently"),
        ({"estimators": ("disarm", "x@")}, "spec@K"),
        ({"models": ("deep",)}, "deep"),
        ({"grad_var_reference": "arm"}, "grad_var_reference"),
        ({"num_seeds": 0}, "num_seeds"),
    ],
)
def test_bad_configs_are_named(tmp_path, override, message):
    config = _config_for(tmp_path, **override)
    with pytest.raises(ValueError, match=message):
        runner.validate(config)


@pytest.mark.parametrize(
    "name", ["binary_vae_mnist", "binary_vae_mnist_paper", "binary_vae_fashion_mnist"]
)
def test_bundled_configs_validate(name):
    runner.validate(_config.load_config(name))


def test_mnist_splits_follow_the_disarm_setup(small_idx_dir):
    """Validation = the LAST training images, train = the ones before; evaluation sets binary."""
    config = _config.load_config("binary_vae_mnist")
    config.data_dir = str(small_idx_dir)
    config.verify_checksums = False
    config.validation_examples = 100
    config.eval_examples = 0
    from experiments.vae import data as vae_data

    ds = vae_data.load_dataset("mnist", small_idx_dir, verify=False)
    data = runner.load_data(config)
    np.testing.assert_array_equal(data["train"], ds.train[:200])
    assert data["validation"].shape == (100, 784) and data["test"].shape == (100, 784)
    assert set(np.unique(data["validation"])) <= {0.0, 1.0}
    # the validation bits are draws of the last 100 training images' grey levels
    grey = ds.train[200:]
    assert np.all(data["validation"][grey == 0] == 0) and np.all(data["validation"][grey == 1] == 1)


def test_the_real_mnist_splits(mnist_dir):
    config = _config.load_config("binary_vae_mnist")
    config.data_dir = str(mnist_dir)
    data = runner.load_data(config)
    assert data["train"].shape == (50_000, 784)
    assert data["validation"].shape == (1_000, 784) and data["test"].shape == (1_000, 784)


@pytest.mark.slow  # 20 s; the checkpoint machinery it uses is the VAE's, tested by default
def test_resume_with_more_steps_equals_the_longer_run(tmp_path):
    """A finished 1-epoch run resumed with num_steps for 2 epochs ends where a 2-epoch run
    ends, bit for bit (every draw of epoch e is a function of (seed, e)); the protocol is
    measured again at the new last epoch."""
    from experiments import _cli

    short = _config_for(tmp_path, estimators=("disarm",), figures=False)
    _cli.run_experiment(short, tmp_path / "a")
    longer = _config_for(tmp_path, estimators=("disarm",), figures=False, num_steps=48)
    _cli.run_experiment(longer, tmp_path / "a", resume=True)
    _cli.run_experiment(longer, tmp_path / "b")
    a, b = (
        json.loads((tmp_path / w / "linear" / "disarm" / "results.json").read_text())
        for w in ("a", "b")
    )
    assert a["steps"] == b["steps"] == 48
    for key in ("train_elbo", "validation_bound", "test_bound"):
        assert a[key] == b[key], key
    pa, pb = (
        json.loads((tmp_path / w / "linear" / "grad_variance.json").read_text()) for w in ("a", "b")
    )
    assert pa["epochs"] == pb["epochs"] == [0, 2]
    assert pa["rows"] == pb["rows"]
