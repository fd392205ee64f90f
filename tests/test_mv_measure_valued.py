"""The measure-valued estimator against closed forms: means, single-sample variances, memory.

Exact values at mu = sigma = 1 for f(x) = x^2 (W ~ Weibull(sqrt 2, 2), M double-sided Maxwell,
U ~ U(0, 1), eps ~ N(0, 1); E W = sqrt(pi/2), E W^2 = 2, E W^3 = 1.5 sqrt(2 pi), E W^4 = 8;
E M^2 = 3, E M^4 = 15):
- mean, coupled:    4 W / sqrt(2 pi)                          Var = 4 (4 - pi) / pi  ~ 1.093
- mean, uncoupled:  (2W + W^2 + 2W' - W'^2) / sqrt(2 pi)      Var = 12 / pi - 2      ~ 1.820
- scale, coupled:   2M(1 - U) + M^2 (1 - U^2)                 Var = 8
- scale, uncoupled: 2M + M^2 - 2 eps - eps^2                  Var = 18 + 6 = 24
Tolerances: |estimate - exact| <= z SE with one Bonferroni-corrected z per test (family-wise
false alarm 1e-4) and fixed keys.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import estimators
from estimators._common import pull_back, with_coordinate_costs
from tests._closed_forms import bonferroni_z, mean_se, variance_se


def loc_scale_builder(p):
    return estimators.Normal(p[0], p[1])


def square(x):
    return jnp.sum(jnp.square(x))


def test_mv_single_sample_variances_at_unit_gaussian():
    # D = 2 independent copies of the 1-D problem (f separable): 2 coords x 2 params x 2 x 2.
    params = (jnp.ones(2), jnp.ones(2))
    n = 100_000
    exact_var = {
        True: (4 * (4 - math.pi) / math.pi, 8.0),
        False: (12 / math.pi - 2, 24.0),
    }
    checks = []
    for coupling, (var_mu, var_sigma) in exact_var.items():
        jac = estimators.measure_valued(
            square, params, loc_scale_builder, jax.random.key(1), num_samples=n, coupling=coupling
        )
        for name, j, exact_v in (("mu", jac[0], var_mu), ("sigma", jac[1], var_sigma)):
            m, m_se = mean_se(j)
            v, v_se = variance_se(j)
            checks.append((f"{coupling} {name} mean", m, m_se, 2.0))
            checks.append((f"{coupling} {name} var", v, v_se, exact_v))
    z = bonferroni_z(sum(c[1].size for c in checks))
    bad = [
        f"{label}: {est} vs {exact} (z = {np.max(np.abs(est - exact) / se):.1f})"
        for label, est, se, exact in checks
        if not np.all(np.abs(est - exact) <= z * se)
    ]
    assert not bad, bad


@pytest.mark.parametrize("coupling", [True, False])
def test_mv_unbiased_cos_and_bump_any_shape(coupling):
    """f(x) = sum cos(k x) + exp(-a x^2) over a [2, 3] event, params {loc, log_scale}."""
    k = jnp.array([[0.5, 1.0, 1.5], [2.0, 0.7, 1.2]])
    a = jnp.array([[0.3, 0.6, 1.0], [0.2, 0.5, 0.8]])

    def f(x):
        return jnp.sum(jnp.cos(k * x)) + jnp.sum(jnp.exp(-a * jnp.square(x)))

    def expectation(p):
        mu, var = p["loc"], jnp.exp(2 * p["log_scale"])
        cos = jnp.cos(k * mu) * jnp.exp(-0.5 * jnp.square(k) * var)
        bump = (1 + 2 * a * var) ** -0.5 * jnp.exp(-a * jnp.square(mu) / (1 + 2 * a * var))
        return jnp.sum(cos) + jnp.sum(bump)

    params = {
        "loc": jnp.array([[0.3, -0.8, 1.2], [0.0, 0.5, -1.5]]),
        "log_scale": jnp.array([[0.0, -0.5, 0.3], [-1.0, 0.2, 0.0]]),
    }
    builder = lambda p: estimators.multi_normal(p["loc"], p["log_scale"])  # noqa: E731
    jac = estimators.measure_valued(
        f, params, builder, jax.random.key(2), num_samples=40_000, coupling=coupling
    )
    exact = jax.grad(expectation)(params)
    z = bonferroni_z(12)
    for name in params:
        assert jac[name].shape == (40_000, 2, 3)
        m, se = mean_se(jac[name])
        assert np.all(np.abs(m - exact[name]) <= z * se), (name, m, exact[name], se)


def test_mv_detects_a_wrong_constant():
    """The same check rejects an estimator whose constant c is 3% off (power of the check)."""
    params = (jnp.array([0.7]), jnp.array([1.0]))
    jac = estimators.measure_valued(
        lambda x: jnp.sum(jnp.cos(x)),
        params,
        loc_scale_builder,
        jax.random.key(3),
        num_samples=40_000,
    )
    biased = np.asarray(jac[0]) * 1.03
    exact = -math.sin(0.7) * math.exp(-0.5)
    m, se = mean_se(jac[0])
    mb, seb = mean_se(biased)
    z = bonferroni_z(2)
    assert abs(m[0] - exact) <= z * se[0]
    assert abs(mb[0] - exact) > z * seb[0]


def test_mv_pullback_matches_chain_rule_and_jit():
    """{loc, log_scale} jacobians = scale x (loc, scale) ones on the same draws; jit == eager."""
    loc, log_scale = jnp.array([0.1, -0.4, 0.9]), jnp.array([0.2, -0.3, 0.0])
    f = lambda x: jnp.sum(jnp.sin(x) * x)  # noqa: E731
    key = jax.random.key(4)
    by_scale = estimators.measure_valued(
        f, (loc, jnp.exp(log_scale)), loc_scale_builder, key, num_samples=16
    )
    by_log = estimators.measure_valued(
        f, (loc, log_scale), lambda p: estimators.multi_normal(*p), key, num_samples=16
    )
    np.testing.assert_allclose(by_log[0], by_scale[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        by_log[1], np.asarray(by_scale[1]) * np.exp(np.asarray(log_scale)), rtol=1e-5, atol=1e-6
    )
    jitted = jax.jit(
        lambda k: estimators.measure_valued(
            f,
            (loc, log_scale),
            lambda p: estimators.multi_normal(*p),
            k,
            num_samples=16,
            batch_size=2,
        )
    )(key)
    for a, b in zip(jitted, by_log, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_pull_back_is_the_chain_rule():
    """pull_back maps per-sample gradients w.r.t. (loc, scale) to any parameter pytree: against
    the closed-form chain rule and jax.grad, for E(loc, scale) = sum(loc^2 + sin(scale)) with
    loc = tanh(w0) + b, scale = softplus(w1) + 0.1 and per-sample weights k_i."""
    params = {"w": jnp.array([[0.3, -1.2, 0.8], [0.1, 0.5, -2.0]]), "b": jnp.array([1.0, 0, -0.4])}

    def build(p):
        return estimators.Normal(jnp.tanh(p["w"][0]) + p["b"], jax.nn.softplus(p["w"][1]) + 0.1)

    def statistics(d):
        return {"loc": d.loc, "scale": d.scale}

    k = jnp.array([1.0, -0.5, 3.0])
    d = build(params)
    grads = {"loc": jnp.outer(k, 2 * d.loc), "scale": jnp.outer(k, jnp.cos(d.scale))}
    pulled = pull_back(build, params, statistics, grads)
    w0, w1 = np.asarray(params["w"][0]), np.asarray(params["w"][1])
    loc, scale = np.asarray(d.loc), np.asarray(d.scale)
    closed = {
        "b": 2 * loc,
        "w": np.stack([2 * loc * (1 - np.tanh(w0) ** 2), np.cos(scale) / (1 + np.exp(-w1))]),
    }
    by_grad = jax.grad(lambda p: jnp.sum(jnp.square(build(p).loc) + jnp.sin(build(p).scale)))(
        params
    )
    for name in params:
        expected = np.asarray(k).reshape(-1, *[1] * closed[name].ndim) * closed[name]
        np.testing.assert_allclose(pulled[name], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pulled[name][0], by_grad[name], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="structure of the statistics"):
        pull_back(build, params, statistics, (grads["loc"], grads["scale"]))
    with pytest.raises(ValueError, match=r"per_sample_grads\['scale'\] must be \[N, \*\[3\]\]"):
        pull_back(build, params, statistics, {**grads, "scale": grads["scale"][:, :2]})
    with pytest.raises(ValueError, match="same number of samples"):
        pull_back(build, params, statistics, {**grads, "scale": grads["scale"][:2]})


def test_mv_memory_stays_linear_at_d10000():
    """D = 10,000, 1,000 samples: XLA's compiled temporaries stay far below 2 GB (not run)."""
    dim, n = 10_000, 1_000
    params = (jnp.zeros(dim), jnp.zeros(dim))
    compiled = (
        jax.jit(
            lambda k: estimators.measure_valued(
                lambda x: jnp.sum(jnp.cos(x)),
                params,
                lambda p: estimators.multi_normal(*p),
                k,
                num_samples=n,
            )
        )
        .lower(jax.random.key(0))
        .compile()
    )
    stats_ = compiled.memory_analysis()
    total = stats_.temp_size_in_bytes + stats_.output_size_in_bytes
    # A num_samples x D x D float32 tensor would be 400 GB; the output alone is 80 MB.
    assert total < 512 * 2**20, total


