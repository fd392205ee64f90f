"""Argument checks, key handling and helpers shared by every estimator.

The checks run at trace time: they look only at static things (shapes, dtypes, Python ints), so
they cost nothing under ``jit`` and fail before any computation. Also here: the gradient
pull-back from a distribution's statistics to its parameters (:func:`pull_back`), costs that
carry a fast evaluator of one replaced coordinate (:func:`with_coordinate_costs`), and the mark
of an estimator that a baseline cannot change (:func:`invariant_to_baselines`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from ._capabilities import Binary, Discrete, StandardNoise
from ._distributions import Distribution

Array = jax.Array
PyTree = Any
CostFn = Callable[[Array], Array]
DistBuilder = Callable[[PyTree], Distribution]
# (x: [D], values: [P, D]) -> [P, D], out[p, d] = f(x with coordinate d set to values[p, d]).
CoordinateCostFn = Callable[[Array, Array], Array]
_F = TypeVar("_F", bound=Callable[..., Any])


def check_num_samples(num_samples: Any, who: str) -> int:
    """``num_samples`` must be an integer >= 1 (it fixes shapes, so it is static under jit).

    Python and NumPy integers are accepted; bools, floats and traced values are not.
    """
    try:
        if isinstance(num_samples, bool):
            raise TypeError
        num_samples = operator.index(num_samples)
    except TypeError:
        raise TypeError(
            f"{who}: num_samples must be a Python int (static under jit); "
            f"got {type(num_samples).__name__}"
        ) from None
    if num_samples < 1:
        raise ValueError(f"{who}: num_samples must be >= 1; got {num_samples}")
    return num_samples


def plain_function(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` behind a fresh Python function, safe to hand to JAX's caching transforms.

    ``jax.jit`` and ``jax.eval_shape`` cache on the callable through a weak reference. Some
    callables cannot be weakly referenced (NumPy's array-function dispatchers such as
    ``np.sum``, builtins, some C extensions): JAX raises ``TypeError: cannot create weak
    reference``, and with JAX 0.10.2 the next such call in the process crashed the interpreter
    (segmentation fault). A closure can always be referenced; it is new on every call, so
    nothing is cached across calls either. Every user callable that ``estimators`` hands to a
    caching transformation goes through this (today: the cost in :func:`build_and_check`;
    ``vmap``/``grad`` do not cache on the callable).
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return call


def build_and_check(
    function: CostFn, params: PyTree, dist_builder: DistBuilder, num_samples: int, who: str
) -> Distribution:
    """Build the distribution and check the arguments of an estimator; returns the distribution.

    Raises a ``TypeError``/``ValueError`` naming the problem if ``num_samples`` is not a positive
    int, if a parameter leaf is not floating point, if ``dist_builder`` does not return a
    distribution, or if ``function`` does not map one sample to a scalar.
    """
    check_num_samples(num_samples, who)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"{who}: parameters must be floating point to be differentiated; "
                f"params{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}"
            )
    dist = dist_builder(params)
    if not (hasattr(dist, "sample") and hasattr(dist, "log_prob")):
        raise TypeError(
            f"{who}: dist_builder(params) must return a distribution with sample(key, "
            f"sample_shape) and log_prob(x); got {type(dist).__name__}"
        )
    sample = jax.eval_shape(lambda k: dist.sample(k), jax.random.key(0))
    out = jax.eval_shape(plain_function(function), sample)
    if not (hasattr(out, "shape") and out.shape == ()):
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"{who}: function must return a scalar for one sample of shape "
            f"{list(sample.shape)}; it returned {shape}. Write the cost for one sample; "
            "the estimator vmaps it."
        )
    return dist


def sample_noise(dist: Distribution, key: Array, num_samples: int) -> Array:
    """The randomness of ``num_samples`` samples, one row per sample, drawn in one batched
    call where the distribution allows it (on a CPU one call is several times faster than one
    key per sample):

    * :class:`StandardNoise` (``standard_noise``/``from_noise``: a location-scale family such
      as ``Normal``): standard noise, ``dist.standard_noise(key, (num_samples,))``;
    * :class:`Binary` (independent bits ``b = 1[u < sigmoid(logits)]``, e.g. ``Bernoulli``):
      the uniforms ``u = jax.random.uniform(key, (num_samples, *event_shape))`` (dtype of the
      logits), so ``b`` is ``jax.random.bernoulli(key, sigmoid(logits), (num_samples,
      *event_shape))``, the bits ``dist.sample(key, (num_samples,))`` of a ``Bernoulli``;
      estimators that need the uniforms behind the bits (REBAR, RELAX) draw these;
    * any other :class:`Discrete` (e.g. ``Categorical``): the samples themselves,
      ``dist.sample(key, (num_samples,))`` (a discrete sample is not differentiable in the
      parameters, so nothing is lost);
    * anything else: one key per sample, ``jax.random.split(key, num_samples)``.
    """
    if isinstance(dist, StandardNoise):
        return dist.standard_noise(key, (num_samples,))  # type: ignore[attr-defined]
    if isinstance(dist, Binary):
        logits = dist.logits  # type: ignore[attr-defined]
        dtype = jnp.result_type(logits)
        return jax.random.uniform(key, (num_samples, *jnp.shape(logits)), dtype)
    if isinstance(dist, Discrete):
        return dist.sample(key, (num_samples,))
    return jax.random.split(key, num_samples)


def sample_from_noise(dist: Distribution, noise: Array) -> Array:
    """One sample ``[*event_shape]`` from one row of :func:`sample_noise` (for a
    :class:`Binary` distribution ``1[u < sigmoid(logits)]`` as floats, for another
    :class:`Discrete` one the row itself).

    Differentiable with respect to the distribution's parameters when it is reparameterisable.
    """
    if isinstance(dist, StandardNoise):
        return dist.from_noise(noise)  # type: ignore[attr-defined]
    if isinstance(dist, Binary):
        probs = jax.nn.sigmoid(dist.logits)  # type: ignore[attr-defined]
        probs = jnp.reshape(probs, (1,) * (jnp.ndim(noise) - probs.ndim) + probs.shape)
        return (noise < probs).astype(probs.dtype)
    if isinstance(dist, Discrete):
        return noise
    return dist.sample(noise)


def vmap_samples(function: Callable[..., Any]) -> Callable[..., Any]:
    """``jax.vmap(function)`` over the leading (sample) axis of its arguments; where that axis
    has length 1, a plain call of ``function`` on the one sample, its outputs given the axis
    back. The same values either way, up to the rounding of a sum XLA may order differently.

    Why: a VAE with one sample per example, vmapped over the batch, would otherwise carry a
    size-1 sample axis into every matmul of its decoder, and XLA:CPU then transposes the
    cotangents and forms the weight gradients in a slow layout (the VAE step at batch 1024 on
    the 2-core CPU: 23.7-26.1 ms with the axis, 20.0-20.5 ms without).
    """
    batched = jax.vmap(function)

    def call(*args: Any) -> Any:
        leaves = jax.tree.leaves(args)
        if leaves and all(jnp.shape(a)[:1] == (1,) for a in leaves):
            one = function(*jax.tree.map(lambda a: a[0], args))
            return jax.tree.map(lambda a: jnp.asarray(a)[None], one)
        return batched(*args)

    return call


def draw_samples(dist: Distribution, key: Array, num_samples: int) -> Array:
    """``[num_samples, *event_shape]``: the samples every estimator draws with this key.

    All estimators of this package draw their samples this way, so two estimators called with
    the same key see the same samples (common random numbers), and code that needs the samples
    an estimator used (to update a baseline, say) can draw them again. Row ``i`` is
    ``sample_from_noise(dist, sample_noise(dist, key, num_samples)[i])``; a
    :class:`StandardNoise` or :class:`Discrete` distribution's rows come from one batched draw
    (:func:`sample_noise`).
    """
    noise = sample_noise(dist, key, num_samples)
    if isinstance(dist, Discrete) and not isinstance(dist, StandardNoise):
        return sample_from_noise(dist, noise)  # elementwise in the noise: the whole batch at once
    return jax.vmap(lambda n: sample_from_noise(dist, n))(noise)


def draw(dist_builder: DistBuilder, params: PyTree, key: Array, num_samples: int) -> Array:
    """:func:`draw_samples` of ``dist_builder(params)``, differentiable in ``params``."""
    return draw_samples(dist_builder(params), key, num_samples)


def pull_back(
    dist_builder: DistBuilder,
    params: PyTree,
    statistics: Callable[[Distribution], PyTree],
    per_sample_grads: PyTree,
) -> PyTree:
    r"""Per-sample gradients w.r.t. a distribution's statistics, pulled back to its parameters.

    With :math:`s(\theta) = \mathrm{statistics}(\mathrm{dist\_builder}(\theta))` and
    per-sample gradients :math:`g_i = \partial \hat L_i / \partial s` (an estimator written
    for the statistics, e.g. the measure-valued one for ``(loc, scale)``, or an ARM-type one
    for logits), returns :math:`J_s(\theta)^\top g_i` for every ``i``: the chain rule, one
    ``jax.vjp`` of ``statistics . dist_builder`` at ``params`` (linearised once, then vmapped
    over the samples), so ``params`` may be any pytree the builder maps to the distribution.

    Args:
      dist_builder: ``params -> distribution``.
      params: any pytree of float arrays.
      statistics: ``distribution -> pytree`` of arrays, differentiable in the parameters
        (e.g. ``lambda d: {"loc": d.loc, "scale": d.scale}``).
      per_sample_grads: a pytree like ``statistics(dist_builder(params))`` whose leaves are
        ``[N, *statistic_leaf.shape]``.

    Returns:
      A pytree like ``params``; each leaf ``[N, *leaf.shape]``.

    Raises:
      ValueError: if ``per_sample_grads`` does not have the structure of the statistics, with
        one leading axis of the same length on every leaf.

    Example (``scale = exp(log_scale)``, so a gradient w.r.t. the scale is multiplied by it):
      >>> import jax.numpy as jnp, estimators
      >>> build = lambda p: estimators.Normal(p["loc"], jnp.exp(p["log_scale"]))
      >>> params = {"loc": jnp.zeros(2), "log_scale": jnp.log(jnp.array([1.0, 2.0]))}
      >>> grads = {"loc": jnp.ones((3, 2)), "scale": jnp.ones((3, 2))}  # 3 samples
      >>> stats = lambda d: {"loc": d.loc, "scale": d.scale}
      >>> estimators.pull_back(build, params, stats, grads)["log_scale"]
      Array([[1., 2.],
             [1., 2.],
             [1., 2.]], dtype=float32)
    """
    stats, vjp = jax.vjp(lambda p: statistics(dist_builder(p)), params)
    stats_def: Any = jax.tree.structure(stats)  # (mypy sees no comparison on PyTreeDef)
    grads_def: Any = jax.tree.structure(per_sample_grads)
    if stats_def != grads_def:
        raise ValueError(
            f"pull_back: per_sample_grads must have the structure of the statistics, {stats_def};"
            f" got {grads_def}"
        )
    leads = set()
    for (path, s), g in zip(
        jax.tree_util.tree_leaves_with_path(stats), jax.tree.leaves(per_sample_grads), strict=True
    ):
        if jnp.ndim(g) != jnp.ndim(s) + 1 or tuple(jnp.shape(g))[1:] != tuple(jnp.shape(s)):
            raise ValueError(
                f"pull_back: per_sample_grads{jax.tree_util.keystr(path)} must be "
                f"[N, *{list(jnp.shape(s))}] (one gradient per sample for a statistic of that "
                f"shape); got {list(jnp.shape(g))}"
            )
        leads.add(jnp.shape(g)[0])
    if len(leads) > 1:
        raise ValueError(
            f"pull_back: every leaf of per_sample_grads needs the same number of samples; got "
            f"{sorted(leads)}"
        )
    return jax.vmap(lambda g: vjp(g)[0])(per_sample_grads)


class StructuredCost:
    """A cost ``f(x) -> []`` that carries a fast evaluator of ``f`` with one coordinate replaced.

    Built by :func:`with_coordinate_costs`. Calling it calls ``f``, so every estimator takes it
    as an ordinary cost; the measure-valued estimator uses ``coordinate_costs`` instead, and
    :func:`estimators.with_control_variate` builds the residual ``f - c h`` as a structured cost
    too, so the fast path survives any wrapper that passes the cost along.

    Attributes:
      function: ``f(x) -> []`` for one sample ``x: [*event_shape]``.
      coordinate_costs: ``(x: [D], values: [P, D]) -> [P, D]``,
        ``out[p, d] = f(x with x_d = values[p, d])`` (``x`` flattened).
    """

    def __init__(self, function: CostFn, coordinate_costs: CoordinateCostFn):
        self.function = function
        self.coordinate_costs = coordinate_costs

    def __call__(self, x: Array) -> Array:
        return self.function(x)

    def __repr__(self) -> str:
        return f"with_coordinate_costs({self.function!r}, {self.coordinate_costs!r})"


def with_coordinate_costs(function: CostFn, coordinate_costs: CoordinateCostFn) -> StructuredCost:
    """``function`` as a cost that carries its fast coordinate evaluator ``coordinate_costs``.

    The measure-valued estimator evaluates ``f`` at every sample with one coordinate replaced,
    ``2 S D`` times per sample (``S`` statistics, ``D`` coordinates; ``4 D`` for the Normal).
    A cost that depends on ``x`` through ``A x`` can update ``A x`` by one column instead (see
    ``models.logistic_regression``). The returned cost behaves as ``function`` everywhere;
    :func:`estimators.measure_valued` uses ``coordinate_costs`` for the replaced evaluations.

    Args:
      function: ``f(x) -> []`` for one sample ``x: [*event_shape]``.
      coordinate_costs: ``(x: [D], values: [P, D]) -> [P, D]`` with
        ``out[p, d] = f(x with x_d = values[p, d])``, ``x`` flattened; it must agree with
        ``function``.

    Returns:
      A :class:`StructuredCost`.

    Example (``f(x) = sum sin(A x)``; replacing ``x_d`` by ``v`` moves ``A x`` by
    ``(v - x_d) A[:, d]``):
      >>> import jax, jax.numpy as jnp, estimators
      >>> a = jnp.array([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]])
      >>> f = lambda x: jnp.sum(jnp.sin(a @ x))
      >>> def replaced(x, values):  # [D], [P, D] -> [P, D]
      ...     moved = (a @ x)[None, None] + (values - x[None])[..., None] * a.T[None]
      ...     return jnp.sum(jnp.sin(moved), -1)
      >>> cost = estimators.with_coordinate_costs(f, replaced)
      >>> params = {"loc": jnp.zeros(2), "scale": jnp.ones(2)}
      >>> normal = lambda p: estimators.Normal(p["loc"], p["scale"])
      >>> fast = estimators.measure_valued(cost, params, normal, jax.random.key(0), num_samples=8)
      >>> slow = estimators.measure_valued(f, params, normal, jax.random.key(0), num_samples=8)
      >>> bool(jnp.allclose(fast["loc"], slow["loc"], atol=1e-5))
      True
    """
    if not callable(function) or not callable(coordinate_costs):
        raise TypeError(
            "with_coordinate_costs: function and coordinate_costs must be callables; got "
            f"{type(function).__name__} and {type(coordinate_costs).__name__}"
        )
    return StructuredCost(function, coordinate_costs)


def structured_costs(function: Callable[..., Any]) -> CoordinateCostFn | None:
    """The fast coordinate evaluator ``function`` carries, or ``None`` for a plain cost."""
    return function.coordinate_costs if isinstance(function, StructuredCost) else None


def invariant_to_baselines(estimator: _F) -> _F:
    """Mark ``estimator`` as one whose estimate does not change when a constant is added to f.

    True of every estimator that depends on ``f`` only through its derivatives in ``x``
    (pathwise) or differences of its values (measure-valued): a baseline, a control variate
    that does not depend on ``x``, then does nothing, and pairing one with it is an error in
    :func:`estimators.with_control_variate`. Sets ``estimator.ignores_baselines = True``.
    """
    estimator.ignores_baselines = True  # type: ignore[attr-defined]
    return estimator


def ignores_baselines(estimator: Callable[..., Any]) -> bool:
    """Whether ``estimator`` (or the function under its ``functools.partial``s) is marked by
    :func:`invariant_to_baselines`."""
    while isinstance(estimator, functools.partial):
        estimator = estimator.func
    return bool(getattr(estimator, "ignores_baselines", False))
