r"""The biased estimators of the discrete family, held to their exact expectations, and the
relaxed distributions, held to their densities.

Estimators: "gumbel_softmax" (Concrete / Gumbel-softmax), "gumbel_softmax_st" (its
straight-through variant) and "straight_through" (Bengio et al. 2013). Each one's Monte Carlo
mean (fixed keys) is compared with its EXACT expectation, computed here independently in numpy
float64: for the relaxations by Gauss-Legendre quadrature over the uniform noise ``u`` of each
coordinate (logistic noise :math:`L = \log u - \log(1 - u)`), split where the integrand jumps
(``u = sigmoid(-logit)``, where the hard sample flips); for the K = 3 Concrete by a 2-D
quadrature over the Gumbel differences :math:`d_k = G_k - G_3`, whose joint density
:math:`2 e^{-d_1 - d_2} / (1 + e^{-d_1} + e^{-d_2})^3` is integrated out of :math:`G_3` by hand
and sampled through its conditional CDFs; for straight-through by enumeration. For
"gumbel_softmax" the same expectation is also the gradient of the relaxed objective computed in
its score-function form (an integration by parts: :math:`\partial_\ell E[f(z)] =
E[f(z) \tanh(L/2)]` for the logistic, :math:`E[f(z)(1 - 3 e^{-d_k}/S)]` for the Concrete).
Tolerances: z standard errors, Bonferroni-corrected over the coordinates of a check and over
the checks of this file; each check's companion shows it rejects the estimates scaled by 1.1
(a 10% error), with analytic power >= 0.99.

Bias against the true gradient as the temperature goes to 0 (exact quadrature, D = 1,
f(b) = (b - 0.45)^2, true gradient :math:`\sigma'(\ell)(1 - 2t)`), measured:

======  ==================  ==================  ==================
tau     logit -1.0          logit 0.3           logit 0.0
======  ==================  ==================  ==================
2       -0.02671 / 0.00092  -0.00831 / 0.00101  -0.01427 / 0.00104
1       -0.03419 / 0.00397  +0.00197 / 0.00467  -0.00833 / 0.00482
0.5     -0.03130 / 0.01132  +0.00744 / 0.01397  -0.00354 / 0.01424
0.25    -0.02037 / 0.02558  +0.00662 / 0.03232  -0.00114 / 0.03279
0.1     -0.00895 / 0.06700  +0.00334 / 0.08476  -0.00020 / 0.08619
0.05    -0.00453 / 0.13579  +0.00176 / 0.17072  -0.00005 / 0.17403
0.02    -0.00182 / 0.34220  +0.00072 / 0.42765  -0.00001 / 0.43674
======  ==================  ==================  ==================

(gumbel_softmax bias / single-sample variance; true gradients 0.01966, 0.02445, 0.02500.)
The bias is O(tau) (bias / tau -> -0.091, +0.036; O(tau^2) at logit 0, by symmetry) and the
variance O(1/tau) (variance * tau -> 0.0068, 0.0086, 0.0087). The bias is NOT monotone over the
whole range: at logit 0.3 it changes sign between tau = 2 and 1, at logit -1 it grows from
tau = 2 to 1; it decreases monotonically from tau = 0.5 down (1 at logit -1), which is what
the test asserts. The straight-through Gumbel-softmax behaves alike (bias -0.0025 / +0.0010 /
-0.00001 at tau = 0.02, variance 1.65 / 2.06 / 2.10).
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from estimators import registry, testing

T = 0.45  # the toy's target, f(b) = (b - T)^2
NUM_SAMPLES = 400_000
FACTOR = 1.1  # the deliberate error each check must reject
POWER_FLOOR = 0.99
GL_X, GL_W = np.polynomial.legendre.leggauss(16)


# --- Quadrature (numpy float64) --------------------------------------------------------------


def composite(breaks: np.ndarray, per_piece: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of 16-point Gauss-Legendre on ``per_piece`` equal subintervals of each
    interval between consecutive ``breaks[..., j]`` (batched over the leading axes)."""
    breaks = np.asarray(breaks, np.float64)
    frac = np.linspace(0.0, 1.0, per_piece + 1)
    a, b = breaks[..., :-1], breaks[..., 1:]
    edges = a[..., None] + (b - a)[..., None] * frac
    lo, hi = edges[..., :-1], edges[..., 1:]
    x = (lo + hi)[..., None] / 2 + (hi - lo)[..., None] / 2 * GL_X
    w = (hi - lo)[..., None] / 2 * GL_W
    shape = (*x.shape[:-3], -1)
    return x.reshape(shape), w.reshape(shape)


def log_sigmoid(y: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -y)


def sigmoid(y):
    return np.exp(log_sigmoid(np.asarray(y, np.float64)))


