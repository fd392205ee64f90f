r"""The measure-valued (weak-derivative) estimator, for any distribution with a weak derivative.

A weak derivative writes the derivative of a density as a scaled difference of two densities,
:math:`\partial_\theta p(x;\theta) = c_\theta\,(p^+(x;\theta) - p^-(x;\theta))`, so that

.. math:: \partial_\theta E_{p}[f(x)] = c_\theta\,(E_{p^+}[f(x)] - E_{p^-}[f(x)])

(Mohamed et al. 2020, eq. 39). The decomposition is the distribution's: a
:class:`~estimators.WeakDerivative` distribution's ``weak_derivative(key, coupling)`` gives, for
each of its statistics (``loc`` and ``scale`` for :class:`~estimators.Normal`; see
:class:`~estimators.WeakDerivativeTerm`), the constant and one draw of the positive and negative
parts per coordinate. A D-dimensional sample uses the other coordinates of one ordinary sample,
so it costs two evaluations of ``f`` per coordinate and statistic (``4 D`` per sample for the
Normal's ``loc`` and ``scale``). The estimates for the statistics are pulled back to the
parameters by :func:`estimators.pull_back`. Coupling (common random numbers) shares the
randomness of the positive and negative parts; for the Normal it shares ``W`` between the two
parts of the mean and draws the Gaussian of the scale as ``eps = M U`` with ``U ~ U(0, 1)``
(exactly N(0, 1)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp

from ._capabilities import WeakDerivative
from ._common import (
    Array,
    CoordinateCostFn,
    CostFn,
    DistBuilder,
    PyTree,
    build_and_check,
    draw_samples,
    invariant_to_baselines,
    pull_back,
    structured_costs,
    vmap_samples,
)
from ._distributions import Distribution, WeakDerivativeTerm

# The ordinary samples are estimators.draw_samples(dist, key, N), the samples of `pathwise` and
# `score_function` with the same key; sample i's auxiliary draws come from aux_keys[i],
# aux_keys = split(fold_in(key, _TAG_AUXILIARY), N).
_TAG_AUXILIARY = 0x4D56
# Default size of one vectorised step, in scalar elements of the perturbed samples.
_DEFAULT_STEP_ELEMENTS = 2**24


def check_measure_valued_dist(dist: Distribution, coupling: object, who: str) -> Distribution:
    """Raise a clear error unless ``dist`` declares the ``WeakDerivative`` capability."""
    if not isinstance(coupling, bool):
        raise TypeError(f"{who}: coupling must be a Python bool; got {type(coupling).__name__}")
    if not isinstance(dist, WeakDerivative):
        raise ValueError(
            f"{who}: the measure-valued estimator needs a distribution with the WeakDerivative "
            "capability (a weak_derivative(key, coupling) decomposition, as estimators.Normal "
            f"has); dist_builder returned {type(dist).__name__}, which does not declare it. "
            "Use score_function or pathwise for it, or give it weak_derivative and inherit "
            "estimators.WeakDerivative."
        )
    return dist


def weak_derivative_terms(
    dist: Distribution, key: Array, coupling: bool
) -> Mapping[str, WeakDerivativeTerm]:
    """``dist.weak_derivative(key, coupling)``, checked: a non-empty mapping of terms whose
    fields all have the distribution's event shape. Shapes only: no cost under jit."""
    terms = cast(Any, dist).weak_derivative(key, coupling)
    name = type(dist).__name__
    if not isinstance(terms, Mapping) or not terms:
        raise TypeError(
            f"measure_valued: {name}.weak_derivative must return a non-empty mapping from "
            f"statistic names to estimators.WeakDerivativeTerm; got {type(terms).__name__}"
        )
    event_shape = tuple(dist.event_shape)
    for stat, term in terms.items():
        if not isinstance(term, WeakDerivativeTerm):
            raise TypeError(
                f"measure_valued: {name}.weak_derivative()[{stat!r}] must be an "
                f"estimators.WeakDerivativeTerm; got {type(term).__name__}"
            )
        for field, value in term._asdict().items():
            if tuple(jnp.shape(value)) != event_shape:
                raise ValueError(
                    f"measure_valued: {name}.weak_derivative()[{stat!r}].{field} must have the "
                    f"event shape {list(event_shape)}; got {list(jnp.shape(value))}"
                )
    return terms


