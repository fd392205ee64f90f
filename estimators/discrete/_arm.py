r"""ARM, DisARM and ARMS: antithetic estimators for independent bits.

For a :class:`estimators.Binary` distribution (independent bits :math:`b_d = 1[u_d <
\theta_d]`, :math:`u_d \sim U(0, 1)`, :math:`\theta = \sigma(\phi)`, ``phi = dist.logits``)
each estimates :math:`\nabla_\phi E[f(b)]` without bias, is formed with respect to the logits
and is pulled back to ``params`` through ``dist_builder`` (:func:`estimators.pull_back`), so
any ``params -> distribution`` mapping works. None needs ``f`` to be differentiable.

- ``"arm"`` (Augment-REINFORCE-Merge; Yin & Zhou, ICLR 2019), :func:`arm`: one
  :math:`u \sim U(0,1)^D` per row and

  .. math:: g_d = \big(f(1[u > \sigma(-\phi)]) - f(1[u < \sigma(\phi)])\big)\,(u_d - \tfrac12).

- ``"disarm"`` (Dong, Mnih & Tucker, NeurIPS 2020), :func:`disarm`: the antithetic
  pair :math:`b = 1[u < \sigma(\phi)]`, :math:`\tilde b = 1[1 - u < \sigma(\phi)]` (ARM's two
  points: :math:`1[u > \sigma(-\phi)] = \tilde b`) and

  .. math:: g_d = \tfrac12\big(f(b) - f(\tilde b)\big)\,(-1)^{\tilde b_d}\,
            1[b_d \ne \tilde b_d]\,\sigma(|\phi_d|),

  which is :math:`E[g^{ARM} | b, \tilde b]` (given the pair, :math:`u_d` is uniform on an
  interval; :math:`E[u_d - \frac12]` there is :math:`\mp\frac12\sigma(|\phi_d|)` where the bits
  differ and 0 where they agree), so its variance never exceeds ARM's (Rao-Blackwell).
  Two evaluations of ``f`` per row for both (``cost_evaluations = 2``); rows independent.

- ``"arms"`` (Antithetic-REINFORCE-Multi-Sample; Dimitriev & Zhou, ICML 2021, with their
  Dirichlet copula), :func:`arms`: ``K = num_samples >= 2`` mutually antithetic samples used
  jointly, one evaluation of ``f`` each. Per coordinate, :math:`w \sim \mathrm{Dirichlet}(1,
  \dots, 1)` (``K`` components; independent over coordinates); with the rarer value's
  probability :math:`m_d = \sigma(-|\phi_d|)` and :math:`s_d = 1 - m_d^{1/(K-1)}`, sample
  ``k`` takes the rarer value where :math:`w_{kd} > s_d` (:math:`P(w_k > s) = (1-s)^{K-1} =
  m`: each :math:`b_k` has the right marginal; this is the copula :math:`u_k = 1 - (1 -
  w_k)^{K-1}` thresholded at :math:`1 - m`, mirrored for :math:`\theta > \frac12` so that the
  rare value is the antithetic one). With costs :math:`f_k` and scores :math:`b_k - \theta`,

  .. math:: \hat g = \frac1K\sum_k \Big(f_k - \frac1{K-1}\sum_{j\ne k} f_j\Big)
            \frac{b_k - \theta}{1 - \rho},\qquad
            1 - \rho_d = \frac{m_d - r_d}{m_d(1 - m_d)},\quad
            r_d = (1 - 2 s_d)_+^{K-1},

  :math:`\rho_d` the correlation of two samples' bits and :math:`r_d = P(w_j > s, w_k > s)`
  (both rare). Unbiased: for binary :math:`b_j, b_k` with equal marginals,
  :math:`E[b_k - \theta | b_j] = \rho\,(b_j - \theta)`, so :math:`E[f_j (b_k - \theta)] =
  \rho\,E[f_j (b_j - \theta)] = \rho\,\nabla E f` (coordinates independent), and each row has
  mean :math:`(1 - \rho)\nabla E f / (1 - \rho)`. Equivalently, :math:`\hat g` is the mean
  over the :math:`\binom K2` pairs of :math:`\frac12 (f_k - f_j)(b_k - b_j) / (1 - \rho)`; for
  ``K = 2`` the two samples are exactly antithetic (:math:`w_2 = 1 - w_1`) and this is DisARM.
  ``cost_evaluations = 1``, ``multi_sample``. Only the paper's abstract could be read here:
  the estimator above is derived in this docstring (any exchangeable copula with known
  pairwise law works), and the mirroring for :math:`\theta > \frac12` is our choice.

- ``"arms_systematic"``: the same estimator on a systematic-sampling copula
  (:func:`systematic_bits`: the number of rare samples is :math:`\lfloor Km \rfloor` or one
  more, the most negatively dependent exchangeable law), ``arms(..., copula="systematic")``.

Exact variances of the gradient from 4 evaluations of ``f`` (``tests/test_arm.py``, by
enumeration): on the battery's 4-bit Bernoulli family, per coordinate, ARM (2 pairs) 0.269
0.252 0.263 0.228; DisARM (2 pairs) 0.225 0.228 0.188 0.159; ARMS Dirichlet (K = 4) 0.181
0.079 0.095 0.162; ARMS systematic 0.185 0.054 0.099 0.149; REINFORCE-LOO (K = 4) 0.184 0.192
0.100 0.170. On the toy :math:`(b - 0.45)^2` at :math:`\theta = 0.3`, times :math:`10^6`:
169.5, 147, 23.2, 6.9, 157.5 (at :math:`\theta = \frac12` DisARM and the systematic copula
are exact, the Dirichlet copula 15.2).

The noise is drawn in one call per estimate: ``jax.random.uniform(key, (N, *event_shape))``
(ARM, DisARM), ``jax.random.exponential(key, (K, *event_shape))`` normalised over the samples
(ARMS). The surrogates evaluate ``f`` only at the points the estimate used, so their gradient
with respect to anything ``f`` closes over is the average of ``f``'s gradients there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._capabilities import Binary
from .._common import Array, CostFn, DistBuilder, PyTree, build_and_check, pull_back
from .._interface import GradientEstimator, gradient_estimator

# (logits, key, num_samples, function) -> (rows [N, *event] w.r.t. the logits, costs [...]).
_Rows = Callable[[Array, Array, int, CostFn], tuple[Array, Array]]


def _logits(
    function: CostFn, params: PyTree, dist_builder: DistBuilder, num_samples: int, who: str
) -> Array:
    """Check the arguments; the distribution's logits (stopped)."""
    dist = build_and_check(function, params, dist_builder, num_samples, who)
    if not isinstance(dist, Binary):
        raise ValueError(f"{who}: needs a Binary distribution; {type(dist).__name__} is not")
    return jax.lax.stop_gradient(jnp.asarray(dist.logits))  # type: ignore[attr-defined]


