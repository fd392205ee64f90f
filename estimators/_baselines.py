r"""Baselines for the score-function estimator, stateless and stateful.

A baseline :math:`b` that does not depend on the sample it is paired with leaves the
score-function estimator unbiased, :math:`E[(f(x) - b)\nabla_\theta\log p(x;\theta)] =
\nabla_\theta E[f(x)]` (Mohamed et al. 2020, eq. 52), and lowers its variance when
:math:`b \approx f`. The functions below compute baselines directly; :class:`Baseline` wraps
each as one value with ``init``/``value``/``update`` (the shape of optax's
``GradientTransformation``) so the registry can compose ``"score_function+<baseline>"``:

- ``loo``: :func:`leave_one_out_baseline` (stateless, needs ``num_samples >= 2``);
- ``moving_average``: an exponential moving average of past mean costs (state
  :class:`MovingAverage`);
- ``optimal``: :func:`optimal_baseline`, per-parameter, from independent samples;
- ``nvil``: :func:`nvil_baseline`, a moving average plus a learned, input-dependent network
  :math:`b_\psi(c)` trained by regression on the costs (Mnih & Gregor 2014). The network is the
  caller's (any ``apply(net_params, context) -> []``); the library carries its state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._common import Array, CostFn, DistBuilder, PyTree, build_and_check, draw, vmap_samples
from ._interface import EstimateInputs, _keep_state, _no_state

# optimal_baseline's samples in the "optimal" Baseline come from fold_in(key, _TAG_OPTIMAL), so
# they are independent of the estimator's.
_TAG_OPTIMAL = 0xBA5E


def leave_one_out_baseline(costs: Array) -> Array:
    r"""Leave-one-out baseline :math:`b_i = \frac{1}{N-1}\sum_{j \ne i} f(x_j)`.

    ``b_i`` is independent of ``x_i``, so the score-function estimator stays unbiased
    (Kool et al. 2019; Mnih & Rezende 2016).

    Args:
      costs: ``[num_samples]`` costs, ``num_samples >= 2``.

    Returns:
      ``[num_samples]`` baselines.

    Example:
      >>> import jax.numpy as jnp, estimators
      >>> estimators.leave_one_out_baseline(jnp.array([1.0, 2.0, 6.0]))
      Array([4. , 3.5, 1.5], dtype=float32)
    """
    n = costs.shape[0]
    if n < 2:
        raise ValueError(f"leave_one_out_baseline needs num_samples >= 2; got {n}")
    return (jnp.sum(costs) - costs) / (n - 1)


class MovingAverage(NamedTuple):
    """State of an exponential moving average of the mean cost (a score-function baseline).

    ``value`` is the raw average (started at 0), ``step`` the number of updates and
    ``total_weight`` the weight the updates carry in total (``1 - decay**step`` for a constant
    decay), so that ``value / total_weight`` is the zero-debiased average. A state built by
    hand as ``MovingAverage(value, step)`` reads back as ``value``.
    """

    value: Array
    step: Array
    total_weight: Array | float = 1.0


def moving_average_init() -> MovingAverage:
    """The empty moving average: value 0, step 0, no weight (its baseline is 0)."""
    return MovingAverage(jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.zeros(()))


def moving_average_update(
    state: MovingAverage,
    costs: Array,
    *,
    decay: float = 0.99,
    early_training_heuristic: bool = False,
) -> MovingAverage:
    r"""Fold the mean of ``costs: [num_samples]`` into the average: :math:`v \leftarrow d v + (1-d)
    \bar f`.

    Update AFTER computing the estimate with :func:`moving_average_baseline` of the old state, so
    the baseline never depends on the samples it is paired with (the estimate stays unbiased).
    ``early_training_heuristic`` uses ``d = min(decay, (1 + step) / (10 + step))`` (the TensorFlow
    and optax heuristic). No gradient flows into the state.

    Returns:
      The new :class:`MovingAverage`; ``value`` and ``total_weight`` are ``[]``.

    Example (zero-debiased, the first update gives the first mean cost exactly):
      >>> import jax.numpy as jnp, estimators
      >>> state = estimators.moving_average_init()
      >>> state = estimators.moving_average_update(state, jnp.array([1.0, 3.0]), decay=0.9)
      >>> estimators.moving_average_baseline(state)
      Array(2., dtype=float32)
      >>> state = estimators.moving_average_update(state, jnp.array([4.0, 4.0]), decay=0.9)
      >>> estimators.moving_average_baseline(state).round(4)  # (0.09*2 + 0.1*4) / 0.19
      Array(3.0526, dtype=float32)
    """
    if jnp.ndim(costs) != 1:
        raise ValueError(
            "moving_average_update: costs must be [num_samples]; "
            f"got shape {list(jnp.shape(costs))}"
        )
    step = jnp.asarray(state.step)
    d = jnp.asarray(decay, jnp.result_type(float))
    if early_training_heuristic:
        d = jnp.minimum(d, (1.0 + step) / (10.0 + step))
    mean = jnp.mean(jax.lax.stop_gradient(costs))
    return MovingAverage(
        value=d * state.value + (1 - d) * mean,
        step=step + 1,
        total_weight=d * state.total_weight + (1 - d),
    )


def moving_average_baseline(state: MovingAverage, *, zero_debias: bool = True) -> Array:
    """The baseline ``[]`` held by ``state``, for ``score_function(..., baseline=...)``.

    With ``zero_debias`` the raw average is divided by its total weight (so the first update
    gives exactly the first mean cost, not ``(1 - decay)`` times it); an empty state gives 0.
    """
    value = jnp.asarray(state.value)
    if not zero_debias:
        return jax.lax.stop_gradient(value)
    w = jnp.asarray(state.total_weight, value.dtype)
    return jax.lax.stop_gradient(jnp.where(w > 0, value / jnp.where(w > 0, w, 1), value))


def optimal_baseline(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
) -> PyTree:
    r"""Per-parameter variance-minimising baselines :math:`b^*_j = E[f s_j^2] / E[s_j^2]`.

    ``s_j`` is the score :math:`\partial_{\theta_j}\log p(x;\theta)`; with :math:`b_j` fixed,
    the variance of :math:`(f - b_j) s_j` is minimal at :math:`b^*_j`. The expectations are
    estimated from ``num_samples`` samples drawn with ``key``: pass a key INDEPENDENT of the
    estimator's (e.g. from ``jax.random.split``) so the score-function estimate stays unbiased.

    Returns:
      A pytree like ``params`` (each leaf ``leaf.shape``), to pass as
      ``score_function(..., baseline=...)``. A coordinate whose score is 0 on every sample
      gets baseline 0.

    Example (pass a key independent of the estimator's):
      >>> import jax, jax.numpy as jnp, estimators
      >>> params = {"loc": jnp.zeros(2), "scale": jnp.ones(2)}
      >>> normal = lambda p: estimators.Normal(p["loc"], p["scale"])
      >>> f = lambda x: jnp.sum(x**2)
      >>> k_baseline, k_estimate = jax.random.split(jax.random.key(0))
      >>> b = estimators.optimal_baseline(f, params, normal, k_baseline, num_samples=1000)
      >>> jax.tree.map(jnp.shape, b)
      {'loc': (2,), 'scale': (2,)}
      >>> g = estimators.score_function(f, params, normal, k_estimate, num_samples=1000,
      ...                               baseline=b)
    """
    build_and_check(function, params, dist_builder, num_samples, "optimal_baseline")
    xs = jax.lax.stop_gradient(draw(dist_builder, params, key, num_samples))
    costs = vmap_samples(function)(xs)
    scores = jax.vmap(jax.grad(lambda p, x: dist_builder(p).log_prob(x)), in_axes=(None, 0))(
        params, xs
    )

    def per_leaf(s: Array) -> Array:
        s2 = jnp.square(s)
        num = jnp.tensordot(costs, s2, axes=1)
        den = jnp.sum(s2, axis=0)
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0.0)

    return jax.lax.stop_gradient(jax.tree.map(per_leaf, scores))


BaselineInputs = EstimateInputs  # what a baseline's value may look at: the estimate's inputs


class Baseline(NamedTuple):
    """A score-function baseline as pure functions, composable by the registry.

    Fields:
      name: the registry's name (``"loo"``, ``"moving_average"``, ...).
      label: for legends.
      value: ``(state, inputs: BaselineInputs) -> b``, where ``b`` is anything
        ``estimators.score_function(..., baseline=b)`` accepts: ``[]``, ``[num_samples]``, a
        function ``costs [N] -> [N]``, or a pytree like ``params`` (per-parameter).
      init: ``() -> state`` (``()`` when stateless).
      update: ``(state, costs, context) -> state``, called AFTER the estimate with the stopped
        costs of the samples the estimate used (``[N]``, or ``[B]`` for a batch of ``B``
        contexts ``[B, ...]``), so the value never depends on the costs it is paired with.
      min_samples: the fewest samples the value needs.
      per_parameter: ``value`` is a pytree like ``params`` (no surrogate objective exists).
      extra_evaluations: evaluations of ``f`` per sample the value spends beyond the
        estimator's own (the optimal baseline's independent samples: 1), so that the composed
        estimator's ``cost_evaluations`` charges for them.
    """

    name: str
    label: str
    value: Callable[[Any, BaselineInputs], Any]
    init: Callable[[], Any] = _no_state
    update: Callable[..., Any] = _keep_state
    min_samples: int = 1
    per_parameter: bool = False
    extra_evaluations: int = 0


def leave_one_out() -> Baseline:
    r""":func:`leave_one_out_baseline` as a :class:`Baseline`: :math:`b_i = \frac{1}{N-1}
    \sum_{j\ne i} f(x_j)`. Stateless; needs ``num_samples >= 2``."""
    return Baseline(
        name="loo",
        label="leave-one-out",
        value=lambda state, inputs: leave_one_out_baseline,
        min_samples=2,
    )


def moving_average(
    *, decay: float = 0.99, zero_debias: bool = True, early_training_heuristic: bool = False
) -> Baseline:
    r"""An exponential moving average of past mean costs as a :class:`Baseline`.

    The value is :func:`moving_average_baseline` of the state (``[]``); ``update`` folds in the
    mean of the new costs with :func:`moving_average_update`. State: :class:`MovingAverage`.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"moving_average: decay must be in [0, 1); got {decay!r}")
    return Baseline(
        name="moving_average",
        label="moving average",
        value=lambda state, inputs: moving_average_baseline(state, zero_debias=zero_debias),
        init=moving_average_init,
        update=lambda state, costs, context=None: moving_average_update(
            state,
            jnp.ravel(costs),
            decay=decay,
            early_training_heuristic=early_training_heuristic,
        ),
    )


