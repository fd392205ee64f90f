r"""Hold a gradient estimator against mathematics: closed-form problems and statistical checks.

A *family* (:class:`Family`) is a small problem whose answer is known exactly: a distribution
(its parameters and ``dist_builder``), a cost ``f`` and the exact gradient
:math:`\nabla_\theta E_{p(x;\theta)}[f(x)]`, computed in float64 from closed forms (Gaussian
moment-generating functions, Gamma/Beta/Dirichlet moments) or by enumerating every outcome
(Bernoulli, Categorical). Where they are known, a family also carries the exact per-sample
variances of this package's pathwise and score-function estimators (closed forms evaluated by
Gauss-Hermite quadrature for the Normal, by a fine one-dimensional quadrature for Gamma and
Beta, by enumeration for the discrete families), so that a new estimator's variance can be put
next to ours.

- :func:`families` lists the families whose distribution an estimator supports (by its
  declared capabilities, ``estimator.supports``).
- :func:`check_unbiased` runs the estimator many times, compares the mean of its estimates
  with the exact gradient coordinate by coordinate, and raises an ``AssertionError`` naming
  every coordinate whose error exceeds ``z`` standard errors, with ``z`` Bonferroni-corrected
  for the number of coordinates.
- :func:`compare_variance` measures the estimator's per-sample variance (with its standard
  error) and puts it next to the exact variances of ours.

Example (the pathwise estimator on every family it supports):

>>> import jax, estimators
>>> from estimators import testing
>>> est = estimators.registry.get("pathwise")
>>> [f.name for f in testing.families(est)]
['Normal', 'Gamma', 'Beta', 'Dirichlet']
>>> report = testing.check_unbiased(est, "Normal", key=jax.random.key(0), num_samples=2000)
>>> report.num_checks, report.ok
(6, True)

An estimator whose samples are used jointly (``multi_sample``: a leave-one-out baseline,
antithetic pairs) is checked from independent calls, never from its rows; a stateful one
(``init``/``update``) has its state warmed by a few updates on independent keys first; an
estimator of the importance-weighted objective (``objective == "log_mean_exp"``) is checked
with ``K = min_samples`` samples per call against the exact gradient of the ``K``-sample bound
:math:`E_{q^K}[-\log\frac1K\sum_k e^{-f(x_k)}]` (:func:`bound_gradient`; for ``K = 1`` it is
:math:`\nabla E_q[f]`), on the families that know it (:func:`families`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._common import draw_samples
from ._distributions import Bernoulli, Beta, Categorical, Dirichlet, Gamma, Normal
from ._interface import EstimateInputs, GradientEstimator

PyTree = Any

# Family-wise false-alarm probability of one check (all coordinates of one estimator on one
# family): each coordinate is held to z = Phi^{-1}(1 - ALPHA / (2 m)) standard errors.
ALPHA = 1e-4
# Relative allowance for float32 rounding of the per-sample estimates (about 1e-7 each).
FLOAT_RTOL = 1e-5


# --- Families -----------------------------------------------------------------------------


class Family(NamedTuple):
    r"""A closed-form problem: a distribution, a cost and the exact gradient of its expectation.

    Fields:
      name: ``"Normal"``, ``"Gamma"``, ...
      params: the distribution's parameters, a dict of float32 arrays.
      dist_builder: ``params -> Distribution``.
      cost: ``f(x) -> []`` for ONE sample ``x: [*event_shape]``.
      expectation: :math:`E_p[f]` (float64).
      gradient: :math:`\nabla_\theta E_p[f]`, a dict like ``params`` of float64 arrays.
      variances: the exact per-sample variances of this package's estimators, by name
        (``"pathwise"``, ``"score_function"``); each a dict like ``params`` (float64). An
        estimator whose variance is not known in closed form for this family is absent.
      description: the cost and parameters in words.
      bound_gradients: ``K -> () -> gradient`` (cached) of the ``K``-sample bound
        :math:`\nabla_\theta E_{p^K}[-\log\frac1K\sum_k e^{-f(x_k)}]` for the ``K >= 2``
        where it is known exactly (see :func:`bound_gradient`).
    """

    name: str
    params: dict[str, jax.Array]
    dist_builder: Callable[[dict[str, jax.Array]], Any]
    cost: Callable[[jax.Array], jax.Array]
    expectation: float
    gradient: dict[str, np.ndarray]
    variances: Mapping[str, dict[str, np.ndarray]]
    description: str
    bound_gradients: Mapping[int, Callable[[], dict[str, np.ndarray]]] = MappingProxyType({})

    @property
    def event_size(self) -> int:
        """Number of scalar coordinates of one sample (``dim`` of ``cost_evaluations``)."""
        return int(np.prod(self.dist_builder(self.params).event_shape, dtype=int))


def _f32(x: Any) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.float32))


def _f64(params: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in params.items()}


def _normal_cost_fn(c: dict[str, Any], xp: Any) -> Callable[[Any], Any]:
    """``f(x) = 0.5 x^T A x + b.x + c cos(k.x) + e exp(w.x)`` over the last axis of ``x``."""

    def cost(x: Any) -> Any:
        quad = 0.5 * xp.sum(x * (x @ xp.asarray(c["A"])), axis=-1)
        return (
            quad
            + x @ xp.asarray(c["b"])
            + c["c"] * xp.cos(x @ xp.asarray(c["k"]))
            + c["e"] * xp.exp(x @ xp.asarray(c["w"]))
        )

    return cost


def _gauss_hermite(dim: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product Gauss-Hermite rule for ``N(0, I_dim)``: points ``[P, dim]``, weights
    ``[P]`` summing to 1 (exact for polynomials of degree ``< 2 nodes`` per coordinate)."""
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    grids = np.meshgrid(*([t] * dim), indexing="ij")
    weights = np.prod(np.meshgrid(*([w] * dim), indexing="ij"), axis=0)
    return np.stack([g.ravel() for g in grids], axis=-1), weights.ravel()


