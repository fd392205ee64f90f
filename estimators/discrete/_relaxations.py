r"""Relaxation and straight-through estimators for discrete distributions (biased).

For a :class:`estimators.Relaxable` distribution :math:`p_\theta` (``Bernoulli``,
``OneHotCategorical``) with logits :math:`\ell(\theta)` and its Concrete relaxation
:math:`q_{\theta,\tau}` = ``dist.relaxed(temperature)``, whose samples are
:math:`z = g(\ell, \epsilon)` (``from_noise``; logistic noise for the Binary Concrete,
Gumbel noise for the Concrete) and round to the discrete sample ``hard(z)``
:math:`\sim p_\theta`:

- ``"gumbel_softmax"`` (Maddison et al. 2017; Jang et al. 2017), :func:`gumbel_softmax`:
  :math:`\nabla_\theta f(g(\ell, \epsilon))`, whose expectation is
  :math:`\nabla_\theta E_{q_{\theta,\tau}}[f(z)]`, the gradient of the *relaxed* objective.
- ``"gumbel_softmax_st"`` (straight-through Gumbel-softmax, Jang et al. 2017),
  :func:`gumbel_softmax_straight_through`: :math:`\nabla f(\mathrm{hard}(z))^\top
  \partial z / \partial \theta`: the forward pass sees the discrete sample, the backward pass
  the relaxed one.
- ``"straight_through"`` (Bengio, Léonard & Courville 2013), :func:`straight_through`:
  :math:`b \sim p_\theta`, :math:`\nabla f(b)^\top \partial \mu / \partial \theta` with
  :math:`\mu = E_p[b]` (``dist.mean``: the probabilities), i.e. the gradient as if
  :math:`\partial b / \partial \mu = I`. For a Bernoulli that is
  :math:`\partial f(b) / \partial b_d \cdot \sigma'(\ell_d)`; for a one-hot categorical
  :math:`J_{\mathrm{softmax}}(\ell)^\top \nabla f(b)`. Exact for costs affine in
  each coordinate (each one-hot row) separately, such as :math:`b_1 b_2`; biased otherwise.

All three are biased for :math:`\nabla_\theta E_p[f(b)]`: the cost must be defined (and
differentiable) on the relaxed support (:math:`[0, 1]^D`; the simplex), and each estimator
declares in ``bias`` what it estimates instead. Each evaluates one gradient of ``f`` per sample;
rows are independent. Gradients are formed with respect to the relaxed distribution's (or the
mean's) parameters and pulled back to ``params`` through ``dist_builder``
(:func:`estimators.pull_back`), so any ``params -> distribution`` mapping works. Their exact
expectations (quadrature over the noise) and their bias against the true gradient as the
temperature goes to 0 are in ``tests/test_relaxations.py``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from .._capabilities import Relaxable
from .._common import (
    Array,
    CostFn,
    DistBuilder,
    PyTree,
    build_and_check,
    draw_samples,
    pull_back,
    vmap_samples,
)
from .._interface import GradientEstimator, gradient_estimator

DEFAULT_TEMPERATURE = 0.5


def _check_temperature(temperature: Any, who: str) -> float:
    """A static temperature: a finite Python/NumPy number > 0."""
    try:
        value = float(temperature)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            f"{who}: temperature must be a Python float (static); got {type(temperature).__name__}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{who}: temperature must be finite and > 0; got {temperature!r}")
    return value


def _relaxed_setup(
    function: CostFn, params: PyTree, dist_builder: DistBuilder, num_samples: int, who: str
) -> Any:
    dist = build_and_check(function, params, dist_builder, num_samples, who)
    if not isinstance(dist, Relaxable):
        raise ValueError(
            f"{who}: needs a Relaxable distribution (with relaxed(temperature)); "
            f"{type(dist).__name__} is not"
        )
    return dist


def _relaxed(dist: Any, temperature: float) -> Any:
    """``dist.relaxed(temperature)`` (a :class:`estimators.Relaxable` distribution)."""
    return dist.relaxed(temperature)


def _relaxed_per_sample(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    num_samples: int,
    temperature: float,
    straight_through: bool,
    who: str,
) -> PyTree:
    """Per-sample gradients of ``f(z)`` (or ``f(hard(z))`` passed through ``z``) w.r.t. the
    relaxed distribution's parameters, pulled back to ``params``."""
    temperature = _check_temperature(temperature, who)
    dist = _relaxed_setup(function, params, dist_builder, num_samples, who)
    relaxed = jax.lax.stop_gradient(dist.relaxed(temperature))
    noise = relaxed.standard_noise(key, (num_samples,))

    def cost(r: Any, n: Array) -> Array:
        z = r.from_noise(n)
        if straight_through:
            z = z + jax.lax.stop_gradient(r.hard(z) - z)
        return function(z)

    grads = jax.vmap(jax.grad(cost), in_axes=(None, 0))(relaxed, noise)
    return pull_back(dist_builder, params, lambda d: _relaxed(d, temperature), grads)


