"""The jitted pieces of the binary-VAE benchmark: S seeds of one (model, estimator) pair trained
as ONE program (the seeds ``jax.vmap``-ed), their evaluation, and the encoder-gradient variance.

Per seed, the training state is ``{"params", "opt", "estimator", "step"}``: ``params`` the
model's trained parameters (encoder, decoder, prior logits), ``opt`` the optimiser's state
(Adam on the encoder and decoder, SGD on the prior logits: :func:`make_optimizer`),
``estimator`` the estimator's own state (REBAR's temperature, RELAX's network, RODEO's
coefficients; ``()`` for most). Every leaf of the S-seed state has a leading axis ``[S]``.

Every random draw is a function of ``(seed, tag, epoch)`` (:func:`epoch_key`), so a resumed
run ends with the same parameters, bit for bit, as an uninterrupted one, and every estimator
of a comparison sees the same data order and binarisation for the same seed.

Devices (issue 15): the seeds are the axis laid along the run's mesh (``experiments._mesh``,
``mesh.devices``; :func:`seed_sharding`). When ``num_seeds`` is a multiple of the mesh's size
each device trains ``num_seeds / size`` seeds, the data replicated, and nothing is communicated
until the losses, bounds and variances are gathered at the end of an epoch; otherwise every
device trains every seed (replicated). Each seed's draws come from its own key, so they do not
depend on the number of devices (the threefry bits are a function of the key and the shape:
``jax_threefry_partitionable``, on by default, only decides how a sharded draw is computed);
the results then differ from a one-device run by float32 rounding alone (XLA associates the
sums of a program vmapped over ``S / size`` seeds otherwise than over ``S``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

import estimators
from models import binary_vae

from .. import _mesh
from .._mesh import seed_sharding as seed_sharding  # the seed axis's layout

Array = jax.Array
PyTree = Any

# fold_in tags of a seed's key.
TAG_INIT, TAG_EPOCH, TAG_TRAIN_ELBO, TAG_EVAL, TAG_VAR_BATCH, TAG_VAR, TAG_WARM = range(7)


def _jit(fn: Callable[..., Any], seeds: NamedSharding | None, axes: tuple[bool, ...]) -> Any:
    """``jax.jit(fn)``; with ``seeds``, the arguments flagged in ``axes`` (and every output)
    laid out as the seed axis, the others replicated on its mesh."""
    if seeds is None:
        return jax.jit(fn)
    other = _mesh.replicated(seeds.mesh)
    return jax.jit(fn, in_shardings=tuple(seeds if a else other for a in axes), out_shardings=seeds)


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static pieces of one (model, estimator) training program."""

    spec: str  # the registry spec (or importable path) as the config names it
    est: estimators.GradientEstimator
    num_samples: int  # K samples per example
    batch_size: int
    steps_per_epoch: int
    graphdef: Any
    fixed: Any  # the model's non-trained state (the centring mean)
    optimizer: optax.GradientTransformation
    latent_dim: int

    @property
    def evaluations_per_example(self) -> int:
        """Evaluations of the cost per example and step: ``K * cost_evaluations(L)`` (2 for
        ARM/DisARM, 3 for REBAR/RELAX, K for a K-sample REINFORCE-LOO, VIMCO or RODEO)."""
        return self.num_samples * int(self.est.cost_evaluations(self.latent_dim))

    @property
    def other_objective(self) -> bool:
        """Whether the estimator trains the K-sample bound (VIMCO) instead of the ELBO."""
        return self.est.objective == "log_mean_exp"


def parse_entry(entry: str) -> tuple[str, int | None]:
    """``"spec@K"`` -> ``(spec, K)``; ``"spec"`` -> ``(spec, None)`` (the estimator's least K)."""
    spec, at, k = entry.rpartition("@")
    if not at:
        return entry, None
    if not k.isdigit() or int(k) < 1 or not spec:
        raise ValueError(f"estimator entry {entry!r}: write 'spec' or 'spec@K' with K >= 1")
    return spec, int(k)


