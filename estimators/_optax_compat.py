"""Drop-in replacements for ``optax.monte_carlo`` (removed in optax 0.2.7; 0.2.6 has it last).

Same arguments and returns as optax 0.2.6: ``params`` is a sequence of arrays, ``dist_builder``
takes them positionally (``dist_builder(*params)``), and the result is a sequence of the same
type holding one ``[num_samples, *param.shape]`` jacobian per parameter. ``function`` is written
for one sample, as in optax, and may be any callable (``np.sum``, a ``functools.partial``, a
callable object, ...). :func:`multi_normal` builds optax's ``MultiNormalDiagFromLogScale``
interface on this package's ``Normal``; ``dist_builder`` may also be optax's own
``optax.multi_normal`` or any object with optax's ``sample(shape, key=...)`` and ``log_prob``.

With ``multi_normal`` and the same key, ``score_function_jacobians`` and ``pathwise_jacobians``
draw the same samples as optax 0.2.6 and return its jacobians up to float rounding; so does
``control_variates_jacobians`` with them for the mean over samples, but not row by row: it keeps
the control variate's parameter gradient per sample where optax subtracts its average from
every row (same mean; here the rows are independent, as an estimator's samples should be).
``measure_valued_jacobians`` draws from its own random stream: it agrees with optax in
distribution, not bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._capabilities import HasScore, Reparameterizable
from ._common import Array, check_num_samples, draw, ignores_baselines, invariant_to_baselines
from ._control_variates import delta_method
from ._distributions import Distribution, Normal, _pytree_dataclass
from ._measure_valued import check_measure_valued_dist, measure_valued
from ._pathwise import pathwise
from ._score_function import score_function

# --- multi_normal (optax._src.utils.multi_normal) -------------------------------------------


def _is_key(x: object) -> bool:
    """A single PRNG key: a typed key array, or a raw ``uint32[2]`` key (concrete or traced)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return dtype == jnp.uint32 and tuple(getattr(x, "shape", ())) == (2,)


def _is_dim(d: object) -> bool:
    return isinstance(d, (int, np.integer)) and not isinstance(d, bool)


def _as_shape(x: object) -> tuple[int, ...] | None:
    """``x`` as a sample shape (an int or a tuple/list of ints), or None if it is not one."""
    if _is_dim(x):
        return (int(x),)  # type: ignore[call-overload]
    if isinstance(x, (tuple, list)) and all(_is_dim(d) for d in x):
        return tuple(int(d) for d in x)
    return None


def _sample_args(args: tuple, kwargs: dict) -> tuple[Array, tuple[int, ...]]:
    """(key, sample_shape) from either call order of :meth:`MultiNormalDiagFromLogScale.sample`."""
    unknown = set(kwargs) - {"key", "seed", "sample_shape", "shape"}
    if unknown or len(args) > 2 or ("key" in kwargs and "seed" in kwargs):
        raise TypeError(
            "multi_normal(...).sample takes (key, sample_shape=()) or optax's (shape, key); "
            f"got {len(args)} positional argument(s) and keywords {sorted(kwargs)}"
        )
    kw_key = kwargs.get("key", kwargs.get("seed"))
    kw_shape = kwargs.get("sample_shape", kwargs.get("shape"))
    if "sample_shape" in kwargs and "shape" in kwargs:
        raise TypeError("multi_normal(...).sample: pass sample_shape or shape, not both")
    key: Any = None
    shape: Any = None
    if args and _is_key(args[0]):  # this package's order: (key, sample_shape)
        key, shape = args[0], args[1] if len(args) == 2 else kw_shape
        if kw_key is not None or (len(args) == 2 and kw_shape is not None):
            raise TypeError("multi_normal(...).sample: the key or the shape is given twice")
    elif args:  # optax's order: (shape, key)
        shape, key = args[0], args[1] if len(args) == 2 else kw_key
        if kw_shape is not None or (len(args) == 2 and kw_key is not None):
            raise TypeError("multi_normal(...).sample: the key or the shape is given twice")
    else:
        key, shape = kw_key, kw_shape
    if not _is_key(key):
        got = type(key).__name__
        if hasattr(key, "dtype"):
            got += f" of shape {tuple(key.shape)} and dtype {key.dtype}"
        raise TypeError(
            "multi_normal(...).sample needs one PRNG key (jax.random.key(...) or a uint32[2] "
            f"jax.random.PRNGKey) as `key`; got {got}"
        )
    sample_shape = () if shape is None else _as_shape(shape)
    if sample_shape is None:
        raise TypeError(
            "multi_normal(...).sample: the sample shape must be an int or a tuple of ints; "
            f"got {shape!r}"
        )
    return key, sample_shape