def _relaxed_surrogate(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    num_samples: int,
    temperature: float,
    straight_through: bool,
    who: str,
) -> Array:
    temperature = _check_temperature(temperature, who)
    dist = _relaxed_setup(function, params, dist_builder, num_samples, who)
    noise = jax.lax.stop_gradient(dist.relaxed(temperature)).standard_noise(key, (num_samples,))
    relaxed = _relaxed(dist_builder(params), temperature)

    def cost(n: Array) -> Array:
        z = relaxed.from_noise(n)
        if straight_through:
            z = z + jax.lax.stop_gradient(relaxed.hard(z) - z)
        return function(z)

    return jnp.mean(vmap_samples(cost)(noise))


def gumbel_softmax(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
    temperature: float = DEFAULT_TEMPERATURE,
) -> PyTree:
    r"""Per-sample Concrete / Gumbel-softmax estimates (Maddison et al. 2017; Jang et al. 2017).

    Row ``i`` is :math:`\nabla_\theta f(z_i)` with :math:`z_i = g(\ell(\theta), \epsilon_i)`
    a sample of ``dist.relaxed(temperature)``: the pathwise estimator of the relaxed objective,
    :math:`E[\text{row}] = \nabla_\theta E_{z \sim q_{\theta,\tau}}[f(z)]`, which tends to
    :math:`\nabla_\theta E_p[f(b)]` as :math:`\tau \to 0` (for ``f`` smooth on the relaxed
    support) while the variance grows (biased).

    Args:
      function: cost ``f(z) -> []`` for one sample, defined on the relaxed support
        (``[0, 1]^D`` for a Bernoulli, the simplex for a one-hot categorical).
      params: any pytree of float arrays.
      dist_builder: ``params -> distribution``, :class:`estimators.Relaxable`.
      key: PRNG key of the relaxation's noise (one batch, ``standard_noise``).
      num_samples: number of independent samples (static).
      temperature: :math:`\tau > 0` (static).

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.

    Example (for ``f(z) = sum(z)`` the estimate is :math:`\partial E[z]/\partial\ell`,
    which at :math:`\ell = 0` is positive):
      >>> import jax, jax.numpy as jnp, estimators
      >>> bern = lambda p: estimators.Bernoulli(p["logits"])
      >>> g = estimators.gumbel_softmax(jnp.sum, {"logits": jnp.zeros(3)}, bern,
      ...                               jax.random.key(0), num_samples=1000, temperature=0.5)
      >>> g["logits"].shape, bool(jnp.all(g["logits"].mean(0) > 0))
      ((1000, 3), True)
    """
    return _relaxed_per_sample(
        function, params, dist_builder, key, num_samples, temperature, False, "gumbel_softmax"
    )


