"""Baselines of the score function on Bernoulli bits, against exact values by enumeration.

(a) REINFORCE leave-one-out (registry "score_function+loo", Kool et al. 2019) with K samples:
    the estimate (1/K) sum_k (f_k - (1/(K-1)) sum_{j!=k} f_j) s(x_k) has its exact mean (the
    gradient) and exact variance by enumerating all (2^D)^K tuples (NumPy, float64); the
    Monte Carlo variance over 200k independent calls agrees within Bonferroni z SEs (fourth-
    moment SE) and the same check rejects a 10% error in the exact variance (power >= 0.99).
(b) The optimal per-coordinate baseline ("score_function+optimal"): for independent bits,
    score s_d = x_d - p_d, so b*_d = E[f s_d^2] / E[s_d^2] = (1 - p_d) E[f | x_d = 1]
    + p_d E[f | x_d = 0]. estimators.optimal_baseline (what the "optimal" baseline computes)
    converges to it: 200k samples, within Bonferroni z of its exact delta-method SE, a 10%
    error rejected; the exact single-sample variance E[(f - b)^2 s_d^2] - g_d^2 at b*_d is the
    minimum over a fine grid of constant baselines (and the grid's minimiser is within one step
    of b*_d); the registry's score_function+optimal has that variance (Monte Carlo, within z
    SEs; 10% rejected).
"""

from __future__ import annotations

import functools
import itertools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from estimators import testing

FACTOR = 1.1  # the deliberate error each check must reject
LOGITS = np.array([0.6, -1.1, 0.2, 1.4], np.float32)
LIN = np.array([1.0, -2.0, 0.5, 1.5])
V = np.array([0.7, 1.0, -0.8, 0.4])


def cost_fn(xp):
    """f(x) = b'x + (v'x)^2 / 2 + 3 x0 x1 x2 - 2 x1 x3 (over the last axis: D = 4 or 3)."""

    def cost(x):
        d = x.shape[-1]
        lin, v = xp.asarray(LIN[:d]), xp.asarray(V[:d])
        out = x @ lin + 0.5 * (x @ v) ** 2 + 3.0 * x[..., 0] * x[..., 1] * x[..., 2]
        return out - 2.0 * x[..., 1] * x[..., d - 1]

    return cost


def outcomes(dim):
    """All 2^D outcomes ``[2^D, D]``, their probabilities and scores (float64)."""
    xs = np.array(list(itertools.product([0.0, 1.0], repeat=dim)))
    logits = LOGITS[:dim].astype(np.float64)
    p1 = 1 / (1 + np.exp(-logits))
    prob = np.prod(np.where(xs == 1, p1, 1 - p1), axis=1)
    return xs, prob, xs - p1, cost_fn(np)(xs)


@functools.cache
def family(dim):
    """A testing.Family for the problem (exact gradient by enumeration)."""
    xs, prob, s, f = outcomes(dim)
    return testing.Family(
        name=f"Bernoulli{dim}",
        params={"logits": jnp.asarray(LOGITS[:dim])},
        dist_builder=lambda q: estimators.Bernoulli(q["logits"]),
        cost=cost_fn(jnp),
        expectation=float(prob @ f),
        gradient={"logits": (prob * f) @ s},
        variances={},
        description=f"Bernoulli, D={dim}; f = b'x + (v'x)^2/2 + 3 x0 x1 x2 - 2 x1 x_last",
    )


def loo_moments(dim, k):
    """Exact mean and variance of the LOO estimate (the mean of K rows), over all tuples."""
    _, prob, s, f = outcomes(dim)
    idx = np.indices((prob.shape[0],) * k).reshape(k, -1)  # [K, T]
    p = np.prod(prob[idx], axis=0)
    fk = f[idx]  # [K, T]
    loo = fk - (fk.sum(0) - fk) / (k - 1)
    est = np.mean(loo[..., None] * s[idx], axis=0)  # [T, D]
    mean = p @ est
    return mean, p @ est**2 - mean**2


def power(distance, z):
    """P(|N(0,1) + distance| > z), the most sensitive coordinate."""
    normal = statistics.NormalDist()
    return max(normal.cdf(-z - d) + normal.cdf(d - z) for d in np.ravel(distance))


@pytest.mark.parametrize("k", [2, 4])
def test_loo_exact_variance_against_monte_carlo(k):
    """D = 3: the exact mean is the gradient (unbiased, to 1e-12); the measured variance of
    score_function+loo (K times the variance of a call's mean, 200k calls) is the exact one
    within Bonferroni z SEs; the same check rejects 10% too much, with power >= 0.99."""
    fam = family(3)
    mean, var = loo_moments(3, k)
    np.testing.assert_allclose(mean, fam.gradient["logits"], rtol=1e-12, atol=1e-12)
    est = estimators.registry.get("score_function+loo")
    rows = testing.estimates(est, fam, jax.random.key(20 + k), num_samples=k, num_calls=200_000)
    r = testing.variance_from_estimates(est, fam, rows)
    measured, se, exact = r.variance["logits"], r.se["logits"], k * var
    z = testing.bonferroni_z(3)
    assert np.all(np.abs(measured - exact) <= z * se), (measured, exact, se)
    assert np.any(np.abs(measured - FACTOR * exact) > z * se)
    assert power((FACTOR - 1) * exact / se, z) >= 0.99