def entry_samples(est: estimators.GradientEstimator, entry: str, k: int | None) -> int:
    """K of an entry: the ``@K`` given, else the estimator's ``min_samples`` (1 for the
    single-sample ones); checked against ``min_samples``."""
    num = est.min_samples if k is None else k
    if num < est.min_samples:
        raise ValueError(f"estimator entry {entry!r}: {est.name} needs K >= {est.min_samples}")
    if not est.multi_sample and num != 1:
        raise ValueError(
            f"estimator entry {entry!r}: {est.name} uses its samples independently; "
            "average over examples instead of asking K > 1"
        )
    return num


def make_optimizer(
    learning_rate: float, prior_learning_rate: float
) -> optax.GradientTransformation:
    """Adam(``learning_rate``) on the encoder and decoder, SGD(``prior_learning_rate``) on
    the prior's logits (the DisARM setup)."""

    def labels(params: PyTree) -> PyTree:
        return {
            name: jax.tree.map(lambda _, n=name: "sgd" if n == "prior_logits" else "adam", v)
            for name, v in params.items()
        }

    return optax.multi_transform(
        {"adam": optax.adam(learning_rate), "sgd": optax.sgd(prior_learning_rate)}, labels
    )


def build_model(
    data_mean: Array, latent_dim: int, hidden: tuple[int, ...], key: Array
) -> binary_vae.BinaryVAE:
    """The model with its initial weights drawn from ``key``."""
    return binary_vae.BinaryVAE(data_mean, latent_dim, hidden, rngs=nnx.Rngs(params=key))


def init_states(
    setup_pieces: dict[str, Any],
    data_mean: Array,
    latent_dim: int,
    hidden: tuple[int, ...],
    keys: Array,
    seeds: NamedSharding | None = None,
) -> PyTree:
    """The S-seed initial state from the seeds' init keys ``[S]`` (leaves ``[S, ...]``, laid
    out as ``seeds`` when given: :func:`seed_sharding`)."""
    optimizer, est = setup_pieces["optimizer"], setup_pieces["est"]

    def one(key: Array) -> PyTree:
        _, params, _ = nnx.split(build_model(data_mean, latent_dim, hidden, key), nnx.Param, ...)
        params = nnx.to_pure_dict(params)
        return {
            "params": params,
            "opt": optimizer.init(params),
            "estimator": est.init(),
            "step": jnp.zeros((), jnp.int32),
        }

    return _jit(jax.vmap(one), seeds, (True,))(keys)


def graph_pieces(data_mean: Array, latent_dim: int, hidden: tuple[int, ...]) -> tuple[Any, Any]:
    """``(graphdef, fixed)``: the model's structure and its non-trained state."""
    model = build_model(data_mean, latent_dim, hidden, jax.random.key(0))
    graphdef, _, fixed = nnx.split(model, nnx.Param, ...)
    return graphdef, fixed


def merge(setup: Setup, params: PyTree) -> binary_vae.BinaryVAE:
    """The model of ``params`` (a pure dict, as in the state)."""
    state = nnx.State(params)
    return nnx.merge(setup.graphdef, state, setup.fixed)


def _cost(model: binary_vae.BinaryVAE, x: Array, logits: Array, b: Array) -> Array:
    # The estimators minimise E[cost]: cost = -f(b) (the negative ELBO integrand; for an
    # estimator of objective "log_mean_exp" it is -log w, and they minimise the negative bound).
    return -binary_vae.elbo_integrand(model, x, logits, b)


def batch_loss(
    setup: Setup, params: PyTree, est_state: PyTree, xs: Array, key: Array
) -> tuple[Array, tuple[Array, Array, Array]]:
    """The batch's mean surrogate loss (its gradient is the estimate) and, stopped,
    ``(costs [B], logits [B, L], keys [B])``: what the estimator's ``update`` needs."""
    model = merge(setup, params)
    keys = jax.random.split(key, xs.shape[0])

    def one(x: Array, k: Array) -> tuple[Array, Array]:
        logits = model.encoder_logits(x)
        s = setup.est.surrogate(
            lambda b: _cost(model, x, logits, b),
            {"logits": logits},
            binary_vae.posterior,
            k,
            num_samples=setup.num_samples,
            state=est_state,
            context=x,
        )
        return s, logits

    losses, logits = jax.vmap(one)(xs, keys)
    return jnp.mean(losses), jax.lax.stop_gradient((losses, logits, keys))