def gumbel_softmax_straight_through(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
    temperature: float = DEFAULT_TEMPERATURE,
) -> PyTree:
    r"""Per-sample straight-through Gumbel-softmax estimates (Jang et al. 2017).

    Row ``i`` is :math:`\nabla_b f(b_i)^\top \partial z_i / \partial \theta` with
    :math:`z_i` a sample of ``dist.relaxed(temperature)`` and :math:`b_i = \mathrm{hard}(z_i)`
    (threshold at 1/2 for a Bernoulli, one-hot argmax for a categorical), which is distributed
    exactly as ``dist``: ``f`` is evaluated at the discrete sample, differentiated through
    the relaxed one. Its expectation :math:`E[\nabla f(\mathrm{hard}(z))^\top \partial z /
    \partial \theta]` is not :math:`\nabla_\theta E_p[f]` in general (biased, even for linear
    ``f``).

    Args: as :func:`gumbel_softmax` (``f`` is evaluated only at discrete samples, but its
    gradient there must exist: ``f`` defined around them).

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.

    Example (a linear cost: every row is ``c * dz/dlogits``, zero where the sample saturated):
      >>> import jax, jax.numpy as jnp, estimators
      >>> bern = lambda p: estimators.Bernoulli(p["logits"])
      >>> c = jnp.array([1.0, -2.0])
      >>> g = estimators.gumbel_softmax_straight_through(
      ...     lambda b: b @ c, {"logits": jnp.zeros(2)}, bern, jax.random.key(0), num_samples=500)
      >>> bool(jnp.all(g["logits"][:, 0] >= 0)), bool(jnp.all(g["logits"][:, 1] <= 0))
      (True, True)
    """
    return _relaxed_per_sample(
        function,
        params,
        dist_builder,
        key,
        num_samples,
        temperature,
        True,
        "gumbel_softmax_straight_through",
    )


def _straight_through_setup(
    function: CostFn, params: PyTree, dist_builder: DistBuilder, key: Array, num_samples: int
) -> tuple[Any, Array]:
    dist = _relaxed_setup(function, params, dist_builder, num_samples, "straight_through")
    return dist, draw_samples(jax.lax.stop_gradient(dist), key, num_samples)


def straight_through(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
) -> PyTree:
    r"""Per-sample straight-through estimates (Bengio, Léonard & Courville 2013).

    The convention: row ``i`` is :math:`J_\mu(\theta)^\top \nabla_b f(b_i)`, with
    :math:`b_i \sim p_\theta` drawn exactly (``estimators.draw_samples``) and
    :math:`\mu(\theta) = E_p[b]` the distribution's ``mean`` (the probabilities
    :math:`\sigma(\ell)` of a Bernoulli, :math:`\mathrm{softmax}(\ell)` of a one-hot
    categorical): the backward pass treats :math:`b` as if :math:`\partial b/\partial\mu = I`.
    For a Bernoulli, :math:`\partial/\partial\ell_d = \partial_d f(b)\,\sigma(\ell_d)(1 -
    \sigma(\ell_d))`; for a one-hot categorical, :math:`(\mathrm{diag}(\pi) - \pi\pi^\top)
    \nabla f(b)`. Its expectation :math:`J_\mu^\top E_p[\nabla f(b)]` is the true gradient
    when ``f`` is affine in each coordinate (in each one-hot row) separately, e.g. linear or
    :math:`b_1 b_2` (then :math:`\partial f / \partial b_d` does not depend on :math:`b_d`, and
    :math:`E_p[f]` is multilinear in :math:`\mu`); biased otherwise. Needs no temperature.

    Args: as :func:`gumbel_softmax`, without ``temperature`` (``f`` is evaluated at discrete
    samples; its gradient there must exist).

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.

    Example (for a linear cost the estimate is exact in every row: ``c * p (1 - p)``):
      >>> import jax, jax.numpy as jnp, estimators
      >>> bern = lambda p: estimators.Bernoulli(p["logits"])
      >>> g = estimators.straight_through(lambda b: b @ jnp.array([1.0, -2.0]),
      ...     {"logits": jnp.zeros(2)}, bern, jax.random.key(0), num_samples=2)
      >>> g["logits"]
      Array([[ 0.25, -0.5 ],
             [ 0.25, -0.5 ]], dtype=float32)
    """
    dist, samples = _straight_through_setup(function, params, dist_builder, key, num_samples)
    grads = jax.vmap(jax.grad(function))(samples)
    return pull_back(dist_builder, params, lambda d: d.mean, grads)