def optimal(*, num_samples: int | None = None) -> Baseline:
    r""":func:`optimal_baseline` as a :class:`Baseline`: per parameter,
    :math:`b^*_j = E[f s_j^2] / E[s_j^2]` estimated from samples drawn with
    ``fold_in(key, 0xBA5E)``, independent of the estimator's (so it stays unbiased).

    Args:
      num_samples: samples for the baseline's estimate; default: as many as the estimator's,
        which doubles the evaluations of ``f`` (``extra_evaluations = 1`` per sample). A fixed
        ``num_samples = n`` costs ``n`` evaluations per estimate whatever its size, which a
        per-sample count cannot state: ``extra_evaluations`` is then 0 and the ``n`` are not
        charged.
    """

    def value(state: Any, inputs: BaselineInputs) -> PyTree:
        n = inputs.num_samples if num_samples is None else num_samples
        key = jax.random.fold_in(inputs.key, _TAG_OPTIMAL)
        return optimal_baseline(
            inputs.function, inputs.params, inputs.dist_builder, key, num_samples=n
        )

    return Baseline(
        name="optimal",
        label="optimal baseline",
        value=value,
        per_parameter=True,
        extra_evaluations=1 if num_samples is None else 0,
    )


class NVILState(NamedTuple):
    """State of :func:`nvil_baseline`: the moving average, the network's parameters and its
    optimiser's state."""

    average: MovingAverage
    params: PyTree
    opt_state: PyTree