@_pytree_dataclass
class MultiNormalDiagFromLogScale(Normal):
    """``N(loc, diag(exp(log_scale)²))`` with optax 0.2.6's interface; an ``estimators.Normal``.

    Built by :func:`multi_normal`. On top of everything ``Normal`` has (``loc``, ``scale``,
    ``mean``, ``log_prob``, ``standard_noise``/``from_noise``, so every estimator of this package
    takes it), it has optax's ``log_scale`` (as given) and ``params`` (``[loc, log_scale]``), and
    its ``sample`` accepts both call orders:

    - this package's ``sample(key, sample_shape=())``;
    - optax's ``sample(shape, key)``, also as ``sample((n,), key=key)`` (how optax calls it).

    The order is read from the first argument, which is never ambiguous: a key is an array (a
    typed key, or a ``uint32[2]`` raw key), a shape is a Python int or a tuple/list of ints.
    Keywords ``key`` (or ``seed``) and ``sample_shape`` (or ``shape``) work with either.
    Returns ``[*sample_shape, *event_shape]``.
    """

    log_scale: Array

    def sample(self, *args: Any, **kwargs: Any) -> Array:
        """``sample(key, sample_shape=())`` or optax's ``sample(shape, key)``; see the class."""
        key, sample_shape = _sample_args(args, kwargs)
        return super().sample(key, sample_shape)

    @property
    def params(self) -> list[Array]:
        """``[loc, log_scale]``, as optax's ``params``."""
        return [self.loc, self.log_scale]


def multi_normal(loc: Array, log_scale: Array) -> MultiNormalDiagFromLogScale:
    """Diagonal Normal from ``(loc, log_scale)``: ``optax._src.utils.multi_normal`` (0.2.6).

    The drop-in for optax code and the builder the ``*_jacobians`` functions document. The
    returned object is an ``estimators.Normal`` (so ``estimators.score_function``, ``pathwise``,
    ``measure_valued`` and the control variates take it, with ``sample(key, sample_shape)``)
    that also has optax's interface: ``sample(shape, key)``, ``params`` and ``log_scale`` (see
    :class:`MultiNormalDiagFromLogScale`). As in optax, ``loc`` and ``log_scale`` broadcast
    against each other; the event shape is their broadcast shape, and ``loc``/``scale`` are
    stored at that shape (so ``params[0]`` is ``loc`` broadcast, where optax keeps it as given).

    Args:
      loc: mean, broadcastable to ``event_shape``.
      log_scale: log standard deviation, broadcastable to ``event_shape``; kept as given in
        ``log_scale`` and ``params[1]``.
    """
    loc, log_scale = jnp.asarray(loc), jnp.asarray(log_scale)
    try:
        shape = jnp.broadcast_shapes(loc.shape, log_scale.shape)
    except ValueError:
        raise ValueError(
            f"multi_normal: loc {list(loc.shape)} and log_scale {list(log_scale.shape)} do not "
            "broadcast to one shape"
        ) from None
    scale = jnp.exp(log_scale)
    return MultiNormalDiagFromLogScale(
        jnp.broadcast_to(loc, shape), jnp.broadcast_to(scale, shape), log_scale
    )


