"""The score-function (REINFORCE, likelihood-ratio) estimator, per-sample and surrogate forms.

    grad_theta E_{p(x; theta)}[f(x)] = E_p[ (f(x) - b) grad_theta log p(x; theta) ]

(Mohamed et al. 2020, eq. 13), for any baseline ``b`` that does not depend on ``x`` (eq. 52).
Needs no gradient of ``f`` and works for discrete ``x``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._common import Array, CostFn, DistBuilder, PyTree, build_and_check, draw, sample_keys

Baseline = Array | float | Callable[[Array], Array] | None


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
      key: PRNG key; sample ``i`` is drawn from ``jax.random.split(key, num_samples)[i]``.
      num_samples: number of samples (static under jit).
      baseline: ``None``; a scalar or ``[num_samples]`` array that must not depend on the
        samples it is paired with; or a function ``costs [num_samples] -> [num_samples]`` such as
        :func:`leave_one_out_baseline`. No gradient flows through it.

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.
    """
    build_and_check(function, params, dist_builder, num_samples, "score_function")
    xs = jax.lax.stop_gradient(draw(dist_builder, params, sample_keys(key, num_samples)))
    costs = jax.vmap(function)(xs)
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

    Returns:
      ``[]`` scalar.
    """
    build_and_check(function, params, dist_builder, num_samples, "score_function_surrogate")
    xs = jax.lax.stop_gradient(draw(dist_builder, params, sample_keys(key, num_samples)))
    costs = jax.vmap(function)(xs)
    weights = jax.lax.stop_gradient(costs - _baselines(baseline, costs, "score_function_surrogate"))
    log_probs = jax.vmap(dist_builder(params).log_prob)(xs)
    return jnp.mean(costs + weights * (log_probs - jax.lax.stop_gradient(log_probs)))