def _apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    return jax.tree.map(lambda p, u: (p + u).astype(jnp.result_type(p)), params, updates)


def nvil_baseline(
    apply: Callable[[PyTree, Any], Array],
    params: PyTree,
    optimizer: Any,
    *,
    decay: float = 0.99,
) -> Baseline:
    r"""NVIL's learned baseline (Mnih & Gregor 2014): :math:`b(c) = \bar f + b_\psi(c)`.

    :math:`\bar f` is a moving average of past mean costs and :math:`b_\psi` the caller's
    network of the context ``c`` (a VAE's input ``x``), trained to regress the centred cost:
    each ``update`` takes one optimiser step on :math:`\frac1B\sum_b (f_b - \bar f -
    b_\psi(c_b))^2` with the OLD :math:`\bar f`, then folds the costs' mean into
    :math:`\bar f`. Use it in a surrogate evaluated per context (``vmap`` over the batch, one
    ``context`` each) and update once per batch with ``costs [B]``, ``context [B, ...]``.

    Args:
      apply: ``(net_params, context) -> []``, the network for ONE context.
      params: the network's initial parameters (a pytree).
      optimizer: anything with optax's ``init(params)`` and ``update(grads, state, params)``
        (e.g. ``optax.adam(1e-3)``); ``estimators`` does not import optax.
      decay: the moving average's decay.

    Returns:
      A :class:`Baseline` whose state is :class:`NVILState`; its ``update`` requires the
      ``context``.

    Example (a linear network of a 3-dimensional context; plain SGD as the optimiser):
      >>> import jax, jax.numpy as jnp, estimators
      >>> class SGD:
      ...     def init(self, params): return ()
      ...     def update(self, grads, state, params=None):
      ...         return jax.tree.map(lambda g: -0.1 * g, grads), state
      >>> baseline = estimators.nvil_baseline(lambda w, c: w @ c, jnp.zeros(3), SGD())
      >>> est = estimators.registry.score_function_estimator(baseline)
      >>> est.name
      'score_function+nvil'
      >>> state = baseline.update(baseline.init(), costs=jnp.ones(4), context=jnp.eye(4, 3))
      >>> state.params
      Array([0.05, 0.05, 0.05], dtype=float32)
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"nvil_baseline: decay must be in [0, 1); got {decay!r}")

    def init() -> NVILState:
        return NVILState(moving_average_init(), params, optimizer.init(params))

    def value(state: NVILState, inputs: BaselineInputs) -> Array:
        if inputs.context is None:
            raise ValueError(
                "nvil_baseline: the learned baseline b(context) needs the context; pass "
                "context=... (e.g. the data point x) to the estimator"
            )
        learned = jnp.reshape(apply(state.params, inputs.context), ())
        return moving_average_baseline(state.average) + jax.lax.stop_gradient(learned)

    def update(state: NVILState, costs: Array, context: Any = None) -> NVILState:
        if context is None:
            raise ValueError("nvil_baseline: update needs the contexts the costs belong to")
        costs = jax.lax.stop_gradient(jnp.ravel(costs))
        average = moving_average_baseline(state.average)

        def regression(net: PyTree) -> Array:
            predicted = jax.vmap(lambda c: jnp.reshape(apply(net, c), ()))(context)
            return jnp.mean(jnp.square(costs - average - predicted))

        grads = jax.grad(regression)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return NVILState(
            moving_average_update(state.average, costs, decay=decay),
            _apply_updates(state.params, updates),
            opt_state,
        )

    return Baseline(name="nvil", label="NVIL", value=value, init=init, update=update)
