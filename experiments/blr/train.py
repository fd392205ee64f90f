"""Bayesian logistic regression: each estimator's gradient, and one jitted training program.

An estimator is a spec of ``estimators.registry`` (``"score_function+moving_average"``,
``"pathwise+delta"``, an importable ``"pkg.mod:attr"``, ...). Its gradient of the expected
log-likelihood is a set of per-sample jacobians (pytree ``{"loc": [N, D], "log_scale": [N,
D]}``): their mean is the gradient SGD uses, their variance the estimator's single-sample
variance reported in the figures. The KL term's gradient is added exactly. An estimator with
state (a moving-average baseline) gets it through its ``init``/``update``. One program per
estimator: ``vmap`` over seeds of a ``lax.scan`` over blocks of ``eval_every`` steps (an inner
``lax.scan``), each block ending with an evaluation on the full data; it is jitted once.

Devices (issue 15): the program runs on the run's mesh (``experiments._mesh``, ``mesh.devices``).
The seeds are the axis laid along it (:func:`seed_sharding`): when the number of seeds is a
multiple of the mesh's size, each device trains ``num_seeds / size`` of them and nothing is
communicated until the results are gathered at the end; otherwise every device holds every
seed (replicated: the same work on each device, so the results are still those of one device).
The data are replicated. The estimators are not spread over the devices: each has its own
program (its state, and a swept ``num_samples`` or ``batch_size``, change the shapes), run one
after the other. Every random draw is a function of the seed's key alone, so the results do not
depend on the number of devices except through float32 rounding: XLA evaluates a program
vmapped over ``S / size`` seeds with another association of its sums than one over ``S``
(``tests/test_sharding_blr_binary_vae.py`` states the tolerance).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

import estimators
from estimators import registry
from models import logistic_regression as lr

from .. import _mesh
from .._mesh import seed_sharding as seed_sharding  # the seed axis's layout

Array = jax.Array


class Settings(NamedTuple):
    """The static settings of one training program (hashable: a jit static argument)."""

    variant: str  # an estimators.registry spec
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
    lr_decay: str = "quarter_cosine"  # or "cosine" (see :func:`learning_rate`)


class Carry(NamedTuple):
    params: dict[str, Array]
    opt_state: Any
    state: Any  # the estimator's (``()`` for a stateless one)


def estimator(settings: Settings) -> estimators.GradientEstimator:
    """The registry's estimator for ``settings.variant``, with the settings' options."""
    return registry.get(
        settings.variant,
        cv_coefficient=settings.cv_coefficient,
        cv_coefficient_samples=settings.cv_coefficient_samples,
        moving_average_decay=settings.moving_average_decay,
    )


def jacobians(
    settings: Settings,
    params: dict[str, Array],
    state: Any,
    features: Array,
    labels: Array,
    key: Array,
    *,
    num_samples: int,
    scale: float,
) -> tuple[dict[str, Array], Array | None]:
    """Per-sample jacobians of ``scale * log p(labels | features, w)`` under the posterior.

    Args:
      state: the estimator's state (its ``init()``, then its ``update``s).
      features: ``[B, D]``; labels: ``[B]``; scale: ``N_data / B``.

    Returns:
      ``({"loc": [N, D], "log_scale": [N, D]}, costs)``: ``costs [N]`` are the stopped costs
      of the estimate's samples, for the estimator's ``update``, when it carries state
      (else ``None``).
    """
    est = estimator(settings)
    cost = lr.log_likelihood_cost(features, labels, scale)
    args = (cost, params, lr.posterior, key)
    jac = est.per_sample(*args, num_samples=num_samples, state=state)
    if not jax.tree.leaves(state):
        return jac, None
    return jac, registry.sample_costs(*args, num_samples=num_samples)


def single_sample_variance(
    settings: Settings,
    params: dict[str, Array],
    state: Any,
    features: Array,
    labels: Array,
    key: Array,
) -> dict[str, Array]:
    """Per-coordinate variance of one sample's gradient on the full data (``scale = 1``).

    From ``settings.variance_samples`` per-sample jacobians; for an estimator whose samples are
    used jointly (``multi_sample``: its rows are not independent), ``num_samples`` times the
    variance of ``variance_samples // num_samples`` independent estimates of ``num_samples``
    samples each (the same cost in samples). Returns ``{"var_loc": [D], "var_log_scale": [D]}``.
    """
    n = settings.variance_samples
    if estimator(settings).multi_sample:
        group = settings.num_samples

        def mean_estimate(k: Array) -> dict[str, Array]:
            jac, _ = jacobians(
                settings, params, state, features, labels, k, num_samples=group, scale=1.0
            )
            return jax.tree.map(lambda j: jnp.mean(j, axis=0), jac)

        means = jax.vmap(mean_estimate)(jax.random.split(key, n // group))
        var = jax.tree.map(lambda m: group * jnp.var(m, axis=0, ddof=1), means)
    else:
        jac, _ = jacobians(settings, params, state, features, labels, key, num_samples=n, scale=1.0)
        var = jax.tree.map(lambda j: jnp.var(j, axis=0, ddof=1), jac)
    return {"var_loc": var["loc"], "var_log_scale": var["log_scale"]}


LR_DECAYS = ("quarter_cosine", "cosine")


def learning_rate(settings: Settings) -> optax.Schedule:
    r"""The step size at step ``t`` of ``T = settings.steps``, decaying to 0 at ``T``:

    - ``"quarter_cosine"``, the paper's code (``mc_gradients/main.py``): :math:`\eta_0
      \cos(\frac{\pi}{2} t / T)`;
    - ``"cosine"``, optax's ``cosine_decay_schedule`` (runs of this project before issue 16):
      :math:`\eta_0 \frac12 (1 + \cos(\pi t / T))`.
    """
    rate, steps = settings.learning_rate, settings.steps
    if settings.lr_decay == "cosine":
        return optax.cosine_decay_schedule(rate, steps)
    if settings.lr_decay != "quarter_cosine":
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}; got {settings.lr_decay!r}")

    def schedule(count: Array) -> Array:
        # float32's cos(pi/2) is -4e-8: clipped, the step size never turns negative.
        return rate * jnp.maximum(jnp.cos(0.5 * jnp.pi * jnp.minimum(count, steps) / steps), 0.0)

    return schedule


def optimizer(settings: Settings) -> optax.GradientTransformation:
    """Plain SGD at :func:`learning_rate` (``settings.lr_decay``)."""
    return optax.sgd(learning_rate(settings))


def _train_step(
    settings: Settings, features: Array, labels: Array, carry: Carry, xs: tuple[Array, Array]
) -> tuple[Carry, None]:
    """One SGD step on the minibatch ``idx [B]`` (distinct rows) with key ``k_grad``."""
    idx, k_grad = xs
    n_data = features.shape[0]
    jac, costs = jacobians(
        settings,
        carry.params,
        carry.state,
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
    # The state is updated after the estimate, with the costs of the samples it used.
    state = carry.state if costs is None else estimator(settings).update(carry.state, costs)
    return Carry(optax.apply_updates(carry.params, updates), opt_state, state), None


def _evaluate(
    settings: Settings, features: Array, labels: Array, carry: Carry, key: Array
) -> dict[str, Array]:
    """ELBO, accuracy and (if asked) the per-coordinate gradient variance on the full data."""
    k_metrics, k_var = jax.random.split(key)
    metrics = lr.evaluate(
        carry.params, features, labels, k_metrics, num_samples=settings.eval_samples
    )
    if settings.variance_samples:
        metrics.update(
            single_sample_variance(settings, carry.params, carry.state, features, labels, k_var)
        )
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
    carry = Carry(params, optimizer(settings).init(params), estimator(settings).init())
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
    settings: Settings,
    progress: Callable[[Array], None] | None = None,
    seeds: NamedSharding | None = None,
) -> Callable[[Array, Array, Array], tuple[dict[str, Array], dict[str, Array]]]:
    """Jitted ``program(features, labels, keys [S]) -> (params [S, D], metrics [S, E, ...])``.

    ``seeds``: the sharding of the seed axis (:func:`seed_sharding`) of ``keys`` and of every
    output; the data are replicated on its mesh. ``None``: wherever the inputs are.
    """

    def program(features: Array, labels: Array, keys: Array):
        one = functools.partial(train_one_seed, settings, features, labels, progress=progress)
        return jax.vmap(one)(keys)

    if seeds is None:
        return jax.jit(program)
    data = _mesh.replicated(seeds.mesh)
    return jax.jit(program, in_shardings=(data, data, seeds), out_shardings=seeds)
