r"""Exact moments of the discrete estimators on the toy of REBAR and RELAX, in NumPy float64.

The toy (Tucker et al. 2017, sec. 6.1; Grathwohl et al. 2018, sec. 6.1): :math:`D`
independent coordinates :math:`b_d \sim \mathrm{Bernoulli}(\theta)`, :math:`\theta =
\sigma(\alpha)`, and the cost

.. math:: f(b) = \sum_{d=1}^{D} \phi(b_d), \qquad \phi(x) = (x - t)^2,

(the sum, not the mean: the gradient of coordinate 1, :math:`\partial E f / \partial\alpha_1 =
\theta(1-\theta)(1 - 2t)`, does not change with :math:`D`, so any growth of its variance with
:math:`D` is the noise the other :math:`D - 1` coordinates add). Every value here is of the
estimate of :math:`\partial/\partial\alpha_1`, the **logit** of coordinate 1.

All computations are independent of the JAX estimators they check (written from the papers'
equations, derivatives by hand). Each estimator's coordinate-1 estimate has the form

.. math:: g = A(\omega_1) + H(\omega_1)\, B, \qquad B = \sum_{d \ge 2} \beta(\omega_d),

with :math:`\omega_d` the noise of coordinate :math:`d` (independent across coordinates), so

.. math:: E g = E A + E H\, E B, \qquad E g^2 = E A^2 + 2 E[AH]\, E B + E H^2\, E B^2,

with :math:`E B = (D-1) m_\beta` and :math:`E B^2 = (D-1) v_\beta + (D-1)^2 m_\beta^2`; the
one-coordinate expectations are exact sums or quadratures:

- ``score_function`` (REINFORCE) :math:`A = \phi(b) s`, :math:`H = s`, :math:`\beta = \phi(b)`,
  :math:`s = b - \theta`; ``score_function+optimal`` subtracts
  :math:`c^* = E[f s^2]/E[s^2]`; ``straight_through`` :math:`A = \phi'(b)\,\theta(1-\theta)`:
  **enumeration** of the two atoms.
- ``score_function+loo`` (Kool et al. 2019) with :math:`K` samples: the estimate is linear in
  the costs, :math:`\sum_j a_j f(b^j)` with :math:`a_j = \frac1K(s_j - \frac{1}{K-1}
  \sum_{k\ne j} s_k)`, :math:`\sum_j a_j = 0`: **enumeration** of the :math:`2^K` tuples of
  coordinate 1, the other coordinates adding :math:`(D-1) v_\phi \sum_j a_j^2`.
- ``arm`` (Yin & Zhou 2019) :math:`g = (f(b) - f(\tilde b))(u - \frac12)`, ``disarm`` (Dong,
  Mnih & Tucker 2020) :math:`g = \frac12 (f(b) - f(\tilde b)) (-1)^{\tilde b_1} 1[b_1 \ne
  \tilde b_1] \sigma(|\alpha_1|)`, :math:`b = 1[u > 1 - \theta]`, :math:`\tilde b = 1[u <
  \theta]`: piecewise polynomial in :math:`u` with breaks at :math:`\theta, 1 - \theta`,
  integrated **exactly** by Gauss-Legendre on each piece.
- ``gumbel_softmax``, ``gumbel_softmax_st`` (Concrete at temperature :math:`\tau`, :math:`z =
  \sigma((\alpha + \log\frac{u}{1-u})/\tau)`): :math:`A = \phi'(z)\, z(1-z)/\tau` and
  :math:`\phi'(1[z > \frac12])\, z(1-z)/\tau`: composite **Gauss-Legendre** over :math:`u`,
  split at the jump :math:`u = 1 - \theta`.
- ``rebar`` (Tucker et al. 2017) at a given :math:`(\eta, \lambda)`:
  :math:`g = [f(b) - \eta f(\sigma_\lambda(\tilde z))]\, s + \eta\,[\partial_\alpha
  f(\sigma_\lambda(z)) - \partial_\alpha f(\sigma_\lambda(\tilde z))]`, :math:`z = \alpha +
  \log\frac{u}{1-u}`, :math:`\tilde z \sim p(z \mid b)` by the conditional reparameterisation
  with an independent :math:`v`: **2-D Gauss-Legendre** over :math:`(u, v)`, split at the jump.

The multi-sample estimate's variance is that of the mean of its :math:`K` rows (one call);
:func:`moments` returns it together with the evaluations of ``f`` the estimate costs, so that
``variance * evaluations`` compares estimators at equal cost.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

# Gauss-Legendre order per panel and panels per piece of [0, 1] (between breaks).
ORDER = 8
PANELS = 64


class Moments(NamedTuple):
    """Exact moments of one estimate of :math:`\\partial/\\partial\\alpha_1` on a grid."""

    mean: np.ndarray  # [G] E g
    variance: np.ndarray  # [G] Var g (of one estimate: one row, or the mean of K rows)
    evaluations: int  # evaluations of f per estimate


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def phi(x: np.ndarray, t: float) -> np.ndarray:
    """The per-coordinate cost :math:`(x - t)^2`."""
    return (x - t) ** 2


def dphi(x: np.ndarray, t: float) -> np.ndarray:
    """Its derivative :math:`2 (x - t)`."""
    return 2.0 * (x - t)


def exact_gradient(theta: np.ndarray, t: float) -> np.ndarray:
    """:math:`\\partial E f / \\partial \\alpha_1 = \\theta (1 - \\theta)(1 - 2t)`, any D."""
    theta = np.asarray(theta, np.float64)
    return theta * (1 - theta) * (phi(1.0, t) - phi(0.0, t))


# --- Rules over the noise of one coordinate --------------------------------------------------


def _gauss_legendre_01(order: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(order)
    return (x + 1) / 2, w / 2


def uniform_rule(
    theta: np.ndarray, *, panels: int = PANELS, order: int = ORDER
) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights ``[G, Q]`` of :math:`\\int_0^1 \\cdot\\, du`, split at ``theta`` and
    ``1 - theta`` (the jumps of ``b`` and ``b~``), ``panels`` equal panels of ``order`` nodes
    per piece. Exact for piecewise polynomials of degree < ``2 order`` with those breaks."""
    theta = np.asarray(theta, np.float64)[:, None]
    lo, hi = np.minimum(theta, 1 - theta), np.maximum(theta, 1 - theta)
    x, w = _gauss_legendre_01(order)
    edges = np.linspace(0.0, 1.0, panels + 1)
    a, b = edges[:-1], edges[1:]
    nodes, weights = [], []
    for start, stop in ((0.0, lo), (lo, hi), (hi, 1.0)):
        width = stop - start  # [G, 1]
        left = start + width * a[None, :]  # [G, P]
        h = width * (b - a)[None, :]
        nodes.append((left[:, :, None] + h[:, :, None] * x).reshape(len(theta), -1))
        weights.append((h[:, :, None] * w).reshape(len(theta), -1))
    return np.concatenate(nodes, axis=1), np.concatenate(weights, axis=1)