def optimal_closed_form(dim):
    """b*_d = (1 - p_d) E[f | x_d = 1] + p_d E[f | x_d = 0], and E[f s_d^2] / E[s_d^2]."""
    xs, prob, s, f = outcomes(dim)
    p1 = 1 / (1 + np.exp(-LOGITS[:dim].astype(np.float64)))
    on = (prob * f) @ xs / p1  # E[f | x_d = 1]
    off = (prob * f) @ (1 - xs) / (1 - p1)
    closed = (1 - p1) * on + p1 * off
    ratio = (prob * f) @ s**2 / (prob @ s**2)
    return closed, ratio


def exact_variance(b, d):
    """E[(f - b)^2 s_d^2] - g_d^2 for constant baselines ``b: [G]`` (coordinate ``d``)."""
    _, prob, s, f = outcomes(4)
    g = (prob * f) @ s[:, d]
    return ((f[None] - b[:, None]) ** 2 * s[None, :, d] ** 2) @ prob - g**2


def test_optimal_baseline_closed_form_and_estimate():
    """The closed form equals E[f s^2] / E[s^2] (enumeration); optimal_baseline from 200k
    samples is within Bonferroni z of its delta-method SE sqrt(Var(s^2 (f - b*)) / N) / E[s^2]
    (exact), and the same check rejects b* scaled by 1.1 (power >= 0.99)."""
    closed, ratio = optimal_closed_form(4)
    np.testing.assert_allclose(closed, ratio, rtol=1e-12)
    fam, n = family(4), 200_000
    b = estimators.optimal_baseline(
        fam.cost, fam.params, fam.dist_builder, jax.random.key(5), num_samples=n
    )["logits"]
    _, prob, s, f = outcomes(4)
    centred = s**2 * (f[:, None] - closed[None])  # mean 0 at b*
    se = np.sqrt(prob @ centred**2 / n) / (prob @ s**2)
    z = testing.bonferroni_z(4)
    b = np.asarray(b, np.float64)
    slack = 1e-5 * np.abs(closed)  # float32 sums of 200k terms
    assert np.all(np.abs(b - closed) <= z * se + slack), (b, closed, se)
    assert np.any(np.abs(b - FACTOR * closed) > z * se + slack)
    assert power((FACTOR - 1) * np.abs(closed) / se, z) >= 0.99


def test_optimal_baseline_minimises_the_exact_variance():
    """Per coordinate, the exact variance at b*_d is <= its value at every baseline of a grid
    of 4001 points over [min f - 1, max f + 1] (up to float64 rounding), and the grid's
    minimiser lies within one grid step of b*_d; b = 0 (no baseline) is strictly worse."""
    closed, _ = optimal_closed_form(4)
    _, _, _, f = outcomes(4)
    grid = np.linspace(f.min() - 1, f.max() + 1, 4001)
    step = grid[1] - grid[0]
    for d in range(4):
        at_best = exact_variance(np.array([closed[d]]), d)[0]
        on_grid = exact_variance(grid, d)
        assert at_best <= on_grid.min() + 1e-12 * abs(at_best)
        assert abs(grid[np.argmin(on_grid)] - closed[d]) <= step
        assert exact_variance(np.array([0.0]), d)[0] > at_best


def test_score_function_optimal_has_the_exact_variance():
    """The registry's score_function+optimal (its baseline estimated from as many independent
    samples: one call of 400k rows) has per-sample variance E[(f - b*)^2 s^2] - g^2 within
    Bonferroni z SEs (the baseline's own error adds O(1/N) relative, far below the SE); the
    same check rejects a 10% error (power >= 0.99)."""
    fam, n = family(4), 400_000
    closed, _ = optimal_closed_form(4)
    exact = np.array([exact_variance(np.array([closed[d]]), d)[0] for d in range(4)])
    est = estimators.registry.get("score_function+optimal")
    rows = testing.estimates(est, fam, jax.random.key(6), num_samples=n, num_calls=1)
    r = testing.variance_from_estimates(est, fam, rows)
    measured, se = r.variance["logits"], r.se["logits"]
    z = testing.bonferroni_z(4)
    assert np.all(np.abs(measured - exact) <= z * se), (measured, exact, se)
    assert np.any(np.abs(measured - FACTOR * exact) > z * se)
    assert power((FACTOR - 1) * exact / se, z) >= 0.99
    m = rows["logits"][0].mean(0)
    assert np.all(np.abs(m - fam.gradient["logits"]) <= z * np.sqrt(exact / n) * 1.01 + 1e-6)