class Noise(NamedTuple):
    """The relaxed Bernoulli at the quadrature nodes: ``[..., D]`` arrays and the weights."""

    z: np.ndarray  # sigmoid((l + L) / tau)
    b: np.ndarray  # 1[l + L > 0], the hard sample
    dz: np.ndarray  # dz/dl = z (1 - z) / tau
    noise: np.ndarray  # L
    weight: np.ndarray  # [...]


# Near u = 0 and 1, z ~ u^(1/tau) (a square root at tau = 2): geometrically graded pieces.
EDGE = 10.0 ** -np.arange(12, 1, -1)  # 1e-12 ... 1e-2


def uniform_nodes(split: float, per_piece: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes on (0, 1) split at ``split``: ``per_piece`` equal subintervals on
    each side of it within [0.01, 0.99], one per decade towards 0 and towards 1."""
    assert EDGE[-1] < split < 1 - EDGE[-1]
    main = composite(np.array([EDGE[-1], split, 1 - EDGE[-1]]), per_piece)
    low = composite(np.concatenate([[0.0], EDGE]), 1)
    high = composite(np.concatenate([1 - EDGE[::-1], [1.0]]), 1)
    return tuple(np.concatenate(parts) for parts in zip(low, main, high, strict=True))  # type: ignore[return-value]


def bernoulli_nodes(logits, tau: float, per_piece: int = 16) -> Noise:
    """Tensor-product quadrature over the D coordinates' uniforms, each split at
    ``u = sigmoid(-logit)`` (where ``b`` flips and ``z`` has its steepest part)."""
    logits = np.atleast_1d(np.asarray(logits, np.float64))
    axes = [uniform_nodes(sigmoid(-lg), per_piece) for lg in logits]
    u = np.stack(np.meshgrid(*[x for x, _ in axes], indexing="ij"), -1)
    weight = functools.reduce(np.multiply.outer, [w for _, w in axes])
    noise = np.log(u) - np.log1p(-u)
    y = (logits + noise) / tau
    z = sigmoid(y)
    dz = np.exp(log_sigmoid(y) + log_sigmoid(-y)) / tau
    return Noise(z, (logits + noise > 0).astype(np.float64), dz, noise, weight)


def expect(q: Noise, values: np.ndarray) -> np.ndarray:
    """``E[values]`` over the quadrature's noise; ``values: [*grid, *out]``."""
    return np.tensordot(q.weight, values, axes=q.weight.ndim)


def enumerate_bits(dim: int) -> np.ndarray:
    return np.array(np.meshgrid(*([[0.0, 1.0]] * dim), indexing="ij")).reshape(dim, -1).T


# --- Bernoulli costs (numpy value and gradient; jax value) -------------------------------------

LINEAR = np.array([1.0, -2.0])


def np_cost(kind: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(f(x), grad f(x))`` for ``x: [..., D]``."""
    dim = x.shape[-1]
    if kind == "square":
        return np.sum((x - T) ** 2, -1), 2 * (x - T)
    if kind == "linear":
        c = LINEAR[:dim]
        return x @ c, np.broadcast_to(c, x.shape)
    assert kind == "product" and dim == 2
    return x[..., 0] * x[..., 1], x[..., ::-1]


def coefficients(kind: str, dim: int) -> np.ndarray:
    """The traced coefficients selecting ``kind`` in :func:`jax_cost` (one program per D)."""
    c = np.zeros(2 + dim, np.float32)
    if kind == "square":
        c[0] = 1.0
    elif kind == "linear":
        c[1 : 1 + dim] = LINEAR[:dim]
    else:
        c[-1] = 1.0
    return c


def jax_cost(coef: jax.Array, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    return coef[0] * jnp.sum((x - T) ** 2) + coef[1 : 1 + dim] @ x + coef[-1] * jnp.prod(x)


def true_gradient(kind: str, logits: np.ndarray) -> np.ndarray:
    """:math:`\\nabla_\\ell E_{Bernoulli}[f(b)] = \\sum_b p(b) f(b) (b - p)`, enumerated."""
    bits = enumerate_bits(logits.size)
    p = sigmoid(logits)
    prob = np.prod(np.where(bits > 0, p, 1 - p), -1)
    return (prob * np_cost(kind, bits)[0]) @ (bits - p)


def exact_expectation(name: str, kind: str, logits: np.ndarray, tau: float) -> np.ndarray:
    """The estimator's exact expectation, by quadrature over the noise (enumeration for
    straight-through)."""
    if name == "straight_through":
        bits = enumerate_bits(logits.size)
        p = sigmoid(logits)
        prob = np.prod(np.where(bits > 0, p, 1 - p), -1)
        return (prob @ np_cost(kind, bits)[1]) * p * (1 - p)
    q = bernoulli_nodes(logits, tau)
    at = q.z if name == "gumbel_softmax" else q.b
    return expect(q, np_cost(kind, at)[1] * q.dz)


def relaxed_objective_gradient(kind: str, logits: np.ndarray, tau: float) -> np.ndarray:
    """:math:`\\partial_\\ell E[f(z)]` in score-function form, :math:`E[f(z) \\tanh(L/2)]`
    (the logistic density's score), by quadrature: no derivative of ``f`` or ``z``."""
    q = bernoulli_nodes(logits, tau)
    return expect(q, np_cost(kind, q.z)[0][..., None] * np.tanh(q.noise / 2))


# --- The categorical case (K = 3) ------------------------------------------------------------

CAT_LOGITS = np.array([0.2, -0.5, 1.0])
CAT_C = np.array([1.0, -0.5, 2.0])
CAT_V = np.array([0.7, 1.0, -0.8])


def cat_cost(x):
    """``(f, grad f)`` of :math:`f(z) = c^\\top z + (v^\\top z)^2`, numpy or jax."""
    s = x @ CAT_V
    return x @ CAT_C + s**2, CAT_C + 2 * s[..., None] * CAT_V


class CatNoise(NamedTuple):
    z: np.ndarray  # [n1, n2, 3] softmax((l + d) / tau)
    hard: np.ndarray  # [n1, n2, 3] one-hot argmax(l + d)
    score: np.ndarray  # [n1, n2, 3] 1 - 3 e^{-d_k} / S: d/dl_k log of the noise density
    weight: np.ndarray  # [n1, n2]


def categorical_nodes(logits: np.ndarray, tau: float, per_piece: int = 24) -> CatNoise:
    """2-D quadrature over :math:`d = (G_1 - G_3, G_2 - G_3)` (the softmax depends on nothing
    else). :math:`d_1` is standard logistic, :math:`u_1 = \\sigma(d_1)`; given :math:`d_1`,
    :math:`P(d_2 \\le t) = a^2 / (a + e^{-t})^2` with :math:`a = 1 + e^{-d_1}`, inverted for
    :math:`u_2`. The argmax changes on the lines :math:`d_1 = \\ell_3 - \\ell_1`,
    :math:`d_2 = \\ell_3 - \\ell_2` and :math:`d_2 = d_1 + \\ell_1 - \\ell_2`: the outer
    integral is split at the first, the inner at the other two."""
    l1, l2, l3 = logits
    u1, w1 = composite(np.array([0.0, sigmoid(l3 - l1), 1.0]), per_piece)
    d1 = np.log(u1) - np.log1p(-u1)
    a = 1 + np.exp(-d1)

    def cdf(t):
        return (a / (a + np.exp(-t))) ** 2

    cuts = np.sort(np.stack([cdf(l3 - l2 + 0 * d1), cdf(d1 + l1 - l2)], -1), -1)
    breaks = np.concatenate([np.zeros((d1.size, 1)), cuts, np.ones((d1.size, 1))], -1)
    u2, w2 = composite(breaks, per_piece)  # [n1, n2]
    root = np.sqrt(u2)
    e2 = a[:, None] * (1 - root) / root  # e^{-d2}
    d = np.stack([np.broadcast_to(d1[:, None], u2.shape), -np.log(e2), np.zeros_like(u2)], -1)
    y = (logits + d) / tau
    z = np.exp(y - np.logaddexp.reduce(y, axis=-1, keepdims=True))
    hard = np.eye(3)[np.argmax(logits + d, -1)]
    s = np.sum(np.exp(-d), -1, keepdims=True)
    score = 1 - 3 * np.exp(-d) / s
    return CatNoise(z, hard, score, w1[:, None] * w2)


def softmax_vjp(z: np.ndarray, g: np.ndarray, tau: float) -> np.ndarray:
    """:math:`J^\\top g` for :math:`J = \\partial z / \\partial \\ell = (\\mathrm{diag}(z) -
    z z^\\top) / \\tau`."""
    return (z * g - z * np.sum(z * g, -1, keepdims=True)) / tau


def cat_exact(name: str, tau: float) -> np.ndarray:
    p = np.exp(CAT_LOGITS - np.logaddexp.reduce(CAT_LOGITS))
    if name == "straight_through":
        grads = cat_cost(np.eye(3))[1]  # [3 vertices, 3]
        return softmax_vjp(p, p @ grads, 1.0)
    q = categorical_nodes(CAT_LOGITS, tau)
    at = q.z if name == "gumbel_softmax" else q.hard
    return np.tensordot(q.weight, softmax_vjp(q.z, cat_cost(at)[1], tau), axes=2)


def cat_true() -> np.ndarray:
    p = np.exp(CAT_LOGITS - np.logaddexp.reduce(CAT_LOGITS))
    return softmax_vjp(p, cat_cost(np.eye(3))[0], 1.0)


# --- Monte Carlo checks ------------------------------------------------------------------------


class Case(NamedTuple):
    name: str  # registry name
    kind: str  # cost: "square", "linear", "product"; "table" for the categorical
    logits: tuple[float, ...]
    tau: float


ESTIMATOR_NAMES = ("gumbel_softmax", "gumbel_softmax_st", "straight_through")
CASES = [
    *[Case(n, k, (0.3,), 0.5) for n in ESTIMATOR_NAMES for k in ("square", "linear")],
    *[
        Case(n, k, (0.3, -1.0), 0.5)
        for n in ESTIMATOR_NAMES
        for k in ("square", "linear", "product")
    ],
    Case("gumbel_softmax", "square", (0.3,), 0.1),
    *[Case(n, "quadratic", (), 0.5) for n in ESTIMATOR_NAMES],
]
# Bonferroni over the checks of this file too: the family-wise false-alarm rate is ALPHA.
ALPHA = testing.ALPHA / len(CASES)


# At tau = 0.1 the variance is 6 times that at 0.5: more samples keep the power against 10%.
SAMPLES_AT = {0.1: 1_000_000}


@functools.cache
def bernoulli_program(name: str, dim: int, tau: float):
    est = registry.get(name, temperature=tau)
    num_samples = SAMPLES_AT.get(tau, NUM_SAMPLES)

    def run(logits, coef, key):
        return est.per_sample(
            functools.partial(jax_cost, coef),
            {"logits": logits},
            lambda p: estimators.Bernoulli(p["logits"]),
            key,
            num_samples=num_samples,
        )

    return est, jax.jit(run)


@functools.cache
def categorical_program(name: str, tau: float):
    est = registry.get(name, temperature=tau)

    def run(logits, key):
        return est.per_sample(
            lambda z: cat_cost(z)[0],
            {"logits": logits},
            lambda p: estimators.OneHotCategorical(p["logits"]),
            key,
            num_samples=NUM_SAMPLES,
        )

    return est, jax.jit(run)


def power(report: testing.UnbiasednessReport, factor: float) -> float:
    """Lower bound on P(the check rejects the estimates scaled by ``factor``): coordinate j
    passes when :math:`|f m_j - e_j| \\le z f s_j + slack_j` with :math:`m_j \\sim N(e_j,
    s_j^2)`; the largest single-coordinate rejection probability bounds the check's."""
    normal = statistics.NormalDist()
    best = 0.0
    e, s, sl = (np.ravel(a["logits"]) for a in (report.expected, report.se, report.slack))
    for ej, sj, lj in zip(e, s, sl, strict=True):
        if sj == 0:
            best = max(best, float(abs(factor - 1) * abs(ej) > lj))
            continue
        delta = abs(factor - 1) * abs(ej) / (factor * sj)
        t = report.z + lj / (factor * sj)
        best = max(best, normal.cdf(-t - delta) + normal.cdf(delta - t))
    return best


def run_case(case: Case) -> tuple[testing.UnbiasednessReport, np.ndarray, np.ndarray]:
    """The report of one case (mean vs exact expectation), the exact and the true gradient."""
    key = jax.random.fold_in(jax.random.key(12), CASES.index(case))
    if case.kind == "quadratic":
        est, prog = categorical_program(case.name, case.tau)
        rows = prog(jnp.asarray(CAT_LOGITS, jnp.float32), key)
        exact, true = cat_exact(case.name, case.tau), cat_true()
        logits = CAT_LOGITS
    else:
        logits = np.array(case.logits)
        est, prog = bernoulli_program(case.name, logits.size, case.tau)
        coef = jnp.asarray(coefficients(case.kind, logits.size))
        rows = prog(jnp.asarray(logits, jnp.float32), coef, key)
        exact = exact_expectation(case.name, case.kind, logits, case.tau)
        true = true_gradient(case.kind, logits)
    fam = testing.Family(
        name=f"{case.kind} cost, logits {list(logits)}, tau {case.tau}",
        params={"logits": jnp.asarray(logits, jnp.float32)},
        dist_builder=lambda p: estimators.Bernoulli(p["logits"]),
        cost=None,  # type: ignore[arg-type]
        expectation=math.nan,
        gradient={"logits": true},
        variances={},
        description="",
    )
    report = testing.report_from_estimates(
        est, fam, {"logits": rows["logits"][None]}, alpha=ALPHA, bias={"logits": exact - true}
    )
    return report, exact, true


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c.name}-{c.kind}-D{len(c.logits)}-tau{c.tau}" for c in CASES]
)
def test_mean_is_the_exact_expectation(case):
    """The estimator's mean == its exact expectation (quadrature over the noise), within z SEs
    (Bonferroni over coordinates and cases); the same check rejects the estimates scaled by
    1.1, with analytic power >= 0.99."""
    report, exact, true = run_case(case)
    assert report.ok, str(report)
    assert report.failures(scale=FACTOR), str(report)
    assert power(report, FACTOR) >= POWER_FLOOR, str(report)
    if case.name == "straight_through" and case.kind in ("linear", "product"):
        # Exact for f affine in each coordinate: d f / d b_d does not depend on b_d.
        np.testing.assert_allclose(exact, true, rtol=1e-12)
    else:
        # Biased, by far more than the check's resolution (which would catch it).
        assert np.max(np.abs(exact - true) / report.se["logits"]) > 2 * report.z


