"""Bayesian logistic regression: the model and every variant's gradient, against mathematics.

Fixed keys; tolerances from standard errors, Bonferroni-corrected over the checks of a test
(two-sided family-wise level ``tests._closed_forms.ALPHA`` = 1e-4).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from experiments.blr import train as blr_train
from experiments.blr.config import VARIANTS
from experiments.blr.data import breast_cancer
from models import logistic_regression as lr
from tests._closed_forms import bonferroni_z as z_bonferroni


@pytest.fixture(scope="module")
def data():
    features, labels = breast_cancer()
    return jnp.asarray(features), jnp.asarray(labels)


def fixed_posterior(dim: int, log_scale: float) -> dict[str, jax.Array]:
    rng = np.random.default_rng(7)
    return {
        "loc": jnp.asarray(rng.normal(0.0, 0.3, dim), jnp.float32),
        "log_scale": jnp.full((dim,), log_scale, jnp.float32),
    }


def settings(variant: str) -> blr_train.Settings:
    return blr_train.Settings(
        variant=variant,
        steps=10,
        eval_every=10,
        batch_size=32,
        num_samples=10,
        learning_rate=1e-3,
        eval_samples=10,
        variance_samples=0,
        moving_average_decay=0.99,
        cv_coefficient=1.0,
    )


def test_data_standardised_with_bias(data):
    features, labels = data
    assert features.shape == (569, 31) and labels.shape == (569,)
    np.testing.assert_allclose(features[:, :30].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(features[:, :30].std(0), 1.0, atol=1e-5)
    assert np.all(features[:, 30] == 1.0) and set(np.unique(labels)) == {0.0, 1.0}


def test_kl_closed_form_against_monte_carlo():
    """KL(q || N(0, I)) = E_q[log q(w) - log p(w)], 200k samples, within z SE (one check)."""
    params = fixed_posterior(31, -0.7)
    q = lr.posterior(params)
    prior = estimators.Normal(jnp.zeros(31), jnp.ones(31))
    ws = jax.vmap(q.sample)(jax.random.split(jax.random.key(11), 200_000))
    log_ratio = np.asarray(
        jax.jit(jax.vmap(lambda w: q.log_prob(w) - prior.log_prob(w)))(ws), np.float64
    )
    se = log_ratio.std() / np.sqrt(log_ratio.size)
    assert abs(log_ratio.mean() - float(lr.kl_to_prior(params))) <= z_bonferroni(1) * se
    assert float(lr.kl_to_prior(lr.init_params(31))) == 0.0  # q = prior at initialisation


@pytest.mark.parametrize(
    "rows, num_samples, couplings", [(64, 16, (True, False)), (569, 30, (True,))]
)
def test_measure_valued_fast_path_equals_library(data, rows, num_samples, couplings):
    """The measure-valued estimator of the cost that carries its O(B) evaluator
    (lr.log_likelihood_cost) equals the estimator of the plain cost, to rounding; on the full
    data its 30 samples are evaluated in chunks of 10 (the evaluator's custom vmap)."""
    features, labels = data[0][:rows], data[1][:rows]
    params = fixed_posterior(31, -1.0)
    tol = float32_tolerance(params, features, labels)
    x = jnp.zeros(31)
    np.testing.assert_array_equal(
        lr.log_likelihood_cost(features, labels, 2.0)(x),
        lr.log_likelihood(x, features, labels, 2.0),
    )
    for coupling in couplings:

        @functools.partial(jax.jit, static_argnums=0)
        def estimate(fast, p, x, y, k, coupling=coupling):
            cost = lr.log_likelihood_cost(x, y) if fast else lambda w: lr.log_likelihood(w, x, y)
            return estimators.measure_valued(
                cost, p, lr.posterior, k, num_samples=num_samples, coupling=coupling
            )

        fast = estimate(True, params, features, labels, jax.random.key(3))
        ref = estimate(False, params, features, labels, jax.random.key(3))
        for name in ("loc", "log_scale"):
            np.testing.assert_allclose(fast[name], ref[name], rtol=0, atol=tol[name])


def float32_tolerance(params, features, labels) -> dict[str, float]:
    """Float32 rounding allowance for |fast - library| per measure-valued estimate.

    An estimate is (f+ - f-) / (sigma_d sqrt(2 pi)) for loc and f+ - f- for log_scale, each
    f = sum_n y_n z_n - softplus(z_n) over B rows: one evaluation carries <= (3 + sqrt(B)) eps S,
    S = sum_n |y_n z_n| + softplus(z_n) (three roundings per term; the sum's error in the
    probabilistic model of Higham & Mary 2019, sqrt(B) eps; the worst case B eps would give 1e-2,
    500x the error observed), and the difference of two implementations of f+ - f- carries four
    such errors. S is the largest over 256 draws of w ~ q, doubled for the one coordinate each
    perturbed cost redraws from a Weibull/Maxwell part. With 64 rows: about 2e-3.
    """
    x, y = np.asarray(features, np.float64), np.asarray(labels, np.float64)
    mu = np.asarray(params["loc"], np.float64)
    sigma = np.exp(np.asarray(params["log_scale"], np.float64))
    z = (mu + sigma * np.random.default_rng(0).normal(size=(256, mu.size))) @ x.T
    big_s = 2 * np.max(np.sum(np.abs(y * z) + np.logaddexp(0, z), axis=1))
    per_difference = 4 * (3 + np.sqrt(x.shape[0])) * np.finfo(np.float32).eps * big_s
    return {"log_scale": per_difference, "loc": per_difference / (sigma.min() * np.sqrt(2 * np.pi))}


@functools.partial(jax.jit, static_argnames=("variant", "num_samples"))
def _variant_jacobians(params, features, labels, key, baseline, *, variant, num_samples):
    # The stateful variant (the moving average) gets a state whose baseline is `baseline`.
    stateful = jax.tree.leaves(blr_train.estimator(settings(variant)).init())
    state = estimators.MovingAverage(baseline, jnp.ones((), jnp.int32), jnp.ones(()))
    jac, _ = blr_train.jacobians(
        settings(variant),
        params,
        state if stateful else (),
        features,
        labels,
        key,
        num_samples=num_samples,
        scale=1.0,
    )
    return jac


def _mean_se(jac) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error and per-feature variance of ``[n, 2 D]`` stacked jacobians."""
    j = np.concatenate([np.asarray(jac["loc"]), np.asarray(jac["log_scale"])], axis=1)
    j = j.astype(np.float64)
    return j.mean(0), j.std(0, ddof=1) / np.sqrt(j.shape[0]), j.var(0, ddof=1)


NUM_SAMPLES = 20_000
NUM_REFERENCE = 400_000


@pytest.fixture(scope="module")
def fixed_point_jacobians(data):
    """Every variant's per-sample jacobians at one fixed posterior, on 64 rows of the data.

    Returns ``(jacobians by variant, pathwise reference with NUM_REFERENCE samples)``.
    """
    features, labels = data[0][:64], data[1][:64]
    params = fixed_posterior(31, -1.0)
    cost = lambda w: lr.log_likelihood(w, features, labels)  # noqa: E731
    ref = jax.jit(
        lambda p, k: estimators.pathwise(cost, p, lr.posterior, k, num_samples=NUM_REFERENCE)
    )(params, jax.random.key(100))
    baseline = jnp.asarray(float(cost(params["loc"])))  # a fixed baseline, independent of x
    jac = {
        variant: _variant_jacobians(
            params,
            features,
            labels,
            jax.random.key(i),
            baseline,
            variant=variant,
            num_samples=NUM_SAMPLES,
        )
        for i, variant in enumerate(VARIANTS)
    }
    return jac, ref


def test_every_variant_unbiased_at_fixed_posterior(fixed_point_jacobians):
    """Each variant's mean gradient equals a 400k-sample pathwise reference, within z * SE.

    SE of the difference of the two means; Bonferroni over 6 variants x 62 coordinates.
    """
    jac, ref = fixed_point_jacobians
    ref_mean, ref_se, _ = _mean_se(ref)
    z = z_bonferroni(len(VARIANTS) * 62)
    for variant in VARIANTS:
        mean, se, _ = _mean_se(jac[variant])
        err = np.abs(mean - ref_mean) / np.sqrt(se**2 + ref_se**2)
        assert err.max() <= z, f"{variant}: max |mean - ref| / SE = {err.max():.2f} > {z:.2f}"


def test_bias_would_be_detected(fixed_point_jacobians):
    """The same check rejects the pathwise estimate scaled by 1.05: the test can fail."""
    jac, ref = fixed_point_jacobians
    ref_mean, ref_se, _ = _mean_se(ref)
    mean, se, _ = _mean_se(jac["pathwise"])
    err = np.abs(1.05 * mean - ref_mean) / np.sqrt((1.05 * se) ** 2 + ref_se**2)
    assert err.max() > z_bonferroni(len(VARIANTS) * 62)


def _average_variance(jac) -> tuple[float, float]:
    """Average over coordinates of the per-coordinate variance, and its standard error."""
    j = np.concatenate([np.asarray(jac["loc"]), np.asarray(jac["log_scale"])], axis=1)
    j = j.astype(np.float64)
    n = j.shape[0]
    u = np.mean(np.square(j - j.mean(0)), axis=1) * n / (n - 1)  # mean of u = average variance
    return float(u.mean()), float(u.std(ddof=1) / np.sqrt(n))


def test_variance_ordering_at_fixed_posterior(fixed_point_jacobians):
    """The paper's ordering: pathwise below score function; the delta method reduces the latter.

    Each margin (difference of average variances) must exceed z SE (Bonferroni over 2 checks).
    """
    jac, _ = fixed_point_jacobians
    var = {v: _average_variance(jac[v]) for v in VARIANTS}
    z = z_bonferroni(2)
    for low, high in (("pathwise", "score_function"), ("score_function+delta", "score_function")):
        (v_low, se_low), (v_high, se_high) = var[low], var[high]
        margin = (v_high - v_low) / np.hypot(se_low, se_high)
        assert margin > z, f"{low} {v_low:.3g} not below {high} {v_high:.3g}: {margin:.1f} SE"
