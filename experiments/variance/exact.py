r"""Exact single-sample variances of the gradient estimators, by numerical integration (float64).

For :math:`x \sim N(\mu, \sigma^2 I_D)` and a separable cost :math:`f(x) = a + \sum_d
\phi(x_d)` (``costs``), each estimator's per-sample estimate of :math:`\partial
E f / \partial\theta_1` (the first coordinate; all coordinates are alike) is a term :math:`g`;
this module computes :math:`\mathrm{Var}[g] = E[g^2] - (E g)^2` for a batch of costs at once
(rows ``R``: one weight vector and one ``k`` per row). With :math:`\epsilon \sim N(0, 1)`:

- score function, :math:`g = (f(x) - b)\,s` with :math:`s_\mu = \epsilon/\sigma`,
  :math:`s_\sigma = (\epsilon^2 - 1)/\sigma`; ``b = 0``, or the optimal baseline
  :math:`b^* = E[f s^2] / E[s^2]`. The other coordinates enter only through
  :math:`A = a + \sum_{d>1}\phi(x_d)`, independent of :math:`x_1`, whose mean and variance are
  :math:`(D-1)` times those of :math:`\phi` (plus ``a``), so
  :math:`E[g^2] = E[\phi^2 s^2] + 2 E[A - b] E[\phi s^2] + E[(A - b)^2] E[s^2]`;
- pathwise, :math:`g_\mu = \phi'(x_1)`, :math:`g_\sigma = \phi'(x_1)\,\epsilon`;
- measure-valued (Mohamed et al. 2020, table 1), mean:
  :math:`g = c\,[\phi(\mu + \sigma W) - \phi(\mu - \sigma W')]`, :math:`c = 1/(\sigma\sqrt{2\pi})`,
  :math:`W, W' \sim \mathrm{Weibull}(\sqrt 2, 2)` (density :math:`w e^{-w^2/2}`), coupled
  :math:`W' = W`; scale: :math:`g = c\,[\phi(\mu + \sigma M) - \phi(\mu + \sigma\epsilon)]`,
  :math:`c = 1/\sigma`, :math:`M` double-sided Maxwell (density
  :math:`m^2 e^{-m^2/2}/\sqrt{2\pi}`), coupled :math:`\epsilon = M U`, :math:`U \sim U(0, 1)`.
  The other coordinates are shared by both parts and cancel.

Integration rules: composite Gauss-Legendre (panels of 16 nodes) on ``[-CUTOFF, CUTOFF]`` with
the Gaussian density as weight (and the Maxwell density, the same times :math:`m^2`), on
``[0, CUTOFF]`` for the Weibull and on ``[0, 1]`` for the uniform; the coupled Maxwell term is a
tensor-product rule over ``(M, U)``. Gauss-Hermite would be the textbook rule for the Gaussian,
but its nodes are too sparse near the mean to resolve :math:`e^{-k x^2}` at ``k = 10`` (a peak
of width 0.16: 128 and 256 Hermite nodes disagree by 4%), while equal panels resolve it and
converge like Gauss rules on each panel (the tests compare two node counts).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np
from numpy.polynomial import legendre

from .costs import TERMS, term, term_derivative

# The estimators whose variance this module computes, by registry name (``estimators.registry``),
# and the parameters of the Gaussian they differentiate.
ESTIMATORS = (
    "score_function",
    "score_function+optimal",
    "pathwise",
    "measure_valued",
    "measure_valued_uncoupled",
)
PARAMETERS = ("loc", "scale")

# Densities are integrated over [-CUTOFF, CUTOFF] (or [0, CUTOFF]) in standard units: the
# Gaussian, Maxwell and Weibull densities are below 1e-40 beyond it.
CUTOFF = 14.0
PANEL_ORDER = 16
# Rows of the coupled Maxwell rule evaluated at once: memory R_BLOCK * num_nodes^2 float64.
_R_BLOCK = 8


@dataclasses.dataclass(frozen=True)
class Rules:
    """Quadrature nodes and weights (each set of weights sums to 1)."""

    normal_nodes: np.ndarray  # [n] for N(0, 1); also the nodes of the Maxwell rule
    normal_weights: np.ndarray  # [n]
    maxwell_weights: np.ndarray  # [n] double-sided Maxwell on normal_nodes
    weibull_nodes: np.ndarray  # [n] Weibull(sqrt 2, 2) = Rayleigh(1)
    weibull_weights: np.ndarray  # [n]
    uniform_nodes: np.ndarray  # [n // 4] U(0, 1)
    uniform_weights: np.ndarray  # [n // 4]


def composite_legendre(a: float, b: float, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre rule on ``[a, b]``: equal panels of ``PANEL_ORDER`` nodes.

    ``num_nodes`` is rounded up to a multiple of ``PANEL_ORDER``. Returns nodes and weights.
    """
    panels = -(-num_nodes // PANEL_ORDER)
    t, w = legendre.leggauss(PANEL_ORDER)
    edges = np.linspace(a, b, panels + 1)
    half = np.diff(edges)[:, None] / 2
    nodes = (edges[:-1, None] + half * (t + 1)).ravel()
    return nodes, (half * w).ravel()


@functools.lru_cache(maxsize=8)
def rules(num_nodes: int) -> Rules:
    """The integration rules, ``num_nodes`` nodes each (rounded up to panels of 16)."""
    if num_nodes < PANEL_ORDER:
        raise ValueError(f"num_nodes must be >= {PANEL_ORDER}; got {num_nodes}")
    z, wz = composite_legendre(-CUTOFF, CUTOFF, num_nodes)
    wz = wz * np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    r, wr = composite_legendre(0.0, CUTOFF, num_nodes)
    wr = wr * r * np.exp(-0.5 * r**2)
    u, wu = composite_legendre(0.0, 1.0, max(PANEL_ORDER, num_nodes // 4))
    return Rules(
        normal_nodes=z,
        normal_weights=wz,
        maxwell_weights=wz * z**2,
        weibull_nodes=r,
        weibull_weights=wr,
        uniform_nodes=u,
        uniform_weights=wu,
    )


def _rows(values: np.ndarray, ndim: int) -> np.ndarray:
    """``[R]`` -> ``[R, 1, ..., 1]`` with ``ndim`` trailing axes, to broadcast against nodes."""
    return values.reshape(values.shape[0], *([1] * ndim))


def term_sum(x: np.ndarray, weights: np.ndarray, k: np.ndarray, fn: Callable = term) -> np.ndarray:
    """``sum_t weights[:, t] fn_t(x; k)``: nodes ``x`` of any shape S -> ``[R, *S]``."""
    out = np.zeros((k.shape[0], *x.shape))
    kk = _rows(k, x.ndim)
    for i, t in enumerate(TERMS):
        if np.any(weights[:, i] != 0):
            out = out + _rows(weights[:, i], x.ndim) * fn(t, np, x, kk)
    return out


def _mean(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``E[values]`` under weights ``w`` over the trailing axes (``w`` has their shape)."""
    axes = tuple(range(values.ndim - w.ndim, values.ndim))
    return np.sum(values * w, axis=axes)


def _var(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Var[values]`` under weights ``w``, centred first (two passes, no cancellation)."""
    m = _mean(values, w)
    return _mean((values - _rows(m, w.ndim)) ** 2, w)


def score_function_variance(
    phi: np.ndarray,
    w: np.ndarray,
    s: np.ndarray,
    constant: np.ndarray,
    dim: np.ndarray,
    *,
    optimal: bool,
) -> np.ndarray:
    r"""Variance of the score-function estimate :math:`g = (f(x) - b)\,s(x_1)` of the first
    coordinate, for a separable cost and independent, identically distributed coordinates.

    With :math:`A = a + \sum_{d>1}\phi(x_d)` independent of :math:`x_1`,
    :math:`E[g^2] = E[\phi^2 s^2] + 2 E[A - b] E[\phi s^2] + E[(A - b)^2] E[s^2]` and
    :math:`E g = E[\phi s]`. Any rule for the law of one coordinate works: quadrature nodes of
    a density, or the atoms of a discrete law (enumeration, exact).

    Args:
      phi: ``[R, n]`` :math:`\phi(x)` of each row at the rule's nodes.
      w: ``[n]`` the rule's weights (summing to 1).
      s: ``[n]`` the score :math:`\partial \log p(x) / \partial\theta_1` at the nodes.
      constant: ``[R]`` the constant ``a``; dim: ``[R]`` the dimension ``D``.
      optimal: with the optimal baseline :math:`b^* = E[f s^2] / E[s^2]`, else ``b = 0``.

    Returns:
      ``[R]`` variances.
    """
    e_fs, e_fs2, e_f2s2 = _mean(phi, w * s), _mean(phi, w * s**2), _mean(phi**2, w * s**2)
    e_s2 = float(np.sum(w * s**2))
    # A = a + sum_{d>1} phi(x_d): independent of x_1.
    mean_a = constant + (dim - 1) * _mean(phi, w)
    var_a = (dim - 1) * _var(phi, w)
    b = 0.0
    if optimal:
        b = (e_fs2 + mean_a * e_s2) / e_s2  # b* = E[f s^2] / E[s^2]
    second = e_f2s2 + 2 * (mean_a - b) * e_fs2 + (var_a + (mean_a - b) ** 2) * e_s2
    return second - e_fs**2


def exact_gradient(
    parameter: str,
    weights: np.ndarray,
    k: np.ndarray,
    loc: float,
    scale: float,
    *,
    num_nodes: int,
) -> np.ndarray:
    r""":math:`\partial E f / \partial\theta_1` (first coordinate) for ``R`` costs at once:
    :math:`E[\phi'(x_1)]` for the loc, :math:`E[\phi'(x_1)\,\epsilon]` for the scale, by
    the same quadrature (``phi'`` written by hand in ``costs.term_derivative``).

    Args: as :func:`exact_variance` (the constant and ``D`` do not enter). Returns ``[R]``.
    """
    if parameter not in PARAMETERS:
        raise ValueError(f"unknown parameter {parameter!r}; known: {PARAMETERS}")
    weights, k = np.asarray(weights, np.float64), np.asarray(k, np.float64)
    q = rules(num_nodes)
    z, wz = q.normal_nodes, q.normal_weights
    t = np.ones_like(z) if parameter == "loc" else z
    return _mean(term_sum(loc + scale * z, weights, k, term_derivative), wz * t)


def exact_variance(
    estimator: str,
    parameter: str,
    weights: np.ndarray,
    k: np.ndarray,
    constant: np.ndarray,
    dim: np.ndarray,
    loc: float,
    scale: float,
    *,
    num_nodes: int,
) -> np.ndarray:
    r"""Single-sample variance of ``estimator``'s estimate of :math:`\partial E f/\partial
    \theta_1`, ``theta = loc`` or ``scale`` (first coordinate), for ``R`` costs at once.

    Args:
      estimator: one of ``ESTIMATORS``.
      parameter: ``"loc"`` or ``"scale"``.
      weights: ``[R, len(TERMS)]`` term weights of each cost.
      k: ``[R]`` the cost family's parameter.
      constant: ``[R]`` the constant ``a`` of each cost.
      dim: ``[R]`` the dimension ``D`` of each row.
      loc, scale: :math:`\mu` and :math:`\sigma` (the same in every coordinate).
      num_nodes: nodes of each one-dimensional rule.

    Returns:
      ``[R]`` float64 variances.
    """
    weights, k = np.asarray(weights, np.float64), np.asarray(k, np.float64)
    constant, dim = np.asarray(constant, np.float64), np.asarray(dim, np.float64)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {ESTIMATORS}")
    if parameter not in PARAMETERS:
        raise ValueError(f"unknown parameter {parameter!r}; known: {PARAMETERS}")
    q = rules(num_nodes)
    mu, sigma = float(loc), float(scale)
    z, wz = q.normal_nodes, q.normal_weights
    if estimator.startswith("score_function"):
        s = z / sigma if parameter == "loc" else (z**2 - 1) / sigma
        phi = term_sum(mu + sigma * z, weights, k)  # [R, n]
        optimal = estimator == "score_function+optimal"
        return score_function_variance(phi, wz, s, constant, dim, optimal=optimal)
    if estimator == "pathwise":
        t = np.ones_like(z) if parameter == "loc" else z
        return _var(term_sum(mu + sigma * z, weights, k, term_derivative) * t, wz)
    coupled = estimator == "measure_valued"
    if parameter == "loc":
        c = 1 / (sigma * math.sqrt(2 * math.pi))
        r, wr = q.weibull_nodes, q.weibull_weights
        pos, neg = term_sum(mu + sigma * r, weights, k), term_sum(mu - sigma * r, weights, k)
        if coupled:
            return c**2 * _var(pos - neg, wr)
        return c**2 * (_var(pos, wr) + _var(neg, wr))
    c = 1 / sigma
    if not coupled:
        pos, neg = term_sum(mu + sigma * z, weights, k), term_sum(mu + sigma * z, weights, k)
        return c**2 * (_var(pos, q.maxwell_weights) + _var(neg, wz))
    # Coupled: g = c [phi(mu + sigma M) - phi(mu + sigma M U)], a 2-D rule over (M, U).
    m_u = z[:, None] * q.uniform_nodes[None, :]  # [n, n // 4]
    w2 = q.maxwell_weights[:, None] * q.uniform_weights[None, :]
    out = np.empty(k.shape[0])
    for i in range(0, k.shape[0], _R_BLOCK):
        sl = slice(i, i + _R_BLOCK)
        pos = term_sum(mu + sigma * z, weights[sl], k[sl])[:, :, None]  # [r, n, 1]
        neg = term_sum(mu + sigma * m_u, weights[sl], k[sl])  # [r, n, n]
        out[sl] = c**2 * _var(pos - neg, w2)
    return out
