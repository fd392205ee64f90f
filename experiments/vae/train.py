"""VAE training with any registered gradient estimator for the encoder: losses, the jitted
epoch, evaluation.

The estimator is a registry spec (``estimators.registry``): ``"pathwise"``,
``"score_function"``, ``"score_function+moving_average"``, ``"score_function+loo"``,
``"score_function+nvil"``, ``"iwae"``, any other composition, or an importable path
``"pkg.mod:attr"``. Per example ``x`` its surrogate is applied to the encoder's parameters of
``q(z|x)`` (the model's latent family), with ``context=x``:

- an estimator of objective ``"mean"`` gets the cost ``f(z) = -log p(x|z)``; the latent
  family's closed-form KL is added outside the estimator (its gradient is exact), so the loss
  is the negative ELBO;
- an estimator of objective ``"log_mean_exp"`` (IWAE) gets ``f(z) = -log w(z) = -log p(x, z)
  + log q(z|x)``, and the loss is the negative importance-weighted bound.

``K = config.num_samples`` samples per example for estimators that use their samples jointly
(``multi_sample``: leave-one-out, IWAE), one otherwise. The decoder's gradient is exact in
every case: the cost depends on the decoder's weights directly and the surrogates pass that
dependence through. An estimator's state (a moving average; NVIL's baseline network, built
here and handed to the registry as its ``nvil`` option) is ``state["estimator"]``: the batch's
estimate reads it, then ``est.update(state, costs [B], context=xs [B, D])`` folds in the
batch's stopped costs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import estimators
import models

from .. import _mesh
from .config import BURDA_STAGES, RENAMED

Array = jax.Array
PyTree = Any

SEED_AXIS = "seeds"
"""The seed axis of :func:`seeds_mesh` (the batch's is :data:`experiments._mesh.AXIS`)."""


class TrainingDiverged(ValueError):
    """The training loss became NaN or inf."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static pieces of a training run (they fix the traced program)."""

    estimator: str  # the spec, as the config names it
    est: estimators.GradientEstimator
    num_samples: int  # K for estimators that use their samples jointly, else 1
    batch_size: int
    num_batches: int
    dynamic: bool  # dynamic binarisation inside the scan
    graphdef: Any
    optimizer: optax.GradientTransformation
    latent_dim: int | None = None  # L, for the estimator's cost_evaluations(L)

    @property
    def evaluations_per_example(self) -> int:
        """What one estimate costs per example, in evaluations of the cost: ``K`` times the
        estimator's ``cost_evaluations(L)`` (1 for pathwise and the score function, 2 for an
        antithetic pair, ``4 L`` for measure-valued); the variances are charged for it."""
        return self.num_samples * int(self.est.cost_evaluations(self.latent_dim))

    @property
    def stateful(self) -> bool:
        """Whether the estimator carries state (a moving average, a learned baseline)."""
        return bool(jax.tree.leaves(self.est.init()))


def spec(name: str) -> str:
    """The registry spec of ``name``: itself, or for a name of the runner's before the
    registry (``score_function_nvil``), the spec it meant (``score_function+nvil``)."""
    return RENAMED.get(name, name)


def _unbuilt_network(net_params: PyTree, context: Any) -> Array:
    raise RuntimeError("the NVIL baseline network was not built (estimator described only)")


def make_estimator(
    config: ml_collections.ConfigDict, network: tuple[Any, ...] | None = None
) -> estimators.GradientEstimator:
    """``estimators.registry.get(spec(config.estimator), ...)`` with the runner's options:
    ``moving_average_decay = config.ma_decay`` and ``nvil = network``, the learned baseline's
    ``(apply, params, optimizer)`` (see :func:`init_state`). Without ``network`` the estimator
    is only described (validation, labels): its learned baseline, if any, cannot run."""
    if network is None:
        network = (_unbuilt_network, {}, optax.sgd(0.0))
    return estimators.registry.get(
        spec(config.estimator), moving_average_decay=config.ma_decay, nvil=network
    )


def num_samples(config: ml_collections.ConfigDict, est: estimators.GradientEstimator) -> int:
    """``K``: ``config.num_samples`` for an estimator that uses its samples jointly, or for any
    estimator when ``config.average_samples`` (K independent estimates averaged), else 1."""
    if est.multi_sample or config.get("average_samples", False):
        return int(config.num_samples)
    return 1


def learning_rate(
    config: ml_collections.ConfigDict, steps_per_epoch: int | None
) -> float | optax.Schedule:
    """``config.learning_rate``, or for ``config.lr_schedule == "burda"`` the step schedule of
    Burda et al. (2016): stage ``i = 0, 1, ...`` lasts ``3^i`` epochs of ``steps_per_epoch``
    steps at ``learning_rate * 10^(-i/7)``; the last of ``experiments.vae.config.BURDA_STAGES``
    stages' rate holds past its end."""
    schedule = config.get("lr_schedule", "constant")
    if schedule == "constant":
        return float(config.learning_rate)
    if schedule != "burda":
        raise ValueError(f"config.lr_schedule must be 'constant' or 'burda'; got {schedule!r}")
    if steps_per_epoch is None or steps_per_epoch < 1:
        raise ValueError(f"the 'burda' schedule needs steps_per_epoch >= 1; got {steps_per_epoch}")
    ends = np.cumsum([3**i for i in range(BURDA_STAGES - 1)]) * steps_per_epoch
    return optax.piecewise_constant_schedule(
        float(config.learning_rate), {int(b): 10.0 ** (-1 / 7) for b in ends}
    )


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int | None = None
) -> optax.GradientTransformation:
    """Adam at :func:`learning_rate` (``config.lr_schedule``) with ``eps = config.adam_eps``."""
    return optax.adam(
        learning_rate(config, steps_per_epoch), eps=float(config.get("adam_eps", 1e-8))
    )