def _straight_through_surrogate(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
) -> Array:
    """:math:`\\frac1N\\sum_i f(b_i + \\mu - \\mathrm{sg}(\\mu))`: value ``f(b_i)``, gradient
    that of :func:`straight_through`."""
    _, samples = _straight_through_setup(function, params, dist_builder, key, num_samples)
    mu = dist_builder(params).mean
    shift = mu - jax.lax.stop_gradient(mu)
    return jnp.mean(jax.vmap(lambda b: function(b + shift))(samples))


def relaxation_estimator(*, temperature: float = DEFAULT_TEMPERATURE) -> GradientEstimator:
    """``"gumbel_softmax"``: :func:`gumbel_softmax` at ``temperature``."""
    temperature = _check_temperature(temperature, "gumbel_softmax")

    def per_sample(function, params, dist_builder, key, *, num_samples):
        return gumbel_softmax(
            function, params, dist_builder, key, num_samples=num_samples, temperature=temperature
        )

    def surrogate(function, params, dist_builder, key, *, num_samples):
        return _relaxed_surrogate(
            function, params, dist_builder, key, num_samples, temperature, False, "gumbel_softmax"
        )

    return gradient_estimator(
        "gumbel_softmax",
        per_sample,
        surrogate=surrogate,
        requires=(Relaxable,),
        unbiased=False,
        bias=(
            f"the gradient of the relaxed objective E[f(z)], z ~ dist.relaxed({temperature:g}) "
            "(Concrete), instead of that of E_p[f(b)]; it tends to the true gradient as the "
            "temperature goes to 0 (f smooth on the relaxed support), with growing variance"
        ),
        label="Concrete / Gumbel-softmax",
        reference="Maddison et al. 2017; Jang et al. 2017",
    )


def straight_through_gumbel_estimator(
    *, temperature: float = DEFAULT_TEMPERATURE
) -> GradientEstimator:
    """``"gumbel_softmax_st"``: :func:`gumbel_softmax_straight_through` at ``temperature``."""
    temperature = _check_temperature(temperature, "gumbel_softmax_st")

    def per_sample(function, params, dist_builder, key, *, num_samples):
        return gumbel_softmax_straight_through(
            function, params, dist_builder, key, num_samples=num_samples, temperature=temperature
        )

    def surrogate(function, params, dist_builder, key, *, num_samples):
        return _relaxed_surrogate(
            function, params, dist_builder, key, num_samples, temperature, True, "gumbel_softmax_st"
        )

    return gradient_estimator(
        "gumbel_softmax_st",
        per_sample,
        surrogate=surrogate,
        requires=(Relaxable,),
        unbiased=False,
        bias=(
            "E[grad f(hard(z))^T dz/dtheta], z ~ dist.relaxed("
            f"{temperature:g}), hard(z) ~ dist (threshold at 1/2 / one-hot argmax): f's "
            "gradient at the discrete sample times the relaxed sample's Jacobian; not the true "
            "gradient even for linear f"
        ),
        label="straight-through Gumbel-softmax",
        reference="Jang et al. 2017",
    )


def straight_through_estimator() -> GradientEstimator:
    """``"straight_through"``: :func:`straight_through`."""
    return gradient_estimator(
        "straight_through",
        straight_through,
        surrogate=_straight_through_surrogate,
        requires=(Relaxable,),
        unbiased=False,
        bias=(
            "E_{b ~ p}[J_mean(theta)^T grad f(b)]: f's gradient at the discrete sample pushed "
            "through the Jacobian of the mean (the probabilities) as if db/dmean = I; the true "
            "gradient when f is affine in each coordinate (each one-hot row) separately, biased "
            "otherwise"
        ),
        label="straight-through",
        reference="Bengio et al. 2013",
    )


BASES = {
    "gumbel_softmax": lambda *, temperature=DEFAULT_TEMPERATURE, **_: relaxation_estimator(
        temperature=temperature
    ),
    "gumbel_softmax_st": lambda *, temperature=DEFAULT_TEMPERATURE, **_: (
        straight_through_gumbel_estimator(temperature=temperature)
    ),
    "straight_through": lambda **_: straight_through_estimator(),
}