def _logits_of(dist: Any) -> Array:
    return dist.logits


def _costs(function: CostFn, xs: Array) -> Array:
    return jax.vmap(lambda x: jnp.asarray(function(x), xs.dtype))(xs)


def _arm_rows(logits: Array, key: Array, num_samples: int, function: CostFn) -> tuple[Array, Array]:
    u = jax.random.uniform(key, (num_samples, *logits.shape), logits.dtype)
    first = (u > jax.nn.sigmoid(-logits)[None]).astype(u.dtype)
    second = (u < jax.nn.sigmoid(logits)[None]).astype(u.dtype)
    f1, f2 = _costs(function, first), _costs(function, second)
    diff = jax.lax.stop_gradient(f1 - f2).reshape(-1, *([1] * logits.ndim))
    return diff * (u - 0.5), jnp.stack([f1, f2], axis=1)


def _disarm_rows(
    logits: Array, key: Array, num_samples: int, function: CostFn
) -> tuple[Array, Array]:
    u = jax.random.uniform(key, (num_samples, *logits.shape), logits.dtype)
    probs = jax.nn.sigmoid(logits)[None]
    b = (u < probs).astype(u.dtype)
    bt = (1.0 - u < probs).astype(u.dtype)
    fb, fbt = _costs(function, b), _costs(function, bt)
    weight = (1.0 - 2.0 * bt) * (b != bt) * jax.nn.sigmoid(jnp.abs(logits))[None]
    diff = jax.lax.stop_gradient(fb - fbt).reshape(-1, *([1] * logits.ndim))
    return 0.5 * diff * weight, jnp.stack([fb, fbt], axis=1)


