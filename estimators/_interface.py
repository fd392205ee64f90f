r"""One interface for every gradient estimator: :class:`GradientEstimator`.

In the spirit of optax's ``GradientTransformation``, an estimator is a NamedTuple of pure
functions plus what it can do, so runners, combinators and tests need not know which estimator
they hold:

- ``per_sample(function, params, dist_builder, key, *, num_samples, state=(), context=None)``
  returns a pytree like ``params`` whose leaves are ``[num_samples, *leaf.shape]``; their mean
  over axis 0 estimates the gradient (:math:`\nabla_\theta E_{p(x;\theta)}[f(x)]` for
  ``objective == "mean"``).
- ``surrogate(...)`` (same arguments) returns a scalar whose ``jax.grad`` is the estimate
  averaged over the samples, including ``function``'s own dependence on anything being
  differentiated (a decoder's weights); its value estimates the objective.
- ``init() -> state`` and ``update(state, costs, context=None, inputs=None) -> state`` for
  estimators that carry state (a moving average, a learned baseline, REBAR's temperature);
  ``()`` and identity otherwise. Call ``update`` AFTER the estimate, with the stopped costs of
  the samples the estimate used and, as ``inputs``, the :class:`EstimateInputs` the estimate
  was given: an estimator whose state is trained to minimise its own variance (``adaptive``:
  REBAR, RELAX) differentiates its estimate again from them, and refuses ``inputs=None``.
- ``requires`` lists the capability markers (``estimators.Reparameterizable``, ...) the
  distribution must have; ``supports(dist)`` asks ``isinstance``, never a list of classes.
- ``unbiased``, ``multi_sample`` (the samples are used jointly: the rows of ``per_sample`` are
  not independent, so measure variance over repeated calls), ``min_samples``, ``objective``
  (``"mean"``: :math:`\nabla E_p[f]`; ``"log_mean_exp"``: :math:`\nabla E_{p^K}[-\log\frac1K
  \sum_k e^{-f(x_k)}]`, the importance-weighted bound with ``f = -log w``), and
  ``cost_evaluations(dim)``, evaluations of ``f`` (or of its gradient) per sample, for
  comparisons per cost.
- ``reference``: the paper the estimator comes from (``"Yin & Zhou 2019"``), for tables.
- ``bias``: for an estimator declared ``unbiased=False`` (the Concrete relaxation,
  straight-through), what its expectation is instead, in words (required); its tests hold it
  to that expectation computed exactly.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._capabilities import capability_names
from ._common import Array, CostFn, DistBuilder, PyTree, draw_samples, vmap_samples

PerSampleFn = Callable[..., PyTree]
SurrogateFn = Callable[..., Array]
OBJECTIVES = ("mean", "log_mean_exp")


def _no_state() -> tuple[()]:
    return ()


def _keep_state(state: Any, costs: Array, context: Any = None, inputs: Any = None) -> Any:
    del costs, context, inputs
    return state


class EstimateInputs(NamedTuple):
    """The arguments an estimate was formed with, for a baseline's value or an estimator's
    ``update``.

    ``function``, ``params``, ``dist_builder``, ``key`` and ``num_samples`` are the estimator's
    arguments; ``context`` is the caller's conditioning input (a VAE's data point ``x``), or
    ``None``. A baseline never sees the samples' costs except through a leave-one-out rule
    that excludes each sample's own cost.
    """

    function: CostFn
    params: PyTree
    dist_builder: DistBuilder
    key: Array
    num_samples: int
    context: Any = None


class EstimateBatch(NamedTuple):
    """Independent estimates, one per example of a batch, for an adaptive estimator's ``update``.

    A VAE estimates each example's gradient separately (``jax.vmap`` over the batch) with one
    shared estimator state; the state of an ``adaptive`` estimator (REBAR's temperature,
    RELAX's network, RODEO's coefficients) is then trained on the batch's total variance, the
    sum over the examples of their squared estimates (:func:`sum_over_examples`), not on one
    estimate of a function of the whole batch (whose control variates would mix examples).

    Fields, for ``B`` examples: ``function(sample, context) -> []``, one example's cost at one
    of its samples given that example's ``context``; ``params``, a pytree whose leaves are
    ``[B, *leaf]`` (example ``b``'s distribution is ``dist_builder(params[b])``); ``keys``
    ``[B]`` (example ``b``'s estimate used ``keys[b]``); ``num_samples`` per example;
    ``contexts``, a pytree of leaves ``[B, ...]``, example ``b``'s conditioning input (its
    data point) passed to ``function`` and to the estimator as ``context``.
    """

    function: Callable[[Array, Any], Array]
    params: PyTree
    dist_builder: DistBuilder
    keys: Array
    num_samples: int
    contexts: Any


def sum_over_examples(
    inputs: EstimateInputs | EstimateBatch, value: Callable[[EstimateInputs], Array]
) -> Array:
    """``value(inputs)`` for one estimate; for an :class:`EstimateBatch` the sum over its
    examples of ``value`` at each example's :class:`EstimateInputs` (``jax.vmap``-ed).

    An adaptive estimator's ``update`` differentiates this with ``value`` its squared estimate,
    so one ``update`` serves a single estimate and a batch of independent ones: the gradient
    of the batch's summed squared estimates is an unbiased estimate of the gradient of the sum
    of the examples' variances (each estimate's mean does not depend on the control).
    """
    if not isinstance(inputs, EstimateBatch):
        return value(inputs)
    batch = inputs

    def one(params: PyTree, key: Array, context: Any) -> Array:
        return value(
            EstimateInputs(
                functools.partial(_with_context, batch.function, context),
                params,
                batch.dist_builder,
                key,
                batch.num_samples,
                context,
            )
        )

    return jnp.sum(jax.vmap(one)(batch.params, batch.keys, batch.contexts))


def _with_context(function: Callable[[Array, Any], Array], context: Any, sample: Array) -> Array:
    return function(sample, context)


def _one_evaluation(dim: int) -> int:
    del dim
    return 1


class GradientEstimator(NamedTuple):
    """A Monte Carlo gradient estimator as pure functions and declared capabilities.

    Build one with :func:`gradient_estimator` (which derives the surrogate from ``per_sample``
    when none is given). Calling the estimator calls ``per_sample``, so a
    ``GradientEstimator`` goes wherever ``estimators.pathwise`` does (e.g.
    ``estimators.with_control_variate``).
    """

    name: str
    per_sample: PerSampleFn
    surrogate: SurrogateFn
    init: Callable[[], Any] = _no_state
    update: Callable[..., Any] = _keep_state
    requires: tuple[type, ...] = ()
    unbiased: bool = True
    multi_sample: bool = False
    min_samples: int = 1
    objective: str = "mean"
    cost_evaluations: Callable[[int], int] = _one_evaluation
    label: str = ""
    with_baseline: Callable[[Any], GradientEstimator] | None = None
    bias: str = ""
    adaptive: bool = False
    reference: str = ""

    def __call__(
        self,
        function: CostFn,
        params: PyTree,
        dist_builder: DistBuilder,
        key: Array,
        *,
        num_samples: int,
        state: Any = (),
        context: Any = None,
    ) -> PyTree:
        """``per_sample``: a pytree like ``params``, leaves ``[num_samples, *leaf.shape]``."""
        return self.per_sample(
            function,
            params,
            dist_builder,
            key,
            num_samples=num_samples,
            state=state,
            context=context,
        )

    def missing(self, dist: Any) -> tuple[type, ...]:
        """The capability markers in ``requires`` that ``dist`` lacks (``()`` if none)."""
        return tuple(c for c in self.requires if not isinstance(dist, c))

    def supports(self, dist: Any) -> bool:
        """Whether ``dist`` has every capability the estimator requires."""
        return not self.missing(dist)

    def check(self, dist: Any, num_samples: int) -> None:
        """Raise a ``ValueError`` naming the problem unless the estimator applies to ``dist``
        with ``num_samples`` samples."""
        missing = self.missing(dist)
        if missing:
            raise ValueError(
                f"estimator {self.name!r} needs a distribution that is "
                f"{capability_names(self.requires)}; {type(dist).__name__} is not "
                f"{capability_names(missing)}"
            )
        if isinstance(num_samples, int) and num_samples < self.min_samples:
            raise ValueError(
                f"estimator {self.name!r} needs num_samples >= {self.min_samples}; "
                f"got {num_samples}"
            )


def surrogate_from_per_sample(per_sample: PerSampleFn) -> SurrogateFn:
    r"""The surrogate objective of an estimator known only by its per-sample form.

    .. math:: L(\theta, w) = \frac1N\sum_i f_w(\mathrm{sg}(x_i))
              + \sum_j \theta_j\,\mathrm{sg}(\bar g_j) - \mathrm{sg}(\theta_j \bar g_j),

    with :math:`\bar g` the mean of ``per_sample`` and :math:`x_i` its samples (the same key):
    its value is the Monte Carlo estimate of :math:`E_p[f]`, its gradient with respect to
    ``params`` is :math:`\bar g` (pulled back through whatever ``params`` depend on, an
    encoder's weights), and with respect to anything else ``function`` depends on (a decoder's
    weights ``w``) it is :math:`\frac1N\sum_i \nabla_w f_w(x_i)`.
    """

    def surrogate(
        function: CostFn,
        params: PyTree,
        dist_builder: DistBuilder,
        key: Array,
        *,
        num_samples: int,
        state: Any = (),
        context: Any = None,
    ) -> Array:
        grads = per_sample(
            function,
            params,
            dist_builder,
            key,
            num_samples=num_samples,
            state=state,
            context=context,
        )
        mean_grads = jax.lax.stop_gradient(jax.tree.map(lambda g: jnp.mean(g, axis=0), grads))
        xs = draw_samples(jax.lax.stop_gradient(dist_builder(params)), key, num_samples)
        value = jnp.mean(vmap_samples(function)(jax.lax.stop_gradient(xs)))
        products = jax.tree.map(lambda p, g: jnp.vdot(p, g).astype(value.dtype), params, mean_grads)
        linear = sum(jax.tree.leaves(products), start=jnp.zeros((), value.dtype))
        return value + linear - jax.lax.stop_gradient(linear)

    return surrogate


def gradient_estimator(
    name: str,
    per_sample: PerSampleFn,
    *,
    surrogate: SurrogateFn | None = None,
    init: Callable[[], Any] = _no_state,
    update: Callable[..., Any] = _keep_state,
    requires: tuple[type, ...] = (),
    unbiased: bool = True,
    multi_sample: bool = False,
    min_samples: int = 1,
    objective: str = "mean",
    cost_evaluations: Callable[[int], int] = _one_evaluation,
    label: str = "",
    with_baseline: Callable[[Any], GradientEstimator] | None = None,
    bias: str = "",
    adaptive: bool = False,
    reference: str = "",
) -> GradientEstimator:
    """A :class:`GradientEstimator`, its arguments checked.

    ``per_sample`` may take ``state``/``context`` keywords or not (a function with the
    signature of ``estimators.pathwise`` is accepted); without ``surrogate``, the surrogate is
    :func:`surrogate_from_per_sample`. ``label`` defaults to ``name``. ``update`` may take
    ``context``/``inputs`` keywords or not. An estimator declared ``unbiased=False`` must say
    what it estimates instead in ``bias``; one declared ``adaptive`` (its ``update`` trains its
    state from the :class:`EstimateInputs`) must carry state.

    Example:
      >>> import estimators
      >>> est = estimators.gradient_estimator(
      ...     "my_pathwise", estimators.pathwise, requires=(estimators.Reparameterizable,))
      >>> est.name, est.objective, est.supports(estimators.Normal(0.0, 1.0))
      ('my_pathwise', 'mean', True)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"gradient_estimator: name must be a non-empty str; got {name!r}")
    if not callable(per_sample):
        raise TypeError(f"gradient_estimator {name!r}: per_sample must be callable")
    if objective not in OBJECTIVES:
        raise ValueError(
            f"gradient_estimator {name!r}: objective must be one of {OBJECTIVES}; got {objective!r}"
        )
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ValueError(
            f"gradient_estimator {name!r}: min_samples must be an int >= 1; got {min_samples!r}"
        )
    for marker in requires:
        if not isinstance(marker, type):
            raise TypeError(
                f"gradient_estimator {name!r}: requires must hold capability classes such as "
                f"estimators.Reparameterizable; got {marker!r}"
            )
    if not unbiased and not (isinstance(bias, str) and bias.strip()):
        raise ValueError(
            f"gradient_estimator {name!r} is declared biased (unbiased=False): say what its "
            "expectation is instead in bias='...'"
        )
    if unbiased and bias:
        raise ValueError(f"gradient_estimator {name!r}: bias is only for unbiased=False")
    per_sample = _accepting_state(per_sample)
    update = _accepting(update, ("context", "inputs"))
    if surrogate is None:
        surrogate = surrogate_from_per_sample(per_sample)
    else:
        surrogate = _accepting_state(surrogate)
    return GradientEstimator(
        name=name,
        per_sample=per_sample,
        surrogate=surrogate,
        init=init,
        update=update,
        requires=tuple(requires),
        unbiased=unbiased,
        multi_sample=multi_sample,
        min_samples=min_samples,
        objective=objective,
        cost_evaluations=cost_evaluations,
        label=label or name,
        with_baseline=with_baseline,
        bias=bias,
        adaptive=adaptive,
        reference=reference,
    )


def _accepting_state(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with ``state``/``context`` keywords (dropped if ``fn`` does not take them)."""
    return _accepting(fn, ("state", "context"))


def _accepting(fn: Callable[..., Any], names: tuple[str, ...]) -> Callable[..., Any]:
    """``fn`` with the keywords ``names`` (those ``fn`` does not take are dropped)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    takes = {n for n in names if takes_all or n in parameters}
    if takes == set(names):
        return fn

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        kept = {k: v for k, v in kwargs.items() if k not in names or k in takes}
        return fn(*args, **kept)

    return call
