"""The VAE model and the encoder-gradient estimators, checked against mathematics.

Statistical checks use fixed keys and tolerances of a few standard errors, Bonferroni-corrected
where many coordinates share one test.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from scipy.stats import norm

import models
from experiments import _vae_train

D, H, L = 6, 5, 2


def _model(seed: int = 0) -> models.VAE:
    """The tiny VAE, initialised under one jit (eager NNX init compiles op by op)."""

    def build(k):
        return models.VAE(D, (H,), L, "tanh", rngs=nnx.Rngs(params=k))

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(seed))))
    state = jax.jit(lambda k: nnx.split(build(k))[1])(jax.random.key(seed))
    return nnx.merge(graphdef, state)


def _x() -> jax.Array:
    return jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])


def test_shapes_jit_and_vmap(key):
    model = _model()
    xs = jnp.tile(_x(), (3, 1))

    @jax.jit
    def everything(model, key):
        enc = model.encoder_params(xs)
        keys = jax.random.split(key, 3)
        return {
            "loc": enc["loc"],
            "log_scale": enc["log_scale"],
            "logits": model.decode(jnp.zeros((3, L))),
            "elbo": jax.vmap(lambda x, k: models.elbo(model, x, k))(xs, keys),
            "iwae": models.iwae_bound(model, _x(), key, num_samples=7),
            "ll": models.log_likelihood(model, _x(), key, num_samples=40, chunk_size=10),
            "ll_one_chunk": models.log_likelihood(model, _x(), key, num_samples=40, chunk_size=40),
        }

    out = everything(model, key)
    shapes = {k: v.shape for k, v in out.items()}
    assert shapes == {
        "loc": (3, L),
        "log_scale": (3, L),
        "logits": (3, D),
        "elbo": (3,),
        "iwae": (),
        "ll": (),
        "ll_one_chunk": (),
    }
    assert model.encode(xs).event_shape == (3, L)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        models.log_likelihood(model, _x(), key, num_samples=45, chunk_size=10)


def test_bad_activation():
    with pytest.raises(ValueError, match="unknown activation 'sigmoidal'"):
        models.VAE(D, (H,), L, "sigmoidal", rngs=nnx.Rngs(0))


def test_analytic_kl_matches_monte_carlo():
    """KL(q || N(0, I)) = E_q[log q(z) - log p(z)], estimated with 200 000 samples, 5 SE."""
    params = {"loc": jnp.array([0.7, -1.2, 0.1]), "log_scale": jnp.array([-0.5, 0.3, 0.0])}
    q = models.posterior(params)
    z = jax.vmap(q.sample)(jax.random.split(jax.random.key(1), 200_000))
    diff = np.asarray(jax.vmap(q.log_prob)(z) - models.standard_normal_log_prob(z), np.float64)
    mc, se = diff.mean(), diff.std(ddof=1) / math.sqrt(len(diff))
    exact = float(models.kl_standard_normal(params))
    # Independent closed form, coordinate by coordinate.
    s2 = np.exp(2 * np.asarray(params["log_scale"], np.float64))
    by_hand = 0.5 * np.sum(np.asarray(params["loc"]) ** 2 + s2 - 1 - np.log(s2))
    assert exact == pytest.approx(by_hand, rel=1e-6)
    assert abs(mc - exact) <= 5 * se, (mc, exact, se)


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def test_iwae_bound_above_elbo_and_increasing_in_k():
    """E[L_1] = ELBO <= E[L_5] <= E[L_50] <= log p(x), on a fixed (untrained) model.

    The model's posterior differs from q, so every increase is strict: each difference must be
    positive by more than 3 SE, a check a wrong bound fails. log p(x) itself comes from
    quadrature over the 2-D latent.
    """
    model, x, n = _model(3), _x(), 4000
    grid = np.linspace(-7, 7, 301)
    zz = jnp.asarray(np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2), jnp.float32)

    @jax.jit
    def compute(model):
        def bounds(k, seed):
            keys = jax.random.split(jax.random.key(seed), n)
            return jax.vmap(lambda kk: models.iwae_bound(model, x, kk, num_samples=k))(keys)

        keys = jax.random.split(jax.random.key(9), n)
        logj = jax.vmap(
            lambda z: (
                models.bernoulli_log_likelihood(model.decode(z), x)
                + models.standard_normal_log_prob(z)
            )
        )(zz)
        return {
            "k1": bounds(1, 1),
            "k5": bounds(5, 5),
            "k50": bounds(50, 50),
            "elbo": jax.vmap(lambda kk: models.elbo(model, x, kk))(keys),
            "ll": models.log_likelihood(model, x, jax.random.key(5), num_samples=2000),
            "logj": logj,
        }

    out = compute(model)
    stats = {k: _mean_se(out[f"k{k}"]) for k in (1, 5, 50)}
    elbo, elbo_se = _mean_se(out["elbo"])
    # L_1 (Monte Carlo KL) and the analytic-KL ELBO estimate the same number.
    assert abs(stats[1][0] - elbo) <= 5 * math.hypot(stats[1][1], elbo_se)
    for lo, hi in ((1, 5), (5, 50)):
        diff = stats[hi][0] - stats[lo][0]
        se = math.hypot(stats[hi][1], stats[lo][1])
        assert diff > 3 * se, (lo, hi, diff, se)
    logj = np.asarray(out["logj"], np.float64)
    exact = np.log(np.sum(np.exp(logj - logj.max()))) + logj.max() + 2 * np.log(grid[1] - grid[0])
    ll = float(out["ll"])
    assert stats[50][0] <= exact + 5 * stats[50][1]
    assert stats[50][0] - 5 * stats[50][1] <= ll <= exact + 0.05, (ll, exact)


# ----------------------------------------------------------------------------------------------
# The estimators' gradients agree in expectation with pathwise autodiff


def _setup(estimator: str, num_samples: int = 1):
    config = ml_collections.ConfigDict(
        {
            "hidden": (H,),
            "latent_dim": L,
            "activation": "tanh",
            "learning_rate": 1e-3,
            "estimator": estimator,
            "baseline_hidden": (4,),
            "baseline_learning_rate": 1e-3,
        }
    )
    pieces, state = _vae_train.init_state(config, D, jax.random.key(11))
    setup = _vae_train.Setup(
        estimator=estimator,
        num_samples=num_samples,
        batch_size=2,
        num_batches=1,
        dynamic=False,
        ma_decay=0.9,
        **pieces,
    )
    # A non-trivial moving average, so the baselined estimators really subtract something.
    state["ma"] = estimators_ma_state(5.0)
    return setup, state


def estimators_ma_state(value: float):
    import estimators

    return estimators.moving_average_update(
        estimators.moving_average_init(), jnp.array([value]), decay=0.5
    )


def _gradient_samples(setup, state, xs, key, n):
    """``[n, P]``: n independent estimates of the gradient of the batch loss (all weights)."""

    @jax.jit
    def run(state, key):
        def one(k):
            g = jax.grad(lambda p: _vae_train.batch_loss(setup, p, state, xs, k)[0])(
                state["params"]
            )
            return jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(g)])

        return jax.vmap(one)(jax.random.split(key, n))

    return np.asarray(run(state, key), np.float64)


def _xs() -> jax.Array:
    return jnp.stack([_x(), 1.0 - _x()])


@pytest.fixture(scope="module")
def pathwise_reference():
    """20 000 pathwise estimates at the shared parameters (computed once for the module)."""
    setup, state = _setup("pathwise")
    return state["params"], _gradient_samples(setup, state, _xs(), jax.random.key(100), 20_000)


@pytest.mark.parametrize(
    ("estimator", "num_samples", "n"),
    [
        ("score_function", 1, 40_000),
        ("score_function_moving_average", 1, 40_000),
        ("score_function_loo", 4, 20_000),
        ("score_function_nvil", 1, 40_000),
        ("iwae", 1, 20_000),  # the K = 1 IWAE bound is the ELBO (with a Monte Carlo KL)
    ],
)
def test_estimator_agrees_with_pathwise_in_expectation(
    estimator, num_samples, n, pathwise_reference
):
    """Per coordinate, |mean_est - mean_pathwise| <= z SE, z Bonferroni-corrected (alpha 1e-3).

    The same parameters (model and, for NVIL, the baseline net) and the same batch for both;
    the reference is the mean of 20 000 pathwise estimates. A biased estimator fails: see
    test_agreement_check_detects_a_biased_estimator.
    """
    params, ref = pathwise_reference
    setup, state = _setup(estimator, num_samples)
    state["params"] = params
    est = _gradient_samples(setup, state, _xs(), jax.random.key(200), n)
    _assert_same_mean(est, ref)


def _zscores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    return np.abs(a.mean(0) - b.mean(0)) / np.maximum(se, 1e-12)


def _assert_same_mean(a: np.ndarray, b: np.ndarray) -> None:
    z = _zscores(a, b)
    bound = norm.isf(1e-3 / (2 * a.shape[1]))
    assert z.max() <= bound, (z.max(), bound, int(z.argmax()))


def test_agreement_check_detects_a_biased_estimator(pathwise_reference):
    """Dropping the score term (the encoder then sees only the KL) is caught by the same check."""
    xs = _xs()
    params, ref = pathwise_reference
    setup, _ = _setup("pathwise")

    def biased(k):
        def loss(p):
            m = nnx.merge(setup.graphdef, p)

            def one(x, kk):
                enc = m.encoder_params(x)
                z = jax.lax.stop_gradient(models.posterior(enc).sample(kk))
                cost = -models.bernoulli_log_likelihood(m.decode(z), x)
                return cost + models.kl_standard_normal(enc)

            return jnp.mean(jax.vmap(one)(xs, jax.random.split(k, 2)))

        g = jax.grad(loss)(params)
        return jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(g)])

    keys = jax.random.split(jax.random.key(7), 20_000)
    est = np.asarray(jax.jit(jax.vmap(biased))(keys), np.float64)
    z = _zscores(est, ref)
    assert z.max() > norm.isf(1e-3 / (2 * est.shape[1]))