# --- The quadratures themselves ----------------------------------------------------------------


# The Monte Carlo SEs are above 1e-4; the quadratures are held to 1e-6 of that and better.
QUAD_RTOL = 1e-7


@pytest.mark.parametrize("logits", [(0.3,), (-1.0,), (0.3, -1.0)])
@pytest.mark.parametrize("tau", [2.0, 0.5, 0.02])
def test_bernoulli_quadrature(logits, tau):
    """The 1-D rule has converged (4 times the nodes changes nothing; the D = 2 rule is its
    tensor product), the hard samples have the Bernoulli law, and the gumbel_softmax
    expectation (pathwise form) is the gradient of the relaxed objective (score form)."""
    logits = np.array(logits)
    q = bernoulli_nodes(logits, tau)
    np.testing.assert_allclose(expect(q, q.b), sigmoid(logits), rtol=1e-12)
    fine = bernoulli_nodes(logits, tau, per_piece=64) if logits.size == 1 else None
    for kind in ("square", "linear", *(("product",) if logits.size == 2 else ())):
        for name in ("gumbel_softmax", "gumbel_softmax_st"):
            exact = exact_expectation(name, kind, logits, tau)
            if fine is not None:
                at = fine.z if name == "gumbel_softmax" else fine.b
                finer = expect(fine, np_cost(kind, at)[1] * fine.dz)
                np.testing.assert_allclose(exact, finer, rtol=QUAD_RTOL, atol=1e-12)
        pathwise = exact_expectation("gumbel_softmax", kind, logits, tau)
        score = relaxed_objective_gradient(kind, logits, tau)
        np.testing.assert_allclose(pathwise, score, rtol=QUAD_RTOL, atol=1e-12)


