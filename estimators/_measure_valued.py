r"""The measure-valued (weak-derivative) estimator for the diagonal Gaussian.

A weak derivative writes the derivative of a density as a scaled difference of two densities,
:math:`\partial_\theta p(x;\theta) = c_\theta\,(p^+(x;\theta) - p^-(x;\theta))`, so that

.. math:: \partial_\theta E_{p}[f(x)] = c_\theta\,(E_{p^+}[f(x)] - E_{p^-}[f(x)])

(Mohamed et al. 2020, eq. 39). For one coordinate of :math:`N(\mu, \sigma^2)` (their table 1):

- mean: :math:`c = 1/(\sigma\sqrt{2\pi})`, :math:`p^+ = \mu + \sigma W`,
  :math:`p^- = \mu - \sigma W`, :math:`W \sim \mathrm{Weibull}(\sqrt 2, 2)`;
- scale: :math:`c = 1/\sigma`, :math:`p^+ = \mu + \sigma M` with :math:`M` double-sided
  Maxwell, :math:`p^- = \mu + \sigma \epsilon` with :math:`\epsilon \sim N(0, 1)`.

A D-dimensional sample uses the other coordinates of one ordinary sample, so it costs two
evaluations of ``f`` per coordinate and parameter (``4 D`` per sample for ``loc`` and ``scale``).
Coupling (common random numbers) shares ``W`` between the two parts of the mean and draws the
Gaussian of the scale as ``eps = M U`` with ``U ~ U(0, 1)`` (which is exactly N(0, 1)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import jax
import jax.numpy as jnp

from ._common import Array, CostFn, DistBuilder, PyTree, build_and_check, draw_samples
from ._distributions import Distribution, Normal

# The ordinary samples are estimators.draw_samples(dist, key, N), the samples of `pathwise` and
# `score_function` with the same key; sample i's auxiliary draws come from aux_keys[i],
# aux_keys = split(fold_in(key, _TAG_AUXILIARY), N).
_TAG_AUXILIARY = 0x4D56
# (x: [D], values: [P, D]) -> [P, D], out[p, d] = f(x with coordinate d set to values[p, d]).
CoordinateCostFn = Callable[[Array, Array], Array]
# Default size of one vectorised step, in scalar elements of the perturbed samples.
_DEFAULT_STEP_ELEMENTS = 2**24


def check_measure_valued_dist(dist: Distribution, coupling: object, who: str) -> Normal:
    """Raise a clear error unless ``dist`` has a (coupled, if asked) weak-derivative form."""
    if not isinstance(coupling, bool):
        raise TypeError(f"{who}: coupling must be a Python bool; got {type(coupling).__name__}")
    if isinstance(dist, Normal):
        return dist
    name = type(dist).__name__
    if coupling:
        raise ValueError(
            f"{who}: coupling=True asks for a coupled weak-derivative decomposition, which is "
            f"implemented only for the diagonal Gaussian estimators.Normal (Weibull parts for "
            f"the mean, Maxwell/Gaussian parts for the scale); dist_builder returned {name}, "
            "which has none here. The measure-valued estimator supports only estimators.Normal."
        )
    raise ValueError(
        f"{who}: the measure-valued estimator supports only the diagonal Gaussian "
        f"estimators.Normal (e.g. estimators.multi_normal); dist_builder returned {name}. "
        "Use score_function or pathwise for other distributions."
    )


def _parts(key: Array, loc: Array, scale: Array, coupling: bool) -> Array:
    """``[4, D]`` replacement values of one sample: mean +, mean -, scale +, scale -.

    ``loc, scale: [D]`` (flat). Two draws per sample, transformed exactly: Weibull(sqrt 2, 2)
    by its inverse CDF ``sqrt(-2 log(1 - u))``; the double-sided Maxwell as a random sign times
    the norm of three standard normals (a chi variable with 3 degrees of freedom).
    """
    dim, dtype = loc.shape[0], loc.dtype
    k_uniform, k_normal = jax.random.split(key)
    u = jax.random.uniform(k_uniform, (4, dim), dtype)
    z = jax.random.normal(k_normal, (4, dim), dtype)
    weibull = jnp.sqrt(-2.0 * jnp.log1p(-u[:2]))  # [2, D]
    w_pos = weibull[0]
    w_neg = w_pos if coupling else weibull[1]
    sign = jnp.where(u[2] < 0.5, -1.0, 1.0).astype(dtype)
    maxwell = sign * jnp.sqrt(jnp.sum(jnp.square(z[:3]), axis=0))
    # Coupled: M U with U ~ U(0, 1) independent of M is exactly N(0, 1).
    eps = maxwell * u[3] if coupling else z[3]
    return jnp.stack(
        [loc + scale * w_pos, loc - scale * w_neg, loc + scale * maxwell, loc + scale * eps]
    )


def coordinate_costs(
    function: CostFn, x: Array, values: Array, event_shape: tuple[int, ...], batch_size: int
) -> Array:
    """``out[p, d] = f(x with coordinate d replaced by values[p, d])``; shape ``[P, D]``.

    ``x: [D]`` (flat), ``values: [P, D]``. Coordinates are processed ``batch_size`` at a time
    (``lax.map``), so memory is ``O(batch_size * P * D)``, never ``D x D``.
    """
    index = jnp.arange(x.shape[0])

    def at_coordinate(args: tuple[Array, Array]) -> Array:
        d, v = args

        def one(vp: Array) -> Array:
            return function(jnp.where(index == d, vp, x).reshape(event_shape))

        return jax.vmap(one)(v)

    return jax.lax.map(at_coordinate, (index, values.T), batch_size=batch_size).T


def _check_step(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"measure_valued: {name} must be a Python int >= 1; got {value!r}")


def _step_sizes(
    num_samples: int, dim: int, batch_size: int | None, samples_per_step: int | None
) -> tuple[int, int]:
    """(samples, coordinates) per vectorised step: about 2**24 perturbed-sample elements."""
    _check_step("batch_size", batch_size)
    _check_step("samples_per_step", samples_per_step)
    if batch_size is None:
        batch_size = max(1, min(dim, _DEFAULT_STEP_ELEMENTS // (4 * dim)))
    if samples_per_step is None:
        samples_per_step = _DEFAULT_STEP_ELEMENTS // (4 * dim * batch_size)
    return max(1, min(num_samples, samples_per_step)), min(batch_size, dim)


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
    r"""Per-sample measure-valued estimates of :math:`\nabla_\theta E_{N(x;\mu,\sigma^2)}[f(x)]`.

    For each sample and coordinate ``d``:
    :math:`\hat g_{\mu_d} = (f(x^{+}) - f(x^{-})) / (\sigma_d\sqrt{2\pi})` with
    :math:`x^\pm_d = \mu_d \pm \sigma_d W`, and :math:`\hat g_{\sigma_d} = (f(x^{+}) - f(x^{-}))
    / \sigma_d` with :math:`x^+_d = \mu_d + \sigma_d M`, :math:`x^-_d = \mu_d + \sigma_d\epsilon`;
    the other coordinates are those of the ordinary sample ``x_i`` (the same ``x_i`` as
    :func:`pathwise` with the same key). The gradients with respect to ``(loc, scale)`` are pulled
    back to ``params`` through ``dist_builder`` with a vjp, so ``params`` may be
    ``(loc, log_scale)``, a dict, or anything ``dist_builder`` maps to an ``estimators.Normal``.

    Args:
      function: cost ``f(x) -> []`` for one sample ``x: [*event_shape]``; never differentiated.
      params: any pytree of float arrays.
      dist_builder: ``params -> estimators.Normal`` (any other distribution is an error).
      key: PRNG key; the ordinary samples are ``estimators.draw_samples(dist, key,
        num_samples)`` (those of :func:`pathwise` with the same key), the Weibull, Maxwell and
        uniform draws come from ``fold_in`` of the key.
      num_samples: number of samples (static).
      coupling: share the random numbers of the positive and negative parts (lower variance).
      batch_size: coordinates evaluated per vectorised step (static). Samples are processed in
        chunks too, so that one step holds about ``max(2**24, 4 * batch_size * D)`` elements of
        perturbed samples; memory is that plus the ``O(num_samples * D)`` output. The default
        takes as many coordinates as fit (all of them for small D).
      samples_per_step: samples per vectorised step (static); the default follows from the
        element budget above.
      coordinate_costs: optional fast evaluator for a structured cost,
        ``(x: [D], values: [P, D]) -> [P, D]`` with ``out[p, d] = f(x with x_d = values[p, d])``
        (``x`` flattened). A cost that depends on ``x`` through ``A x`` can update ``A x`` by one
        column instead of recomputing it (see ``models.logistic_regression``). It must agree
        with ``function``, which is then used only to check the arguments. Inside
        :func:`estimators.with_control_variate`, pass it as ``functools.partial(measure_valued,
        coordinate_costs=...)``: the control variate's costs are then added to it there.

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``. Costs ``4 D``
      evaluations of ``f`` per sample (two per coordinate for the mean, two for the scale).
    """
    dist = check_measure_valued_dist(
        build_and_check(function, params, dist_builder, num_samples, "measure_valued"),
        coupling,
        "measure_valued",
    )
    jac_loc, jac_scale = _loc_scale_jacobians(
        function, dist, key, num_samples, coupling, batch_size, samples_per_step, coordinate_costs
    )

    def loc_scale(p: PyTree) -> tuple[Array, Array]:
        d = cast(Normal, dist_builder(p))
        return d.loc, d.scale

    _, pullback = jax.vjp(loc_scale, params)
    return jax.vmap(lambda gl, gs: pullback((gl, gs))[0])(jac_loc, jac_scale)


def _loc_scale_jacobians(
    function: CostFn,
    dist: Normal,
    key: Array,
    num_samples: int,
    coupling: bool,
    batch_size: int | None,
    samples_per_step: int | None,
    structured: CoordinateCostFn | None,
) -> tuple[Array, Array]:
    """Per-sample weak-derivative estimates w.r.t. ``dist.loc`` and ``dist.scale``.

    Returns two ``[num_samples, *event_shape]`` arrays.
    """
    event_shape = dist.event_shape
    dim = math.prod(event_shape)
    sample_chunk, batch_size = _step_sizes(num_samples, dim, batch_size, samples_per_step)
    loc = jax.lax.stop_gradient(jnp.reshape(dist.loc, (dim,)))
    scale = jax.lax.stop_gradient(jnp.reshape(dist.scale, (dim,)))
    base = jax.lax.stop_gradient(dist)

    xs = jnp.reshape(draw_samples(base, key, num_samples), (num_samples, dim))
    # One key per sample for the auxiliary draws, made inside the loop: memory stays that of
    # one chunk of samples.
    aux_keys = jax.random.split(jax.random.fold_in(key, _TAG_AUXILIARY), num_samples)

    def one_sample(args: tuple[Array, Array]) -> tuple[Array, Array]:
        x, aux_key = args  # [D], key
        values = _parts(aux_key, loc, scale, coupling)  # [4, D]
        if structured is None:
            costs = coordinate_costs(function, x, values, event_shape, batch_size)
        else:
            costs = structured(x, values)
            if costs.shape != values.shape:
                raise ValueError(
                    f"measure_valued: coordinate_costs must return {list(values.shape)} "
                    f"(one cost per replaced value); it returned {list(costs.shape)}"
                )
        g_loc = (costs[0] - costs[1]) / (scale * math.sqrt(2 * math.pi))
        g_scale = (costs[2] - costs[3]) / scale
        return g_loc.reshape(event_shape), g_scale.reshape(event_shape)

    return jax.lax.map(one_sample, (xs, aux_keys), batch_size=sample_chunk)