def arms_weight(logits: Array, num_samples: int) -> tuple[Array, Array]:
    r"""``(s, 1 / (1 - rho))``, each like ``logits``: the Dirichlet-copula threshold of the
    rarer value and the ARMS scale :math:`m(1-m)/(m - (1-2s)_+^{K-1})` for ``K = num_samples``.

    :math:`m - r = (1-s)^{n} - (1-2s)^{n}` (``n = K - 1``) is summed as :math:`s
    \sum_{i<n} (1-s)^i (1-2s)^{n-1-i}` (positive terms, no cancellation) where
    :math:`2s < 1`, and is :math:`m` otherwise.
    """
    n = num_samples - 1
    log_m = jax.nn.log_sigmoid(-jnp.abs(logits))
    s = -jnp.expm1(log_m / n)  # 1 - m^(1/n)
    a, c = 1.0 - s, jnp.maximum(1.0 - 2.0 * s, 0.0)
    series = sum(a**i * c ** (n - 1 - i) for i in range(n))
    m = jnp.exp(log_m)
    m_minus_r = jnp.where(2.0 * s < 1.0, s * series, m)
    return s, m * (1.0 - m) / m_minus_r


def arms_bits(logits: Array, key: Array, num_samples: int) -> tuple[Array, Array]:
    """``([K, *event], [*event])``: ``K = num_samples`` mutually antithetic samples of the
    bits by the Dirichlet copula (see the module) and the scale ``1 / (1 - rho)``."""
    e = jax.random.exponential(key, (num_samples, *logits.shape), logits.dtype)
    w = e / jnp.sum(e, axis=0, keepdims=True)
    s, scale = arms_weight(logits, num_samples)
    rare = (w > s[None]).astype(w.dtype)
    return jnp.where((logits < 0)[None], rare, 1.0 - rare), scale


def systematic_bits(logits: Array, key: Array, num_samples: int) -> tuple[Array, Array]:
    r"""``([K, *event], [*event])``: ``K`` antithetic samples by systematic sampling, and
    the scale ``1 / (1 - rho)``.

    Per coordinate, :math:`u_k = (\pi_k + v)/K` with :math:`v \sim U(0,1)` and
    :math:`\pi` a uniform random permutation of ``0..K-1`` (so each :math:`u_k \sim U(0,1)`
    and the pairs are exchangeable); the rarer value is taken where :math:`u_k < m`,
    :math:`m = \sigma(-|\phi|)`. The number of rare samples is :math:`\lfloor Km \rfloor`
    or one more (:math:`Km = a + r`: one more with probability ``r``), so
    :math:`P(\text{two given samples rare}) = r_{11} = (a(a-1) + 2ar)/(K(K-1))` and
    :math:`1/(1 - \rho) = m(1-m)/(m - r_{11})`.
    """
    kv, kp = jax.random.split(key)
    k = num_samples
    v = jax.random.uniform(kv, logits.shape, logits.dtype)
    ranks = jnp.argsort(jax.random.uniform(kp, (k, *logits.shape), logits.dtype), axis=0)
    u = (ranks.astype(logits.dtype) + v[None]) / k
    m = jax.nn.sigmoid(-jnp.abs(logits))
    rare = (u < m[None]).astype(u.dtype)
    km = k * m
    a = jnp.floor(km)
    r = km - a
    r11 = (a * (a - 1.0) + 2.0 * a * r) / (k * (k - 1))
    scale = m * (1.0 - m) / (m - r11)
    return jnp.where((logits < 0)[None], rare, 1.0 - rare), scale


_Bits = Callable[[Array, Array, int], tuple[Array, Array]]


def _joint_rows(bits: _Bits, who: str) -> _Rows:
    def rows(logits: Array, key: Array, num_samples: int, function: CostFn) -> tuple[Array, Array]:
        if num_samples < 2:
            raise ValueError(f"{who}: needs num_samples >= 2 (K joint samples); got {num_samples}")
        b, scale = bits(logits, key, num_samples)
        fs = _costs(function, b)
        f = jax.lax.stop_gradient(fs)
        learning = (f - (jnp.sum(f) - f) / (num_samples - 1)).reshape(-1, *([1] * logits.ndim))
        return learning * (b - jax.nn.sigmoid(logits)[None]) * scale[None], fs

    return rows


_arms_rows = _joint_rows(arms_bits, "arms")
_systematic_rows = _joint_rows(systematic_bits, "arms_systematic")


def _per_sample(rows: _Rows, who: str) -> Callable[..., PyTree]:
    def per_sample(
        function: CostFn, params: PyTree, dist_builder: DistBuilder, key: Array, *, num_samples: int
    ) -> PyTree:
        logits = _logits(function, params, dist_builder, num_samples, who)
        grads, _ = rows(logits, key, num_samples, function)
        return pull_back(dist_builder, params, _logits_of, jax.lax.stop_gradient(grads))

    return per_sample


