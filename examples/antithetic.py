r"""An antithetic pathwise estimator: a user's own estimator, outside the package.

For a distribution with standard noise (``x = g(\epsilon; \theta)`` with :math:`\epsilon`
symmetric about 0, e.g. ``estimators.Normal``: ``loc + scale * eps``), each sample is a pair
:math:`\epsilon_i, -\epsilon_i` and its estimate the mean of the two pathwise gradients,

.. math:: \hat g_i = \tfrac12\left(\nabla_\theta f(g(\epsilon_i; \theta))
          + \nabla_\theta f(g(-\epsilon_i; \theta))\right).

Both terms have the distribution of an ordinary pathwise estimate, so :math:`\hat g_i` is
unbiased; the rows are independent (one :math:`\epsilon_i` each), and the variance falls below
half the pathwise one (same cost, two evaluations of the gradient of ``f`` per row) when the
two terms are negatively correlated, as for the ``loc`` gradient of a cost monotone along
:math:`\epsilon`; for a cost even about the mean there is no gain. The ``eps_i`` are those of
``estimators.pathwise`` with the same key (common random numbers).

Hold it against the package's closed-form problems, or run it through the variance runner, the
BLR and the VAE comparison, by its importable path ``examples.antithetic:antithetic_pathwise``
(see the README's section "Your own estimator").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import estimators


def _noise(dist: Any, key: jax.Array, num_samples: int) -> jax.Array:
    """``[num_samples, *event_shape]`` standard noise (one row per antithetic pair)."""
    if not isinstance(dist, estimators.StandardNoise):
        raise ValueError(
            "antithetic_pathwise needs a distribution with standard noise (StandardNoise: "
            f"standard_noise and from_noise); {type(dist).__name__} has none"
        )
    return dist.standard_noise(key, (num_samples,))


def _pair_cost(function, dist_builder, params, eps: jax.Array) -> jax.Array:
    """``(f(g(eps)) + f(g(-eps))) / 2`` for one row of noise; ``[]``."""
    dist = dist_builder(params)
    return 0.5 * (function(dist.from_noise(eps)) + function(dist.from_noise(-eps)))


def per_sample(function, params, dist_builder, key, *, num_samples: int):
    r"""One antithetic estimate per pair: a pytree like ``params`` with leaves
    ``[num_samples, *leaf.shape]``; their mean estimates :math:`\nabla_\theta E[f(x)]`."""
    noise = _noise(dist_builder(params), key, num_samples)
    grad = jax.grad(lambda p, eps: _pair_cost(function, dist_builder, p, eps))
    return jax.vmap(grad, in_axes=(None, 0))(params, noise)


def surrogate(function, params, dist_builder, key, *, num_samples: int) -> jax.Array:
    """The mean of the pairs' costs, ``[]``: its value estimates ``E[f]`` and its gradient is
    the mean of :func:`per_sample` (same key)."""
    noise = _noise(dist_builder(params), key, num_samples)
    return jnp.mean(jax.vmap(lambda eps: _pair_cost(function, dist_builder, params, eps))(noise))


antithetic_pathwise = estimators.gradient_estimator(
    "antithetic_pathwise",
    per_sample,
    surrogate=surrogate,
    requires=(estimators.StandardNoise,),
    cost_evaluations=lambda dim: 2,
    label="pathwise (antithetic pairs)",
)
