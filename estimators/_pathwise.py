"""The pathwise (reparameterisation) estimator, per-sample and surrogate-objective forms.

For ``x = g(eps; theta)`` with ``eps`` independent of ``theta``,

    grad_theta E_{p(x; theta)}[f(x)] = E_eps[ grad_x f(g(eps; theta)) grad_theta g(eps; theta) ],

(Mohamed et al. 2020, eq. 35). Gamma, Beta and Dirichlet use JAX's implicit reparameterisation
gradients for ``grad_theta g`` (Figurnov et al. 2018).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._capabilities import Reparameterizable
from ._common import (
    Array,
    CostFn,
    DistBuilder,
    PyTree,
    build_and_check,
    draw,
    invariant_to_baselines,
    sample_from_noise,
    sample_noise,
    vmap_samples,
)


def _require_reparameterizable(dist, who: str) -> None:
    if not isinstance(dist, Reparameterizable):
        raise ValueError(
            f"{who}: the pathwise estimator needs a reparameterisable distribution; "
            f"{type(dist).__name__} does not declare the Reparameterizable capability (use "
            "score_function or measure_valued instead, or, if its sample is differentiable in "
            "the parameters, inherit estimators.Reparameterizable)"
        )


@invariant_to_baselines
def pathwise(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
) -> PyTree:
    r"""Per-sample pathwise estimates of :math:`\nabla_\theta E_{p(x;\theta)}[f(x)]`.

    Args:
      function: cost ``f(x) -> []`` for one sample ``x: [*event_shape]``.
      params: any pytree of float arrays, the distribution's parameters :math:`\theta`.
      dist_builder: ``params -> Distribution``; must be ``Reparameterizable``.
      key: PRNG key; the samples are ``estimators.draw_samples(dist, key, num_samples)``.
      num_samples: number of independent samples (static under jit).

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]`` holds one unbiased
      gradient estimate per sample. Its mean over axis 0 is the estimate; its variance over
      axis 0 is the estimator's single-sample variance.

    Example (for :math:`f(x) = \sum_d x_d`, every sample's gradient is exactly 1 in ``loc``):
      >>> import jax, jax.numpy as jnp, estimators
      >>> params = {"loc": jnp.zeros(2), "scale": jnp.ones(2)}
      >>> normal = lambda p: estimators.Normal(p["loc"], p["scale"])
      >>> g = estimators.pathwise(jnp.sum, params, normal, jax.random.key(0), num_samples=3)
      >>> g["loc"]
      Array([[1., 1.],
             [1., 1.],
             [1., 1.]], dtype=float32)
      >>> g["scale"].shape  # d/dscale of loc + scale * eps is eps: one row per sample
      (3, 2)
    """
    dist = build_and_check(function, params, dist_builder, num_samples, "pathwise")
    _require_reparameterizable(dist, "pathwise")

    def one_sample(noise: Array) -> PyTree:
        return jax.grad(lambda p: function(sample_from_noise(dist_builder(p), noise)))(params)

    return vmap_samples(one_sample)(sample_noise(dist, key, num_samples))


def pathwise_surrogate(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
) -> Array:
    r"""Scalar objective whose ``jax.grad`` is the pathwise estimator: :math:`\frac1N\sum_i f(x_i)`.

    ``x_i`` is a differentiable sample, so the gradient with respect to anything ``params`` or
    ``function`` depends on (network weights included) is the pathwise estimate averaged over
    the ``num_samples`` samples, ``f``'s direct dependence on those parameters included.
    The value is the Monte Carlo estimate of :math:`E_p[f(x)]`. Samples are the same as those
    of :func:`pathwise` with the same key.

    Args: as :func:`pathwise`.

    Returns:
      ``[]`` scalar.

    Example (network weights ``w`` that the cost depends on get their exact gradient too):
      >>> import jax, jax.numpy as jnp, estimators
      >>> params = {"loc": jnp.zeros(2), "scale": jnp.ones(2)}
      >>> normal = lambda p: estimators.Normal(p["loc"], p["scale"])
      >>> def loss(p, w):
      ...     return estimators.pathwise_surrogate(lambda x: w * jnp.sum(x), p, normal,
      ...                                          jax.random.key(0), num_samples=100)
      >>> g_params, g_w = jax.grad(loss, argnums=(0, 1))(params, 3.0)
      >>> g_params["loc"].round(4)  # d/dloc E[w sum x] = w
      Array([3., 3.], dtype=float32)
      >>> bool(jnp.isclose(g_w, loss(params, 1.0)))  # d/dw = the mean of sum(x_i)
      True
    """
    dist = build_and_check(function, params, dist_builder, num_samples, "pathwise_surrogate")
    _require_reparameterizable(dist, "pathwise_surrogate")
    xs = draw(dist_builder, params, key, num_samples)
    return jnp.mean(vmap_samples(function)(xs))