def _surrogate(rows: _Rows, who: str) -> Callable[..., Array]:
    def surrogate(
        function: CostFn, params: PyTree, dist_builder: DistBuilder, key: Array, *, num_samples: int
    ) -> Array:
        logits = _logits(function, params, dist_builder, num_samples, who)
        grads, costs = rows(logits, key, num_samples, function)
        mean = jax.lax.stop_gradient(jnp.mean(grads, axis=0))
        live = jnp.asarray(dist_builder(params).logits)  # type: ignore[attr-defined]
        linear = jnp.vdot(live, mean).astype(costs.dtype)
        return jnp.mean(costs) + linear - jax.lax.stop_gradient(linear)

    return surrogate


_ARM_PER_SAMPLE = _per_sample(_arm_rows, "arm")
_DISARM_PER_SAMPLE = _per_sample(_disarm_rows, "disarm")
_ARMS_PER_SAMPLE = _per_sample(_arms_rows, "arms")
_SYSTEMATIC_PER_SAMPLE = _per_sample(_systematic_rows, "arms_systematic")
COPULAS = ("dirichlet", "systematic")


def arm(
    function: CostFn, params: PyTree, dist_builder: DistBuilder, key: Array, *, num_samples: int
) -> PyTree:
    r"""Per-sample ARM estimates (Yin & Zhou 2019) of :math:`\nabla_\theta E_{p_\theta}[f(b)]`.

    Row ``i`` is :math:`(f(1[u_i > \sigma(-\phi)]) - f(1[u_i < \sigma(\phi)]))(u_i -
    \frac12)`, ``u = jax.random.uniform(key, (num_samples, *event_shape))``, pulled back from
    the logits :math:`\phi` to ``params``. Two evaluations of ``f`` per row; rows independent.

    Args:
      function: cost ``f(b) -> []`` for one sample (float 0/1 of the event shape).
      params: any pytree of float arrays.
      dist_builder: ``params -> distribution`` with independent bits (``estimators.Binary``).
      key: PRNG key of the noise.
      num_samples: rows (static).

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.

    Example (:math:`\partial_\phi E[b_1 + 2 b_2] = (1, 2)/4` at ``logits = 0``):
      >>> import jax, jax.numpy as jnp, estimators
      >>> f = lambda b: b[0] + 2 * b[1]
      >>> bern = lambda p: estimators.Bernoulli(p["logits"])
      >>> g = estimators.arm(f, {"logits": jnp.zeros(2)}, bern, jax.random.key(0),
      ...                    num_samples=20000)
      >>> g["logits"].shape, jnp.round(g["logits"].mean(0), 1)
      ((20000, 2), Array([0.2, 0.5], dtype=float32))
    """
    return _ARM_PER_SAMPLE(function, params, dist_builder, key, num_samples=num_samples)


def disarm(
    function: CostFn, params: PyTree, dist_builder: DistBuilder, key: Array, *, num_samples: int
) -> PyTree:
    r"""Per-sample DisARM estimates (Dong, Mnih & Tucker 2020) of
    :math:`\nabla_\theta E_{p_\theta}[f(b)]`.

    Row ``i`` is :math:`\frac12 (f(b_i) - f(\tilde b_i))(-1)^{\tilde b_i} 1[b_i \ne \tilde
    b_i] \sigma(|\phi|)` with the antithetic pair :math:`b_i = 1[u_i < \sigma(\phi)]`,
    :math:`\tilde b_i = 1[1 - u_i < \sigma(\phi)]` (``u`` as in :func:`arm`: on the same key
    it is ARM's conditional expectation given the pair), pulled back to ``params``. Two
    evaluations of ``f`` per row; rows independent.

    Args:
      function: cost ``f(b) -> []`` for one sample (float 0/1 of the event shape).
      params: any pytree of float arrays.
      dist_builder: ``params -> distribution`` with independent bits (``estimators.Binary``).
      key: PRNG key of the noise.
      num_samples: rows (static).

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.

    Example (a cost of one bit: every row is exact, :math:`\theta(1-\theta) = 0.25`):
      >>> import jax, jax.numpy as jnp, estimators
      >>> bern = lambda p: estimators.Bernoulli(p["logits"])
      >>> g = estimators.disarm(lambda b: 3 * b[0], {"logits": jnp.zeros(1)}, bern,
      ...                       jax.random.key(0), num_samples=4)
      >>> g["logits"][:, 0]
      Array([0.75, 0.75, 0.75, 0.75], dtype=float32)
    """
    return _DISARM_PER_SAMPLE(function, params, dist_builder, key, num_samples=num_samples)


