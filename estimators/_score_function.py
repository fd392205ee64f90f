"""The score-function (REINFORCE, likelihood-ratio) estimator, per-sample and surrogate forms.

    grad_theta E_{p(x; theta)}[f(x)] = E_p[ (f(x) - b) grad_theta log p(x; theta) ]

(Mohamed et al. 2020, eq. 13), for any baseline ``b`` that does not depend on ``x`` (eq. 52).
Needs no gradient of ``f`` and works for discrete ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._common import Array, CostFn, DistBuilder, PyTree, build_and_check, draw

Baseline = Array | float | Callable[[Array], Array] | PyTree | None


def leave_one_out_baseline(costs: Array) -> Array:
    r"""Leave-one-out baseline :math:`b_i = \frac{1}{N-1}\sum_{j \ne i} f(x_j)`.

    ``b_i`` is independent of ``x_i``, so the score-function estimator stays unbiased
    (Kool et al. 2019; Mnih & Rezende 2016).

    Args:
      costs: ``[num_samples]`` costs, ``num_samples >= 2``.

    Returns:
      ``[num_samples]`` baselines.
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
    """
    build_and_check(function, params, dist_builder, num_samples, "optimal_baseline")
    xs = jax.lax.stop_gradient(draw(dist_builder, params, key, num_samples))
    costs = jax.vmap(function)(xs)
    scores = jax.vmap(jax.grad(lambda p, x: dist_builder(p).log_prob(x)), in_axes=(None, 0))(
        params, xs
    )

    def per_leaf(s: Array) -> Array:
        s2 = jnp.square(s)
        num = jnp.tensordot(costs, s2, axes=1)
        den = jnp.sum(s2, axis=0)
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0.0)

    return jax.lax.stop_gradient(jax.tree.map(per_leaf, scores))


def _is_per_parameter(baseline: Baseline, params: PyTree, num_samples: int) -> bool:
    """Whether ``baseline`` is a pytree of per-parameter baselines shaped like ``params``."""
    if baseline is None or callable(baseline):
        return False
    # (jax's stubs give PyTreeDef no __ne__; the comparison is the documented way.)
    if jax.tree.structure(baseline) != jax.tree.structure(params):  # type: ignore[operator]
        return False
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(params)):
        # A bare array: () and [num_samples] keep their per-sample meaning.
        return jnp.shape(baseline) not in ((), (num_samples,))
    return True


def _per_parameter_baselines(baseline: PyTree, params: PyTree, who: str) -> PyTree:
    def check(path, b, p):
        b = jnp.asarray(b)
        if b.shape not in ((), jnp.shape(p)):
            raise ValueError(
                f"{who}: per-parameter baseline{jax.tree_util.keystr(path)} must be a scalar or "
                f"shaped like the parameter {list(jnp.shape(p))}; got {list(b.shape)}"
            )
        return jax.lax.stop_gradient(b)

    return jax.tree_util.tree_map_with_path(check, baseline, params)


def _baselines(baseline: Baseline, costs: Array, who: str) -> Array:
    """``[num_samples]`` baselines, with no gradient flowing through them."""
    n = costs.shape[0]
    if baseline is None:
        return jnp.zeros_like(costs)
    b = baseline(jax.lax.stop_gradient(costs)) if callable(baseline) else jnp.asarray(baseline)
    if b.shape not in ((), (n,)):
        raise ValueError(
            f"{who}: baseline must be a scalar or [num_samples]={[n]}; got shape {list(b.shape)}"
        )
    return jax.lax.stop_gradient(jnp.broadcast_to(b, (n,)).astype(costs.dtype))


def score_function(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
    baseline: Baseline = None,
) -> PyTree:
    r"""Per-sample score-function estimates of :math:`\nabla_\theta E_{p(x;\theta)}[f(x)]`.

    Sample ``i`` contributes :math:`(f(x_i) - b_i)\,\nabla_\theta \log p(x_i;\theta)`.

    Args:
      function: cost ``f(x) -> []`` for one sample ``x: [*event_shape]``; never differentiated.
      params: any pytree of float arrays, the distribution's parameters :math:`\theta`.
      dist_builder: ``params -> Distribution`` (discrete distributions included).
      key: PRNG key; the samples are ``estimators.draw_samples(dist, key, num_samples)``.
      num_samples: number of samples (static under jit).
      baseline: ``None``; a scalar or ``[num_samples]`` array that must not depend on the
        samples it is paired with (e.g. :func:`moving_average_baseline`); a function
        ``costs [num_samples] -> [num_samples]`` such as :func:`leave_one_out_baseline`; or a
        pytree like ``params`` of per-parameter baselines (leaves ``[]`` or ``leaf.shape``,
        e.g. :func:`optimal_baseline`), parameter ``j`` then weighted by ``f(x_i) - b_j``. If
        ``params`` is a single array of shape ``[num_samples]``, an array of that shape is read
        as per-sample. No gradient flows through any baseline.

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.
    """
    build_and_check(function, params, dist_builder, num_samples, "score_function")
    xs = jax.lax.stop_gradient(draw(dist_builder, params, key, num_samples))
    costs = jax.vmap(function)(xs)
    if _is_per_parameter(baseline, params, num_samples):
        per_param = _per_parameter_baselines(baseline, params, "score_function")

        def one_sample_per_param(x: Array, c: Array) -> PyTree:
            score = jax.grad(lambda p: dist_builder(p).log_prob(x))(params)
            return jax.tree.map(lambda s, b: (c - b) * s, score, per_param)

        return jax.vmap(one_sample_per_param)(xs, costs)
    weights = costs - _baselines(baseline, costs, "score_function")

    def one_sample(x: Array, w: Array) -> PyTree:
        score = jax.grad(lambda p: dist_builder(p).log_prob(x))(params)
        return jax.tree.map(lambda s: w * s, score)

    return jax.vmap(one_sample)(xs, weights)


def score_function_surrogate(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
    baseline: Baseline = None,
) -> Array:
    r"""Scalar objective whose ``jax.grad`` is the score-function estimator.

    .. math:: \frac1N \sum_i f(x_i) + \mathrm{sg}[f(x_i) - b_i]\,
              (\log p(x_i;\theta) - \mathrm{sg}[\log p(x_i;\theta)])

    with ``x_i`` sampled without gradient and ``sg`` the stop-gradient. Its value is the Monte
    Carlo estimate of :math:`E_p[f(x)]`; its gradient with respect to anything ``params`` or
    ``function`` depends on is :math:`\frac1N\sum_i \nabla f(x_i) + (f(x_i) - b_i)\nabla\log
    p(x_i;\theta)`, so a cost that depends on the parameters directly (a VAE's decoder and
    entropy terms) is handled. Samples match :func:`score_function` with the same key.

    Args: as :func:`score_function`. A baseline that is itself learned (NVIL) is passed as a
      ``[num_samples]`` array; train it with its own loss, no gradient flows through it here.
      Per-parameter (pytree) baselines are not supported here: one scalar objective cannot
      weight each parameter's score differently; use :func:`score_function`.

    Returns:
      ``[]`` scalar.
    """
    build_and_check(function, params, dist_builder, num_samples, "score_function_surrogate")
    if _is_per_parameter(baseline, params, num_samples):
        raise ValueError(
            "score_function_surrogate: per-parameter baselines (a pytree like params) are not "
            "supported by the surrogate objective; use score_function, or a scalar/[num_samples] "
            "baseline"
        )
    xs = jax.lax.stop_gradient(draw(dist_builder, params, key, num_samples))
    costs = jax.vmap(function)(xs)
    weights = jax.lax.stop_gradient(costs - _baselines(baseline, costs, "score_function_surrogate"))
    log_probs = jax.vmap(dist_builder(params).log_prob)(xs)
    return jnp.mean(costs + weights * (log_probs - jax.lax.stop_gradient(log_probs)))
