"""The score-function (REINFORCE, likelihood-ratio) estimator, per-sample and surrogate forms.

    grad_theta E_{p(x; theta)}[f(x)] = E_p[ (f(x) - b) grad_theta log p(x; theta) ]

(Mohamed et al. 2020, eq. 13), for any baseline ``b`` that does not depend on ``x`` (eq. 52).
Needs no gradient of ``f`` and works for discrete ``x``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._common import Array, CostFn, DistBuilder, PyTree, build_and_check, draw, vmap_samples

BaselineArg = Array | float | Callable[[Array], Array] | PyTree | None


def _is_per_parameter(baseline: BaselineArg, params: PyTree, num_samples: int) -> bool:
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


def _baselines(baseline: BaselineArg, costs: Array, who: str) -> Array:
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
    baseline: BaselineArg = None,
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

    Example (:math:`\nabla_\sigma E_{N(0,\sigma^2)}[x^2] = 2\sigma`, here 2 per coordinate):
      >>> import jax, jax.numpy as jnp, estimators
      >>> params = {"loc": jnp.zeros(2), "scale": jnp.ones(2)}
      >>> normal = lambda p: estimators.Normal(p["loc"], p["scale"])
      >>> g = estimators.score_function(lambda x: jnp.sum(x**2), params, normal,
      ...                               jax.random.key(0), num_samples=10_000)
      >>> jax.tree.map(jnp.shape, g)
      {'loc': (10000, 2), 'scale': (10000, 2)}
      >>> se = g["scale"].std(0) / jnp.sqrt(10_000)  # about 0.09
      >>> bool(jnp.all(jnp.abs(g["scale"].mean(0) - 2.0) < 5 * se))
      True
    """
    build_and_check(function, params, dist_builder, num_samples, "score_function")
    xs = jax.lax.stop_gradient(draw(dist_builder, params, key, num_samples))
    costs = vmap_samples(function)(xs)
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

    return vmap_samples(one_sample)(xs, weights)


def score_function_surrogate(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
    baseline: BaselineArg = None,
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

    Example (its gradient is the score-function estimate on the same samples):
      >>> import jax, jax.numpy as jnp, estimators
      >>> params = {"loc": jnp.zeros(2), "scale": jnp.ones(2)}
      >>> normal = lambda p: estimators.Normal(p["loc"], p["scale"])
      >>> f, key = (lambda x: jnp.sum(x**2)), jax.random.key(0)
      >>> grad = jax.grad(lambda p: estimators.score_function_surrogate(
      ...     f, p, normal, key, num_samples=100))(params)
      >>> rows = estimators.score_function(f, params, normal, key, num_samples=100)
      >>> bool(jnp.allclose(grad["scale"], rows["scale"].mean(0), atol=1e-5))
      True
    """
    build_and_check(function, params, dist_builder, num_samples, "score_function_surrogate")
    if _is_per_parameter(baseline, params, num_samples):
        raise ValueError(
            "score_function_surrogate: per-parameter baselines (a pytree like params) are not "
            "supported by the surrogate objective; use score_function, or a scalar/[num_samples] "
            "baseline"
        )
    xs = jax.lax.stop_gradient(draw(dist_builder, params, key, num_samples))
    costs = vmap_samples(function)(xs)
    weights = jax.lax.stop_gradient(costs - _baselines(baseline, costs, "score_function_surrogate"))
    log_probs = vmap_samples(dist_builder(params).log_prob)(xs)
    return jnp.mean(costs + weights * (log_probs - jax.lax.stop_gradient(log_probs)))