def test_categorical_quadrature():
    """The K = 3 quadrature: total mass 1, argmax law softmax(logits) (Gumbel-max), converged,
    and the gumbel_softmax expectation equals the relaxed objective's gradient in score form."""
    p = np.exp(CAT_LOGITS - np.logaddexp.reduce(CAT_LOGITS))
    q = categorical_nodes(CAT_LOGITS, 0.5)
    np.testing.assert_allclose(q.weight.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.tensordot(q.weight, q.hard, axes=2), p, rtol=1e-10)
    pathwise = cat_exact("gumbel_softmax", 0.5)
    fine = categorical_nodes(CAT_LOGITS, 0.5, per_piece=48)
    finer = np.tensordot(fine.weight, softmax_vjp(fine.z, cat_cost(fine.z)[1], 0.5), axes=2)
    np.testing.assert_allclose(pathwise, finer, rtol=QUAD_RTOL, atol=1e-12)
    # The score form converges only as 1/nodes (error 3e-6, 1e-6, 3e-7 relative at 12, 24,
    # 48 per piece; the pathwise form is converged to 1e-9 at 12): held to 1e-5 at 48.
    score = np.tensordot(fine.weight, cat_cost(fine.z)[0][..., None] * fine.score, axes=2)
    np.testing.assert_allclose(pathwise, score, rtol=1e-5, atol=1e-12)
    st = cat_exact("gumbel_softmax_st", 0.5)
    fine_st = np.tensordot(fine.weight, softmax_vjp(fine.z, cat_cost(fine.hard)[1], 0.5), axes=2)
    np.testing.assert_allclose(st, fine_st, rtol=QUAD_RTOL, atol=1e-12)