def update_estimator(
    setup: Setup, params: PyTree, est_state: PyTree, xs: Array, aux: tuple[Array, Array, Array]
) -> PyTree:
    """The estimator's state after the estimate ``aux`` on batch ``xs`` at ``params``: an
    adaptive estimator trains its control on the batch (:class:`estimators.EstimateBatch`,
    the examples' own keys, so the very noise of the estimate), any other is given the costs."""
    costs, logits, keys = aux
    if not setup.est.adaptive:
        return setup.est.update(est_state, costs, context=xs)
    model = merge(setup, jax.lax.stop_gradient(params))
    batch = estimators.EstimateBatch(
        lambda b, ctx: _cost(model, ctx[0], ctx[1], b),
        {"logits": logits},
        binary_vae.posterior,
        keys,
        setup.num_samples,
        (xs, logits),
    )
    return setup.est.update(est_state, costs, context=xs, inputs=batch)


def train_step(setup: Setup, state: PyTree, xs: Array, key: Array) -> tuple[PyTree, Array]:
    """One step of ONE seed on a binary batch ``xs [B, D]``: the optimiser's step on the
    estimate, then the estimator's update (read-then-update). Returns (state, loss ``[]``)."""
    (loss, aux), grads = jax.value_and_grad(
        lambda p: batch_loss(setup, p, state["estimator"], xs, key), has_aux=True
    )(state["params"])
    updates, opt = setup.optimizer.update(grads, state["opt"], state["params"])
    return {
        "params": optax.apply_updates(state["params"], updates),
        "opt": opt,
        "estimator": update_estimator(setup, state["params"], state["estimator"], xs, aux),
        "step": state["step"] + 1,
    }, loss


def epoch_key(seed_key: Array, tag: int, epoch: int | Array) -> Array:
    """The key of ``tag`` in epoch ``epoch`` of the seed whose key is ``seed_key``."""
    return jax.random.fold_in(jax.random.fold_in(seed_key, tag), epoch)


def make_train_epoch(
    setup: Setup, num_steps: int, seeds: NamedSharding | None = None
) -> Callable[..., tuple[PyTree, Array]]:
    """Jitted ``(states, train [N, D], seed_keys [S], epoch) -> (states, losses [S, steps])``.

    ``seeds``: the layout of the seed axis (:func:`seed_sharding`) of the states, the keys and
    the outputs; the data and the epoch replicated on its mesh. ``None``: where the inputs are.

    Each seed shuffles the grey-level training images with its epoch key, takes ``num_steps``
    batches of the permutation (``num_steps <= steps_per_epoch``), binarises each batch afresh
    (dynamic binarisation) and steps, in one ``lax.scan``; the seeds are ``vmap``-ed.
    """

    def one_seed(state: PyTree, train: Array, seed_key: Array, epoch: Array):
        k_perm, k_steps = jax.random.split(epoch_key(seed_key, TAG_EPOCH, epoch))
        perm = jax.random.permutation(k_perm, train.shape[0])
        idx = perm[: num_steps * setup.batch_size].reshape(num_steps, setup.batch_size)

        def body(state, inp):
            i, k = inp
            k_bin, k_est = jax.random.split(k)
            xs = jax.random.bernoulli(k_bin, train[i]).astype(train.dtype)
            return train_step(setup, state, xs, k_est)

        return jax.lax.scan(body, state, (idx, jax.random.split(k_steps, num_steps)))

    return _jit(jax.vmap(one_seed, in_axes=(0, None, 0, None)), seeds, (True, False, True, False))