# --- The estimators (optax.monte_carlo.stochastic_gradient_estimators) -----------------------


def _like(params: Sequence[Array], jac: Sequence[Array]) -> Sequence[Array]:
    """``jac`` as a list if ``params`` is one, else as a tuple (optax returns params' type)."""
    return list(jac) if isinstance(params, list) else tuple(jac)


class _OptaxStyleDistribution(Distribution, HasScore, Reparameterizable):
    """A distribution written for optax 0.2.6: ``sample(shape, key=key)`` and ``log_prob(x)``.

    optax's estimators accept any such object; here it gets this package's interface. Samples
    are drawn one key per sample (``sample((), key=k_i)``), and the pathwise estimator
    differentiates through ``sample`` as optax's does (hence ``HasScore`` and
    ``Reparameterizable``, as optax assumes of it).
    """

    def __init__(self, dist: Any):
        self._dist = dist

    @property
    def event_shape(self) -> tuple[int, ...]:
        one = jax.eval_shape(lambda k: self._dist.sample((), key=k), jax.random.key(0))
        return tuple(one.shape)

    def sample(self, key: Array, sample_shape: Sequence[int] = ()) -> Array:
        return self._dist.sample(tuple(sample_shape), key=key)

    def log_prob(self, x: Array) -> Array:
        return self._dist.log_prob(x)


def _as_distribution(dist: Any) -> Any:
    """What ``dist_builder(*params)`` returned, as a distribution of this package.

    Ours pass through. optax's own ``MultiNormalDiagFromLogScale`` (``optax.multi_normal``,
    still in optax after 0.2.6) becomes :func:`multi_normal` of its ``params`` (the same
    distribution, and the same draws for the same key). Any other object with optax's
    ``sample(shape, key=...)`` and ``log_prob`` is wrapped. Anything else is returned as is, for
    the estimators' argument checks to reject by name.
    """
    if isinstance(dist, Distribution):
        return dist
    if (
        type(dist).__name__ == "MultiNormalDiagFromLogScale"
        and hasattr(dist, "log_scale")
        and len(getattr(dist, "params", ())) == 2
    ):
        return multi_normal(*dist.params)
    if callable(getattr(dist, "sample", None)) and callable(getattr(dist, "log_prob", None)):
        return _OptaxStyleDistribution(dist)
    return dist


def _positional(dist_builder: Callable[..., Any]) -> Callable[[tuple], Distribution]:
    """optax's ``dist_builder(*params)`` as this package's ``dist_builder(params)``."""
    return lambda p: _as_distribution(dist_builder(*p))


def score_function_jacobians(
    function: Callable[[Array], Array],
    params: Sequence[Array],
    dist_builder: Callable[..., Any],
    rng: Array,
    num_samples: int,
) -> Sequence[Array]:
    """Score-function jacobians, as ``optax.monte_carlo.score_function_jacobians``.

    ``dist_builder(*params)`` builds the distribution: :func:`multi_normal` (or
    ``optax.multi_normal``) with ``params = [loc, log_scale]`` as in optax, a distribution of
    this package, or any object with optax's ``sample(shape, key=...)`` and ``log_prob``. The
    mean over samples is an unbiased estimate of the gradient of ``E[function(x)]``.

    Returns:
      A sequence like ``params``; element ``j`` is ``[num_samples, *params[j].shape]``.
    """
    jac = score_function(
        function, tuple(params), _positional(dist_builder), rng, num_samples=num_samples
    )
    return _like(params, jac)


