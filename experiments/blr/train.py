"""Bayesian logistic regression: the gradient of each variant, and one jitted training program.

A variant's gradient of the expected log-likelihood is a set of per-sample jacobians (pytree
``{"loc": [N, D], "log_scale": [N, D]}``): their mean is the gradient SGD uses, their variance
the estimator's single-sample variance reported in the figures. The KL term's gradient is added
exactly. One program per variant: ``vmap`` over seeds of a ``lax.scan`` over blocks of
``eval_every`` steps (an inner ``lax.scan``), each block ending with an evaluation on the full
data; it is jitted once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import estimators
from models import logistic_regression as lr

from .config import VARIANTS

Array = jax.Array

LABELS = {
    "score_function": "score function",
    "score_function_moving_average": "score function + moving average",
    "score_function_delta": "score function + delta method",
    "pathwise": "pathwise",
    "pathwise_delta": "pathwise + delta method",
    "measure_valued": "measure-valued (coupled)",
}


class Settings(NamedTuple):
    """The static settings of one training program (hashable: a jit static argument)."""

    variant: str
    steps: int
    eval_every: int
    batch_size: int
    num_samples: int
    learning_rate: float
    eval_samples: int
    variance_samples: int  # 0: no variance evaluation
    moving_average_decay: float
    cv_coefficient: float | str  # a float, or "optimal" (estimated from separate samples)
    cv_coefficient_samples: int = 25  # samples for "optimal"


class Carry(NamedTuple):
    params: dict[str, Array]
    opt_state: Any
    moving_average: Any


def jacobians(
    settings: Settings,
    params: dict[str, Array],
    moving_average: Any,
    features: Array,
    labels: Array,
    key: Array,
    *,
    num_samples: int,
    scale: float,
) -> tuple[dict[str, Array], Array | None]:
    """Per-sample jacobians of ``scale * log p(labels | features, w)`` under the posterior.

    Args:
      features: ``[B, D]``; labels: ``[B]``; scale: ``N_data / B``.

    Returns:
      ``({"loc": [N, D], "log_scale": [N, D]}, costs)``; ``costs [N]`` are the per-sample
      costs for the moving-average variant (its samples, the estimator's), else ``None``.
    """
    variant = settings.variant

    def cost(w: Array) -> Array:
        return lr.log_likelihood(w, features, labels, scale)

    args = (cost, params, lr.posterior, key)
    if variant == "score_function":
        return estimators.score_function(*args, num_samples=num_samples), None
    if variant == "score_function_moving_average":
        baseline = estimators.moving_average_baseline(moving_average)
        jac = estimators.score_function(*args, num_samples=num_samples, baseline=baseline)
        q = lr.posterior(jax.lax.stop_gradient(params))
        ws = estimators.draw_samples(q, key, num_samples)  # the samples of score_function
        return jac, jax.vmap(cost)(ws)
    if variant == "pathwise":
        return estimators.pathwise(*args, num_samples=num_samples), None
    if variant in ("score_function_delta", "pathwise_delta"):
        estimator = (
            estimators.score_function if variant.startswith("score") else estimators.pathwise
        )
        jac = estimators.with_control_variate(
            estimator,
            cost,
            estimators.delta_method(cost),
            params,
            lr.posterior,
            key,
            num_samples=num_samples,
            coefficient=settings.cv_coefficient,
            num_coefficient_samples=settings.cv_coefficient_samples,
        )
        return jac, None
    if variant == "measure_valued":
        jac = lr.log_likelihood_measure_valued(
            params, features, labels, key, num_samples=num_samples, coupling=True, scale=scale
        )
        return jac, None
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def optimizer(settings: Settings) -> optax.GradientTransformation:
    """Plain SGD, learning rate with cosine decay to 0 over the training steps."""
    return optax.sgd(optax.cosine_decay_schedule(settings.learning_rate, settings.steps))


def _train_step(
    settings: Settings, features: Array, labels: Array, carry: Carry, xs: tuple[Array, Array]
) -> tuple[Carry, None]:
    """One SGD step on the minibatch ``idx [B]`` (distinct rows) with key ``k_grad``."""
    idx, k_grad = xs
    n_data = features.shape[0]
    jac, costs = jacobians(
        settings,
        carry.params,
        carry.moving_average,
        features[idx],
        labels[idx],
        k_grad,
        num_samples=settings.num_samples,
        scale=n_data / settings.batch_size,
    )
    # Gradient of the loss -ELBO: minus the estimated log-likelihood gradient, plus exact KL.
    kl_grad = jax.grad(lr.kl_to_prior)(carry.params)
    grad = jax.tree.map(lambda j, k: k - jnp.mean(j, axis=0), jac, kl_grad)
    updates, opt_state = optimizer(settings).update(grad, carry.opt_state, carry.params)
    moving_average = carry.moving_average
    if costs is not None:
        moving_average = estimators.moving_average_update(
            moving_average, costs, decay=settings.moving_average_decay
        )
    return Carry(optax.apply_updates(carry.params, updates), opt_state, moving_average), None


def _evaluate(
    settings: Settings, features: Array, labels: Array, carry: Carry, key: Array
) -> dict[str, Array]:
    """ELBO, accuracy and (if asked) the per-coordinate gradient variance on the full data."""
    k_metrics, k_var = jax.random.split(key)
    metrics = lr.evaluate(
        carry.params, features, labels, k_metrics, num_samples=settings.eval_samples
    )
    if settings.variance_samples:
        jac, _ = jacobians(
            settings,
            carry.params,
            carry.moving_average,
            features,
            labels,
            k_var,
            num_samples=settings.variance_samples,
            scale=1.0,
        )
        metrics["var_loc"] = jnp.var(jac["loc"], axis=0, ddof=1)
        metrics["var_log_scale"] = jnp.var(jac["log_scale"], axis=0, ddof=1)
    return metrics


def train_one_seed(
    settings: Settings,
    features: Array,
    labels: Array,
    key: Array,
    progress: Callable[[Array], None] | None = None,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Train one posterior; returns (final params, metrics with a leading ``[num_evals]`` axis).

    ``progress(block_index)`` is called from inside the program after every block.
    """
    num_blocks = settings.steps // settings.eval_every
    params = lr.init_params(features.shape[1])
    carry = Carry(params, optimizer(settings).init(params), estimators.moving_average_init())
    step = functools.partial(_train_step, settings, features, labels)

    def block(carry: Carry, xs: tuple[Array, Array]) -> tuple[Carry, dict[str, Array]]:
        index, k = xs
        k_perm, k_steps, k_eval = jax.random.split(k, 3)
        # Minibatches: consecutive windows of one random permutation of the data per block
        # (wrapping around), so each batch has distinct rows; one shuffle serves all the block's
        # steps (a permutation per step would cost most of a pathwise step).
        n_data = features.shape[0]
        window = jnp.arange(settings.eval_every * settings.batch_size) % n_data
        perm = jax.random.permutation(k_perm, n_data)
        idx = perm[window].reshape(settings.eval_every, settings.batch_size)
        step_keys = jax.random.split(k_steps, settings.eval_every)
        carry, _ = jax.lax.scan(step, carry, (idx, step_keys))
        metrics = _evaluate(settings, features, labels, carry, k_eval)
        if progress is not None:
            jax.debug.callback(progress, index)
        return carry, metrics

    xs = (jnp.arange(num_blocks), jax.random.split(key, num_blocks))
    carry, metrics = jax.lax.scan(block, carry, xs)
    return carry.params, metrics


def make_program(
    settings: Settings, progress: Callable[[Array], None] | None = None
) -> Callable[[Array, Array, Array], tuple[dict[str, Array], dict[str, Array]]]:
    """Jitted ``program(features, labels, keys [S]) -> (params [S, D], metrics [S, E, ...])``."""

    def program(features: Array, labels: Array, keys: Array):
        one = functools.partial(train_one_seed, settings, features, labels, progress=progress)
        return jax.vmap(one)(keys)

    return jax.jit(program)
