r"""Control variates for any estimator, as pure functions (Mohamed et al. 2020, section 7.4).

With a function :math:`h` whose expectation is known in closed form and a coefficient :math:`c`,

.. math:: \nabla_\theta E_{p_\theta}[f] = \nabla_\theta E_{p_\theta}[f - c\,h_{\theta_0}]
          + c\,\nabla_\theta E_{p_\theta}[h_{\theta_0}]\big|_{\theta_0=\theta},

where the first term is estimated by any estimator (pathwise, score function, measure-valued)
and the second is computed exactly. :math:`h_{\theta_0}` may depend on the parameters through an
expansion point :math:`\theta_0` (the delta method expands ``f`` around the mean); that point is
held FIXED (stop-gradient) in both terms, otherwise the estimate is biased by the derivative of
the expansion point.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._capabilities import FactorizedMoments
from ._common import (
    Array,
    CoordinateCostFn,
    CostFn,
    DistBuilder,
    PyTree,
    build_and_check,
    draw,
    ignores_baselines,
    structured_costs,
    with_coordinate_costs,
)
from ._distributions import Distribution
from ._measure_valued import _step_sizes, coordinate_costs, measure_valued

Estimator = Callable[..., PyTree]
# Coefficient samples of `with_control_variate(..., coefficient="optimal")` are drawn with
# jax.random.fold_in(key, _TAG_COEFFICIENT), independent of the estimator's samples.
_TAG_COEFFICIENT = 0x5EED
# Basis vectors per vectorised step when the delta method takes the Hessian's diagonal.
_HESSIAN_DIAG_BATCH = 64


class ControlVariate(NamedTuple):
    r"""A control variate :math:`h`.

    Fields:
      value: ``(point, x) -> []``: :math:`h` expanded at the distribution ``point``, evaluated at
        one sample ``x: [*event_shape]``.
      expectation: ``(dist) -> []``: :math:`E_{x\sim dist}[\mathrm{value}(dist, x)]` in closed
        form.
      expectation_under: optional ``(point, dist) -> []``:
        :math:`E_{x\sim dist}[\mathrm{value}(point, x)]`. With it the correction term
        :math:`\nabla_\theta E_{p_\theta}[h_{\theta_0}]` is exact; without it, it is the
        unbiased Monte Carlo form :math:`\nabla_\theta\,\mathrm{expectation}(p_\theta) -
        \nabla_{\theta_0} h_{\theta_0}(x_i)` (as in optax), which adds variance.
      is_baseline: ``value`` does not depend on ``x`` (a baseline): it changes only the
        score-function estimator, so pairing it with another estimator is an error.
      coordinate_costs: optional ``(point) -> ((x: [D], values: [P, D]) -> [P, D])``, a fast
        evaluator of ``value(point, .)`` with one coordinate replaced, ``out[p, d] =
        value(point, x with x_d = values[p, d])`` (``x`` flattened), for the measure-valued
        estimator with a structured ``coordinate_costs`` (see :func:`with_control_variate`).
        Without it, ``value`` is evaluated once per replaced coordinate.
    """

    value: Callable[[Distribution, Array], Array]
    expectation: Callable[[Distribution], Array]
    expectation_under: Callable[[Distribution, Distribution], Array] | None = None
    is_baseline: bool = False
    coordinate_costs: Callable[[Distribution], CoordinateCostFn] | None = None


def baseline_control_variate(baseline: Array | float) -> ControlVariate:
    """A constant ``[]`` baseline as a control variate (for the score-function estimator only).

    E.g. ``baseline_control_variate(moving_average_baseline(state))``.
    """
    b = jax.lax.stop_gradient(jnp.asarray(baseline))
    if b.shape != ():
        raise ValueError(f"baseline_control_variate: baseline must be a scalar; got {b.shape}")
    return ControlVariate(
        value=lambda point, x: b,
        expectation=lambda dist: b,
        expectation_under=lambda point, dist: b,
        is_baseline=True,
    )


def _check_delta_dist(dist: Distribution) -> None:
    if not isinstance(dist, FactorizedMoments):
        raise ValueError(
            "delta_method: needs a distribution with the FactorizedMoments capability "
            "(independent coordinates with a closed-form mean and variance, e.g. "
            f"estimators.Normal, Gamma or Beta); {type(dist).__name__} does not declare it"
        )


def _taylor(function: CostFn, mean: Array) -> tuple[Array, Array, Callable[[Array], Array]]:
    """``f(m)``, ``grad f(m)`` (flat ``[D]``) and ``v -> H(m) v`` for flat ``v: [D]``."""
    shape = mean.shape
    flat = lambda z: function(jnp.reshape(z, shape))  # noqa: E731
    m = jnp.ravel(mean)
    f0, g0 = jax.value_and_grad(flat)(m)

    def hvp(v: Array) -> Array:
        return jax.jvp(jax.grad(flat), (m,), (v,))[1]

    return f0, g0, hvp


def _hessian_diag(hvp: Callable[[Array], Array], dim: int, dtype) -> Array:
    """``diag H`` ``[D]`` from ``D`` Hessian-vector products, never a ``D x D`` matrix."""

    def one(d: Array) -> Array:
        return hvp(jax.nn.one_hot(d, dim, dtype=dtype))[d]

    return jax.lax.map(one, jnp.arange(dim), batch_size=min(dim, _HESSIAN_DIAG_BATCH))


def delta_method(function: CostFn) -> ControlVariate:
    r"""The delta-method control variate: the second-order Taylor expansion of ``f`` at the mean.

    .. math:: h_{\mu_0}(x) = f(\mu_0) + \nabla f(\mu_0)^\top (x - \mu_0)
              + \tfrac12 (x - \mu_0)^\top \nabla^2 f(\mu_0) (x - \mu_0),

    with :math:`\mu_0` the mean of the ``point`` distribution, and for ``x`` with mean
    :math:`\mu` and independent coordinates of variance :math:`v`,
    :math:`E[h_{\mu_0}] = f(\mu_0) + \nabla f^\top (\mu - \mu_0) + \tfrac12 ((\mu - \mu_0)^\top
    \nabla^2 f (\mu - \mu_0) + \sum_d v_d \nabla^2_{dd} f)` (Paisley et al. 2012). Only
    Hessian-vector products are used: one per evaluation of ``h`` and ``D`` for the diagonal,
    so memory stays ``O(D)``. For ``FactorizedMoments`` distributions (Normal, Gamma, Beta);
    any event shape.

    With ``x_d`` replaced by ``v`` (the measure-valued estimator's perturbations),
    :math:`h = h(x) + \delta (\nabla_d f + (\nabla^2 f\,(x - \mu_0))_d) + \tfrac12 \delta^2
    \nabla^2_{dd} f` with :math:`\delta = v - x_d`: ``coordinate_costs`` evaluates every
    replacement of a sample from one Hessian-vector product.

    Args:
      function: cost ``f(x) -> []`` for one sample; must be twice differentiable.

    Returns:
      A :class:`ControlVariate` with ``expectation_under`` (exact correction) and
      ``coordinate_costs``.

    Example (a quadratic is its own expansion: with coefficient 1 every row is the exact
    gradient, :math:`2\mu` and :math:`2\sigma`):
      >>> import jax, jax.numpy as jnp, estimators
      >>> f = lambda x: jnp.sum(x**2)
      >>> params = {"loc": jnp.array([1.0, -2.0]), "scale": jnp.array([0.5, 1.5])}
      >>> normal = lambda p: estimators.Normal(p["loc"], p["scale"])
      >>> g = estimators.with_control_variate(estimators.score_function, f,
      ...     estimators.delta_method(f), params, normal, jax.random.key(0), num_samples=4)
      >>> g["loc"].round(4)
      Array([[ 2., -4.],
             [ 2., -4.],
             [ 2., -4.],
             [ 2., -4.]], dtype=float32)
    """

    def value(point: Distribution, x: Array) -> Array:
        _check_delta_dist(point)
        f0, g0, hvp = _taylor(function, point.mean)
        dx = jnp.ravel(x) - jnp.ravel(point.mean)
        return f0 + jnp.vdot(g0, dx) + 0.5 * jnp.vdot(dx, hvp(dx))

    def expectation_under(point: Distribution, dist: Distribution) -> Array:
        _check_delta_dist(point)
        _check_delta_dist(dist)
        f0, g0, hvp = _taylor(function, point.mean)
        dm = jnp.ravel(dist.mean) - jnp.ravel(point.mean)
        diag = _hessian_diag(hvp, dm.shape[0], dm.dtype)
        second = jnp.vdot(dm, hvp(dm)) + jnp.vdot(jnp.ravel(dist.variance), diag)
        return f0 + jnp.vdot(g0, dm) + 0.5 * second

    def replaced_coordinates(point: Distribution) -> CoordinateCostFn:
        _check_delta_dist(point)
        f0, g0, hvp = _taylor(function, point.mean)
        m = jnp.ravel(point.mean)
        diag = _hessian_diag(hvp, m.shape[0], m.dtype)  # once per call, not per sample

        def costs(x: Array, values: Array) -> Array:
            dx = x - m
            h_dx = hvp(dx)
            h_x = f0 + jnp.vdot(g0, dx) + 0.5 * jnp.vdot(dx, h_dx)
            delta = values - x[None]  # [P, D]
            return h_x + delta * (g0 + h_dx)[None] + 0.5 * jnp.square(delta) * diag[None]

        return costs

    return ControlVariate(
        value=value,
        expectation=lambda dist: expectation_under(dist, dist),
        expectation_under=expectation_under,
        coordinate_costs=replaced_coordinates,
    )


def _bound_keywords(estimator: Estimator) -> dict:
    """The keywords fixed by (nested) ``functools.partial``s; the outermost wins."""
    chain = []
    while isinstance(estimator, functools.partial):
        chain.append(estimator.keywords)
        estimator = estimator.func
    out: dict = {}
    for keywords in reversed(chain):
        out.update(keywords)
    return out


def _unwrap(estimator: Estimator) -> Estimator:
    while isinstance(estimator, functools.partial):
        estimator = estimator.func
    return estimator


def _fast_costs(
    estimator: Estimator, function: CostFn, who: str
) -> tuple[Estimator, CoordinateCostFn | None]:
    """``f``'s fast coordinate evaluator, and the estimator to call with structured costs.

    The evaluator is the one ``function`` carries (:func:`estimators.with_coordinate_costs`),
    or, the older form, the ``coordinate_costs`` keyword of ``functools.partial(measure_valued,
    coordinate_costs=cc)``; that keyword evaluates ``f`` only, so it is taken off the estimator
    (set to None) and the costs ``h`` and ``f - c h`` carry their own evaluators instead.
    """
    carried = structured_costs(function)
    bound = None
    if _unwrap(estimator) is measure_valued:
        bound = _bound_keywords(estimator).get("coordinate_costs")
    if bound is None:
        return estimator, carried
    if carried is not None:
        raise ValueError(
            f"{who}: the cost carries a coordinate evaluator (with_coordinate_costs) and the "
            "estimator fixes coordinate_costs= too; give it one way"
        )
    return functools.partial(estimator, coordinate_costs=None), bound


def _structured_costs_of_h(
    estimator: Estimator, control_variate: ControlVariate, point: Distribution
) -> CoordinateCostFn:
    """The evaluator of ``h`` with one coordinate replaced: the control variate's own, or
    ``h`` evaluated once per replaced coordinate."""
    if control_variate.coordinate_costs is not None:
        return control_variate.coordinate_costs(point)
    event_shape = point.event_shape
    dim = math.prod(event_shape)
    batch = _step_sizes(1, dim, _bound_keywords(estimator).get("batch_size"), None)[1]

    def h_costs(x: Array, values: Array) -> Array:
        return coordinate_costs(
            lambda y: control_variate.value(point, y), x, values, event_shape, batch
        )

    return h_costs


def _check_pair(estimator: Estimator, control_variate: ControlVariate, who: str) -> None:
    if not isinstance(control_variate, ControlVariate):
        raise TypeError(
            f"{who}: control_variate must be an estimators.ControlVariate; "
            f"got {type(control_variate).__name__}"
        )
    if control_variate.is_baseline and ignores_baselines(estimator):
        name = getattr(_unwrap(estimator), "__name__", type(estimator).__name__)
        raise ValueError(
            f"{who}: a baseline (a control variate that does not depend on x, such as the "
            f"moving average) has no effect on the {name} estimator, whose estimate "
            "depends only on differences or derivatives of f in x; use it with "
            "estimators.score_function"
        )


def _correction(
    control_variate: ControlVariate,
    point: Distribution,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    num_samples: int,
) -> PyTree:
    r""":math:`\nabla_\theta E_{p_\theta}[h_{\theta_0}]`, leaves ``[num_samples, *leaf.shape]``."""
    cv = control_variate
    expectation_under = cv.expectation_under
    if expectation_under is not None:
        exact = jax.grad(lambda p: expectation_under(point, dist_builder(p)))(params)
        return jax.tree.map(lambda g: jnp.broadcast_to(g, (num_samples, *g.shape)), exact)
    # Total derivative of E_theta[h_theta] minus the expansion point's share, estimated on the
    # estimator's own samples: unbiased.
    total = jax.grad(lambda p: cv.expectation(dist_builder(p)))(params)
    xs = jax.lax.stop_gradient(draw(dist_builder, params, key, num_samples))
    share = jax.vmap(lambda x: jax.grad(lambda p: cv.value(dist_builder(p), x))(params))(xs)
    return jax.tree.map(lambda t, s: t[None] - s, total, share)


def _optimal_coefficient(jac_f: Array, jac_h: Array) -> Array:
    """Per-element ``Cov(jac_f, jac_h) / Var(jac_h)`` over axis 0 (0 where ``Var = 0``)."""
    cf = jac_f - jnp.mean(jac_f, axis=0, keepdims=True)
    ch = jac_h - jnp.mean(jac_h, axis=0, keepdims=True)
    cov = jnp.mean(cf * ch, axis=0)
    var = jnp.mean(jnp.square(ch), axis=0)
    return jax.lax.stop_gradient(jnp.where(var > 0, cov / jnp.where(var > 0, var, 1), 0.0))


def with_control_variate(
    estimator: Estimator,
    function: CostFn,
    control_variate: ControlVariate,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
    coefficient: float | str = 1.0,
    num_coefficient_samples: int = 20,
) -> PyTree:
    r"""Per-sample estimates of :math:`\nabla_\theta E_{p_\theta}[f]` with a control variate.

    Sample ``i`` gives :math:`\hat g_i[f] - c\,(\hat g_i[h_{\theta_0}] - \nabla_\theta
    E_{p_\theta}[h_{\theta_0}])` with :math:`\theta_0 = \mathrm{sg}(\theta)`, where
    :math:`\hat g_i[\cdot]` is ``estimator`` on the same samples (same key).

    Every estimator is linear in the cost, and ``estimator`` is called with the costs ``f``,
    ``h`` or ``f - c h`` as ``function``; it must evaluate the function it is given. When ``f``
    carries a fast coordinate evaluator ``cc`` (``estimators.with_coordinate_costs(f, cc)``),
    ``h`` and ``f - c h`` are passed as structured costs too: ``h``'s evaluator is the control
    variate's own ``coordinate_costs`` (the delta method's costs one Hessian-vector product per
    sample) or, without one, ``h`` evaluated once per replaced coordinate, and that of
    ``f - c h`` is ``cc - c`` times it; so any estimator, or wrapper of one, that passes the
    cost along keeps the fast path. The older form ``functools.partial(measure_valued,
    coordinate_costs=cc)`` is recognised and treated the same way; a wrapper that hides such a
    keyword (a lambda, a def) would evaluate ``f`` where ``h`` is asked for, a silently wrong
    estimate: put the evaluator on the cost instead.

    Args:
      estimator: :func:`estimators.pathwise`, :func:`estimators.score_function`,
        :func:`estimators.measure_valued`, or any function with their signature (a
        ``functools.partial`` fixing keywords is fine).
      function: cost ``f(x) -> []`` for one sample (a structured cost of
        :func:`estimators.with_coordinate_costs` keeps its fast evaluator).
      control_variate: a :class:`ControlVariate`, e.g. :func:`delta_method` ``(function)``.
      params, dist_builder, key, num_samples: as for the estimator; the estimator sees the same
        key, so its samples are those of the plain estimator.
      coefficient: a float ``c``, or ``"optimal"``: per element of every parameter,
        :math:`c = \mathrm{Cov}(\hat g[f], \hat g[h]) / \mathrm{Var}(\hat g[h])` estimated from
        ``num_coefficient_samples`` separate samples (key ``fold_in(key, 0x5EED)``), so the
        estimate stays unbiased.
      num_coefficient_samples: samples for ``"optimal"`` (static, >= 2).

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.

    Example (the pathwise estimator with the delta method, coefficient estimated):
      >>> import jax, jax.numpy as jnp, estimators
      >>> f = lambda x: jnp.sum(jnp.cos(x))
      >>> params = {"loc": jnp.ones(3), "scale": jnp.ones(3)}
      >>> normal = lambda p: estimators.Normal(p["loc"], p["scale"])
      >>> g = estimators.with_control_variate(estimators.pathwise, f, estimators.delta_method(f),
      ...     params, normal, jax.random.key(0), num_samples=100, coefficient="optimal")
      >>> jax.tree.map(jnp.shape, g)
      {'loc': (100, 3), 'scale': (100, 3)}
    """
    who = "with_control_variate"
    build_and_check(function, params, dist_builder, num_samples, who)
    _check_pair(estimator, control_variate, who)
    point = jax.lax.stop_gradient(dist_builder(params))  # the expansion point, held fixed

    def plain_h(x: Array) -> Array:
        return control_variate.value(point, x)

    estimator, f_costs = _fast_costs(estimator, function, who)
    h: CostFn = plain_h
    if f_costs is not None:
        h_costs = _structured_costs_of_h(estimator, control_variate, point)
        h = with_coordinate_costs(plain_h, h_costs)
        function = with_coordinate_costs(function, f_costs)

    def residual(k: Array, n: int) -> tuple[PyTree, PyTree]:
        jac_f = estimator(function, params, dist_builder, k, num_samples=n)
        jac_h = estimator(h, params, dist_builder, k, num_samples=n)
        corr = _correction(control_variate, point, params, dist_builder, k, n)
        return jac_f, jax.tree.map(lambda a, b: a - b, jac_h, corr)

    if isinstance(coefficient, str):
        if coefficient != "optimal":
            raise ValueError(
                f'{who}: coefficient must be a float or "optimal"; got {coefficient!r}'
            )
        if not isinstance(num_coefficient_samples, int) or num_coefficient_samples < 2:
            raise ValueError(
                f"{who}: num_coefficient_samples must be an int >= 2; "
                f"got {num_coefficient_samples!r}"
            )
        coef_key = jax.random.fold_in(key, _TAG_COEFFICIENT)
        cf, cd = residual(coef_key, num_coefficient_samples)
        coefs = jax.tree.map(_optimal_coefficient, cf, cd)
        jac_f, jac_d = residual(key, num_samples)
        return jax.tree.map(lambda a, d, c: a - c[None] * d, jac_f, jac_d, coefs)
    c = coefficient
    if isinstance(c, int | float) and not math.isfinite(c):
        raise ValueError(f"{who}: coefficient must be finite; got {coefficient!r}")

    # Every estimator is linear in f: one call on f - c h costs half of two calls.
    def residual_cost(x: Array) -> Array:
        return function(x) - c * plain_h(x)

    cost: CostFn = residual_cost
    if f_costs is not None:
        fc, hc = f_costs, h_costs  # bound now: the closure must not see later rebinding
        cost = with_coordinate_costs(residual_cost, lambda x, v: fc(x, v) - c * hc(x, v))
    jac_r = estimator(cost, params, dist_builder, key, num_samples=num_samples)
    corr = _correction(control_variate, point, params, dist_builder, key, num_samples)
    return jax.tree.map(lambda r, g: r + c * g, jac_r, corr)
