r"""VIMCO: the score-function gradient of a multi-sample bound with per-sample leave-one-out
baselines (Mnih & Rezende, "Variational inference for Monte Carlo objectives", ICML 2016).

With ``K >= 2`` samples :math:`x_k \sim q_\theta` and ``f = -log w`` (the registry's
``"log_mean_exp"`` objective), the estimand is

.. math:: \nabla_\theta\, E_{q^K}\Big[-\hat L(x_{1:K})\Big], \qquad
          \hat L = \log\frac1K\sum_{k} w_k, \quad w_k = e^{-f(x_k)},

and :math:`\nabla E[-\hat L] = E[\sum_k (-\hat L)\,\nabla\log q(x_k) - \nabla\hat L]` (eq. 5).
The score term's learning signal :math:`\hat L` is common to all samples; VIMCO gives sample
``k`` its own baseline, the bound with :math:`w_k` replaced by the geometric mean of the
others' weights (eqs. 8-10),

.. math:: \hat L_{-k} = \log\frac1K\Big(\sum_{j\ne k} w_j + \exp\big(\tfrac1{K-1}
          \textstyle\sum_{j\ne k}\log w_j\big)\Big),

a function of :math:`x_{-k}` only, so :math:`E[\hat L_{-k}\nabla\log q(x_k)] = 0` and the
estimator stays unbiased. Row ``k`` of :func:`vimco` is

.. math:: K\,(\hat L_{-k} - \hat L)\,\nabla_\theta\log q(x_k;\theta)

(the rows average to the score term, :math:`\sum_k (\hat L_{-k} - \hat L)\nabla\log q(x_k)`);
the second term, :math:`-\nabla\hat L = \sum_k \tilde w_k \nabla f(x_k)` with the normalised
weights :math:`\tilde w_k = w_k / \sum_j w_j`, is ``f``'s own dependence on what is
differentiated (a VAE's decoder, and its encoder through :math:`\log q` inside ``f``): the
:func:`vimco_surrogate` passes it through. All in log space (``logsumexp``): stable for
weights far below float range.

Cost: one evaluation of ``f`` per sample; ``K^2`` log-sum-exp terms per estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._capabilities import HasScore
from .._common import Array, CostFn, DistBuilder, PyTree, build_and_check, draw
from .._interface import GradientEstimator, gradient_estimator


def _check_samples(num_samples: int, who: str) -> None:
    if isinstance(num_samples, int) and num_samples < 2:
        raise ValueError(
            f"{who}: VIMCO's leave-one-out baselines need num_samples >= 2 (K samples of the "
            f"bound, each baseline built from the other K - 1); got {num_samples}"
        )


def vimco_baselines(log_weights: Array) -> Array:
    r"""VIMCO's per-sample baselines :math:`\hat L_{-k}`, ``[K] -> [K]``.

    :math:`\hat L_{-k} = \log\frac1K(\sum_{j\ne k} w_j + \exp(\frac1{K-1}\sum_{j\ne k}\log
    w_j))` (Mnih & Rezende 2016, eq. 10, the geometric-mean form): the bound with
    :math:`w_k` replaced by the geometric mean of the others, computed by ``logsumexp``.
    Entry ``k`` does not depend on ``log_weights[k]``.

    Args:
      log_weights: ``[K]`` log weights :math:`\log w_k = -f(x_k)`, ``K >= 2``.

    Returns:
      ``[K]``.

    Example (equal weights: every baseline equals the bound, here ``log 2``):
      >>> import jax.numpy as jnp, estimators
      >>> estimators.vimco_baselines(jnp.log(jnp.array([2.0, 2.0, 2.0])))
      Array([0.6931472, 0.6931472, 0.6931472], dtype=float32)
    """
    k = log_weights.shape[0]
    _check_samples(k, "vimco_baselines")
    others_mean = (jnp.sum(log_weights) - log_weights) / (k - 1)  # [K]
    replaced = jnp.where(jnp.eye(k, dtype=bool), others_mean[:, None], log_weights[None, :])
    return jax.nn.logsumexp(replaced, axis=1) - math.log(k)


def _signals(costs: Array) -> tuple[Array, Array]:
    """The bound :math:`\\hat L` ``[]`` and the learning signals :math:`\\hat L_{-k} - \\hat
    L` ``[K]`` of costs ``f = -log w`` (stopped)."""
    log_w = -jax.lax.stop_gradient(costs)
    bound = jax.nn.logsumexp(log_w) - math.log(log_w.shape[0])
    return bound, vimco_baselines(log_w) - bound


def vimco(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
) -> PyTree:
    r"""VIMCO's per-sample estimates of :math:`\nabla_\theta E_{q^K}[-\log\frac1K\sum_k
    e^{-f(x_k)}]` (the score term; ``f`` not differentiated).

    Row ``k`` is :math:`K(\hat L_{-k} - \hat L)\nabla_\theta\log q(x_k;\theta)` (see the
    module docstring; Mnih & Rezende 2016, eqs. 8-10). The rows are used jointly (``K`` is
    the number of samples of the bound): their mean is the estimate, and its standard error
    comes from independent calls.

    Args:
      function: ``f(x) = -log w(x) -> []`` for one sample ``x: [*event_shape]``.
      params: pytree of float arrays; ``dist_builder(params)`` must have a score
        (Bernoulli, Categorical, any ``HasScore`` distribution).
      dist_builder: ``params -> Distribution``.
      key: PRNG key; the samples are ``estimators.draw_samples(dist, key, num_samples)``.
      num_samples: ``K >= 2``.

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.

    Example (``f`` constant: every learning signal is 0):
      >>> import jax, jax.numpy as jnp, estimators
      >>> bern = lambda p: estimators.Bernoulli(p["logits"])
      >>> g = estimators.vimco(lambda x: jnp.sum(0.0 * x) + 1.0, {"logits": jnp.zeros(3)},
      ...                      bern, jax.random.key(0), num_samples=4)
      >>> g["logits"].shape, bool(jnp.all(g["logits"] == 0))
      ((4, 3), True)
    """
    _check_samples(num_samples, "vimco")
    build_and_check(function, params, dist_builder, num_samples, "vimco")
    xs = jax.lax.stop_gradient(draw(dist_builder, params, key, num_samples))
    _, signals = _signals(jax.vmap(function)(xs))

    def one_sample(x: Array, signal: Array) -> PyTree:
        score = jax.grad(lambda p: dist_builder(p).log_prob(x))(params)
        return jax.tree.map(lambda s: num_samples * signal * s, score)

    return jax.vmap(one_sample)(xs, signals)


def vimco_surrogate(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
) -> Array:
    r"""Scalar whose ``jax.grad`` is VIMCO's estimate, ``f``'s direct dependence included.

    .. math:: -\hat L + \sum_k \mathrm{sg}[\hat L_{-k} - \hat L]\,(\log q(x_k;\theta)
              - \mathrm{sg}[\log q(x_k;\theta)]),
              \qquad \hat L = \log\frac1K\sum_k e^{-f(\mathrm{sg}(x_k))}:

    its value is the negative ``K``-sample bound estimate; its gradient with respect to
    ``params`` is the mean of :func:`vimco`'s rows plus :math:`\sum_k \tilde w_k\nabla
    f(x_k)` for anything ``f`` depends on (a decoder's weights; the encoder's through
    :math:`\log q` in ``f = -log w``). Samples as :func:`vimco` with the same key.

    Returns:
      ``[]``.

    Example (its gradient is the mean of the rows when ``f`` depends on nothing else):
      >>> import jax, jax.numpy as jnp, estimators
      >>> bern = lambda p: estimators.Bernoulli(p["logits"])
      >>> f = lambda x: jnp.sum((x - 0.45) ** 2)
      >>> params, key = {"logits": jnp.array([0.3, -0.2])}, jax.random.key(1)
      >>> grad = jax.grad(lambda p: estimators.vimco_surrogate(f, p, bern, key,
      ...                                                      num_samples=5))(params)
      >>> rows = estimators.vimco(f, params, bern, key, num_samples=5)
      >>> bool(jnp.allclose(grad["logits"], rows["logits"].mean(0), atol=1e-6))
      True
    """
    _check_samples(num_samples, "vimco_surrogate")
    build_and_check(function, params, dist_builder, num_samples, "vimco_surrogate")
    xs = jax.lax.stop_gradient(draw(dist_builder, params, key, num_samples))
    costs = jax.vmap(function)(xs)
    _, signals = _signals(costs)
    bound = jax.nn.logsumexp(-costs) - math.log(num_samples)
    log_probs = jax.vmap(dist_builder(params).log_prob)(xs)
    score_term = jnp.sum(signals * (log_probs - jax.lax.stop_gradient(log_probs)))
    return -bound + score_term.astype(bound.dtype)


def vimco_estimator() -> GradientEstimator:
    """:func:`vimco` as a :class:`GradientEstimator`: objective ``"log_mean_exp"``, any
    distribution with a score, ``K >= 2`` samples used jointly."""
    return gradient_estimator(
        "vimco",
        vimco,
        surrogate=vimco_surrogate,
        requires=(HasScore,),
        multi_sample=True,
        min_samples=2,
        objective="log_mean_exp",
        label="VIMCO",
        reference="Mnih & Rezende 2016",
    )


def _factory(**_: Any) -> GradientEstimator:
    return vimco_estimator()


BASES: dict[str, Callable[..., Any]] = {"vimco": _factory}