# --- Bias and variance against the temperature -------------------------------------------------

TAUS = (2.0, 1.0, 0.5, 0.25, 0.1, 0.05, 0.02)


def bias_and_variance(name: str, logit: float, tau: float) -> tuple[float, float]:
    """Exact bias against the true gradient and exact single-sample variance, D = 1,
    f = (b - T)^2."""
    logits = np.array([logit])
    q = bernoulli_nodes(logits, tau)
    at = q.z if name == "gumbel_softmax" else q.b
    g = np_cost("square", at)[1] * q.dz
    mean = expect(q, g)[0]
    return mean - true_gradient("square", logits)[0], expect(q, g**2)[0] - mean**2


@pytest.mark.parametrize("name", ["gumbel_softmax", "gumbel_softmax_st"])
@pytest.mark.parametrize("logit", [-1.0, 0.3, 0.0])
def test_bias_vanishes_and_variance_grows_as_temperature_falls(name, logit):
    """|bias| decreases monotonically from tau = 0.5 down to 0.02, at least linearly at the
    end, and is below 15% of the true gradient at tau = 0.02 (measured: 9.2%, 2.9%, 0.03% for
    gumbel_softmax, 12.8%, 4.1%, 0.03% for the straight-through variant, at logits -1, 0.3,
    0); the variance grows at every step
    and like 1/tau at the end (numbers in the module docstring)."""
    bias, var = np.array([bias_and_variance(name, logit, tau) for tau in TAUS]).T
    true = abs(true_gradient("square", np.array([logit]))[0])
    small = np.array(TAUS) <= 0.5
    assert np.all(np.diff(np.abs(bias[small])) < 0), bias
    assert abs(bias[-1]) <= 0.45 * abs(bias[-2])  # tau 0.05 -> 0.02: at least O(tau)
    assert abs(bias[-1]) < 0.15 * true
    assert np.all(np.diff(var) > 0), var
    assert var[-1] / var[-2] > 2.4  # ~ 1/tau: 0.05 / 0.02 = 2.5


