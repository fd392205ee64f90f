"""REBAR and RELAX (estimators/discrete/_relax.py) held against mathematics.

- RELAX with a zero control is REINFORCE (estimators.score_function) on the same key, row for
  row, through a non-trivial dist_builder; the bits are those of estimators.draw_samples and
  H(z) = b.
- REBAR is RELAX with the control c(z) = eta f(sigmoid(z / lambda)) given as its network.
- Unbiased for arbitrary (not adapted) control parameters, against enumeration.
- The exact single-sample variance of REBAR at fixed (eta, lambda), by 2-D Gauss-Legendre over
  the noise (u, v) written here independently in NumPy float64, against Monte Carlo.
- For one bit REBAR's control is correlated with REINFORCE's term only through c(0) =
  eta (1/2 - t)^2 (an identity, by quadrature): at t = 0.499 no (eta, lambda) lowers the
  variance below REINFORCE's, as RELAX's Figure 1 shows.
- update: one Adam step on the gradient of the squared estimate, whose expectation is the
  gradient of E[g^2] computed by quadrature and finite differences; adaptation lowers the
  measured variance on the toy E[(b - t)^2].
- Bad inputs.

Tolerances are Bonferroni-corrected z bounds from standard errors (estimators.testing), fixed
keys, each with a companion showing the check would reject a 10% error.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from estimators.discrete import _relax
from estimators.testing import ALPHA, bonferroni_z


def bern(p):
    return estimators.Bernoulli(p)


def toy(t):
    return lambda b: jnp.sum(jnp.square(b - t))


def product_cost(dim: int):
    w = jnp.linspace(-1.0, 1.5, dim)
    return lambda b: jnp.prod(1.0 + 0.4 * w * b)


def with_control(state, **changes):
    return state._replace(control=state.control._replace(**changes))


_JITTED: dict = {}


def rows_of(est, f, params, build, key, n, state):
    """``est.per_sample`` under ``jax.jit``, compiled once per (estimator, f, build, n)."""
    cache_key = (est, f, build, n)
    if cache_key not in _JITTED:
        _JITTED[cache_key] = jax.jit(
            lambda p, k, s: est.per_sample(f, p, build, k, num_samples=n, state=s)
        )
    return _JITTED[cache_key](params, key, state)


def variance_gradient(apply, control, inputs):
    """d/d(control parameters) of the squared estimate ``update`` descends (jitted)."""
    loss = lambda cp: _relax.squared_estimate(_relax._control_fn(apply), cp, inputs)  # noqa: E731
    return jax.jit(jax.grad(loss))(control)


def rows_and_variance_gradient(apply, control, inputs):
    """(rows, gradient of the squared estimate) at ``control``, in one jitted program."""
    control_fn = _relax._control_fn(apply)

    def loss(cp):
        rows = _relax._estimate(
            inputs.function,
            inputs.params,
            inputs.dist_builder,
            inputs.key,
            inputs.num_samples,
            control_fn,
            cp,
            "test",
        )
        return _relax.squared_estimate(control_fn, cp, inputs), rows

    grad, rows = jax.jit(jax.grad(loss, has_aux=True))(control)
    return rows, grad


def power_to_reject(z: float, shift: float) -> float:
    """P(|N(shift, 1)| > z) (>= one-sided), the chance a z-bound check rejects a shift in SEs."""
    return 0.5 * math.erfc((z - shift) / math.sqrt(2))


# --- Identities -------------------------------------------------------------------------------


def test_zero_control_is_reinforce_on_the_same_key():
    # The registry's RELAX with a zero user network, and eta = 0.
    zero = (lambda p, z: 0.0 * jnp.sum(z), ())
    est = estimators.registry.get("relax", relax_control=zero)
    state = with_control(est.init(), eta=jnp.zeros(()))
    f = product_cost(5)
    params = {"w": jnp.array([0.3, -1.2, 2.0, 0.0, -0.4])}

    def build(p):  # logits = 2 w + 1: the pull-back is exercised
        return bern(2.0 * p["w"] + 1.0)

    key = jax.random.key(3)
    ours = rows_of(est, f, params, build, key, 2000, state)
    theirs = jax.jit(lambda p, k: estimators.score_function(f, p, build, k, num_samples=2000))(
        params, key
    )
    np.testing.assert_allclose(ours["w"], theirs["w"], rtol=1e-6, atol=1e-7)


def test_bits_are_draw_samples_and_h_of_z():
    logits = jnp.array([-3.0, -0.5, 0.0, 0.7, 4.0])

    @jax.jit
    def noise(key):
        b, u, v = _relax.relaxed_noise(logits, key, 20_000)
        z = jax.vmap(lambda uu: _relax.relaxed_z(logits, uu))(u)
        zt = jax.vmap(lambda bb, vv: _relax.conditional_z(logits, bb, vv))(b, v)
        return b, z, zt

    b, z, zt = noise(jax.random.key(4))
    drawn = estimators.draw_samples(bern(logits), jax.random.key(4), 20_000)
    np.testing.assert_array_equal(b, drawn)
    np.testing.assert_array_equal(z > 0, b > 0)
    np.testing.assert_array_equal(zt > 0, b > 0)  # z~ lies on the side b fixes


def _two_branch_conditional_z(logits, b, v):
    """The conditional sample computed on both sides, then selected by b."""
    lv = jnp.log(jnp.maximum(v, jnp.finfo(v.dtype).tiny)) - jnp.log1p(-v)
    one = jax.nn.softplus(jax.nn.softplus(logits) - lv)
    zero = -jax.nn.softplus(lv + jax.nn.softplus(-logits))
    return jnp.where(b > 0, one, zero)


def test_conditional_z_equals_the_two_branch_form_at_extreme_logits():
    """conditional_z (one outer softplus, its argument chosen by b) equals the two-branch form
    bit for bit in value and in its derivative w.r.t. the logits, for logits from -60 to 60,
    v from 0 to 1 - 2^-24 and both bits: finite, and on the side b fixes."""
    logits = jnp.array([-60.0, -20.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 20.0, 60.0])
    v = jnp.array([0.0, 1e-30, 1e-7, 0.3, 0.5, 0.9, 1.0 - 2.0**-24])
    lg, vv, bb = (a.ravel() for a in jnp.meshgrid(logits, v, jnp.array([0.0, 1.0])))

    def both(fn):
        grad = jax.vmap(jax.grad(fn))(lg, bb, vv)
        return np.asarray(fn(lg, bb, vv)), np.asarray(grad)

    new, new_grad = both(_relax.conditional_z)
    old, old_grad = both(_two_branch_conditional_z)
    assert np.all(np.isfinite(new)) and np.all(np.isfinite(new_grad))
    np.testing.assert_array_equal(new > 0, np.asarray(bb) > 0)
    np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(new_grad, old_grad)


def test_rebar_is_relax_with_the_relaxed_cost_as_control():
    f = product_cost(4)
    params = jnp.array([0.5, -0.3, 1.1, -2.0])
    key = jax.random.key(5)
    rebar = estimators.rebar_estimator()
    eta, log_lam = jnp.asarray(0.7), jnp.asarray(math.log(0.3))
    rebar_state = with_control(rebar.init(), eta=eta, log_temperature=log_lam)

    def relaxed_cost(net, z):
        return net["eta"] * f(jax.nn.sigmoid(z / jnp.exp(net["log_lam"])))

    relax = estimators.relax_estimator((relaxed_cost, {"eta": eta, "log_lam": log_lam}))
    relax_state = with_control(relax.init(), eta=jnp.zeros(()))
    # The rows, and the gradients of the squared estimate update descends (d/d eta, d/d log
    # lambda), agree.
    inputs = estimators.EstimateInputs(f, params, bern, key, 500)
    ours, g_rebar = rows_and_variance_gradient(None, rebar_state.control, inputs)
    theirs, g_relax = rows_and_variance_gradient(relaxed_cost, relax_state.control, inputs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_rebar.eta, g_relax.network["eta"], rtol=1e-4)
    np.testing.assert_allclose(g_rebar.log_temperature, g_relax.network["log_lam"], rtol=1e-4)


# --- Unbiasedness for arbitrary control parameters, against enumeration ------------------------


def exact_gradient(f, logits: np.ndarray) -> np.ndarray:
    """d/dlogits E[f(b)] by enumerating the 2^D outcomes (float64)."""
    dim = logits.shape[0]
    bs = np.array(list(itertools.product([0.0, 1.0], repeat=dim)))
    fs = np.asarray(jax.vmap(f)(jnp.asarray(bs, jnp.float32)), np.float64)
    p = 1.0 / (1.0 + np.exp(-logits))
    probs = np.prod(np.where(bs > 0, p, 1 - p), axis=1)
    return np.sum((probs * fs)[:, None] * (bs - p), axis=0)


def arbitrary_states():
    """REBAR and RELAX with control parameters nowhere near their initial or adapted values."""
    rebar = estimators.rebar_estimator()
    relax = estimators.relax_estimator()
    net = _relax.mlp_init(key=jax.random.key(11))
    net["w2"] = 0.5 * jax.random.normal(jax.random.key(12), net["w2"].shape)
    net["b2"] = jnp.asarray(0.02)
    return [
        (rebar, with_control(rebar.init(), eta=jnp.asarray(0.6), log_temperature=jnp.log(0.8))),
        (
            relax,
            with_control(
                relax.init(), eta=jnp.asarray(1.4), log_temperature=jnp.log(0.3), network=net
            ),
        ),
    ]


TOY = toy(0.45)
TOY_CASES = [  # (label, cost, logits, samples)
    ("toy D=1", TOY, np.array([-1.0]), 400_000),
    ("toy D=1", TOY, np.array([0.8]), 400_000),
]
PRODUCT_CASES = [("product D=10", product_cost(10), np.linspace(-1.5, 1.5, 10), 120_000)]


def check_unbiased_arbitrary(cases, seed: int) -> None:
    checks = sum(c[2].size for c in cases) * 2
    z = bonferroni_z(checks, ALPHA)
    shifts = []
    for i, (label, f, logits, n) in enumerate(cases):
        exact = exact_gradient(f, logits)
        for j, (est, state) in enumerate(arbitrary_states()):
            key = jax.random.key(seed + 10 * i + j)
            rows = rows_of(est, f, jnp.asarray(logits, jnp.float32), bern, key, n, state)
            rows = np.asarray(rows, np.float64)
            mean, se = rows.mean(0), rows.std(0, ddof=1) / math.sqrt(n)
            assert np.all(np.abs(mean - exact) <= z * se), (label, est.name, mean, exact, se)
            shifts.append(float(np.max(np.abs(0.1 * exact) / se)))
    # Companion: each case's check rejects a 10% error in its largest coordinate (in SEs)
    # with probability >= 0.9.
    assert min(power_to_reject(z, s) for s in shifts) >= 0.9, shifts


def test_unbiased_for_arbitrary_control_parameters_on_the_toy():
    check_unbiased_arbitrary(TOY_CASES, seed=100)


@pytest.mark.slow
def test_unbiased_for_arbitrary_control_parameters_on_a_product_d10():
    check_unbiased_arbitrary(PRODUCT_CASES, seed=300)


# --- The exact single-sample variance of REBAR, by quadrature over (u, v) ----------------------


def rebar_rows_np(logit: float, t: float, eta: float, lam: float, u, v) -> np.ndarray:
    """REBAR's single-sample estimate d/dlogit on E[(b - t)^2], D = 1, at noise (u, v), written
    from the formula in float64: z = l - logit(u), b = 1[u < p], u~ = v p (b = 1) or p + v(1 -
    p) (b = 0), z~ = l - logit(u~), c(z) = eta (sigmoid(z / lam) - t)^2."""
    p = 1.0 / (1.0 + np.exp(-logit))
    b = (u < p).astype(np.float64)

    def logit_of(x):
        return np.log(x) - np.log1p(-x)

    def dc_dz(z):
        s = 1.0 / (1.0 + np.exp(-z / lam))
        return eta * 2.0 * (s - t) * s * (1.0 - s) / lam

    def c(z):
        s = 1.0 / (1.0 + np.exp(-z / lam))
        return eta * (s - t) ** 2

    z = logit - logit_of(u)
    ut = np.where(b > 0, v * p, p + v * (1.0 - p))
    dut = np.where(b > 0, v, 1.0 - v) * p * (1.0 - p)
    zt = logit - logit_of(ut)
    dzt = 1.0 - dut / (ut * (1.0 - ut))
    return ((b - t) ** 2 - c(zt)) * (b - p) + dc_dz(z) - dc_dz(zt) * dzt


def rebar_moments(logit: float, t: float, eta: float, lam: float, n: int = 120):
    """(E g, E g^2) by Gauss-Legendre on [0, p] x [0, 1] and [p, 1] x [0, 1] (the estimate
    jumps where b does, at u = p), each side split in [0, 1/2], [1/2, 1] in v as well."""
    x, w = np.polynomial.legendre.leggauss(n)
    p = 1.0 / (1.0 + np.exp(-logit))

    def nodes(a, b):
        return 0.5 * (b - a) * x + 0.5 * (a + b), 0.5 * (b - a) * w

    m1 = m2 = 0.0
    for ua, ub in ((0.0, p), (p, 1.0)):
        for va, vb in ((0.0, 0.5), (0.5, 1.0)):
            uu, wu = nodes(ua, ub)
            vv, wv = nodes(va, vb)
            g = rebar_rows_np(logit, t, eta, lam, uu[:, None], vv[None, :])
            weight = wu[:, None] * wv[None, :]
            m1 += np.sum(weight * g)
            m2 += np.sum(weight * g**2)
    return m1, m2


VARIANCE_CASES = [  # (logit, t, eta, lambda)
    (-1.0, 0.45, 1.0, 0.5),
    (0.3, 0.45, 0.6, 0.8),
    (1.5, 0.499, 1.3, 0.3),
]


def test_quadrature_mean_is_the_exact_gradient():
    for logit, t, eta, lam in VARIANCE_CASES:
        p = 1.0 / (1.0 + math.exp(-logit))
        exact = (1 - 2 * t) * p * (1 - p)  # d/dlogit [p (1-t)^2 + (1-p) t^2]
        m1, _ = rebar_moments(logit, t, eta, lam)
        assert abs(m1 - exact) < 1e-9, (m1, exact)
        m1_coarse, m2_coarse = rebar_moments(logit, t, eta, lam, n=60)
        _, m2 = rebar_moments(logit, t, eta, lam)
        assert abs(m2 - m2_coarse) < 1e-9 * max(1.0, m2)  # converged


def test_rebar_variance_is_the_quadrature_variance():
    n = 200_000
    z = bonferroni_z(len(VARIANCE_CASES), ALPHA)
    est = estimators.rebar_estimator()
    rows_at_t = jax.jit(
        lambda t, p, k, s: est.per_sample(toy(t), p, bern, k, num_samples=n, state=s)
    )
    shifts = []
    for i, (logit, t, eta, lam) in enumerate(VARIANCE_CASES):
        m1, m2 = rebar_moments(logit, t, eta, lam)
        exact_var = m2 - m1**2
        state = with_control(est.init(), eta=jnp.asarray(eta), log_temperature=jnp.log(lam))
        rows = rows_at_t(jnp.asarray(t), jnp.array([logit]), jax.random.key(200 + i), state)
        g = np.asarray(rows[:, 0], np.float64)
        dev2 = (g - g.mean()) ** 2
        var, se = dev2.mean(), dev2.std(ddof=1) / math.sqrt(n)
        assert abs(var - exact_var) <= z * se, (logit, t, var, exact_var, se)
        shifts.append(0.1 * exact_var / se)
    assert min(power_to_reject(z, s) for s in shifts) >= 0.9, shifts


def test_rebar_control_meets_the_score_term_only_at_z_zero():
    """Why REBAR cannot learn RELAX's Figure 1 toy, t = 0.499 (Grathwohl et al. 2018; the
    authors' figure also shows REBAR not converging). For one bit REBAR's estimate is
    g = r0 + eta h, r0 = f(b)(b - p) REINFORCE's, a function of b alone, so Cov(r0, h) =
    E_b[r0(b) E[h | b]]; differentiating E[c(z) 1{H(z) = b}] gives E[h 1{b = 1}] =
    -c(0) p (1 - p) (the boundary term where H jumps), and c(0) = f(sigmoid(0)) = (1/2 - t)^2
    whatever lambda. Hence Cov(r0, h) = -(1/2 - t)^2 p (1 - p) (r0(1) - r0(0)) and the least
    variance over eta, Var r0 - Cov^2 / Var h, is REINFORCE's to 1e-8 at t = 0.499 (Var h is
    about 1e-2 here): checked by the quadrature above (lambda <= 0.6, where its nodes resolve
    the u^(1/lambda) tails of the control to ~1e-12; the identity holds for every lambda)."""
    x, w = np.polynomial.legendre.leggauss(120)
    for t, logit, lam in itertools.product((0.45, 0.499), (0.0, -1.0), (0.1, 0.3, 0.6)):
        p = 1.0 / (1.0 + math.exp(-logit))
        e_r0h = e_h = e_h2 = e_r0 = e_r02 = 0.0
        for ua, ub in ((0.0, p), (p, 1.0)):  # nodes as rebar_moments
            for va, vb in ((0.0, 0.5), (0.5, 1.0)):
                uu, vv = (
                    0.5 * (ub - ua) * x + 0.5 * (ua + ub),
                    0.5 * (vb - va) * x + 0.5 * (va + vb),
                )
                weight = np.outer(0.5 * (ub - ua) * w, 0.5 * (vb - va) * w)
                r0 = rebar_rows_np(logit, t, 0.0, lam, uu[:, None], vv[None, :])
                h = rebar_rows_np(logit, t, 1.0, lam, uu[:, None], vv[None, :]) - r0
                e_r0h += np.sum(weight * r0 * h)
                e_h += np.sum(weight * h)
                e_h2 += np.sum(weight * h**2)
                e_r0 += np.sum(weight * r0)
                e_r02 += np.sum(weight * r0**2)
        cov, var_h, var_r0 = e_r0h - e_r0 * e_h, e_h2 - e_h**2, e_r02 - e_r0**2
        r0_jump = (1 - t) ** 2 * (1 - p) + t**2 * p  # r0(1) - r0(0)
        predicted = -((0.5 - t) ** 2) * p * (1 - p) * r0_jump
        assert abs(e_h) < 1e-12  # the control's terms have mean zero
        assert abs(cov - predicted) < 1e-4 * abs(predicted), (t, logit, lam, cov, predicted)
        assert abs(cov - 1.1 * predicted) > 1e-2 * abs(predicted)  # a 10% error is seen
        assert var_r0 == pytest.approx(p * (1 - p) * r0_jump**2, rel=1e-9)  # REINFORCE's
        least = var_r0 - cov**2 / var_h  # at the best eta for this lambda
        if t == 0.499:
            assert least > (1 - 1e-8) * var_r0, (logit, lam, least / var_r0)


# --- update: the variance gradient, and adaptation --------------------------------------------


def test_update_needs_inputs_and_is_one_adam_step_on_the_squared_estimate():
    est = estimators.rebar_estimator(learning_rate=0.05)
    state = est.init()
    with pytest.raises(ValueError, match="inputs"):
        est.update(state, jnp.zeros(3))
    f, params, key = toy(0.45), jnp.array([0.2]), jax.random.key(7)
    inputs = estimators.EstimateInputs(f, params, bern, key, 8)

    def update_and_gradient(s):
        loss = lambda cp: _relax.squared_estimate(_relax._control_fn(None), cp, inputs)  # noqa: E731
        return est.update(s, None, inputs=inputs), jax.grad(loss)(s.control)

    new, grad = jax.jit(update_and_gradient)(state)
    # Adam's first step: -lr * g / (|g| + eps).
    for name, start in (("eta", 1.0), ("log_temperature", math.log(0.5))):
        g = float(getattr(grad, name))
        expected = start - 0.05 * g / (abs(g) + 1e-8)
        np.testing.assert_allclose(getattr(new.control, name), expected, rtol=1e-6, atol=1e-7)
    assert int(new.adam.step) == 1


def test_update_gradient_is_the_gradient_of_the_variance():
    """With one sample per estimate, E[d/dphi g^2] = d/dphi E[g^2]: the mean of the update's
    gradients over keys against central differences of the quadrature's E[g^2] in (eta, log
    lambda)."""
    logit, t, eta, lam = 0.3, 0.45, 0.8, 0.6
    est = estimators.rebar_estimator()
    control = with_control(est.init(), eta=jnp.asarray(eta), log_temperature=jnp.log(lam)).control
    f, params = toy(t), jnp.array([logit])

    def grad_at(key):
        inputs = estimators.EstimateInputs(f, params, bern, key, 1)
        g = jax.grad(_relax.squared_estimate, 1)(_relax._control_fn(None), control, inputs)
        return jnp.stack([g.eta, g.log_temperature])

    m = 100_000
    grads = np.asarray(jax.jit(jax.vmap(grad_at))(jax.random.split(jax.random.key(9), m)))
    mean, se = grads.mean(0), grads.std(0, ddof=1) / math.sqrt(m)
    h = 1e-4

    def second_moment(e, log_l):
        return rebar_moments(logit, t, e, math.exp(log_l))[1]

    exact = np.array(
        [
            (second_moment(eta + h, math.log(lam)) - second_moment(eta - h, math.log(lam)))
            / (2 * h),
            (second_moment(eta, math.log(lam) + h) - second_moment(eta, math.log(lam) - h))
            / (2 * h),
        ]
    )
    z = bonferroni_z(2, ALPHA)
    assert np.all(np.abs(mean - exact) <= z * se), (mean, exact, se)
    assert power_to_reject(z, float(np.max(np.abs(0.1 * exact) / se))) >= 0.9, (exact, se)


ADAPT_STEPS = 300
ADAPT_CASES = [(t, logit) for t in (0.45, 0.499) for logit in (-1.0, 0.0, 1.0)]


def adapted_variances(est, cases, steps: int = ADAPT_STEPS, n_measure: int = 20_000):
    """For each (t, logit): the single-sample estimates before and after ``steps`` updates (16
    samples each, fresh keys), on the same measurement key: ``[cases, 2, n_measure]``."""

    def one(t, logit, key):
        f, params = toy(t), logit[None]

        def step(state, k):
            inputs = estimators.EstimateInputs(f, params, bern, k, 16)
            return est.update(state, None, inputs=inputs), None

        k_adapt, k_measure = jax.random.split(key)
        before = est.init()
        after, _ = jax.lax.scan(step, before, jax.random.split(k_adapt, steps))
        rows = [
            est.per_sample(f, params, bern, k_measure, num_samples=n_measure, state=s)[:, 0]
            for s in (before, after)
        ]
        return jnp.stack(rows), after.control

    ts = jnp.array([c[0] for c in cases])
    logits = jnp.array([c[1] for c in cases])
    keys = jax.random.split(jax.random.key(13), len(cases))
    return jax.jit(jax.vmap(one))(ts, logits, keys)


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_adaptation_lowers_the_variance(name):
    est = estimators.registry.get(name)
    rows, control = adapted_variances(est, ADAPT_CASES)
    rows = np.asarray(rows, np.float64)  # [cases, 2, n]
    dev2 = (rows - rows.mean(-1, keepdims=True)) ** 2
    before, after = dev2[:, 0].mean(-1), dev2[:, 1].mean(-1)
    diff = dev2[:, 0] - dev2[:, 1]  # paired: the same noise before and after
    z_diff = diff.mean(-1) / (diff.std(-1, ddof=1) / math.sqrt(diff.shape[-1]))
    for c, b, a, zd in zip(ADAPT_CASES, before, after, z_diff, strict=True):
        print(f"{name} t={c[0]} logit={c[1]}: var {b:.3e} -> {a:.3e} (z {zd:.1f})")
    z = bonferroni_z(len(ADAPT_CASES), ALPHA)
    assert np.all(z_diff > z), (before, after, z_diff, control)


# --- Bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_a_normal_is_refused_naming_binary(name):
    f = lambda x: jnp.sum(x)  # noqa: E731
    normal = lambda p: estimators.Normal(p, jnp.ones(2))  # noqa: E731
    with pytest.raises(ValueError, match="Binary"):
        estimators.registry.get(name).per_sample(
            f, jnp.zeros(2), normal, jax.random.key(0), num_samples=2
        )
    est = estimators.rebar_estimator() if name == "rebar" else estimators.relax_estimator()
    with pytest.raises(ValueError, match="Binary"):
        est.per_sample(f, jnp.zeros(2), normal, jax.random.key(0), num_samples=2)


def test_bad_options():
    with pytest.raises(ValueError, match="temperature"):
        estimators.rebar_estimator(temperature=0.0)
    with pytest.raises(ValueError, match="control_learning_rate"):
        estimators.registry.get("relax", control_learning_rate=-1.0)
    with pytest.raises(ValueError, match="relax_control"):
        estimators.registry.get("relax", relax_control="not a network")
    est = estimators.registry.get("relax")
    assert est.adaptive and est.unbiased and est.cost_evaluations(7) == 3