def arms(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
    copula: str = "dirichlet",
) -> PyTree:
    r"""Per-sample ARMS estimates (Dimitriev & Zhou 2021, Dirichlet copula) of
    :math:`\nabla_\theta E_{p_\theta}[f(b)]` from ``K = num_samples`` antithetic samples.

    Row ``k`` is :math:`(f_k - \frac1{K-1}\sum_{j\ne k} f_j)(b_k - \theta)/(1 - \rho)` (see
    the module), pulled back to ``params``; each row has mean the gradient, the rows are used
    jointly (not independent). One evaluation of ``f`` per row.

    Args:
      function: cost ``f(b) -> []`` for one sample (float 0/1 of the event shape).
      params: any pytree of float arrays.
      dist_builder: ``params -> distribution`` with independent bits (``estimators.Binary``).
      key: PRNG key of the Dirichlet noise.
      num_samples: ``K >= 2`` (static).
      copula: ``"dirichlet"`` (the authors') or ``"systematic"`` (:func:`systematic_bits`).

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.

    Example (5000 independent calls of ``K = 4``; :math:`\partial_\phi E[2 b_1 + 4 b_2] =
    (2, 4)/4` at ``logits = 0``):
      >>> import jax, jax.numpy as jnp, estimators
      >>> bern = lambda p: estimators.Bernoulli(p["logits"])
      >>> def call(key):
      ...     g = estimators.arms(lambda b: 2 * b[0] + 4 * b[1], {"logits": jnp.zeros(2)}, bern,
      ...                         key, num_samples=4)
      ...     return g["logits"].mean(0)
      >>> keys = jax.random.split(jax.random.key(0), 5000)
      >>> jnp.round(jax.vmap(call)(keys).mean(0), 1)
      Array([0.5, 1. ], dtype=float32)
    """
    if copula not in COPULAS:
        raise ValueError(f"arms: copula must be one of {COPULAS}; got {copula!r}")
    fn = _ARMS_PER_SAMPLE if copula == "dirichlet" else _SYSTEMATIC_PER_SAMPLE
    return fn(function, params, dist_builder, key, num_samples=num_samples)


def _two(dim: int) -> int:
    del dim
    return 2


def arm_estimator() -> GradientEstimator:
    """The registry's ``"arm"``."""
    return gradient_estimator(
        "arm",
        _ARM_PER_SAMPLE,
        surrogate=_surrogate(_arm_rows, "arm"),
        requires=(Binary,),
        cost_evaluations=_two,
        label="ARM",
        reference="Yin & Zhou 2019",
    )


def disarm_estimator() -> GradientEstimator:
    """The registry's ``"disarm"``."""
    return gradient_estimator(
        "disarm",
        _DISARM_PER_SAMPLE,
        surrogate=_surrogate(_disarm_rows, "disarm"),
        requires=(Binary,),
        cost_evaluations=_two,
        label="DisARM",
        reference="Dong, Mnih & Tucker 2020",
    )


def arms_estimator() -> GradientEstimator:
    """The registry's ``"arms"``: ``K >= 2`` joint samples."""
    return gradient_estimator(
        "arms",
        _ARMS_PER_SAMPLE,
        surrogate=_surrogate(_arms_rows, "arms"),
        requires=(Binary,),
        multi_sample=True,
        min_samples=2,
        label="ARMS (Dirichlet copula)",
        reference="Dimitriev & Zhou 2021",
    )


def arms_systematic_estimator() -> GradientEstimator:
    """The registry's ``"arms_systematic"``: ARMS with the systematic-sampling copula."""
    return gradient_estimator(
        "arms_systematic",
        _SYSTEMATIC_PER_SAMPLE,
        surrogate=_surrogate(_systematic_rows, "arms_systematic"),
        requires=(Binary,),
        multi_sample=True,
        min_samples=2,
        label="ARMS (systematic copula)",
        reference="Dimitriev & Zhou 2021 (estimator); systematic-sampling copula (ours)",
    )


BASES: dict[str, Callable[..., Any]] = {
    "arm": lambda **_: arm_estimator(),
    "disarm": lambda **_: disarm_estimator(),
    "arms": lambda **_: arms_estimator(),
    "arms_systematic": lambda **_: arms_systematic_estimator(),
}