@invariant_to_baselines
def pathwise_jacobians(
    function: Callable[[Array], Array],
    params: Sequence[Array],
    dist_builder: Callable[..., Any],
    rng: Array,
    num_samples: int,
) -> Sequence[Array]:
    """Pathwise jacobians, as ``optax.monte_carlo.pathwise_jacobians``.

    ``dist_builder(*params)`` builds the distribution: :func:`multi_normal` (or
    ``optax.multi_normal``) with ``params = [loc, log_scale]`` as in optax, a distribution of
    this package, or any object with optax's ``sample(shape, key=...)`` and ``log_prob``. The
    mean over samples is an unbiased estimate of the gradient of ``E[function(x)]``.

    Returns:
      A sequence like ``params``; element ``j`` is ``[num_samples, *params[j].shape]``.
    """
    jac = pathwise(function, tuple(params), _positional(dist_builder), rng, num_samples=num_samples)
    return _like(params, jac)


@invariant_to_baselines
def measure_valued_jacobians(
    function: Callable[[Array], Array],
    params: Sequence[Array],
    dist_builder: Callable[..., Any],
    rng: Array,
    num_samples: int,
    coupling: bool = True,
) -> list[Array]:
    """Measure-valued jacobians, as ``optax.monte_carlo.measure_valued_jacobians``.

    ``dist_builder(*params)`` must return an ``estimators.Normal`` (``multi_normal`` with
    ``params = (loc, log_scale)`` as in optax, or any builder: gradients are pulled back to
    ``params`` by a vjp). Any parameter shape works. Memory is ``O(num_samples * D)`` where
    optax 0.2.6 builds ``num_samples x D x D`` tensors.

    Raises:
      ValueError: as optax's, for an unsupported ``dist_builder``: one that does not return an
        ``estimators.Normal``, or that cannot be called as ``dist_builder(*params)``.

    Returns:
      A list; element ``j`` is ``[num_samples, *params[j].shape]``.
    """
    who = "measure_valued_jacobians"
    try:
        dist = _as_distribution(dist_builder(*params))
    except TypeError as err:
        raise ValueError(
            f"{who}: unsupported distribution builder: dist_builder(*params) with "
            f"{len(params)} parameter(s) raised TypeError ({err}). It must build an "
            "estimators.Normal from the parameters, e.g. estimators.multi_normal(loc, log_scale)."
        ) from err
    if isinstance(dist, _OptaxStyleDistribution):
        raise ValueError(
            f"{who}: unsupported distribution builder: it returned "
            f"{type(dist._dist).__name__}; the measure-valued estimator supports only the "
            "diagonal Gaussian (estimators.multi_normal, optax.multi_normal or estimators.Normal)"
        )
    check_measure_valued_dist(dist, coupling, who)
    jac = measure_valued(
        function,
        tuple(params),
        _positional(dist_builder),
        rng,
        num_samples=num_samples,
        coupling=coupling,
    )
    return list(jac)


# --- Control variates (optax.monte_carlo.control_variates) ---------------------------------
# A control variate is the triple (value(params, x, state) -> [], expectation(params, state) -> [],
# update_state(params, samples, state) -> state), params being (loc, log_scale) of a diagonal
# Normal as in optax.


class _CompatControlVariate(tuple):
    """The optax triple, marked when it is a baseline (no effect on pathwise/measure-valued)."""

    is_baseline: bool = False


def _triple(value, expectation, update_state, *, is_baseline: bool) -> _CompatControlVariate:
    cv = _CompatControlVariate((value, expectation, update_state))
    cv.is_baseline = is_baseline
    return cv


def _normal(params: Sequence[Array]) -> Normal:
    return multi_normal(params[0], params[1])


def control_delta_method(function: Callable[[Array], Array]) -> tuple[Callable, ...]:
    """The delta-method control variate, as ``optax.monte_carlo.control_delta_method``.

    Second-order Taylor expansion of ``function`` around ``params[0]`` (the mean), expectation
    under ``N(params[0], exp(params[1])**2)``. Uses Hessian-vector products, never the full
    Hessian, and works for means of any shape. Stateless (the state is passed through).

    Returns:
      ``(value(params, x, state) -> [], expectation(params, state) -> [],
      update_state(params, samples, state) -> state)``.
    """
    cv = delta_method(function)

    def value(params: Sequence[Array], sample: Array, state: Any = None) -> Array:
        del state
        return cv.value(_normal(params), sample)

    def expectation(params: Sequence[Array], state: Any) -> Array:
        del state
        return cv.expectation(_normal(params))

    def update_state(params: Sequence[Array], samples: Array, state: Any = None) -> Any:
        del params, samples
        return state

    return _triple(value, expectation, update_state, is_baseline=False)