def make_bound(
    setup: Setup, num_samples: int, chunk: int = 500, seeds: NamedSharding | None = None
) -> Callable[..., Array]:
    """Jitted ``(params, xs [M, D], seed_keys [S], tag) -> [S, M]`` (``params``: the S
    seeds' model parameters, leaves ``[S, ...]``, laid out as ``seeds`` with the keys and the
    output when given; the program depends only on the model, so every estimator of a model
    shares it): one draw of the
    ``num_samples``-sample bound (:func:`models.binary_vae.iwae_bound`) of every example for
    every seed (``num_samples = 1``: the single-sample ELBO), in chunks of ``chunk`` examples
    (``lax.map``) so memory stays ``O(chunk * num_samples * D)``."""

    def one_seed(params: PyTree, xs: Array, key: Array) -> Array:
        model = merge(setup, params)
        m = xs.shape[0]
        size = min(chunk, m)
        pad = -m % size
        padded = jnp.concatenate([xs, jnp.zeros((pad, xs.shape[1]), xs.dtype)])
        keys = jax.random.split(key, m + pad)

        def block(inp):
            x, k = inp
            return jax.vmap(
                lambda xi, ki: binary_vae.iwae_bound(model, xi, ki, num_samples=num_samples)
            )(x, k)

        out = jax.lax.map(block, (padded.reshape(-1, size, xs.shape[1]), keys.reshape(-1, size)))
        return out.reshape(-1)[:m]

    def bound(params: PyTree, xs: Array, seed_keys: Array, tag: Array) -> Array:
        keys = jax.vmap(lambda k: epoch_key(k, TAG_EVAL, tag))(seed_keys)
        return jax.vmap(one_seed, in_axes=(0, None, 0))(params, xs, keys)

    return _jit(bound, seeds, (True, False, True, False))


def make_grad_estimates(setup: Setup, num_estimates: int) -> Callable[..., Array]:
    r"""Jitted ``(params, est_state, xs [B, D], key) -> sq_dev [M]`` for ONE seed: draws ``M``
    independent estimates :math:`g_m` of the gradient of the batch loss with respect to the
    ENCODER's weights at fixed parameters (estimate ``m`` uses ``jax.random.split(key, M)[m]``,
    split again over the examples, as in training) and returns :math:`d_m = \|g_m - \bar g\|^2`;
    :math:`\sum_m d_m / (M - 1)` estimates :math:`\operatorname{tr}\operatorname{Cov}[g]`
    (``experiments.vae.train.variance_summary`` adds jackknife standard errors)."""

    def one(params, est_state, xs, key):
        grads = jax.grad(lambda p: batch_loss(setup, p, est_state, xs, key)[0])(params)
        return jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads["encoder"])])

    def sq_dev(params, est_state, xs, key):
        g = jax.lax.map(
            lambda k: one(params, est_state, xs, k), jax.random.split(key, num_estimates)
        )
        return jnp.sum(jnp.square(g - jnp.mean(g, axis=0, keepdims=True)), axis=1)

    return jax.jit(sq_dev)


def make_warm_estimator(setup: Setup, num_steps: int) -> Callable[..., PyTree]:
    """Jitted ``(params, est_state, train [N, D], key) -> est_state``: ``num_steps`` estimator
    updates at FIXED parameters, each on a random batch (binarised afresh): an adaptive
    estimator's control (or a running baseline) brought to the checkpoint's parameters before
    its variance is measured there; every estimator is warmed on the same batches."""

    def warm(params, est_state, train, key):
        def body(est_state, k):
            k_idx, k_bin, k_est = jax.random.split(k, 3)
            idx = jax.random.randint(k_idx, (setup.batch_size,), 0, train.shape[0])
            xs = jax.random.bernoulli(k_bin, train[idx]).astype(train.dtype)
            _, aux = batch_loss(setup, params, est_state, xs, k_est)
            return update_estimator(setup, params, est_state, xs, aux), None

        est_state, _ = jax.lax.scan(body, est_state, jax.random.split(key, num_steps))
        return est_state

    return jax.jit(warm)