def init_state(
    config, data_dim: int, key: Array, steps_per_epoch: int | None = None
) -> tuple[dict[str, Any], PyTree]:
    """The ``Setup`` pieces ``{"est", "graphdef", "optimizer"}`` and the initial training state
    ``{"params", "opt", "estimator", "step"}`` (``"estimator"``: ``est.init()``);
    ``steps_per_epoch`` times a learning-rate schedule (:func:`learning_rate`)."""
    k_model, k_base = jax.random.split(key)

    def build_module(k):
        return models.VAE(
            data_dim,
            tuple(config.hidden),
            config.latent_dim,
            config.activation,
            rngs=nnx.Rngs(params=k),
        )

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_module(k_model)))
    params = jax.jit(lambda k: nnx.split(build_module(k))[1])(k_model)  # one compilation
    optimizer = make_optimizer(config, steps_per_epoch)
    est = make_estimator(config, _baseline_network(config, data_dim, k_base))
    state = {
        "params": params,
        "opt": optimizer.init(params),
        "estimator": est.init(),
        "step": jnp.zeros((), jnp.int32),
    }
    return {"est": est, "graphdef": graphdef, "optimizer": optimizer}, state


def _baseline_network(config, data_dim: int, key: Array) -> tuple[Any, PyTree, Any]:
    """NVIL's ``b_psi(x)``: an MLP ``data_dim -> baseline_hidden -> 1`` (tanh) as ``(apply,
    params, optimizer)`` for the registry's ``nvil`` option. Its parameters enter the state
    only if the estimator uses a learned baseline (through ``est.init()``)."""

    def build(k):
        sizes = (data_dim, *tuple(config.baseline_hidden), 1)
        return models.MLP(sizes, "tanh", rngs=nnx.Rngs(params=k))

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(key)))
    params = jax.jit(lambda k: nnx.split(build(k))[1])(key)

    def apply(net_params: PyTree, x: Array) -> Array:  # ONE input x: [D] -> []
        return nnx.merge(graphdef, net_params)(x)[0]

    return apply, params, optax.adam(config.baseline_learning_rate)