def moving_avg_baseline(
    function: Callable[[Array], Array],
    decay: float = 0.99,
    zero_debias: bool = True,
    use_decay_early_training_heuristic: bool = True,
) -> tuple[Callable, ...]:
    """A moving-average baseline, as ``optax.monte_carlo.moving_avg_baseline``.

    The state is ``(value, step)`` (``None`` is read as ``(0.0, 0)``). As in optax 0.2.6, an
    update with decay ``d`` sets ``value = d * value + (1 - d) * mean f(samples)``, divided by
    ``1 - d**(step + 1)`` when ``zero_debias`` (the divided value is what is stored), with
    ``d = min(decay, (1 + step) / (10 + step))`` under the early-training heuristic; and
    :func:`control_variates_jacobians` updates the state with the current samples BEFORE using
    it, so the baseline is slightly correlated with them (at step 0 with the heuristic the
    expected estimate is ``(1 - 1/num_samples)`` times the gradient). For an unbiased baseline,
    use ``estimators.moving_average_*`` with ``score_function``. A baseline changes only the
    score-function jacobians: with the pathwise or measure-valued ones,
    :func:`control_variates_jacobians` returns their plain jacobians (and the updated state),
    as optax does, with a warning.

    Returns:
      The triple of :func:`control_delta_method`, for this baseline.
    """

    def value(params: Sequence[Array], sample: Array, state: Any = None) -> Array:
        del params, sample
        return state[0]

    def expectation(params: Sequence[Array], state: Any) -> Array:
        del params
        return state[0]

    def update_state(params: Sequence[Array], samples: Array, state: Any = None) -> Any:
        del params
        avg, step = (jnp.zeros(()), 0) if state is None else state
        d: Array | float = decay
        if use_decay_early_training_heuristic:
            d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
        new = d * avg + (1 - d) * jnp.mean(jax.vmap(function)(samples))
        if zero_debias:
            new = new / (1.0 - jnp.power(d, step + 1))
        return jax.lax.stop_gradient(new), step + 1

    return _triple(value, expectation, update_state, is_baseline=True)


def _cv_coefficient(jac_f: Array, jac_cv: Array, eps: float = 1e-3) -> Array:
    """optax's pooled coefficient: sum of covariances / (sum of variances + eps), one per leaf."""
    cf = jac_f - jnp.mean(jac_f, axis=0, keepdims=True)
    ch = jac_cv - jnp.mean(jac_cv, axis=0, keepdims=True)
    cov = jnp.sum(jnp.mean(cf * ch, axis=0))
    return jax.lax.stop_gradient(cov / (jnp.sum(jnp.mean(jnp.square(ch), axis=0)) + eps))