def normal_family() -> Family:
    r"""Diagonal Gaussian, ``D = 3``, parameters ``loc`` and ``log_scale``.

    :math:`f(x) = \tfrac12 x^\top A x + b^\top x + c\cos(k^\top x) + e\,\exp(w^\top x)` with a
    full symmetric ``A`` (the coordinates interact). With :math:`x \sim N(\mu, \mathrm{diag}
    \sigma^2)`: :math:`E f = \tfrac12(\mu^\top A\mu + \sum_d A_{dd}\sigma_d^2) + b^\top\mu +
    c\cos(k^\top\mu)e^{-\frac12\sum k_d^2\sigma_d^2} + e\,e^{w^\top\mu + \frac12\sum
    w_d^2\sigma_d^2}`, differentiated by hand. Variances: Gauss-Hermite (40 nodes per
    coordinate) of the per-sample estimates :math:`\nabla f(x)` and
    :math:`\nabla f(x)\,\epsilon\,\sigma` (pathwise), :math:`f(x)\epsilon/\sigma` and
    :math:`f(x)(\epsilon^2 - 1)` (score function).
    """
    loc = np.array([0.4, -0.7, 1.1], np.float32)
    log_scale = np.log(np.array([0.8, 1.2, 0.5], np.float32))
    c: dict[str, Any] = {
        "A": np.array([[1.0, 0.3, -0.2], [0.3, 0.6, 0.4], [-0.2, 0.4, 1.5]]),
        "b": np.array([0.5, -1.0, 0.3]),
        "c": 1.5,
        "k": np.array([0.9, -0.6, 1.2]),
        "e": 0.5,
        "w": np.array([0.3, 0.2, -0.25]),
    }
    params = {"loc": _f32(loc), "log_scale": _f32(log_scale)}
    p = _f64(params)
    mu, sigma = p["loc"], np.exp(p["log_scale"])
    var = sigma**2
    a, b, k, w = c["A"], c["b"], c["k"], c["w"]
    damp = math.exp(-0.5 * float(k**2 @ var))
    mgf = math.exp(float(w @ mu + 0.5 * w**2 @ var))
    expectation = (
        0.5 * (mu @ a @ mu + np.diag(a) @ var)
        + b @ mu
        + c["c"] * math.cos(float(k @ mu)) * damp
        + c["e"] * mgf
    )
    d_loc = a @ mu + b - c["c"] * k * math.sin(float(k @ mu)) * damp + c["e"] * w * mgf
    d_scale = (
        np.diag(a) * sigma
        - c["c"] * math.cos(float(k @ mu)) * damp * k**2 * sigma
        + c["e"] * mgf * w**2 * sigma
    )
    gradient = {"loc": d_loc, "log_scale": d_scale * sigma}

    eps, weights = _gauss_hermite(3, 40)
    x = mu + sigma * eps
    f = _normal_cost_fn(c, np)(x)
    grad_f = _normal_cost_grad(c, x)

    def variance(rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
        return weights @ rows**2 - mean**2

    variances = {
        "pathwise": {
            "loc": variance(grad_f, d_loc),
            "log_scale": variance(grad_f * eps * sigma, gradient["log_scale"]),
        },
        "score_function": {
            "loc": variance(f[:, None] * eps / sigma, d_loc),
            "log_scale": variance(f[:, None] * (eps**2 - 1), gradient["log_scale"]),
        },
    }
    return Family(
        name="Normal",
        params=params,
        dist_builder=_build_normal,
        cost=_normal_cost_fn(c, jnp),
        expectation=float(expectation),
        gradient=gradient,
        variances=variances,
        description="N(loc, exp(log_scale)^2), D=3; f = x'Ax/2 + b'x + 1.5 cos(k'x) + 0.5 exp(w'x)",
        bound_gradients={2: functools.cache(lambda: _normal_bound_gradient(c, mu, sigma))},
    )


def _normal_cost_grad(c: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """``grad f(x)`` of :func:`_normal_cost_fn`, ``[P, D] -> [P, D]``."""
    a, b, k, w = c["A"], c["b"], c["k"], c["w"]
    return x @ a + b - c["c"] * np.sin(x @ k)[:, None] * k + c["e"] * np.exp(x @ w)[:, None] * w


def _normal_bound_gradient(
    c: dict[str, Any], mu: np.ndarray, sigma: np.ndarray, nodes: int = 20
) -> dict[str, np.ndarray]:
    r"""The gradient of the two-sample bound :math:`E[-\log\frac12(e^{-f(x_1)} +
    e^{-f(x_2)})]`, :math:`x_k = \mu + \sigma\epsilon_k`, by the pathwise identity
    :math:`2E[\tilde w_1\nabla_\theta f(x_1)]` with :math:`\tilde w_1 = \sigma(f(x_2) -
    f(x_1))` (logistic), over the tensor Gauss-Hermite rule of the six coordinates
    :math:`(\epsilon_1, \epsilon_2)`: ``nodes`` per coordinate, the inner sum over
    :math:`\epsilon_2` done for each node of :math:`\epsilon_1` (``nodes^6`` terms). 20 nodes
    agree with 28 to 1e-5 absolute (values about 0.5), far below the battery's standard errors
    (about 1e-3)."""
    eps, weights = _gauss_hermite(mu.shape[0], nodes)
    x = mu + sigma * eps
    f = _normal_cost_fn(c, np)(x)
    grad_f = _normal_cost_grad(c, x)
    inner = np.empty_like(f)  # E over x_2 of the logistic weight of x_1, per node of x_1
    for i in range(0, f.shape[0], 2000):
        inner[i : i + 2000] = (1.0 / (1.0 + np.exp(f[i : i + 2000, None] - f[None, :]))) @ weights
    w1 = 2.0 * weights * inner
    return {"loc": w1 @ grad_f, "log_scale": w1 @ (grad_f * eps * sigma)}


def _build_normal(p: dict[str, jax.Array]) -> Normal:
    return Normal.from_log_scale(p["loc"], p["log_scale"])


def _separable_cost_fn(lin: np.ndarray, quad: np.ndarray, xp: Any) -> Callable[[Any], Any]:
    """``f(x) = sum_i lin_i x_i + quad_i x_i^2`` over the last axis."""

    def cost(x: Any) -> Any:
        return xp.sum(xp.asarray(lin) * x + xp.asarray(quad) * x * x, axis=-1)

    return cost


class _Quadrature(NamedTuple):
    """A one-dimensional rule ``E h(X) = sum_i weights_i h(x_i)`` on the uniform grid ``u``
    of a smooth substitution ``x = x(u)`` (``log`` for the Gamma, ``logit`` for the Beta),
    where the density decays exponentially in ``u`` both ways: the trapezoid rule then
    converges geometrically for expectations, and as ``h^2`` for the cumulative integrals of
    the implicit gradient (``h`` about ``5e-4``)."""

    u: np.ndarray
    x: np.ndarray
    weights: np.ndarray
    step: np.ndarray  # h * dx/du at each node

    def mean(self, h: np.ndarray) -> float:
        return float(np.sum(self.weights * h))

    def implicit_gradient(self, score: np.ndarray) -> np.ndarray:
        r"""``dx/dtheta = -(d/dtheta F(x)) / p(x)`` at each node, with
        :math:`\partial_\theta F(x) = \int_{-\infty}^x p\,\partial_\theta\log p
        = -\int_x^\infty p\,\partial_\theta\log p` (the score has mean 0); the integral
        is taken from the nearer end, so that neither tail loses it to cancellation."""
        ws = self.weights * score
        below = np.cumsum(ws) - 0.5 * ws
        above = np.cumsum(ws[::-1])[::-1] - 0.5 * ws
        lower_half = np.cumsum(self.weights) < 0.5
        d_cdf = np.where(lower_half, below, -above)
        safe = self.weights > 1e-280
        density = np.where(safe, self.weights, 1.0) / self.step
        return np.where(safe, -d_cdf / density, 0.0)


def _quadrature(
    log_density_u: Callable[[np.ndarray], np.ndarray],
    lo: float,
    hi: float,
    x_of_u: Callable[[np.ndarray], np.ndarray],
    dxdu: Callable[[np.ndarray], np.ndarray],
) -> _Quadrature:
    u = np.linspace(lo, hi, 50_001)
    h = u[1] - u[0]
    lw = log_density_u(u)
    w = np.exp(lw - lw.max())
    w = w / w.sum()
    return _Quadrature(u, x_of_u(u), w, h * dxdu(u))


def _agree(quadrature: np.ndarray, exact: np.ndarray, what: str) -> None:
    """The quadrature's mean of a per-sample estimate must equal the closed-form gradient
    (a guard on both: they share no code)."""
    if not np.allclose(quadrature, exact, rtol=1e-6, atol=1e-8):
        raise AssertionError(f"{what}: quadrature {quadrature} != closed form {exact}")


def _separable_variances(
    quads: list[_Quadrature],
    lin: np.ndarray,
    quad: np.ndarray,
    scores: Mapping[str, Callable[[int, _Quadrature], np.ndarray]],
    dx: Mapping[str, Callable[[int, _Quadrature], np.ndarray]] | None,
    gradient: dict[str, np.ndarray],
) -> dict[str, dict[str, np.ndarray]]:
    r"""Exact per-sample variances for ``f = sum_i q_i(x_i)``, independent coordinates.

    Score function, parameter of coordinate ``j`` with score ``s(x_j)``: with
    :math:`R = \sum_{i\ne j} q_i(x_i)` independent of :math:`x_j`,
    :math:`E[(f s)^2] = E[q_j^2 s^2] + 2E[R]E[q_j s^2] + E[R^2]E[s^2]`. Pathwise (when ``dx``
    gives :math:`\partial x_j/\partial\theta_j` at the nodes): :math:`q_j'(x_j)\,\partial
    x_j/\partial\theta_j`.
    """
    q = [lin[i] * qd.x + quad[i] * qd.x**2 for i, qd in enumerate(quads)]
    eq = np.array([qd.mean(qi) for qd, qi in zip(quads, q, strict=True)])
    varq = np.array([qd.mean(qi**2) for qd, qi in zip(quads, q, strict=True)]) - eq**2
    out: dict[str, dict[str, np.ndarray]] = {"score_function": {}}
    if dx is not None:
        out["pathwise"] = {}
    for name in scores:
        sf, sf_mean, pw, pw_mean = [], [], [], []
        for j, qd in enumerate(quads):
            s = scores[name](j, qd)
            r_mean = eq.sum() - eq[j]
            r_second = varq.sum() - varq[j] + r_mean**2
            second = qd.mean(q[j] ** 2 * s**2) + 2 * r_mean * qd.mean(q[j] * s**2)
            sf.append(second + r_second * qd.mean(s**2))
            sf_mean.append(qd.mean(q[j] * s))
            if dx is not None:
                g = (lin[j] + 2 * quad[j] * qd.x) * dx[name](j, qd)
                pw.append(qd.mean(g**2))
                pw_mean.append(qd.mean(g))
        _agree(np.array(sf_mean), gradient[name], f"score function d/d{name}")
        out["score_function"][name] = np.array(sf) - gradient[name] ** 2
        if dx is not None:
            _agree(np.array(pw_mean), gradient[name], f"pathwise d/d{name}")
            out["pathwise"][name] = np.array(pw) - gradient[name] ** 2
    return out


def _gamma_quadrature(concentration: float, rate: float = 1.0) -> _Quadrature:
    """Gamma(concentration, rate) in ``u = log x``: log density ``a u - rate e^u``."""
    mode = math.log(concentration / rate)
    return _quadrature(
        lambda u: concentration * u - rate * np.exp(u),
        mode - 70.0 / concentration,
        mode + 6.0,
        np.exp,
        np.exp,
    )


def _coarse(qd: _Quadrature, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``every``-th node of ``qd`` and its weight (the same rule, a coarser step:
    still geometrically convergent for expectations)."""
    w = qd.weights[::every]
    return np.arange(qd.u.shape[0])[::every], w / w.sum()


def gamma_family() -> Family:
    r"""Gamma(concentration, rate), three independent coordinates.

    :math:`f(x) = \sum_i b_i x_i + a_i x_i^2`; :math:`E x = \alpha/\beta`,
    :math:`E x^2 = \alpha(\alpha+1)/\beta^2`. Variances by quadrature in :math:`u = \log x`
    (scores :math:`\log x - E\log x` and :math:`\alpha/\beta - x`; the pathwise derivative
    :math:`\partial x/\partial\beta = -x/\beta` and, for the concentration, the implicit
    :math:`-\partial_\alpha F(x)/p(x)`).
    """
    params = {"concentration": _f32([1.5, 2.5, 4.0]), "rate": _f32([1.0, 2.0, 0.7])}
    lin, quad = np.array([1.0, -0.5, 0.3]), np.array([0.4, 0.8, -0.1])
    p = _f64(params)
    al, be = p["concentration"], p["rate"]
    expectation = float(np.sum(lin * al / be + quad * al * (al + 1) / be**2))
    gradient = {
        "concentration": lin / be + quad * (2 * al + 1) / be**2,
        "rate": -lin * al / be**2 - 2 * quad * al * (al + 1) / be**3,
    }
    quads = [_gamma_quadrature(a_i, b_i) for a_i, b_i in zip(al, be, strict=True)]
    log_x = [qd.mean(qd.u) for qd in quads]
    variances = _separable_variances(
        quads,
        lin,
        quad,
        scores={
            "concentration": lambda j, qd: qd.u - log_x[j],
            "rate": lambda j, qd: al[j] / be[j] - qd.x,
        },
        dx={
            "concentration": lambda j, qd: qd.implicit_gradient(qd.u - log_x[j]),
            "rate": lambda j, qd: -qd.x / be[j],
        },
        gradient=gradient,
    )
    return Family(
        name="Gamma",
        params=params,
        dist_builder=lambda q: Gamma(q["concentration"], q["rate"]),
        cost=_separable_cost_fn(lin, quad, jnp),
        expectation=expectation,
        gradient=gradient,
        variances=variances,
        description="Gamma(concentration, rate), 3 coordinates; f = sum b_i x_i + a_i x_i^2",
    )


def _softplus(u: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, u)


def _beta_quadrature(a: float, b: float) -> _Quadrature:
    """Beta(a, b) in ``u = logit x``: log density ``-a softplus(-u) - b softplus(u)``."""
    return _quadrature(
        lambda u: -a * _softplus(-u) - b * _softplus(u),
        -70.0 / a - 5.0,
        70.0 / b + 5.0,
        lambda u: 1.0 / (1.0 + np.exp(-u)),
        lambda u: np.exp(-_softplus(-u) - _softplus(u)),
    )


def beta_family() -> Family:
    r"""Beta(a, b), three independent coordinates.

    :math:`f(x) = \sum_i c_i x_i + d_i x_i^2`; :math:`E x = a/(a+b)`,
    :math:`E x^2 = a(a+1)/((a+b)(a+b+1))`. Variances by quadrature in :math:`u = \mathrm{logit}
    x` (scores :math:`\log x - E\log x`, :math:`\log(1-x) - E\log(1-x)`; implicit pathwise
    derivatives :math:`-\partial F/p` for both parameters).
    """
    params = {"a": _f32([0.8, 2.0, 3.5]), "b": _f32([1.5, 2.5, 1.2])}
    lin, quad = np.array([1.5, -2.0, 0.7]), np.array([1.0, 2.5, -1.5])
    p = _f64(params)
    a, b = p["a"], p["b"]
    s = a + b
    expectation = float(np.sum(lin * a / s + quad * a * (a + 1) / (s * (s + 1))))
    d_mean = {"a": b / s**2, "b": -a / s**2}
    second = a * (a + 1) / (s * (s + 1))
    d_second = {
        "a": (2 * a + 1) / (s * (s + 1)) - second * (2 * s + 1) / (s * (s + 1)),
        "b": -second * (2 * s + 1) / (s * (s + 1)),
    }
    gradient = {k: lin * d_mean[k] + quad * d_second[k] for k in ("a", "b")}
    quads = [_beta_quadrature(float(a_i), float(b_i)) for a_i, b_i in zip(a, b, strict=True)]
    # log x and log(1 - x) on the grid, without cancellation.
    logs = [(-_softplus(-qd.u), -_softplus(qd.u)) for qd in quads]
    means = [(qd.mean(lx), qd.mean(l1x)) for qd, (lx, l1x) in zip(quads, logs, strict=True)]

    def score(name: str) -> Callable[[int, _Quadrature], np.ndarray]:
        i = 0 if name == "a" else 1
        return lambda j, qd: logs[j][i] - means[j][i]

    variances = _separable_variances(
        quads,
        lin,
        quad,
        scores={"a": score("a"), "b": score("b")},
        dx=None,
        gradient=gradient,
    )
    variances["pathwise"] = _beta_pathwise_variances(a, b, lin, quad, gradient)
    return Family(
        name="Beta",
        params=params,
        dist_builder=lambda q: Beta(q["a"], q["b"]),
        cost=_separable_cost_fn(lin, quad, jnp),
        expectation=expectation,
        gradient=gradient,
        variances=variances,
        description="Beta(a, b), 3 coordinates; f = sum c_i x_i + d_i x_i^2",
    )


def _beta_pathwise_variances(
    a: np.ndarray, b: np.ndarray, lin: np.ndarray, quad: np.ndarray, gradient: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    r"""Per-sample variances of OUR pathwise Beta estimator, which differentiates
    :math:`x = G_a / (G_a + G_b)` through two Gamma draws :math:`G_a \sim \Gamma(a, 1)`,
    :math:`G_b \sim \Gamma(b, 1)` with their implicit gradients (not the Beta's own CDF):
    :math:`\partial x/\partial a = G_b (G_a + G_b)^{-2}\,\partial G_a/\partial a`, and
    symmetrically for ``b``; a two-dimensional quadrature over the two draws."""
    out: dict[str, list[float]] = {"a": [], "b": []}
    means: dict[str, list[float]] = {"a": [], "b": []}
    for j in range(a.shape[0]):
        qa, qb = _gamma_quadrature(a[j]), _gamma_quadrature(b[j])
        dga = qa.implicit_gradient(qa.u - qa.mean(qa.u))
        dgb = qb.implicit_gradient(qb.u - qb.mean(qb.u))
        ia, wa = _coarse(qa, 125)
        ib, wb = _coarse(qb, 125)
        ga, gb = qa.x[ia][:, None], qb.x[ib][None, :]
        x = ga / (ga + gb)
        dq = lin[j] + 2 * quad[j] * x
        w = wa[:, None] * wb[None, :]
        for name, g in (
            ("a", dq * gb / (ga + gb) ** 2 * dga[ia][:, None]),
            ("b", -dq * ga / (ga + gb) ** 2 * dgb[ib][None, :]),
        ):
            out[name].append(float(np.sum(w * g**2)))
            means[name].append(float(np.sum(w * g)))
    for name in out:
        _agree(np.array(means[name]), gradient[name], f"pathwise (Gamma draws) d/d{name}")
    return {k: np.array(v) - gradient[k] ** 2 for k, v in out.items()}


def dirichlet_family() -> Family:
    r"""Dirichlet(concentration), one simplex of ``K = 3``.

    :math:`f(x) = \sum_i b_i x_i + a_i x_i^2`; :math:`E x_i = \alpha_i/\alpha_0`,
    :math:`E x_i^2 = \alpha_i(\alpha_i+1)/(\alpha_0(\alpha_0+1))`, differentiated by hand.
    No variances (the coordinates are dependent).
    """
    params = {"concentration": _f32([1.2, 2.0, 3.5])}
    lin, quad = np.array([1.0, -0.5, 2.0]), np.array([2.0, -1.0, 1.5])
    al = _f64(params)["concentration"]
    a0 = al.sum()
    second = al * (al + 1) / (a0 * (a0 + 1))
    expectation = float(lin @ (al / a0) + quad @ second)
    eye = np.eye(3)
    d_mean = eye / a0 - al[:, None] / a0**2  # [i, j] = d E x_i / d alpha_j
    d_second = eye * (2 * al + 1)[:, None] / (a0 * (a0 + 1)) - second[:, None] * (2 * a0 + 1) / (
        a0 * (a0 + 1)
    )
    return Family(
        name="Dirichlet",
        params=params,
        dist_builder=lambda q: Dirichlet(q["concentration"]),
        cost=_separable_cost_fn(lin, quad, jnp),
        expectation=expectation,
        gradient={"concentration": lin @ d_mean + quad @ d_second},
        variances={},
        description="Dirichlet(concentration), K=3; f = sum b_i x_i + a_i x_i^2",
    )


def _enumerated(
    outcomes: np.ndarray, log_probs: np.ndarray, f: np.ndarray, scores: np.ndarray, name: str
) -> tuple[float, dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """``E f``, the gradient ``sum_x p f s`` and the score function's variance, exactly."""
    p = np.exp(log_probs)
    g = np.tensordot(p * f, scores, axes=1)
    var = np.tensordot(p * f**2, scores**2, axes=1) - g**2
    return float(p @ f), {name: g}, {"score_function": {name: var}}


def _enumerated_bound_gradient(
    log_probs: np.ndarray, f: np.ndarray, scores: np.ndarray, name: str, k: int
) -> dict[str, np.ndarray]:
    r"""The gradient of :math:`E_{p^K}[-\log\frac1K\sum_k e^{-f(x_k)}]` by enumerating the
    ``n^K`` tuples of ``n`` outcomes: :math:`\sum p(x_{1:K})\,(-\hat L)\sum_k s(x_k)` (the
    score identity; ``f`` does not depend on the parameters)."""
    n = log_probs.shape[0]
    idx = np.indices((n,) * k).reshape(k, -1)  # [K, n^K]
    p = np.exp(log_probs[idx].sum(0))
    value = -(np.logaddexp.reduce(-f[idx], axis=0) - math.log(k))
    score_sum = scores[idx].sum(0)  # [n^K, *leaf]
    return {name: np.tensordot(p * value, score_sum, axes=1)}


def _enumerated_bounds(
    log_probs: np.ndarray, f: np.ndarray, scores: np.ndarray, name: str
) -> dict[int, Callable[[], dict[str, np.ndarray]]]:
    """``{K: cached bound gradient}`` for ``K = 2, 3`` while ``n^K <= 5000`` tuples."""
    return {
        k: functools.cache(
            functools.partial(_enumerated_bound_gradient, log_probs, f, scores, name, k)
        )
        for k in (2, 3)
        if log_probs.shape[0] ** k <= 5000
    }


def _bernoulli_cost_fn(c: dict[str, np.ndarray], xp: Any) -> Callable[[Any], Any]:
    def cost(x: Any) -> Any:
        x = x * 1.0
        return (
            x @ xp.asarray(c["b"])
            + 0.5 * (x @ xp.asarray(c["v"])) ** 2
            + xp.cos(x @ xp.asarray(c["k"]))
        )

    return cost


def bernoulli_family() -> Family:
    r"""Bernoulli(sigmoid(logits)), four independent bits; exact by enumerating 16 outcomes.

    :math:`f(x) = b^\top x + \tfrac12(v^\top x)^2 + \cos(k^\top x)`; score
    :math:`x - \sigma(\ell)`.
    """
    params = {"logits": _f32([0.3, -1.0, 1.5, 0.0])}
    c = {
        "b": np.array([1.0, -2.0, 0.5, 1.5]),
        "v": np.array([0.7, 1.0, -0.8, 0.4]),
        "k": np.array([1.0, 2.0, -0.5, 0.8]),
    }
    logits = _f64(params)["logits"]
    xs = np.array(np.meshgrid(*([[0.0, 1.0]] * 4), indexing="ij")).reshape(4, -1).T
    log_probs = np.sum(xs * logits - np.logaddexp(0.0, logits), axis=1)
    scores = xs - 1 / (1 + np.exp(-logits))
    f = _bernoulli_cost_fn(c, np)(xs)
    expectation, gradient, variances = _enumerated(xs, log_probs, f, scores, "logits")
    return Family(
        name="Bernoulli",
        params=params,
        dist_builder=lambda q: Bernoulli(q["logits"]),
        cost=_bernoulli_cost_fn(c, jnp),
        expectation=expectation,
        gradient=gradient,
        variances=variances,
        description="Bernoulli(sigmoid(logits)), 4 bits; f = b'x + (v'x)^2/2 + cos(k'x)",
        bound_gradients=_enumerated_bounds(log_probs, f, scores, "logits"),
    )


_CATEGORICAL_TABLE = np.array([[1.0, -0.5, 2.0], [0.3, 1.7, -1.2], [2.5, 0.0, 0.8]])


def _categorical_cost(x: jax.Array) -> jax.Array:
    return jnp.asarray(_CATEGORICAL_TABLE, jnp.float32)[x[0], x[1]]


def categorical_family() -> Family:
    r"""Two independent Categorical(softmax(logits[b])) over 3 classes; exact by enumerating
    the 9 outcomes. :math:`f(x) = T[x_0, x_1]` for a fixed table ``T``; score
    :math:`1[x_b = k] - p_{bk}`."""
    params = {"logits": _f32([[0.2, -0.5, 1.0], [1.2, 0.0, -0.7]])}
    logits = _f64(params)["logits"]
    log_p = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    xs = np.array([(i, j) for i in range(3) for j in range(3)])
    log_probs = log_p[0, xs[:, 0]] + log_p[1, xs[:, 1]]
    onehot = np.eye(3)[xs]  # [9, 2, 3]
    scores = onehot - np.exp(log_p)[None]
    f = _CATEGORICAL_TABLE[xs[:, 0], xs[:, 1]]
    expectation, gradient, variances = _enumerated(xs, log_probs, f, scores, "logits")
    return Family(
        name="Categorical",
        params=params,
        dist_builder=lambda q: Categorical(q["logits"]),
        cost=_categorical_cost,
        expectation=expectation,
        gradient=gradient,
        variances=variances,
        description="2 x Categorical(softmax(logits)), 3 classes; f = T[x0, x1]",
        bound_gradients=_enumerated_bounds(log_probs, f, scores, "logits"),
    )


_BUILDERS: dict[str, Callable[[], Family]] = {
    "Normal": normal_family,
    "Gamma": gamma_family,
    "Beta": beta_family,
    "Dirichlet": dirichlet_family,
    "Bernoulli": bernoulli_family,
    "Categorical": categorical_family,
}
FAMILY_NAMES: tuple[str, ...] = tuple(_BUILDERS)


@functools.cache
def family(name: str) -> Family:
    """The family called ``name`` (one of :data:`FAMILY_NAMES`), built once."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILY_NAMES)}")
    return _BUILDERS[name]()


def all_families() -> tuple[Family, ...]:
    """Every family, in the order of :data:`FAMILY_NAMES`."""
    return tuple(family(n) for n in FAMILY_NAMES)


def families(estimator: GradientEstimator | str) -> tuple[Family, ...]:
    """The families whose distribution ``estimator`` supports (``estimator.supports``) and
    whose exact answer for it is known: for an estimator of objective ``"log_mean_exp"`` with
    ``K = min_samples >= 2``, the families that carry the ``K``-sample bound's gradient
    (:func:`bound_gradient`: Bernoulli and Categorical by enumeration, the Normal for ``K =
    2`` by quadrature; not the Gamma, Beta or Dirichlet)."""
    est = _resolve(estimator)
    return tuple(
        f
        for f in all_families()
        if est.supports(f.dist_builder(f.params))
        and (est.objective != "log_mean_exp" or _bound_known(f, est.min_samples))
    )


def _bound_known(fam: Family, num_samples: int) -> bool:
    return num_samples == 1 or num_samples in fam.bound_gradients


def bound_gradient(fam: Family | str, num_samples: int) -> dict[str, np.ndarray] | None:
    r"""The exact gradient of the ``K``-sample bound, ``K = num_samples``:

    .. math:: \nabla_\theta E_{p(x;\theta)^K}\Big[-\log\frac1K\sum_{k=1}^K
              e^{-f(x_k)}\Big]

    (the ``"log_mean_exp"`` objective; for ``K = 1`` it is ``fam.gradient``), a dict like
    ``params`` (float64), or ``None`` where the family does not know it. Known: the Bernoulli
    (16 outcomes) and Categorical (9) families for ``K = 2, 3`` by enumerating the ``n^K``
    tuples; the Normal for ``K = 2`` by a tensor Gauss-Hermite rule over the six coordinates of
    the two samples (:func:`_normal_bound_gradient`). The Gamma, Beta and Dirichlet families
    have none: their ``3 K``-dimensional integrals of non-polynomial scores are not exact on a
    tensor rule of affordable size.

    Example (the bound over two samples is tighter than ``E f``; its gradient differs):
      >>> from estimators import testing
      >>> g2 = testing.bound_gradient("Bernoulli", 2)["logits"]
      >>> g1 = testing.family("Bernoulli").gradient["logits"]
      >>> bool(abs(g2 - g1).max() > 0.01), testing.bound_gradient("Gamma", 2)
      (True, None)
    """
    fam = _family(fam)
    if num_samples == 1:
        return fam.gradient
    exact = fam.bound_gradients.get(num_samples)
    return None if exact is None else exact()


# --- Running an estimator on a family ------------------------------------------------------


def _resolve(estimator: GradientEstimator | str) -> GradientEstimator:
    if isinstance(estimator, str):
        from . import registry

        return registry.get(estimator)
    if not isinstance(estimator, GradientEstimator):
        raise TypeError(
            "estimator must be a GradientEstimator (see estimators.gradient_estimator) or a "
            f"registry spec; got {type(estimator).__name__}"
        )
    return estimator


def _family(fam: Family | str) -> Family:
    return family(fam) if isinstance(fam, str) else fam


def _plan(
    est: GradientEstimator, num_samples: int | None, num_calls: int | None
) -> tuple[int, int]:
    """Samples per call and independent calls (see :func:`check_unbiased`)."""
    if est.objective == "log_mean_exp" and num_samples is None:
        num_samples = est.min_samples  # the K of the bound: known exactly for few K
    if num_samples is None:
        num_samples = max(est.min_samples, 4) if est.multi_sample else 1000
    if num_calls is None:
        num_calls = max(20, 20_000 // num_samples)
    if est.multi_sample and num_calls < 30:
        raise ValueError(
            f"{est.name!r} uses its samples jointly, so its standard error comes from "
            f"independent calls: num_calls must be >= 30; got {num_calls}"
        )
    return num_samples, num_calls


def warm_state(
    estimator: GradientEstimator, fam: Family, key: jax.Array, *, num_samples: int, steps: int = 3
) -> Any:
    """``estimator.init()`` updated ``steps`` times with the costs of fresh samples drawn with
    independent keys, and those draws' :class:`EstimateInputs` (so that a stateful estimator,
    an adaptive one too, is checked in a state it reaches in use)."""
    state = estimator.init()
    if not jax.tree.leaves(state):
        return state
    dist = fam.dist_builder(fam.params)

    @jax.jit  # one compile for the steps (an adaptive update run eagerly is many dispatches)
    def step(state: Any, k: jax.Array) -> Any:
        xs = draw_samples(dist, k, num_samples)
        inputs = EstimateInputs(fam.cost, fam.params, fam.dist_builder, k, num_samples)
        return estimator.update(state, jax.vmap(fam.cost)(xs), inputs=inputs)

    for i in range(steps):
        state = step(state, jax.random.fold_in(key, 0x57A7E + i))
    return state


# Compiled programs of ``estimates``, by (estimator, family, sample counts): a second check of
# the same pair (another key, the variance after the mean) runs without recompiling. The family
# object is kept in the value, so its id is not reused while the entry lives.
_PROGRAMS: dict[tuple[Any, ...], tuple[Family, Callable[..., Any]]] = {}
_MAX_PROGRAMS = 256


def _program(est: GradientEstimator, fam: Family, num_samples: int) -> Callable[..., Any]:
    cache_key = (est, id(fam), num_samples)
    if cache_key not in _PROGRAMS:

        def one(k: jax.Array, state: Any) -> Any:
            return est.per_sample(
                fam.cost, fam.params, fam.dist_builder, k, num_samples=num_samples, state=state
            )

        if len(_PROGRAMS) >= _MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[cache_key] = (fam, jax.jit(jax.vmap(one, in_axes=(0, None))))
    return _PROGRAMS[cache_key][1]


def estimates(
    estimator: GradientEstimator | str,
    fam: Family | str,
    key: jax.Array,
    *,
    num_samples: int,
    num_calls: int,
    state: Any = None,
) -> dict[str, np.ndarray]:
    """``num_calls`` independent calls of ``per_sample`` (keys ``split(key, num_calls)``), in
    one jitted program: a dict like ``params`` with leaves ``[num_calls, num_samples,
    *leaf.shape]`` (float64). ``state`` defaults to :func:`warm_state`."""
    est, fam = _resolve(estimator), _family(fam)
    if state is None:
        state = warm_state(est, fam, key, num_samples=num_samples)
    out = _program(est, fam, num_samples)(jax.random.split(key, num_calls), state)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def bonferroni_z(num_checks: int, alpha: float = ALPHA) -> float:
    """Two-sided z holding the probability that any of ``num_checks`` checks fails by chance
    at ``alpha``: :math:`\\Phi^{-1}(1 - \\alpha / (2m))`."""
    return -statistics.NormalDist().inv_cdf(alpha / (2 * num_checks))


# --- Unbiasedness ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UnbiasednessReport:
    """The outcome of :func:`check_unbiased`: per parameter leaf, arrays of the leaf's shape.

    ``mean`` is the mean of all estimates, ``se`` its standard error, ``expected`` the exact
    gradient (plus a documented bias, if one was given), ``slack`` the float32 allowance;
    coordinate ``i`` passes when ``|mean_i - expected_i| <= z se_i + slack_i``.
    """

    estimator: str
    family: str
    num_samples: int
    num_calls: int
    se_from: str  # "rows" (independent samples) or "calls" (multi-sample estimators)
    z: float
    alpha: float
    mean: dict[str, np.ndarray]
    se: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    slack: dict[str, np.ndarray]
    note: str = ""

    @property
    def num_checks(self) -> int:
        return sum(int(np.size(v)) for v in self.mean.values())

    def failures(self, scale: float = 1.0) -> list[str]:
        """One line per coordinate that fails, for the estimates multiplied by ``scale`` (a
        deliberately biased estimator: shows that the check has power)."""
        out = []
        for leaf in self.mean:
            mean, se = scale * self.mean[leaf], abs(scale) * self.se[leaf]
            err = np.abs(mean - self.expected[leaf])
            bound = self.z * se + self.slack[leaf]
            bad = ~(err <= bound)  # NaN fails
            arrays = (mean, self.expected[leaf], se, self.slack[leaf])
            for idx in zip(*np.nonzero(np.atleast_1d(bad)), strict=True):
                m, e, s, sl = (float(np.atleast_1d(a)[idx]) for a in arrays)
                ratio = abs(m - e) / s if s > 0 else math.inf
                out.append(
                    f"{self.estimator} on {self.family}: d/d{leaf}{list(idx)}: mean {m:.6g}, "
                    f"exact {e:.6g}, |mean - exact|/SE = {ratio:.2f} > bound z = {self.z:.2f} "
                    f"(+ float slack {sl:.2g}; Bonferroni over {self.num_checks} coordinates, "
                    f"alpha = {self.alpha})"
                )
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def worst(self) -> float:
        """The largest ``|mean - expected| / SE`` over the coordinates."""
        ratios = [
            np.abs(self.mean[k] - self.expected[k]) / np.maximum(self.se[k], 1e-300)
            for k in self.mean
        ]
        return float(max(np.max(r) for r in ratios))

    def __str__(self) -> str:
        lines = [
            f"{self.estimator} on {self.family}: {self.num_calls} calls x {self.num_samples} "
            f"samples, SE from {self.se_from}, z = {self.z:.2f} ({self.num_checks} coordinates)"
            + (f"; {self.note}" if self.note else "")
        ]
        for leaf in self.mean:
            for idx in np.ndindex(np.shape(self.mean[leaf])):
                m, s, e = self.mean[leaf][idx], self.se[leaf][idx], self.expected[leaf][idx]
                lines.append(
                    f"  d/d{leaf}{list(idx)}: {m:+.5g} +- {s:.2g} (exact {e:+.5g}, "
                    f"{abs(m - e) / s if s > 0 else 0.0:.2f} SE)"
                )
        return "\n".join(lines)


def unbiasedness_report(
    estimator: GradientEstimator | str,
    fam: Family | str,
    *,
    key: jax.Array,
    num_samples: int | None = None,
    num_calls: int | None = None,
    alpha: float = ALPHA,
    bias: Mapping[str, Any] | None = None,
) -> UnbiasednessReport:
    """:func:`check_unbiased` without the assertion: the report, pass or fail."""
    est, fam = _resolve(estimator), _family(fam)
    est.check(fam.dist_builder(fam.params), num_samples or est.min_samples)
    num_samples, num_calls = _plan(est, num_samples, num_calls)
    _expected_gradient(est, fam, num_samples)  # known? (before drawing)
    rows = estimates(est, fam, key, num_samples=num_samples, num_calls=num_calls)
    return report_from_estimates(est, fam, rows, alpha=alpha, bias=bias)


def _expected_gradient(est: GradientEstimator, fam: Family, num_samples: int) -> dict[str, Any]:
    """The exact gradient ``est`` estimates on ``fam`` with ``num_samples`` samples per call."""
    if est.objective != "log_mean_exp":
        return fam.gradient
    exact = bound_gradient(fam, num_samples)
    if exact is None:
        known = sorted({1, *fam.bound_gradients})
        raise ValueError(
            f"{est.name!r} estimates the gradient of the {num_samples}-sample bound "
            f"(objective log_mean_exp), which the family {fam.name!r} knows exactly only for "
            f"num_samples in {known}"
        )
    return exact


def report_from_estimates(
    estimator: GradientEstimator,
    fam: Family,
    rows: Mapping[str, Any],
    *,
    alpha: float = ALPHA,
    bias: Mapping[str, Any] | None = None,
) -> UnbiasednessReport:
    """The :class:`UnbiasednessReport` of estimates already drawn.

    Args:
      rows: a dict like ``params`` with leaves ``[num_calls, num_samples, *leaf.shape]`` from
        independent calls (:func:`estimates`). For a ``multi_sample`` estimator the SE comes
        from the per-call means, otherwise from all rows.
    """
    est = estimator
    rows = {k: np.asarray(v, np.float64) for k, v in rows.items()}
    num_calls, num_samples = next(iter(rows.values())).shape[:2]
    if est.multi_sample:
        stat = {k: v.mean(axis=1) for k, v in rows.items()}  # [C, *leaf]
        n, se_from = num_calls, "calls"
    else:
        stat = {k: v.reshape(-1, *v.shape[2:]) for k, v in rows.items()}
        n, se_from = num_calls * num_samples, "rows"
    if n < 2:
        raise ValueError(f"{est.name!r}: the standard error needs >= 2 independent {se_from}")
    mean = {k: v.mean(0) for k, v in stat.items()}
    se = {k: v.std(0, ddof=1) / math.sqrt(n) for k, v in stat.items()}
    if bias is None and not est.unbiased:
        raise ValueError(
            f"{est.name!r} is declared biased (unbiased=False): pass its documented bias as "
            "bias={leaf: array} to check the estimate against exact + bias"
        )
    exact = _expected_gradient(est, fam, int(num_samples))
    expected = {
        k: np.asarray(exact[k], np.float64) + (0.0 if bias is None else np.asarray(bias[k]))
        for k in mean
    }
    slack = {k: FLOAT_RTOL * (np.abs(expected[k]) + np.abs(stat[k]).mean(0)) for k in mean}
    num_checks = sum(int(np.size(v)) for v in mean.values())
    note = (
        f"objective log_mean_exp: against the exact gradient of the {num_samples}-sample bound"
        if est.objective == "log_mean_exp"
        else ""
    )
    return UnbiasednessReport(
        estimator=est.name,
        family=fam.name,
        num_samples=int(num_samples),
        num_calls=int(num_calls),
        se_from=se_from,
        z=bonferroni_z(num_checks, alpha),
        alpha=alpha,
        mean=mean,
        se=se,
        expected=expected,
        slack=slack,
        note=note,
    )


def check_unbiased(
    estimator: GradientEstimator | str,
    family: Family | str,
    *,
    key: jax.Array,
    num_samples: int | None = None,
    num_calls: int | None = None,
    alpha: float = ALPHA,
    bias: Mapping[str, Any] | None = None,
) -> UnbiasednessReport:
    r"""Check that ``estimator`` is unbiased on ``family``; raise ``AssertionError`` if not.

    The estimator is called ``num_calls`` times with ``num_samples`` samples each (keys
    ``jax.random.split(key, num_calls)``, one jitted program). Its estimates' mean is compared
    with the exact gradient coordinate by coordinate: coordinate :math:`i` fails when
    :math:`|\bar g_i - g_i| > z\,\mathrm{SE}_i` (plus a float32 allowance of ``1e-5``
    relative), with :math:`z = \Phi^{-1}(1 - \alpha/(2m))` for the ``m`` coordinates
    (Bonferroni: a correct estimator fails with probability at most ``alpha``). The standard
    error comes from the rows (independent samples) or, for an estimator that uses its
    samples jointly (``multi_sample``), from the ``num_calls`` per-call means. A stateful
    estimator is run in the state :func:`warm_state` gives; an estimator of the
    ``log_mean_exp`` objective is compared with the gradient of the ``num_samples``-sample
    bound (:func:`bound_gradient`).

    Args:
      estimator: a :class:`estimators.GradientEstimator` or a registry spec
        (``"score_function+loo"``, ``"mypkg.mod:my_estimator"``).
      family: a :class:`Family` or its name (see :func:`families`).
      key: PRNG key.
      num_samples: samples per call (default: 1000; ``max(min_samples, 4)`` for
        multi-sample estimators; ``min_samples`` for ``log_mean_exp``, the ``K`` of the bound).
      num_calls: independent calls (default ``max(20, 20000 // num_samples)``).
      alpha: family-wise false-alarm probability.
      bias: for an estimator declared biased, its documented bias (a dict like ``params``);
        the estimate is then checked against ``gradient + bias``.

    Returns:
      The :class:`UnbiasednessReport` (mean, SE and exact value per coordinate).

    Raises:
      AssertionError: naming each failing coordinate, its ``|mean - exact| / SE`` and ``z``.
      ValueError: the estimator does not support the family's distribution, or the sample
        counts do not suit it.

    Example:
      >>> import jax
      >>> from estimators import testing
      >>> r = testing.check_unbiased("score_function", "Bernoulli", key=jax.random.key(1),
      ...                            num_samples=4000, num_calls=5)
      >>> r.num_checks, r.se_from
      (4, 'rows')
    """
    report = unbiasedness_report(
        estimator,
        family,
        key=key,
        num_samples=num_samples,
        num_calls=num_calls,
        alpha=alpha,
        bias=bias,
    )
    bad = report.failures()
    if bad:
        raise AssertionError(
            f"{len(bad)} of {report.num_checks} coordinates exceed the bound:\n" + "\n".join(bad)
        )
    return report


# --- Variance -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VarianceReport:
    """The outcome of :func:`compare_variance`, per parameter leaf (arrays of its shape).

    ``variance`` is the estimator's per-sample variance (for a multi-sample estimator:
    ``num_samples`` times the variance of one call's mean, so that it compares with a
    single-sample variance at equal samples), ``se`` its standard error, ``exact`` the exact
    per-sample variances of this package's estimators by name, ``cost_evaluations`` the
    evaluations of ``f`` per sample of each (for comparisons per cost).
    """

    estimator: str
    family: str
    num_samples: int
    num_calls: int
    variance: dict[str, np.ndarray]
    se: dict[str, np.ndarray]
    exact: Mapping[str, dict[str, np.ndarray]]
    cost_evaluations: Mapping[str, int]

    def __str__(self) -> str:
        names = list(self.exact)
        width = max(24, len(self.estimator) + 2)
        head = f"{'coordinate':<22}{self.estimator:>{width}}" + "".join(f"{n:>16}" for n in names)
        lines = [
            f"per-sample variance on {self.family} ({self.num_calls} calls x "
            f"{self.num_samples} samples; evaluations of f per sample: "
            + ", ".join(f"{k} {v}" for k, v in self.cost_evaluations.items())
            + ")",
            head,
        ]
        for leaf in self.variance:
            for idx in np.ndindex(np.shape(self.variance[leaf])):
                v, s = self.variance[leaf][idx], self.se[leaf][idx]
                mine = f"{v:.4g} +- {s:.2g}"
                lines.append(
                    f"{'d/d' + leaf + str(list(idx)):<22}{mine:>{width}}"
                    + "".join(f"{self.exact[n][leaf][idx]:>16.4g}" for n in names)
                )
        return "\n".join(lines)


def _variance_se(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased sample variance along axis 0 and its standard error (fourth moment)."""
    n = s.shape[0]
    d = s - s.mean(0)
    var = np.sum(d**2, 0) / (n - 1)
    m4 = np.mean(d**4, 0)
    return var, np.sqrt(np.maximum(m4 - var**2 * (n - 3) / (n - 1), 0.0) / n)


def compare_variance(
    estimator: GradientEstimator | str,
    family: Family | str,
    *,
    key: jax.Array,
    num_samples: int | None = None,
    num_calls: int | None = None,
) -> VarianceReport:
    """The estimator's per-sample variance on ``family`` next to the exact ones of ours.

    Same sampling as :func:`check_unbiased`. Print the report for a table.

    Returns:
      A :class:`VarianceReport`; ``variance[leaf]``, ``se[leaf]`` and
      ``exact[name][leaf]`` have the shape of ``params[leaf]``.

    Example:
      >>> import jax
      >>> from estimators import testing
      >>> r = testing.compare_variance("pathwise", "Normal", key=jax.random.key(0),
      ...                              num_samples=2000, num_calls=10)
      >>> sorted(r.exact), r.variance["loc"].shape
      (['pathwise', 'score_function'], (3,))
    """
    est, fam = _resolve(estimator), _family(family)
    est.check(fam.dist_builder(fam.params), num_samples or est.min_samples)
    num_samples, num_calls = _plan(est, num_samples, num_calls)
    rows = estimates(est, fam, key, num_samples=num_samples, num_calls=num_calls)
    return variance_from_estimates(est, fam, rows)


def variance_from_estimates(
    estimator: GradientEstimator, fam: Family, rows: Mapping[str, Any]
) -> VarianceReport:
    """The :class:`VarianceReport` of estimates already drawn (``rows`` as in
    :func:`report_from_estimates`)."""
    est = estimator
    rows = {k: np.asarray(v, np.float64) for k, v in rows.items()}
    num_calls, num_samples = next(iter(rows.values())).shape[:2]
    variance, se = {}, {}
    for k, v in rows.items():
        if est.multi_sample:
            var, s = _variance_se(v.mean(axis=1))
            variance[k], se[k] = num_samples * var, num_samples * s
        else:
            variance[k], se[k] = _variance_se(v.reshape(-1, *v.shape[2:]))
    dim = fam.event_size
    evaluations = {est.name: est.cost_evaluations(dim)}
    evaluations.update({name: 1 for name in fam.variances})
    return VarianceReport(
        estimator=est.name,
        family=fam.name,
        num_samples=int(num_samples),
        num_calls=int(num_calls),
        variance=variance,
        se=se,
        exact=fam.variances,
        cost_evaluations=evaluations,
    )