def example_loss(
    setup: Setup, model: models.VAE, x: Array, key: Array, est_state: PyTree
) -> tuple[Array, Array]:
    """Surrogate loss for one example ``x: [D]`` and its stopped cost: ``([], [])``.

    The loss's value is the negative ELBO estimate (negative IWAE bound for an estimator of
    objective ``"log_mean_exp"``); its gradient is the estimator's. The cost is the surrogate's
    stopped value without the KL: the Monte Carlo estimate of ``E_q[f]`` that ``est.update``
    receives.
    """
    enc = model.encoder_params(x)
    est, k = setup.est, setup.num_samples
    if est.objective == "log_mean_exp":

        def neg_log_weight(z: Array) -> Array:
            return -models.log_weight(model, x, enc, z)

        s = est.surrogate(
            neg_log_weight,
            enc,
            model.latent.posterior,
            key,
            num_samples=k,
            state=est_state,
            context=x,
        )
        return s, jax.lax.stop_gradient(s)

    def cost(z: Array) -> Array:
        return -models.bernoulli_log_likelihood(model.decode(z), x)

    s = est.surrogate(
        cost, enc, model.latent.posterior, key, num_samples=k, state=est_state, context=x
    )
    return s + model.latent.kl(enc), jax.lax.stop_gradient(s)


def batch_loss(
    setup: Setup, params: PyTree, state: PyTree, xs: Array, key: Array
) -> tuple[Array, Array]:
    """Mean surrogate loss over a batch ``xs: [B, D]`` and the per-example stopped costs
    ``[B]``; the estimator reads ``state["estimator"]`` (never updates it)."""
    model = nnx.merge(setup.graphdef, params)
    keys = jax.random.split(key, xs.shape[0])
    losses, costs = jax.vmap(lambda x, k: example_loss(setup, model, x, k, state["estimator"]))(
        xs, keys
    )
    return jnp.mean(losses), costs


def train_step_with_aux(
    setup: Setup, state: PyTree, xs: Array, key: Array
) -> tuple[PyTree, Array, dict[str, Array]]:
    """:func:`train_step`, also returning ``{"costs": [B]}``, the batch's stopped costs.

    The estimate reads the OLD estimator state; only then does ``est.update`` fold in the
    batch's costs (with the batch as context), so no baseline depends on the costs it is
    paired with.
    """
    (loss, costs), grads = jax.value_and_grad(
        lambda p: batch_loss(setup, p, state, xs, key), has_aux=True
    )(state["params"])
    updates, opt = setup.optimizer.update(grads, state["opt"], state["params"])
    new = dict(state)
    new["params"] = optax.apply_updates(state["params"], updates)
    new["opt"] = opt
    new["estimator"] = setup.est.update(state["estimator"], costs, context=xs)
    new["step"] = state["step"] + 1
    return new, loss, {"costs": costs}


def train_step(setup: Setup, state: PyTree, xs: Array, key: Array) -> tuple[PyTree, Array]:
    """One Adam step on a batch ``xs: [B, D]`` (already binary); returns (state, loss ``[]``)."""
    new, loss, _ = train_step_with_aux(setup, state, xs, key)
    return new, loss