def _combine(
    ea: np.ndarray,
    ea2: np.ndarray,
    eah: np.ndarray,
    eh: np.ndarray,
    eh2: np.ndarray,
    m_beta: np.ndarray,
    v_beta: np.ndarray,
    dim: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of :math:`A + H B` (module docstring), ``B`` a sum of ``dim - 1``."""
    n = dim - 1
    eb = n * m_beta
    eb2 = n * v_beta + n**2 * m_beta**2
    mean = ea + eh * eb
    second = ea2 + 2 * eah * eb + eh2 * eb2
    return mean, _variance(second, mean)


def _variance(second: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``second - mean^2``, 0 where that is float64 cancellation (below 1e-13 ``second``):
    the optimal baseline makes one Bernoulli's estimate constant, DisARM at theta = 1/2."""
    var = second - mean**2
    return np.where(var > 1e-13 * np.abs(second), var, 0.0)


def _expect(w: np.ndarray, *values: np.ndarray) -> list[np.ndarray]:
    return [np.sum(w * v, axis=-1) for v in values]


# --- The estimators --------------------------------------------------------------------------


def _score_function(theta: np.ndarray, t: float, dim: int, optimal: bool) -> Moments:
    """REINFORCE (with the optimal constant baseline or without), by enumeration."""
    theta = np.asarray(theta, np.float64)[:, None]
    b = np.array([0.0, 1.0])[None, :]
    w = np.where(b == 1, theta, 1 - theta)  # [G, 2]
    s = b - theta
    f1 = phi(b, t) * np.ones_like(theta)
    m_phi, m_phi2 = _expect(w, f1, f1**2)
    shift = np.zeros(theta.shape[0])
    if optimal:  # c* = E[f s^2] / E[s^2] with f = phi(b_1) + B, B independent of b_1
        es2, efs2 = _expect(w, s**2, f1 * s**2)
        shift = efs2 / es2 + (dim - 1) * m_phi
    a = (f1 - shift[:, None]) * s
    ea, ea2, eah, eh, eh2 = _expect(w, a, a**2, a * s, s, s**2)
    mean, var = _combine(ea, ea2, eah, eh, eh2, m_phi, m_phi2 - m_phi**2, dim)
    return Moments(mean, var, 1)


def _straight_through(theta: np.ndarray, t: float, dim: int) -> Moments:
    theta = np.asarray(theta, np.float64)
    g1, g0 = dphi(1.0, t) * theta * (1 - theta), dphi(0.0, t) * theta * (1 - theta)
    mean = theta * g1 + (1 - theta) * g0
    return Moments(mean, _variance(theta * g1**2 + (1 - theta) * g0**2, mean), 1)


def loo_weights(s: np.ndarray) -> np.ndarray:
    """:math:`a_j = \\frac1K (s_j - \\frac{1}{K-1}\\sum_{k\\ne j} s_k)`, ``s: [..., K]``."""
    k = s.shape[-1]
    return (s - (np.sum(s, axis=-1, keepdims=True) - s) / (k - 1)) / k


def _leave_one_out(theta: np.ndarray, t: float, dim: int, num_samples: int) -> Moments:
    """REINFORCE-LOO's K-sample estimate, by enumeration of the 2^K tuples of coordinate 1."""
    if num_samples < 2:
        raise ValueError(f"score_function+loo needs num_samples >= 2; got {num_samples}")
    theta = np.asarray(theta, np.float64)[:, None]
    tuples = np.array(list(itertools.product((0.0, 1.0), repeat=num_samples)))  # [T, K]
    ones = tuples.sum(axis=1)[None, :]
    prob = theta**ones * (1 - theta) ** (num_samples - ones)  # [G, T]
    a = loo_weights(tuples[None] - theta[:, :, None])  # [G, T, K]
    conditional_mean = np.sum(a * phi(tuples, t)[None], axis=-1)
    v_phi = theta[:, 0] * (1 - theta[:, 0]) * (phi(1.0, t) - phi(0.0, t)) ** 2
    sum_a2 = np.sum(a**2, axis=-1)
    mean = np.sum(prob * conditional_mean, axis=1)
    second = np.sum(prob * (conditional_mean**2), axis=1) + (dim - 1) * v_phi * np.sum(
        prob * sum_a2, axis=1
    )
    return Moments(mean, _variance(second, mean), num_samples)


def _antithetic(theta: np.ndarray, t: float, dim: int, disarm: bool) -> Moments:
    """ARM or DisARM, by exact piecewise integration over u."""
    theta = np.asarray(theta, np.float64)
    u, w = uniform_rule(theta)
    th = theta[:, None]
    b, bt = (u > 1 - th).astype(np.float64), (u < th).astype(np.float64)
    delta = phi(b, t) - phi(bt, t)  # beta: the other coordinates' f(b) - f(b~) terms alike
    if disarm:
        sign = np.where(bt == 1, -1.0, 1.0)
        h = 0.5 * sign * (b != bt) * sigmoid(np.abs(np.log(th) - np.log1p(-th)))
    else:
        h = u - 0.5
    a = delta * h
    ea, ea2, eah, eh, eh2, m, m2 = _expect(w, a, a**2, a * h, h, h**2, delta, delta**2)
    mean, var = _combine(ea, ea2, eah, eh, eh2, m, m2 - m**2, dim)
    return Moments(mean, var, 2)


def _concrete(theta: np.ndarray, t: float, temperature: float, straight: bool) -> Moments:
    """Gumbel-softmax (or its straight-through form), by Gauss-Legendre over u."""
    theta = np.asarray(theta, np.float64)
    u, w = uniform_rule(theta)
    alpha = np.log(theta) - np.log1p(-theta)
    z = sigmoid((alpha[:, None] + np.log(u) - np.log1p(-u)) / temperature)
    at = (z > 0.5).astype(np.float64) if straight else z
    g = dphi(at, t) * z * (1 - z) / temperature
    mean, second = _expect(w, g, g**2)
    return Moments(mean, _variance(second, mean), 1)


def rebar_terms(
    u: np.ndarray, v: np.ndarray, theta: np.ndarray, t: float, eta: float, temperature: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """REBAR's pieces on noise ``(u, v)`` (broadcast): ``(A, s, beta)``.

    ``A`` is the coordinate-1 estimate at :math:`D = 1`; ``s = b - theta`` multiplies the other
    coordinates' sum of ``beta = phi(b) - eta phi(sigma_lambda(z~))``. Derivatives by hand:
    :math:`dz/d\\alpha = 1`; :math:`d\\tilde z/d\\alpha = v\\theta/u'` for :math:`b = 1`
    (:math:`u' = 1 - \\theta + v\\theta`), :math:`(1-\\theta)(1-v)/(1-u')` for :math:`b = 0`
    (:math:`u' = v(1-\\theta)`), where :math:`\\tilde z = \\alpha + \\log\\frac{u'}{1-u'}`.
    """
    alpha = np.log(theta) - np.log1p(-theta)
    b = (u > 1 - theta).astype(np.float64)
    s = b - theta
    z = alpha + np.log(u) - np.log1p(-u)
    up = np.where(b == 1, 1 - theta + v * theta, v * (1 - theta))
    zt = alpha + np.log(up) - np.log1p(-up)
    dzt = np.where(b == 1, v * theta / up, (1 - theta) * (1 - v) / (1 - up))
    sz, szt = sigmoid(z / temperature), sigmoid(zt / temperature)
    d_fz = dphi(sz, t) * sz * (1 - sz) / temperature
    d_fzt = dphi(szt, t) * szt * (1 - szt) / temperature * dzt
    beta = phi(b, t) - eta * phi(szt, t)
    a = beta * s + eta * (d_fz - d_fzt)
    return a, s, beta


def _rebar(theta: np.ndarray, t: float, dim: int, eta: float, temperature: float) -> Moments:
    """REBAR at fixed (eta, temperature), by 2-D Gauss-Legendre over (u, v)."""
    theta = np.asarray(theta, np.float64)
    u, wu = uniform_rule(theta, panels=PANELS // 2)  # [G, Q]
    x, wx = _gauss_legendre_01(ORDER)
    edges = np.linspace(0.0, 1.0, PANELS // 2 + 1)
    v = (edges[:-1, None] + np.diff(edges)[:, None] * x).ravel()
    wv = (np.diff(edges)[:, None] * wx).ravel()
    a, s, beta = rebar_terms(
        u[:, :, None], v[None, None, :], theta[:, None, None], t, eta, temperature
    )
    w = (wu[:, :, None] * wv[None, None, :]).reshape(len(theta), -1)
    flat = [x.reshape(len(theta), -1) for x in np.broadcast_arrays(a, s, beta)]
    a, s, beta = flat
    ea, ea2, eas, es, es2, m, m2 = _expect(w, a, a**2, a * s, s, s**2, beta, beta**2)
    mean, var = _combine(ea, ea2, eas, es, es2, m, m2 - m**2, dim)
    return Moments(mean, var, 3)


# Registry names with an exact computation here (REBAR at its initial eta and temperature).
EXACT = (
    "score_function",
    "score_function+optimal",
    "score_function+loo",
    "straight_through",
    "gumbel_softmax",
    "gumbel_softmax_st",
    "arm",
    "disarm",
    "rebar",
)


def moments(
    name: str,
    theta: np.ndarray,
    t: float,
    *,
    dim: int = 1,
    num_samples: int = 1,
    temperature: float = 0.5,
    eta: float = 1.0,
) -> Moments | None:
    """Exact moments of estimator ``name``'s estimate of :math:`\\partial/\\partial\\alpha_1`.

    Args:
      name: a registry name (:data:`EXACT`); any other gives ``None``.
      theta: ``[G]`` values of :math:`\\theta \\in (0, 1)`.
      t: the target of the cost.
      dim: :math:`D`, the number of coordinates of ``f``.
      num_samples: ``K`` of a multi-sample estimator (``score_function+loo``); ignored else.
      temperature, eta: of the relaxations (``temperature``) and of REBAR (both).

    Returns:
      :class:`Moments` (``mean, variance: [G]``) or ``None``.
    """
    theta = np.atleast_1d(np.asarray(theta, np.float64))
    if np.any((theta <= 0) | (theta >= 1)):
        raise ValueError("theta must lie in (0, 1)")
    if name in ("score_function", "score_function+optimal"):
        return _score_function(theta, t, dim, optimal=name.endswith("optimal"))
    if name == "score_function+loo":
        return _leave_one_out(theta, t, dim, num_samples)
    if name == "straight_through":
        return _straight_through(theta, t, dim)
    if name in ("arm", "disarm"):
        return _antithetic(theta, t, dim, disarm=name == "disarm")
    if name in ("gumbel_softmax", "gumbel_softmax_st"):
        return _concrete(theta, t, temperature, straight=name.endswith("_st"))
    if name == "rebar":
        return _rebar(theta, t, dim, eta, temperature)
    return None


def is_finite(m: Moments) -> bool:
    return bool(np.all(np.isfinite(m.mean)) and np.all(np.isfinite(m.variance))) and math.isfinite(
        m.evaluations
    )
