"""Deterministic checks of the score-function baselines where statistics are blind.

A baseline that uses the sample it is paired with biases the score-function estimate by
``-Cov(f, score) / N`` per sample, i.e. ``-g / N`` relative to the gradient ``g``: with ``N``
samples that is ``sqrt(N)``-times smaller than a standard error, so no unbiasedness check on
one call can see it (see ``test_statistics_cannot_tell_the_baselines_apart``). What makes a
baseline valid is structural, and is checked here exactly:

* ``leave_one_out_baseline``: ``d b_i / d f_j`` is 0 on the diagonal and ``1 / (N - 1)`` off it
  (forward-mode autodiff of the function, exact in floating point);
* the moving average: the baseline paired with batch ``t`` is the closed-form exponential
  average of the batches before ``t`` and does not change when batch ``t`` does (the library's
  ``moving_average_baseline``/``moving_average_update`` and the README's read-then-update
  pattern).

Each check has a companion showing it rejects the invalid variant (a baseline that includes the
sample; a moving average updated before it is read).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from tests import _closed_forms as cf

EPS32 = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------------------------
# Leave-one-out: the Jacobian d b / d f.
# --------------------------------------------------------------------------------------------


def mean_including_sample(costs: jax.Array) -> jax.Array:
    """The invalid baseline ``b_i = (1/N) sum_j f_j``: it includes sample i."""
    return jnp.broadcast_to(jnp.mean(costs), costs.shape)


def assert_excludes_own_sample(baseline, n: int) -> None:
    """``d b_i / d f_i == 0`` exactly and ``d b_i / d f_j == 1 / (N - 1)`` for ``j != i``.

    The Jacobian is forward-mode autodiff of the baseline, whose tangent arithmetic on a
    one-hot input is exact here: the diagonal is ``(1 - 1) / (N - 1)``, so the check is
    equality; the off-diagonal ``1 / (N - 1)`` is one float32 division (relative error <= eps/2).
    """
    costs = jnp.asarray(np.random.default_rng(n).normal(size=n), jnp.float32)
    jac = np.asarray(jax.jacfwd(baseline)(costs), np.float64)
    assert jac.shape == (n, n)
    np.testing.assert_array_equal(np.diagonal(jac), 0.0, err_msg="d b_i / d f_i must be 0")
    off = jac[~np.eye(n, dtype=bool)]
    np.testing.assert_allclose(off, 1.0 / (n - 1), rtol=EPS32, atol=0)


@pytest.mark.parametrize("n", [2, 3, 10, 257])
def test_leave_one_out_jacobian(n):
    assert_excludes_own_sample(estimators.leave_one_out_baseline, n)


@pytest.mark.parametrize("n", [2, 10, 257])
def test_jacobian_check_rejects_baseline_including_sample(n):
    """b_i = mean of all costs has d b_i / d f_i = 1/N != 0: the same check fails."""
    jac = jax.jacfwd(mean_including_sample)(jnp.zeros(n))
    np.testing.assert_allclose(np.diagonal(jac), 1.0 / n, rtol=EPS32)
    with pytest.raises(AssertionError, match="d b_i / d f_i must be 0"):
        assert_excludes_own_sample(mean_including_sample, n)


def test_leave_one_out_rejects_one_sample():
    with pytest.raises(ValueError, match="num_samples >= 2"):
        estimators.leave_one_out_baseline(jnp.zeros(1))


def test_statistics_cannot_tell_the_baselines_apart():
    """Why the Jacobian check is needed: on one call, both baselines pass the mean check.

    f(x) = x^2, x ~ N(mu = 1, sigma = 1), N = 2000 samples, same key. The valid and invalid
    estimates differ in expectation by g / N = 1e-3 (for d/dmu, g = 2 mu = 2) against a standard
    error of ~0.1: bias / SE ~ 0.01, so the check has power ~ alpha against the invalid baseline.
    Both pass; the difference of their means is exactly mean(f) * mean(score) (algebra, to
    float32 rounding), which has expectation g / N.
    """
    n = 2000
    f = jnp.square
    params = {"loc": jnp.float32(1.0), "scale": jnp.float32(1.0)}
    q = lambda p: estimators.Normal(p["loc"], p["scale"])  # noqa: E731
    key = jax.random.key(3)
    loo = estimators.score_function(
        f, params, q, key, num_samples=n, baseline=estimators.leave_one_out_baseline
    )
    inc = estimators.score_function(
        f, params, q, key, num_samples=n, baseline=mean_including_sample
    )
    none = estimators.score_function(f, params, q, key, num_samples=n)
    exact = {"loc": 2.0, "scale": 2.0}  # d/dmu, d/dsigma of mu^2 + sigma^2
    z = cf.bonferroni_z(4)
    for jac in (loo, inc):
        for leaf in ("loc", "scale"):
            mean, se = cf.mean_se(jac[leaf])
            assert abs(mean - exact[leaf]) <= z * se
    # Included-sample estimate = (1/N) sum f_i s_i - mean(f) mean(s), i.e. the plain estimate's
    # mean minus mean(f) * mean(s); the score for loc is (x - mu) / sigma^2.
    xs = cf.as64(estimators.draw_samples(q(params), key, n))
    s_loc = xs - 1.0
    expected = cf.as64(none["loc"]).mean() - np.mean(xs**2) * np.mean(s_loc)
    tol = 16 * EPS32 * np.mean(np.abs(cf.as64(none["loc"])))  # float32 products and sums
    assert abs(cf.as64(inc["loc"]).mean() - expected) <= tol


# --------------------------------------------------------------------------------------------
# Moving average: read before the update with the batch it is paired with.
# --------------------------------------------------------------------------------------------

DECAY = 0.9
NUM_STEPS = 6
BATCH = 7


def closed_form_baselines(batch_means: np.ndarray, decay: float, heuristic: bool) -> np.ndarray:
    """``[T]``: the zero-debiased exponential average of batches ``< t`` (0 for t = 0), float64.

    v_t = sum_{s<t} (1 - d_s) prod_{s<r<t} d_r m_s and w_t = sum_{s<t} (1 - d_s) prod_{s<r<t} d_r;
    baseline_t = v_t / w_t, with d_s = decay, or min(decay, (1 + s) / (10 + s)) under the
    early-training heuristic.
    """
    out = np.zeros(len(batch_means))
    for t in range(1, len(batch_means)):
        d = [min(decay, (1 + s) / (10 + s)) if heuristic else decay for s in range(t)]
        weights = np.array([(1 - d[s]) * math.prod(d[s + 1 : t]) for s in range(t)])
        out[t] = weights @ batch_means[:t] / weights.sum()
    return out


@functools.partial(jax.jit, static_argnums=1, static_argnames="update_first")
def library_loop(batches: jax.Array, heuristic: bool, *, update_first: bool = False):
    """Baselines ``[T]`` paired with each batch ``batches: [T, N]``, read then updated (as the
    docstring and README prescribe); ``update_first`` is the invalid order."""

    def step(state, costs):
        if update_first:
            state = estimators.moving_average_update(
                state, costs, decay=DECAY, early_training_heuristic=heuristic
            )
        b = estimators.moving_average_baseline(state)
        if not update_first:
            state = estimators.moving_average_update(
                state, costs, decay=DECAY, early_training_heuristic=heuristic
            )
        return state, b

    return jax.lax.scan(step, estimators.moving_average_init(), batches)[1]


def _batches(seed: int) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(3.0, 2.0, (NUM_STEPS, BATCH)), jnp.float32)


def assert_read_before_update(loop, heuristic: bool) -> None:
    """The baseline paired with batch t is the EMA of batches < t, and batch t cannot move it.

    Tolerance from float32 rounding: each batch mean carries <= N eps max|f| and each of the T
    updates <= 3 eps max|f| (two products and a sum); the division by the total weight (>= 1 - d)
    adds one eps relative. Changing batch t's costs must leave baselines 0..t bitwise equal.
    """
    batches = _batches(0)
    means = cf.as64(batches).mean(1)
    got = cf.as64(loop(batches, heuristic))
    want = closed_form_baselines(means, DECAY, heuristic)
    scale = float(np.max(np.abs(cf.as64(batches))))
    tol = (BATCH + 3 * NUM_STEPS + 1) * EPS32 * scale / (1 - DECAY)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    for t in range(NUM_STEPS):
        changed = batches.at[t].add(100.0)
        again = np.asarray(loop(changed, heuristic))
        np.testing.assert_array_equal(
            again[: t + 1], np.asarray(got, np.float32)[: t + 1], err_msg=f"batch {t} moved it"
        )


@pytest.mark.parametrize("heuristic", [False, True])
def test_moving_average_read_before_update(heuristic):
    assert_read_before_update(library_loop, heuristic)


@pytest.mark.parametrize("heuristic", [False, True])
def test_read_before_update_check_rejects_update_first(heuristic):
    """Updating with batch t before reading puts batch t into its own baseline: rejected."""
    loop = lambda b, h: library_loop(b, h, update_first=True)  # noqa: E731
    with pytest.raises(AssertionError):
        assert_read_before_update(loop, heuristic)


def readme_pattern(params, keys, f, q, num_samples: int):
    """The README's loop: read the baseline, estimate with ``key``, then update with the costs of
    ``draw_samples(q(params), key, N)``. Returns (estimates [T, ...], baselines [T])."""

    def step(state, key):
        b = estimators.moving_average_baseline(state)
        sf = estimators.score_function(f, params, q, key, num_samples=num_samples, baseline=b)
        state = estimators.moving_average_update(
            state, jax.vmap(f)(estimators.draw_samples(q(params), key, num_samples))
        )
        return state, (sf, b)

    return jax.lax.scan(step, estimators.moving_average_init(), keys)[1]


def test_readme_pattern_pairs_each_batch_with_the_previous_average():
    """In the README's pattern the baseline of step t is the EMA (decay 0.99, the default) of the
    mean costs of the samples the estimator drew at steps < t, and step t's estimate is the
    score function with exactly that baseline; a different key at step t leaves it unchanged."""
    f = lambda x: jnp.sum(jnp.square(x))  # noqa: E731
    q = lambda p: estimators.multi_normal(p["loc"], p["log_scale"])  # noqa: E731
    params = {"loc": jnp.array([1.0, -0.5]), "log_scale": jnp.array([0.0, -0.3])}
    n, steps = 50, 5
    keys = jax.random.split(jax.random.key(5), steps)
    run = jax.jit(lambda k: readme_pattern(params, k, f, q, n))
    sfs, baselines = run(keys)
    costs = np.stack([cf.as64(jax.vmap(f)(estimators.draw_samples(q(params), k, n))) for k in keys])
    want = closed_form_baselines(costs.mean(1), 0.99, heuristic=False)
    tol = (n + 3 * steps + 1) * EPS32 * np.max(np.abs(costs)) / (1 - 0.99)
    np.testing.assert_allclose(cf.as64(baselines), want, rtol=0, atol=tol)
    sigma = np.exp(cf.as64(params["log_scale"]))

    @jax.jit
    def eager(key, b):  # one call outside the scan (jitted once, for speed)
        sf = estimators.score_function(f, params, q, key, num_samples=n, baseline=b)
        return sf, estimators.draw_samples(q(params), key, n)

    for t in range(steps):
        # Step t's estimate is score_function with baseline b_t. The scan and an eager call may
        # round differently: per sample, (f - b) s is a few float32 operations on the sample
        # x = mu + sigma eps, so its error is <= 16 eps32 (|f| + |b|) S, S the sum of the
        # magnitudes of the score's terms (|eps| / sigma for loc, eps^2 + 1 for log_scale).
        direct, xs = eager(keys[t], baselines[t])
        xs = cf.as64(xs)
        noise = (xs - cf.as64(params["loc"])) / sigma
        magnitude = {"loc": np.abs(noise) / sigma, "log_scale": noise**2 + 1}
        weight = np.abs(costs[t]) + abs(float(baselines[t]))
        for leaf in params:
            bound = 16 * EPS32 * weight[:, None] * magnitude[leaf]
            assert np.all(np.abs(cf.as64(sfs[leaf][t]) - cf.as64(direct[leaf])) <= bound)
        other = keys.at[t].set(jax.random.key(999))
        np.testing.assert_array_equal(
            np.asarray(run(other)[1])[: t + 1], np.asarray(baselines)[: t + 1]
        )