def coordinate_costs(
    function: CostFn, x: Array, values: Array, event_shape: tuple[int, ...], batch_size: int
) -> Array:
    """``out[p, d] = f(x with coordinate d replaced by values[p, d])``; shape ``[P, D]``.

    ``x: [D]`` (flat), ``values: [P, D]``. Coordinates are processed ``batch_size`` at a time,
    so memory is ``O(batch_size * P * D)``, never ``D x D`` unless ``batch_size >= D``: then
    all coordinates in one vectorised step (``jax.vmap``, no loop in the program); otherwise a
    ``lax.map`` over steps of ``batch_size``. Both evaluate the same elementwise program, so
    they agree bitwise.
    """
    index = jnp.arange(x.shape[0])

    def at_coordinate(d: Array, v: Array) -> Array:
        def one(vp: Array) -> Array:
            return function(jnp.where(index == d, vp, x).reshape(event_shape))

        return jax.vmap(one)(v)

    if batch_size >= x.shape[0]:
        return jax.vmap(at_coordinate, out_axes=1)(index, values.T)
    return jax.lax.map(
        lambda args: at_coordinate(*args), (index, values.T), batch_size=batch_size
    ).T


def _check_step(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"measure_valued: {name} must be a Python int >= 1; got {value!r}")


def _step_sizes(
    num_samples: int,
    dim: int,
    batch_size: int | None,
    samples_per_step: int | None,
    num_parts: int = 4,
) -> tuple[int, int]:
    """(samples, coordinates) per vectorised step: about 2**24 perturbed-sample elements.

    ``num_parts``: replaced values per coordinate and sample (two per statistic; 4 for the
    Normal)."""
    _check_step("batch_size", batch_size)
    _check_step("samples_per_step", samples_per_step)
    if batch_size is None:
        batch_size = max(1, min(dim, _DEFAULT_STEP_ELEMENTS // (num_parts * dim)))
    if samples_per_step is None:
        samples_per_step = _DEFAULT_STEP_ELEMENTS // (num_parts * dim * batch_size)
    return max(1, min(num_samples, samples_per_step)), min(batch_size, dim)


@invariant_to_baselines
def measure_valued(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
    coupling: bool = True,
    batch_size: int | None = None,
    samples_per_step: int | None = None,
    coordinate_costs: CoordinateCostFn | None = None,
) -> PyTree:
    r"""Per-sample measure-valued estimates of :math:`\nabla_\theta E_{p(x;\theta)}[f(x)]`.

    For each sample ``x_i``, statistic :math:`s` of the distribution and coordinate ``d``:
    :math:`\hat g_{s_d} = c_d\,(f(x^{+}) - f(x^{-}))`, where :math:`x^\pm` is ``x_i`` with
    coordinate ``d`` replaced by the draw of :math:`p^\pm_d` that
    ``dist.weak_derivative(key_i, coupling)`` gives (:class:`estimators.WeakDerivativeTerm`).
    For :class:`estimators.Normal`: :math:`\hat g_{\mu_d} = (f(x^{+}) - f(x^{-})) /
    (\sigma_d\sqrt{2\pi})` with :math:`x^\pm_d = \mu_d \pm \sigma_d W`, and
    :math:`\hat g_{\sigma_d} = (f(x^{+}) - f(x^{-})) / \sigma_d` with
    :math:`x^+_d = \mu_d + \sigma_d M`, :math:`x^-_d = \mu_d + \sigma_d\epsilon`. The ordinary
    samples ``x_i`` are those of :func:`pathwise` with the same key. The gradients with respect
    to the statistics are pulled back to ``params`` through ``dist_builder`` with one vjp
    (:func:`estimators.pull_back`), so ``params`` may be ``(loc, log_scale)``, a dict, or
    anything ``dist_builder`` maps to the distribution.

    Args:
      function: cost ``f(x) -> []`` for one sample ``x: [*event_shape]``; never differentiated.
        A cost made by :func:`estimators.with_coordinate_costs` is evaluated by its fast
        evaluator.
      params: any pytree of float arrays.
      dist_builder: ``params -> distribution`` that declares ``estimators.WeakDerivative``
        (:class:`estimators.Normal`, or a distribution of one's own); any other is an error
        naming the missing capability.
      key: PRNG key; the ordinary samples are ``estimators.draw_samples(dist, key,
        num_samples)`` (those of :func:`pathwise` with the same key); sample ``i``'s
        weak-derivative draws use key ``i`` of ``split(fold_in(key, 0x4D56), num_samples)``.
      num_samples: number of samples (static).
      coupling: share the random numbers of the positive and negative parts (lower variance).
      batch_size: coordinates evaluated per vectorised step (static). Samples are processed in
        chunks too, so that one step holds about ``max(2**24, P * batch_size * D)`` elements of
        perturbed samples (``P = 2 S`` replaced values per coordinate, ``S`` statistics; 4 for
        the Normal); memory is that plus the ``O(num_samples * D)`` output. The default takes
        as many coordinates as fit (all of them for small D). The path is chosen statically
        from the shapes: when one step holds every sample and coordinate (by default when
        ``P * num_samples * D**2 <= 2**24``), the estimate is one vectorised program with no
        loop; otherwise a ``lax.map`` over steps. The two draw the same samples and agree to
        float32 rounding.
      samples_per_step: samples per vectorised step (static); the default follows from the
        element budget above.
      coordinate_costs: optional fast evaluator for a structured cost,
        ``(x: [D], values: [P, D]) -> [P, D]`` with ``out[p, d] = f(x with x_d = values[p, d])``
        (``x`` flattened). A cost that depends on ``x`` through ``A x`` can update ``A x`` by one
        column instead of recomputing it (see ``models.logistic_regression``). It must agree
        with ``function``, which is then used only to check the arguments. Prefer giving it
        with the cost, ``estimators.with_coordinate_costs(f, coordinate_costs)``: every wrapper
        that passes the cost along (:func:`estimators.with_control_variate`, the registry)
        keeps the fast path. Giving an evaluator both ways is an error.

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``. Costs ``2 S D``
      evaluations of ``f`` per sample (``4 D`` for the Normal: two per coordinate for the mean,
      two for the scale).

    Example (:math:`\nabla_\mu E[\sum_d x_d] = 1`, within 5 standard errors):
      >>> import jax, jax.numpy as jnp, estimators
      >>> params = {"loc": jnp.zeros(2), "scale": jnp.ones(2)}
      >>> normal = lambda p: estimators.Normal(p["loc"], p["scale"])
      >>> g = estimators.measure_valued(jnp.sum, params, normal, jax.random.key(0),
      ...                               num_samples=10_000)
      >>> jax.tree.map(jnp.shape, g)
      {'loc': (10000, 2), 'scale': (10000, 2)}
      >>> se = g["loc"].std(0) / jnp.sqrt(10_000)
      >>> bool(jnp.all(jnp.abs(g["loc"].mean(0) - 1.0) < 5 * se))
      True
    """
    who = "measure_valued"
    dist = check_measure_valued_dist(
        build_and_check(function, params, dist_builder, num_samples, who), coupling, who
    )
    carried = structured_costs(function)
    if carried is not None and coordinate_costs is not None:
        raise ValueError(
            f"{who}: the cost carries a coordinate evaluator (with_coordinate_costs) and "
            "coordinate_costs= was given too; give it one way"
        )
    jacobians = _statistic_jacobians(
        function,
        dist,
        key,
        num_samples,
        coupling,
        batch_size,
        samples_per_step,
        coordinate_costs if carried is None else carried,
    )

    def statistics(d: Distribution) -> dict[str, Array]:
        return {
            name: t.statistic for name, t in cast(Any, d).weak_derivative(key, coupling).items()
        }

    return pull_back(dist_builder, params, statistics, jacobians)


def _statistic_jacobians(
    function: CostFn,
    dist: Distribution,
    key: Array,
    num_samples: int,
    coupling: bool,
    batch_size: int | None,
    samples_per_step: int | None,
    structured: CoordinateCostFn | None,
) -> dict[str, Array]:
    """Per-sample weak-derivative estimates w.r.t. each statistic of ``dist``.

    Returns ``{statistic: [num_samples, *event_shape]}``.
    """
    event_shape = dist.event_shape
    dim = math.prod(event_shape)
    base = jax.lax.stop_gradient(dist)
    names = list(weak_derivative_terms(base, key, coupling))  # checked once, at trace time
    num_parts = 2 * len(names)
    sample_chunk, batch_size = _step_sizes(
        num_samples, dim, batch_size, samples_per_step, num_parts
    )

    xs = jnp.reshape(draw_samples(base, key, num_samples), (num_samples, dim))
    # One key per sample for the auxiliary draws, made inside the loop: memory stays that of
    # one chunk of samples.
    aux_keys = jax.random.split(jax.random.fold_in(key, _TAG_AUXILIARY), num_samples)

    def flat(a: Array) -> Array:
        return jnp.reshape(a, (dim,))

    def one_sample(args: tuple[Array, Array]) -> dict[str, Array]:
        x, aux_key = args  # [D], key
        terms = cast(Any, base).weak_derivative(aux_key, coupling)
        parts = [flat(v) for name in names for v in (terms[name].positive, terms[name].negative)]
        values = jnp.stack(parts)  # [2 S, D]: + and - of each statistic in turn
        if structured is None:
            costs = coordinate_costs(function, x, values, event_shape, batch_size)
        else:
            costs = structured(x, values)
            if costs.shape != values.shape:
                raise ValueError(
                    f"measure_valued: coordinate_costs must return {list(values.shape)} "
                    f"(one cost per replaced value); it returned {list(costs.shape)}"
                )
        return {
            name: ((costs[2 * j] - costs[2 * j + 1]) / flat(terms[name].inverse_constant)).reshape(
                event_shape
            )
            for j, name in enumerate(names)
        }

    if sample_chunk >= num_samples:  # all samples in one vectorised step: no loop
        return vmap_samples(one_sample)((xs, aux_keys))
    return jax.lax.map(one_sample, (xs, aux_keys), batch_size=sample_chunk)