def epoch_keys(seed: int, epoch: int) -> Array:
    """The key of epoch ``epoch`` (0-based): a function of ``(seed, epoch)`` only."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), epoch)


def make_train_epoch(
    setup: Setup, mesh: Mesh | None = None
) -> Callable[[PyTree, Array, Array], tuple[PyTree, Array]]:
    """Jitted ``(state, train [N, D], epoch_key) -> (state, losses [num_batches])``.

    Shuffles, binarises each batch (dynamic binarisation, its own key per step) and takes
    ``num_batches`` steps in one ``lax.scan``; the data stay on the device.

    With a ``mesh`` (one axis, :data:`experiments._mesh.AXIS`) the epoch is data-parallel: the
    state, the training images and the key are replicated on every device (in and out, see
    :func:`epoch_shardings`), each step's batch ``[B, D]`` and its indices are split over the
    devices along the batch (``B`` must be a multiple of the device count), so each device
    draws and evaluates its ``B / n`` examples and XLA sums the gradient across the devices (an
    all-reduce of the ``P`` parameters' gradient per step). Every random draw is the same on
    any number of devices (partitionable threefry: a draw's values do not depend on how its
    array is split); only the order of the batch sums changes (float32 rounding).
    """
    if mesh is None:
        return jax.jit(_epoch_program(setup))
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        _epoch_program(setup, mesh),
        in_shardings=epoch_shardings(mesh),
        out_shardings=(replicated, replicated),  # the state and the losses
    )


def make_seeds_epoch(
    setup: Setup, mesh: Mesh | None = None
) -> Callable[[PyTree, Array, Array], tuple[PyTree, Array]]:
    """Jitted ``(states, train [N, D], epoch_keys [S]) -> (states, losses [S, num_batches])``:
    :func:`make_train_epoch`'s epoch for ``S`` seeds in ONE program (``jax.vmap`` over the
    seeds' states, leaves ``[S, ...]``, and their epoch keys; the data shared). Seed ``s``
    computes what a one-seed run of ``epoch_keys[s]`` computes, up to float32 rounding (the
    batched matmuls may sum in another order).

    With a ``mesh`` of :func:`seeds_mesh` (axes :data:`SEED_AXIS`, :data:`experiments._mesh.AXIS`)
    the seeds are split over the first axis (states, keys and losses sharded along ``S``; no
    communication between seed groups) and each seed's batch over the second, data-parallel as
    in :func:`make_train_epoch`.
    """
    if mesh is None:
        return jax.jit(jax.vmap(_epoch_program(setup), in_axes=(0, None, 0)))
    program = jax.vmap(_epoch_program(setup, mesh), in_axes=(0, None, 0), spmd_axis_name=SEED_AXIS)
    seeds, data, _ = epoch_shardings(mesh)
    return jax.jit(program, in_shardings=(seeds, data, seeds), out_shardings=(seeds, seeds))


def epoch_shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding, NamedSharding]:
    """Where an epoch program of ``mesh`` takes and returns its arguments: ``(state, train
    images, epoch key(s))``. On a one-axis mesh (:func:`make_train_epoch`) all three are
    replicated; on a :func:`seeds_mesh` the states and keys are split along their leading seed
    axis over :data:`SEED_AXIS` and the images replicated.

    Single-process, ``jax.device_put(x, sharding)`` places an array; with several processes
    the images are the same on every process and may be put the same way, while a state that
    differs per process would need ``jax.make_array_from_process_local_data``.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    if SEED_AXIS in mesh.axis_names:
        seeds = NamedSharding(mesh, PartitionSpec(SEED_AXIS))
        return seeds, replicated, seeds
    return replicated, replicated, replicated


def seeds_mesh(mesh: Mesh, num_seeds: int) -> Mesh:
    """The two-axis mesh ``(SEED_AXIS, AXIS)`` of ``S = num_seeds`` seeds on ``mesh``'s ``n``
    devices: ``g = gcd(S, n)`` seed groups of ``n / g`` devices each. ``S`` a multiple of ``n``:
    ``g = n``, seeds only (``S / n`` per device, no communication); ``S`` a divisor of ``n``:
    every seed data-parallel on its own ``n / S`` devices; otherwise ``S / g`` seeds per group,
    each group data-parallel (``g = 1``: every seed's batch over all ``n`` devices)."""
    devices = mesh.devices.reshape(-1)
    groups = math.gcd(int(num_seeds), devices.size)
    return Mesh(devices.reshape(groups, devices.size // groups), (SEED_AXIS, _mesh.AXIS))


def batch_devices(mesh: Mesh) -> int:
    """How many devices each step's batch is split over: the size of ``mesh``'s
    :data:`experiments._mesh.AXIS` axis (the batch size must be a multiple of it)."""
    return int(mesh.shape[_mesh.AXIS])


def _epoch_program(
    setup: Setup, mesh: Mesh | None = None
) -> Callable[[PyTree, Array, Array], tuple[PyTree, Array]]:
    """The un-jitted epoch of ONE seed (see :func:`make_train_epoch`); with ``mesh``, each
    step's batch indices and images are constrained to be split along the batch over
    :data:`experiments._mesh.AXIS`."""
    if mesh is None:
        split = None
    else:
        split = NamedSharding(mesh, PartitionSpec(_mesh.AXIS))

    def epoch(state, train, key):
        k_perm, k_steps = jax.random.split(key)
        perm = jax.random.permutation(k_perm, train.shape[0])
        idx = perm[: setup.num_batches * setup.batch_size].reshape(
            setup.num_batches, setup.batch_size
        )
        step_keys = jax.random.split(k_steps, setup.num_batches)

        def body(state, inp):
            i, k = inp
            k_bin, k_est = jax.random.split(k)
            if split is not None:
                i = jax.lax.with_sharding_constraint(i, split)
            xs = train[i]
            if split is not None:
                xs = jax.lax.with_sharding_constraint(xs, split)
            if setup.dynamic:
                xs = jax.random.bernoulli(k_bin, xs).astype(xs.dtype)
            return train_step(setup, state, xs, k_est)

        return jax.lax.scan(body, state, (idx, step_keys))

    return epoch


def make_grad_variance(setup: Setup, num_estimates: int) -> Callable[..., dict[str, Array]]:
    r"""Jitted ``(state, xs [B, D], key) -> dict``: the variance of ONE encoder-gradient estimate.

    Draws ``M = num_estimates`` independent estimates :math:`g_m \in \mathbb{R}^P` of the
    gradient, with respect to the ENCODER's ``P`` weights, of the batch loss at fixed ``state``
    (parameters and baseline state) on a fixed binary batch ``xs``. Estimate ``m`` uses
    ``jax.random.split(key, M)[m]`` (split again over the batch's examples, as in training).
    With :math:`\bar g` their mean and :math:`d_m = \|g_m - \bar g\|^2`, returns

      ``trace``  :math:`T = \sum_m d_m / (M - 1)`, the unbiased estimate of
                 :math:`\operatorname{tr}\operatorname{Cov}[g] = E\|g - E g\|^2` ``[]``;
      ``sq_dev`` the :math:`d_m` ``[M]`` (for jackknife standard errors of ``T`` and of ratios,
                 see :func:`variance_summary`);
      ``mean_grad_norm`` :math:`\|\bar g\|` ``[]``.

    Memory ``O(M P)``: the estimates are drawn one at a time (``lax.map``) and kept.
    """

    def one(state, xs, key):
        grads = jax.grad(lambda p: batch_loss(setup, p, state, xs, key)[0])(state["params"])
        return jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads["encoder"])])

    def variance(state, xs, key):
        keys = jax.random.split(key, num_estimates)
        g = jax.lax.map(lambda k: one(state, xs, k), keys)  # [M, P], one estimate at a time
        mean = jnp.mean(g, axis=0)
        sq_dev = jnp.sum(jnp.square(g - mean[None, :]), axis=1)
        return {
            "trace": jnp.sum(sq_dev) / (num_estimates - 1),
            "sq_dev": sq_dev,
            "mean_grad_norm": jnp.linalg.norm(mean),
        }

    return jax.jit(variance)