def test_the_measured_variance_is_the_exact_one():
    """The gumbel_softmax rows' variance (D = 1, tau = 0.5 and 0.1) == the exact variance of
    the bias table, within z SEs of the variance estimate; the same check rejects 10%."""
    for case in (
        Case("gumbel_softmax", "square", (0.3,), 0.5),
        Case("gumbel_softmax", "square", (0.3,), 0.1),
    ):
        est, prog = bernoulli_program(case.name, 1, case.tau)
        key = jax.random.fold_in(jax.random.key(12), CASES.index(case))
        rows = np.asarray(
            prog(jnp.float32([0.3]), jnp.asarray(coefficients("square", 1)), key)["logits"],
            np.float64,
        )[:, 0]
        _, exact = bias_and_variance(case.name, 0.3, case.tau)
        dev = (rows - rows.mean()) ** 2
        var, se = dev.mean(), dev.std(ddof=1) / math.sqrt(dev.size)
        z = testing.bonferroni_z(2, ALPHA)
        assert abs(var - exact) <= z * se, (var, exact, se)
        assert abs(var - FACTOR * exact) > z * se
        assert statistics.NormalDist().cdf((FACTOR - 1) * exact / se - z) >= POWER_FLOOR


# --- Densities ---------------------------------------------------------------------------------


def logistic_log_pdf(x):
    return -x - 2 * np.logaddexp(0.0, -x)


def test_relaxed_bernoulli_density_is_the_change_of_variables():
    """log p(z) == log logistic(L) + log |dL/dz|, L = tau logit(z) - l, dL/dz = tau/(z(1-z)),
    per coordinate (a per-coordinate temperature), summed over the event."""
    logits = np.array([0.3, -1.0])
    tau = np.array([0.5, 2.0])
    z = np.stack([np.linspace(1e-4, 1 - 1e-3, 201), np.linspace(0.02, 0.98, 201)], -1)
    z32 = z.astype(np.float32)
    zz = z32.astype(np.float64)
    noise = tau * (np.log(zz) - np.log1p(-zz)) - logits
    ref = np.sum(logistic_log_pdf(noise) + np.log(tau) - np.log(zz) - np.log1p(-zz), -1)
    d = estimators.RelaxedBernoulli(jnp.float32(logits), jnp.float32(tau))
    got = np.asarray(d.log_prob(jnp.asarray(z32)), np.float64)
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize("tau", [2.0, 1.0, 0.5])
def test_relaxed_bernoulli_density_integrates_to_one(tau):
    """In y = logit(z) (dz = z(1-z) dy, no endpoint singularity): the integral over
    [-Y, Y] == F(sigmoid(Y)) - F(sigmoid(-Y)) with the closed-form CDF F(z) = sigmoid(tau
    logit(z) - l), and the mass outside is below 1e-3 (Y = 16: float32 z rounds to 1 beyond)."""
    logit, big = 0.3, 16.0
    y, w = composite(np.array([-big, 0.0, big]), 64)
    z = jax.nn.sigmoid(jnp.asarray(y, jnp.float32))
    d = estimators.RelaxedBernoulli(jnp.float32([logit]), tau)
    dens = np.exp(np.asarray(d.log_prob(z[:, None]), np.float64))
    zz = np.asarray(z, np.float64)
    mass = np.sum(w * dens * zz * (1 - zz))
    expected = sigmoid(tau * big - logit) - sigmoid(-tau * big - logit)
    np.testing.assert_allclose(mass, expected, rtol=2e-5)
    assert 1 - expected < 1e-3