def control_variates_jacobians(
    function: Callable[[Array], Array],
    control_variate_from_function: Callable[[Callable[[Array], Array]], tuple[Callable, ...]],
    grad_estimator: Callable[..., Sequence[Array]],
    params: Sequence[Array],
    dist_builder: Callable[..., Any],
    rng: Array,
    num_samples: int,
    control_variate_state: Any = None,
    estimate_cv_coeffs: bool = False,
    estimate_cv_coeffs_num_samples: int = 20,
) -> tuple[list[Array], Any]:
    r"""Jacobians with a control variate, as ``optax.monte_carlo.control_variates_jacobians``.

    Element ``j`` of sample ``i``: :math:`\hat g_i[f] - c_j(\hat g_i[h] + \nabla_{\theta_0}
    h_{\theta_0}(x_i) - \nabla_\theta E_{p_\theta}[h_\theta])`, where ``h``'s parameters are
    held fixed inside the estimator. The middle term (evaluated on the same samples, as in optax)
    removes the expansion point's share from the closed-form expectation's gradient, so the
    estimate is unbiased; unlike optax, it is kept per sample rather than averaged, so the
    mean is the same but the jacobians stay independent across samples and their variance is
    the estimator's. The state is updated once, with the current samples,
    before ``h`` is evaluated. With ``estimate_cv_coeffs``, ``c_j`` is optax's pooled
    coefficient ``sum Cov / (sum Var + 1e-3)`` over parameter ``j``'s elements, from
    ``estimate_cv_coeffs_num_samples`` samples drawn with ``jax.random.split(rng)[0]``;
    otherwise 1.

    A baseline (:func:`moving_avg_baseline`) has no effect on ``pathwise_jacobians`` or
    ``measure_valued_jacobians`` (their estimates depend only on derivatives or differences of
    ``f`` in ``x``): as optax, the call then returns those estimators' plain jacobians and the
    updated state, and warns (``UserWarning``) that the baseline does nothing.

    Args:
      grad_estimator: ``score_function_jacobians``, ``pathwise_jacobians`` or
        ``measure_valued_jacobians`` of this module (or a function with their signature).

    Returns:
      ``(jacobians, new_state)``: a list whose element ``j`` is
      ``[num_samples, *params[j].shape]``, and the updated control-variate state.
    """
    cv = control_variate_from_function(function)
    cv_value, cv_expectation, cv_update = cv
    params = list(params)
    check_num_samples(num_samples, "control_variates_jacobians")
    if getattr(cv, "is_baseline", False) and ignores_baselines(grad_estimator):
        warnings.warn(
            "control_variates_jacobians: a baseline such as moving_avg_baseline has no effect on "
            f"{getattr(grad_estimator, '__name__', 'this estimator')} (its estimate depends only "
            "on derivatives or differences of f in x); returning its plain jacobians. Use the "
            "baseline with score_function_jacobians.",
            UserWarning,
            stacklevel=2,
        )
        plain = list(grad_estimator(function, params, dist_builder, rng, num_samples))
        samples = draw(_positional(dist_builder), params, rng, num_samples)
        return plain, cv_update(params, samples, control_variate_state)
    if estimate_cv_coeffs:
        coef_rng = jax.random.split(rng)[0]
        n = estimate_cv_coeffs_num_samples
        cv_jac = grad_estimator(
            lambda x: cv_value(params, x, control_variate_state), params, dist_builder, coef_rng, n
        )
        f_jac = grad_estimator(function, params, dist_builder, coef_rng, n)
        coefs: list[Array | float] = [
            _cv_coefficient(f, c) for f, c in zip(f_jac, cv_jac, strict=True)
        ]
    else:
        coefs = [1.0] * len(params)

    f_jac = grad_estimator(function, params, dist_builder, rng, num_samples)
    samples = draw(_positional(dist_builder), params, rng, num_samples)
    state = cv_update(params, samples, control_variate_state)
    fixed = jax.lax.stop_gradient(params)
    cv_jac = grad_estimator(
        lambda x: cv_value(fixed, x, state), params, dist_builder, rng, num_samples
    )
    # Per sample (optax averages it over the samples: same mean, but correlated jacobians).
    point_share = jax.vmap(lambda x: jax.grad(lambda p: cv_value(p, x, state))(params))(
        jax.lax.stop_gradient(samples)
    )
    expectation_grad = jax.grad(lambda p: cv_expectation(p, state))(params)
    jacobians = [
        fj - c * (cj + ps - eg[None])
        for fj, cj, ps, eg, c in zip(
            f_jac, cv_jac, point_share, expectation_grad, coefs, strict=True
        )
    ]
    return jacobians, state