def jackknife_trace(sq_dev: Any) -> tuple[np.ndarray, float]:
    r"""Leave-one-out traces ``[M]`` and the full-sample trace from ``sq_dev`` ``[M]`` (float64).

    Dropping estimate ``i`` lowers the sum of squares about the mean by :math:`\frac{M}{M-1}
    d_i`, so :math:`T_{-i} = (\sum_m d_m - \frac{M}{M-1} d_i) / (M - 2)` (needs ``M >= 3``).
    """
    d = np.asarray(sq_dev, np.float64)
    m = d.size
    if m < 3:
        raise ValueError(f"the jackknife needs at least 3 estimates; got {m}")
    return (d.sum() - m / (m - 1) * d) / (m - 2), float(d.sum() / (m - 1))


def _jackknife_se(leave_one_out: np.ndarray) -> float:
    m = leave_one_out.size
    return float(np.sqrt((m - 1) / m * np.sum(np.square(leave_one_out - leave_one_out.mean()))))


def variance_summary(sq_dev: Any, samples_per_example: int) -> dict[str, float | int]:
    """The variance of one estimate and per sample (``x K``), each with its jackknife SE.

    ``samples_per_example`` is ``K``, the cost evaluations per example behind one estimate: the
    per-sample variance ``K T`` charges a ``K``-sample estimator for its ``K`` evaluations (it
    is the variance of one estimate at the cost of a single-sample one).
    """
    loo, trace = jackknife_trace(sq_dev)
    se = _jackknife_se(loo)
    k = int(samples_per_example)
    return {
        "variance": trace,
        "variance_se": se,
        "per_sample_variance": k * trace,
        "per_sample_variance_se": k * se,
        "samples_per_example": k,
        "num_estimates": int(loo.size),
    }