def test_concrete_with_two_classes_is_the_binary_concrete():
    """K = 2: the Concrete density of (z, 1 - z) (w.r.t. Lebesgue measure on the first K - 1
    coordinates: Jacobian 1) == the RelaxedBernoulli density of z with logit l1 - l2."""
    l1, l2, tau = 0.7, -0.4, 0.5
    z = jnp.linspace(1e-3, 1 - 1e-3, 101, dtype=jnp.float32)
    cat = estimators.RelaxedOneHotCategorical(jnp.float32([l1, l2]), tau)
    bern = estimators.RelaxedBernoulli(jnp.float32([l1 - l2]), tau)
    got = cat.log_prob(jnp.stack([z, 1 - z], -1))
    np.testing.assert_allclose(got, bern.log_prob(z[:, None]), rtol=1e-5, atol=1e-5)


def test_concrete_density_three_classes():
    """K = 3, in the coordinates s = (y1 - y3, y2 - y3), z = softmax(s1, s2, 0) (Jacobian
    z1 z2 z3): pointwise, p(z) z1 z2 z3 == tau^2 * the Gumbel differences' density
    2 e^{-d1-d2} / (1 + e^{-d1} + e^{-d2})^3 at d = tau s - (l_{1:2} - l_3); and it integrates
    to 1 (2-D quadrature over s in [-40, 40]^2, outside which the mass is below 1e-8)."""
    tau = 0.5
    d = estimators.RelaxedOneHotCategorical(jnp.asarray(CAT_LOGITS, jnp.float32), tau)
    s1, w1 = composite(np.array([-40.0, -10.0, 0.0, 10.0, 40.0]), 16)
    s = np.stack(np.meshgrid(s1, s1, indexing="ij"), -1)  # [n, n, 2]
    full = np.concatenate([s, np.zeros((*s.shape[:2], 1))], -1)
    z = jax.nn.softmax(jnp.asarray(full, jnp.float32), axis=-1)
    log_p = np.asarray(d.log_prob(z), np.float64) + np.sum(np.log(np.asarray(z, np.float64)), -1)
    diff = tau * s - (CAT_LOGITS[:2] - CAT_LOGITS[2])
    ref = (
        2 * np.log(tau)
        + np.log(2.0)
        - diff.sum(-1)
        - 3 * np.logaddexp.reduce(np.concatenate([np.zeros((*s.shape[:2], 1)), -diff], -1), -1)
    )
    central = np.all(np.abs(s) <= 20, -1)  # float32 z is accurate there
    np.testing.assert_allclose(log_p[central], ref[central], rtol=1e-5, atol=2e-4)
    mass = np.sum(np.outer(w1, w1) * np.exp(log_p))
    np.testing.assert_allclose(mass, 1.0, rtol=1e-4)


def test_one_hot_categorical():
    """log_prob of one-hot vectors == Categorical's log_prob of the indices (a batch of 2
    rows, all 9 outcomes); samples are one-hot with frequencies the probabilities (z SEs);
    mean is the probabilities; relaxed() is the Concrete with the same logits."""
    logits = jnp.float32([[0.2, -0.5, 1.0], [1.2, 0.0, -0.7]])
    oh = estimators.OneHotCategorical(logits)
    idx = jnp.array([(i, j) for i in range(3) for j in range(3)])
    np.testing.assert_allclose(
        oh.log_prob(jax.nn.one_hot(idx, 3)), estimators.Categorical(logits).log_prob(idx), rtol=1e-6
    )
    x = np.asarray(oh.sample(jax.random.key(3), (100_000,)), np.float64)
    assert x.shape == (100_000, 2, 3) and np.all(x.sum(-1) == 1) and set(np.unique(x)) == {0, 1}
    p = np.asarray(oh.probs, np.float64)
    se = np.sqrt(p * (1 - p) / x.shape[0])
    assert np.all(np.abs(x.mean(0) - p) <= testing.bonferroni_z(6, ALPHA) * se)
    np.testing.assert_allclose(oh.mean, p, rtol=1e-6)
    relaxed = oh.relaxed(0.5)
    assert isinstance(relaxed, estimators.RelaxedOneHotCategorical)
    assert isinstance(oh, estimators.Relaxable) and isinstance(
        estimators.Bernoulli(0.0), estimators.Relaxable
    )
    np.testing.assert_array_equal(relaxed.logits, logits)


def test_hard_samples_have_the_discrete_law():
    """hard(z) of relaxed samples: thresholding is Bernoulli(sigmoid(l)), the argmax is
    Categorical(softmax(l)) (frequencies within z SEs)."""
    n = 100_000
    zb = estimators.RelaxedBernoulli(jnp.float32([0.3, -1.0]), 0.1)
    b = np.asarray(zb.hard(zb.sample(jax.random.key(4), (n,))), np.float64)
    p = sigmoid(np.array([0.3, -1.0]))
    z = testing.bonferroni_z(5, ALPHA)
    assert np.all(np.abs(b.mean(0) - p) <= z * np.sqrt(p * (1 - p) / n))
    zc = estimators.RelaxedOneHotCategorical(jnp.asarray(CAT_LOGITS, jnp.float32), 0.5)
    h = np.asarray(zc.hard(zc.sample(jax.random.key(5), (n,))), np.float64)
    q = np.exp(CAT_LOGITS - np.logaddexp.reduce(CAT_LOGITS))
    assert np.all(np.abs(h.mean(0) - q) <= z * np.sqrt(q * (1 - q) / n))