def test_mv_rejects_a_distribution_without_weak_derivative_and_bad_coupling():
    gamma = lambda p: estimators.Gamma(p[0], p[1])  # noqa: E731
    params = (jnp.ones(2), jnp.ones(2))
    for coupling in (True, False):
        with pytest.raises(ValueError, match=r"WeakDerivative capability.*returned Gamma"):
            estimators.measure_valued(
                square, params, gamma, jax.random.key(0), num_samples=2, coupling=coupling
            )
    with pytest.raises(TypeError, match="coupling must be a Python bool"):
        estimators.measure_valued(
            square, params, loc_scale_builder, jax.random.key(0), num_samples=2, coupling="yes"
        )
    with pytest.raises(ValueError, match="batch_size"):
        estimators.measure_valued(
            square, params, loc_scale_builder, jax.random.key(0), num_samples=2, batch_size=0
        )


def test_mv_coordinate_costs_hook_equals_plain_cost():
    """A structured evaluator of f(A x) gives the same jacobians as evaluating f itself, given
    as the coordinate_costs keyword or carried by the cost (with_coordinate_costs): the two
    forms are the same computation (bitwise equal), and the carried one is really used."""
    a = jax.random.normal(jax.random.key(7), (5, 4))
    f = lambda x: jnp.sum(jnp.sin(a @ x))  # noqa: E731

    def fast(x, values):  # [D], [P, D] -> [P, D]: update A x by one column
        z = a @ x
        return jnp.sum(jnp.sin(z[None, None] + (values - x[None])[..., None] * a.T[None]), -1)

    params = {"loc": jnp.linspace(-1.0, 1.0, 4), "log_scale": jnp.full(4, -0.5)}
    build = lambda p: estimators.multi_normal(p["loc"], p["log_scale"])  # noqa: E731
    plain = estimators.measure_valued(f, params, build, jax.random.key(1), num_samples=32)
    hooked = estimators.measure_valued(
        f, params, build, jax.random.key(1), num_samples=32, coordinate_costs=fast
    )
    calls = []

    def counted(x, values):
        calls.append(values.shape)  # at trace time: the evaluator the estimator used
        return fast(x, values)

    carried = estimators.measure_valued(
        with_coordinate_costs(f, counted),
        params,
        build,
        jax.random.key(1),
        num_samples=32,
    )
    assert calls == [(4, 4)]
    for name in params:
        np.testing.assert_allclose(hooked[name], plain[name], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(carried[name], hooked[name])
    with pytest.raises(ValueError, match="give it one way"):
        estimators.measure_valued(
            with_coordinate_costs(f, fast),
            params,
            build,
            jax.random.key(1),
            num_samples=2,
            coordinate_costs=fast,
        )
    with pytest.raises(ValueError, match="coordinate_costs must return"):
        estimators.measure_valued(
            f,
            params,
            build,
            jax.random.key(1),
            num_samples=2,
            coordinate_costs=lambda x, v: v[0],
        )


@pytest.mark.parametrize("coupling", [True, False])
def test_mv_auxiliary_draws_have_the_right_laws(coupling):
    """Normal.weak_derivative's parts follow their laws (Kolmogorov-Smirnov against scipy,
    fixed key): Weibull(sqrt 2, 2) for the mean's parts, double-sided Maxwell and N(0, 1) for
    the scale's; coupled, the mean's parts share W and the Gaussian part is M U. Its constants
    are 1 / (sigma sqrt(2 pi)) and 1 / sigma, and its statistics loc and scale."""
    n = 20_000
    keys = jax.random.split(jax.random.key(11), n)
    unit = estimators.Normal(jnp.zeros(1), jnp.ones(1))
    terms = jax.vmap(lambda k: unit.weak_derivative(k, coupling))(keys)
    assert list(terms) == ["loc", "scale"]
    parts = np.stack(
        [np.asarray(terms[s][i][:, 0], np.float64) for s in ("loc", "scale") for i in (2, 3)], 1
    )
    w_pos, w_neg, maxwell, eps = parts[:, 0], -parts[:, 1], parts[:, 2], parts[:, 3]
    shifted = estimators.Normal(jnp.full((2, 1), 0.5), jnp.full((2, 1), 2.0))
    for name, statistic, inverse_constant in (
        ("loc", 0.5, 2.0 * math.sqrt(2 * math.pi)),
        ("scale", 2.0, 2.0),
    ):
        term = shifted.weak_derivative(jax.random.key(0), coupling)[name]
        assert all(jnp.shape(v) == (2, 1) for v in term)
        np.testing.assert_allclose(term.statistic, statistic)
        np.testing.assert_allclose(term.inverse_constant, inverse_constant, rtol=1e-6)
    laws = [
        (w_pos, stats.weibull_min(2.0, scale=math.sqrt(2.0)).cdf),
        (w_neg, stats.weibull_min(2.0, scale=math.sqrt(2.0)).cdf),
        (np.abs(maxwell), stats.maxwell.cdf),
        (eps, stats.norm.cdf),
    ]
    alpha = 1e-4 / (len(laws) + 2)  # Bonferroni over every check of this test
    for draws, cdf in laws:
        assert stats.kstest(draws, cdf).pvalue > alpha
    assert stats.binomtest(int(np.sum(maxwell > 0)), n).pvalue > alpha  # symmetric sign
    if coupling:
        np.testing.assert_array_equal(w_pos, w_neg)
        ratio = eps / maxwell  # = U ~ U(0, 1)
        assert np.all((ratio >= 0) & (ratio <= 1))
        assert stats.kstest(ratio, stats.uniform.cdf).pvalue > alpha
    else:
        assert abs(stats.pearsonr(w_pos, w_neg)[0]) < 5 / math.sqrt(n)


@pytest.mark.parametrize("shape", [(1,), (2, 3)])
def test_mv_vectorised_and_looped_paths_agree(shape):
    """The path is chosen from the shapes: the default at this size is one vectorised program
    (no loop in its jaxpr); step sizes smaller than the problem force the looped one (a
    lax.map over sample chunks with a remainder chunk, coordinates one at a time). Both use
    the same draws, so they agree to float32 rounding (XLA may round a fused loop body
    differently), far below the O(1) spread of the estimates themselves."""
    k = jnp.linspace(0.5, 1.5, math.prod(shape)).reshape(shape)

    def f(x):
        return jnp.sum(jnp.cos(k * x)) + jnp.sum(jnp.square(x - 0.5))

    params = (jnp.full(shape, 0.3), jnp.full(shape, -0.2))

    def run(**steps):
        return jax.jit(
            lambda key: estimators.measure_valued(
                f, params, lambda p: estimators.multi_normal(*p), key, num_samples=50, **steps
            )
        )

    looped_steps = {"batch_size": 1, "samples_per_step": 7}  # 7 chunks of 7, then 1
    key = jax.random.key(5)
    assert "scan" not in str(jax.make_jaxpr(run())(key))
    assert "scan" in str(jax.make_jaxpr(run(**looped_steps))(key))
    vectorised, looped = run()(key), run(**looped_steps)(key)
    for v, lp in zip(vectorised, looped, strict=True):
        assert v.shape == (50, *shape)
        assert float(jnp.std(v)) > 0.1
        np.testing.assert_allclose(lp, v, rtol=1e-5, atol=1e-5)


def test_plain_benchmark_estimator_is_the_same_estimator():
    """benchmarks/bench_measure_valued.py times ours against plain_measure_valued, a
    hand-written version that draws its noise differently; both are unbiased for the exact
    gradient of E[sum cos(x)] = sum cos(mu) exp(-sigma^2 / 2) in (loc, log_scale), and their
    single-sample variances agree (the same estimator, coupled), within Bonferroni z bounds."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_measure_valued import plain_measure_valued

    def f(x):
        return jnp.sum(jnp.cos(x))

    loc, log_scale = jnp.array([0.3, -1.0]), jnp.array([0.0, -0.5])
    n = 40_000
    plain = jax.jit(lambda key: plain_measure_valued(f, loc, log_scale, key, n))(jax.random.key(11))
    ours = estimators.measure_valued(
        f, (loc, log_scale), lambda p: estimators.multi_normal(*p), jax.random.key(12),
        num_samples=n,
    )  # fmt: skip
    var = jnp.exp(2 * log_scale)
    exact = (-jnp.sin(loc) * jnp.exp(-var / 2), -var * jnp.cos(loc) * jnp.exp(-var / 2))
    z = bonferroni_z(3 * 2 * 2)
    for g_plain, g_ours, e in zip(plain, ours, exact, strict=True):
        assert g_plain.shape == g_ours.shape == (n, 2)
        for g in (g_plain, g_ours):
            m, se = mean_se(g)
            assert np.all(np.abs(m - e) <= z * se), (m, e, se)
        (v1, se1), (v2, se2) = variance_se(g_plain), variance_se(g_ours)
        assert np.all(np.abs(v1 - v2) <= z * np.hypot(se1, se2)), (v1, v2)