def variance_ratio(
    sq_dev: Any, k: int, reference_sq_dev: Any, reference_k: int
) -> tuple[float, float]:
    """Per-sample variance over the reference's, with a paired jackknife SE.

    Estimate ``m`` of both used the same key and batch, so the two sets are paired: leaving out
    estimate ``m`` leaves it out of both.
    """
    loo, t = jackknife_trace(sq_dev)
    loo_ref, t_ref = jackknife_trace(reference_sq_dev)
    if loo.size != loo_ref.size:
        raise ValueError(f"paired estimates differ in number: {loo.size} vs {loo_ref.size}")
    scale = k / reference_k
    return float(scale * t / t_ref), _jackknife_se(scale * loo / loo_ref)


def make_warm_baselines(setup: Setup, num_steps: int, batch_size: int):
    """Jitted ``(state, train [N, D], key) -> state``: the baseline state warmed at fixed params.

    ``num_steps`` steps, each on a batch of ``batch_size`` random training images (binarised
    with its own key when ``setup.dynamic``): the estimate's costs are formed with the current
    baseline state, then ``est.update`` updates it, exactly as in training, but the
    VAE's parameters stay fixed. For a stateless estimator the state comes back unchanged.
    """

    def warm(state, train, key):
        if not setup.stateful:
            return state

        def body(st, k):
            k_idx, k_bin, k_est = jax.random.split(k, 3)
            xs = train[jax.random.randint(k_idx, (batch_size,), 0, train.shape[0])]
            if setup.dynamic:
                xs = jax.random.bernoulli(k_bin, xs).astype(xs.dtype)
            _, costs = batch_loss(setup, st["params"], st, xs, k_est)
            new = dict(st)
            new["estimator"] = setup.est.update(st["estimator"], costs, context=xs)
            return new, None

        state, _ = jax.lax.scan(body, state, jax.random.split(key, num_steps))
        return state

    return jax.jit(warm)


def make_log_likelihood(graphdef, *, ll_num_samples: int, ll_chunk_size: int, batch: int = 8):
    """Jitted ``(params, test [N, D] binary, key) -> [N]`` importance-sampled log p(x).

    ``batch`` examples at a time under ``lax.map``, each with ``ll_num_samples`` samples drawn
    ``ll_chunk_size`` at a time: memory ``O(batch * ll_chunk_size * D)``.
    """

    def log_likelihood(params, xs, key):
        model = nnx.merge(graphdef, params)
        return jax.lax.map(
            lambda a: models.log_likelihood(
                model, a[0], a[1], num_samples=ll_num_samples, chunk_size=ll_chunk_size
            ),
            (xs, jax.random.split(key, xs.shape[0])),
            batch_size=min(xs.shape[0], batch),
        )

    return jax.jit(log_likelihood)


def make_figure_data(graphdef, *, latent_dim: int, num_originals: int = 16):
    """Jitted ``(params, test [N, D], key) -> dict`` of decoder means for the figures.

    ``samples [64, D]`` from the prior, ``reconstructions [num_originals, D]`` of the first test
    images, and for ``latent_dim == 2`` the ``manifold [225, D]`` over a 15 x 15 grid of the latent
    family's ``manifold_grid`` (Gaussian: normal quantiles, 5 % to 95 %; none if it has none).
    """

    def figure_data(params, test, key):
        model = nnx.merge(graphdef, params)
        k_prior, k_rec = jax.random.split(key)
        z = model.latent.prior(latent_dim).sample(k_prior, (64,))
        originals = test[:num_originals]
        q = model.encode(originals)
        out = {
            "samples": jax.nn.sigmoid(model.decode(z)),
            "originals": originals,
            "reconstructions": jax.nn.sigmoid(model.decode(q.sample(k_rec))),
        }
        grid = model.latent.manifold_grid(15)
        if latent_dim == 2 and grid is not None:
            zz = jnp.stack(jnp.meshgrid(grid, grid[::-1]), -1).reshape(-1, 2)
            out["manifold"] = jax.nn.sigmoid(model.decode(zz))
        return out

    return jax.jit(figure_data)


def make_test_elbo(graphdef):
    """Jitted ``(params, test [N, D] binary, key) -> [N]`` single-sample ELBOs."""

    def test_elbo(params, xs, key):
        model = nnx.merge(graphdef, params)
        return jax.lax.map(
            lambda a: models.elbo(model, a[0], a[1]),
            (xs, jax.random.split(key, xs.shape[0])),
            batch_size=min(xs.shape[0], 500),
        )

    return jax.jit(test_elbo)