# --- The one-hot categorical through the estimators: shapes, surrogate, jit -----------------


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_one_hot_categorical_shapes_and_surrogate(name):
    """On a batch of 2 one-hot categoricals: rows [N, 2, 3]; jax.grad of the surrogate == the
    mean of per_sample (same key); a cost's own parameters get their gradient through the
    surrogate (at the relaxed or discrete samples). (jit == eager: the battery, on the
    Bernoulli, runs the same code.)"""
    est = registry.get(name)
    params = {"logits": jnp.float32([[0.2, -0.5, 1.0], [1.2, 0.0, -0.7]])}

    def build(p):
        return estimators.OneHotCategorical(p["logits"])

    def cost(w):
        return lambda x: w * jnp.sum(x * jnp.float32([[1.0, -0.5, 2.0], [0.3, 1.7, -1.2]])) ** 2

    key = jax.random.key(6)
    rows = est.per_sample(cost(1.0), params, build, key, num_samples=64)
    assert rows["logits"].shape == (64, 2, 3)
    g_p, g_w = jax.grad(
        lambda p, w: est.surrogate(cost(w), p, build, key, num_samples=64), argnums=(0, 1)
    )(params, 1.0)
    np.testing.assert_allclose(g_p["logits"], rows["logits"].mean(0), rtol=1e-5, atol=1e-6)
    value = est.surrogate(cost(1.0), params, build, key, num_samples=64)
    np.testing.assert_allclose(g_w, value, rtol=1e-5)  # f = w * h: df/dw = h, mean = the value


# --- Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_temperature_is_named(bad):
    logits = jnp.float32([0.3, -1.0])
    makers = [
        lambda t: estimators.RelaxedBernoulli(logits, t),
        lambda t: estimators.RelaxedOneHotCategorical(logits, t),
        lambda t: estimators.Bernoulli(logits).relaxed(t),
        lambda t: estimators.OneHotCategorical(logits).relaxed(t),
        lambda t: registry.get("gumbel_softmax", temperature=t),
        lambda t: registry.get("gumbel_softmax_st", temperature=t),
    ]
    for make in makers:
        with pytest.raises(ValueError, match="temperature"):
            make(bad)
    with pytest.raises(ValueError, match="temperature"):
        estimators.gumbel_softmax(
            jnp.sum,
            {"l": logits},
            lambda p: estimators.Bernoulli(p["l"]),
            jax.random.key(0),
            num_samples=2,
            temperature=bad,
        )


def test_bad_input_under_jit_is_nan():
    """Traced invalid parameters (temperature <= 0, NaN or inf; NaN logits) turn every sample
    and log-density into NaN, like the other distributions; valid ones stay finite."""
    key = jax.random.key(0)

    @jax.jit
    def draws(logits, t):
        rb = estimators.RelaxedBernoulli(logits, t)
        rc = estimators.RelaxedOneHotCategorical(logits, t)
        zb, zc = rb.sample(key, (3,)), rc.sample(key, (3,))
        return zb, rb.log_prob(zb), zc, rc.log_prob(zc)

    ok = jnp.float32([0.3, -1.0])
    assert all(np.all(np.isfinite(a)) for a in draws(ok, 0.5))
    for logits, t in [
        (ok, 0.0),
        (ok, -1.0),
        (ok, math.nan),
        (ok, math.inf),
        (jnp.float32([0.3, math.nan]), 0.5),
    ]:
        assert all(np.all(np.isnan(a)) for a in draws(logits, t)), (logits, t)


def test_temperature_shape_is_checked():
    with pytest.raises(ValueError, match="temperature"):
        estimators.RelaxedBernoulli(jnp.zeros(3), jnp.ones(2))
    with pytest.raises(ValueError, match="temperature"):
        estimators.RelaxedOneHotCategorical(jnp.zeros((2, 3)), jnp.ones(3))
    estimators.RelaxedOneHotCategorical(jnp.zeros((2, 3)), jnp.ones((2, 1)))


def test_the_estimators_need_a_relaxable_distribution():
    """The plain Categorical (indices) has no relaxation: each estimator names the capability."""
    fam = testing.family("Categorical")
    for name in ESTIMATOR_NAMES:
        with pytest.raises(ValueError, match="Relaxable"):
            registry.get(name).per_sample(
                fam.cost, fam.params, fam.dist_builder, jax.random.key(0), num_samples=2
            )
