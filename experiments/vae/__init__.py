"""VAE runner: train a Flax NNX VAE whose encoder gradient comes from one estimator, evaluate it.

Writes into the workdir: ``metrics.jsonl`` (one line per epoch: training loss, test ELBO, at
intervals the per-sample variance of the encoder's gradient estimate at this run's OWN parameters
with its jackknife SE, time), ``results.json`` (test ELBO, importance-sampled test
log-likelihood, wall time, examples/s), ``figures_data.npz``
(samples, reconstructions, the latent manifold), the figures (PNG + PDF), and orbax checkpoints
in ``checkpoints/`` (by name: :mod:`experiments.vae.checkpoint`). ``RESUMABLE``: ``--resume``
continues from the last checkpoint and ends with the same parameters, bit for bit, as an
uninterrupted run (every random draw of epoch ``e`` comes from a key that depends only on
``(seed, e)``).

The pieces, each a screen long: :func:`run` loads the data (:func:`load_data`), builds the
model (:func:`init_run`), restores (:func:`_start`), compiles (:func:`_prepare`), trains
(:func:`_train`; one epoch's metrics in :func:`_epoch_row`) and evaluates (:func:`_evaluate`,
:func:`_finish`). :mod:`experiments.vae.compare` uses the public ones.

Training is data-parallel on the device mesh of ``config.mesh`` (:func:`make_mesh`): the state
and the images replicated, each step's batch split over the devices, the gradient summed
across them by XLA (:func:`train.make_train_epoch`); the batch size must be a multiple of the
device count. The results equal one device's up to float32 rounding (the batch sums' order; on
one device the program is the unsharded one, bit for bit). The evaluations (test ELBO,
log-likelihood, gradient variance) run replicated on the parameters' devices.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import estimators
import models

from .. import _mesh
from .._diagnostics import NAN_CAUSES
from .._workdir import WorkdirError, atomic_write_bytes, atomic_write_text, read_json, write_json
from . import checkpoint, data, plots, train
from .train import TrainingDiverged

RESUMABLE = True
RESUME_MAY_RAISE = ("num_epochs",)  # --resume may train a finished run for longer
_binarize = jax.jit(data.binarize)
_TEST_BINARIZATION_SEED = 0  # every run, whatever its seed, is evaluated on the same test bits
PyTree = Any


def _positive_int(config, key: str, minimum: int = 1) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"config.{key} must be an int >= {minimum}; got {value!r}")


def _check_estimator(config: ml_collections.ConfigDict) -> estimators.GradientEstimator:
    """The (described) estimator of ``config.estimator``, which must apply to the model's
    posterior; a clear ``ValueError`` otherwise."""
    if not 0 <= config.ma_decay < 1:
        raise ValueError(f"config.ma_decay must be in [0, 1); got {config.ma_decay}")
    try:
        est = train.make_estimator(config)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.estimator: {e}") from None
    if not est.multi_sample and est.min_samples > 1:
        raise ValueError(
            f"config.estimator: {est.name!r} needs {est.min_samples} samples but does not use "
            "them jointly (multi_sample=False); the VAE draws one sample per example for it"
        )
    q = models.GaussianLatent().posterior({"loc": jnp.zeros(1), "log_scale": jnp.zeros(1)})
    try:
        est.check(q, est.min_samples)
    except ValueError as e:
        raise ValueError(f"config.estimator: the VAE's posterior is Gaussian: {e}") from None
    return est


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad value; nothing is written before this passes."""
    est = _check_estimator(config)
    if config.dataset not in data.DATASETS:
        raise ValueError(
            f"config.dataset: unknown dataset {config.dataset!r}; choose one of {data.DATASETS}"
        )
    if config.binarization not in ("dynamic", "static"):
        raise ValueError(
            f"config.binarization must be 'dynamic' or 'static'; got {config.binarization!r}"
        )
    from models._vae import ACTIVATIONS

    if config.activation not in ACTIVATIONS:
        raise ValueError(
            f"config.activation: unknown {config.activation!r}; choose one of {sorted(ACTIVATIONS)}"
        )
    if not config.hidden or min(config.hidden) < 1:
        raise ValueError(f"config.hidden must be positive layer sizes; got {config.hidden}")
    for key in (
        "latent_dim",
        "batch_size",
        "num_epochs",
        "checkpoint_every_steps",
        "eval_every_epochs",
        "grad_var_every_epochs",
        "grad_var_batch_size",
        "ll_num_samples",
        "ll_chunk_size",
    ):
        _positive_int(config, key)
    _positive_int(config, "grad_var_num_estimates", 3)  # the jackknife SE needs 3
    if "num_seeds" in config:  # configs written before the key train one seed
        _positive_int(config, "num_seeds")
    for key in ("train_examples", "test_examples", "ll_test_examples"):
        _positive_int(config, key, 0)
    _positive_int(config, "num_samples", est.min_samples if est.multi_sample else 1)
    if config.ll_num_samples % config.ll_chunk_size:
        raise ValueError(
            f"config.ll_num_samples={config.ll_num_samples} must be a multiple of "
            f"config.ll_chunk_size={config.ll_chunk_size}"
        )
    for key in ("learning_rate", "baseline_learning_rate", "adam_eps"):
        if key in config and not config[key] > 0:
            raise ValueError(f"config.{key} must be > 0; got {config[key]}")
    if config.get("lr_schedule", "constant") not in ("constant", "burda"):
        raise ValueError(
            f"config.lr_schedule must be 'constant' or 'burda'; got {config.lr_schedule!r}"
        )
    make_mesh(config)


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The mesh the run trains on: ``_mesh.make_mesh(config)`` (``config.mesh.devices``), for
    one seed data-parallel along the batch (:func:`train.make_train_epoch`), for ``num_seeds >
    1`` turned into :func:`train.seeds_mesh` (seed groups, each data-parallel). Raises
    :class:`experiments._mesh.MeshError` naming ``config.batch_size`` when the batch does not
    split evenly over the devices it is spread over."""
    mesh = _mesh.make_mesh(config)
    num_seeds = int(config.get("num_seeds", 1))
    if num_seeds == 1:
        _mesh.check_divisible(config.batch_size, mesh, "config.batch_size")
        return mesh
    mesh = train.seeds_mesh(mesh, num_seeds)
    per_seed = train.batch_devices(mesh)
    if config.batch_size % per_seed:
        raise _mesh.MeshError(
            f"config.batch_size = {config.batch_size} does not split over the {per_seed} devices "
            f"each seed's batch is spread over ({num_seeds} seeds on {mesh.devices.size} devices "
            f"in {mesh.shape[train.SEED_AXIS]} seed groups); choose a multiple of {per_seed}, a "
            "num_seeds that is a multiple of the device count, or set mesh.devices"
        )
    return mesh


# ----------------------------------------------------------------------------------------------
# Data and the model


def load_data(config: ml_collections.ConfigDict) -> tuple[data.Dataset, np.ndarray, np.ndarray]:
    """The data set, the training images ``[N, D]`` (binary if static, else grey levels in
    [0, 1]) and the binary test images ``[M, D]``, cut to ``train_examples``/``test_examples``."""
    ds = data.load_dataset(
        config.dataset,
        config.data_dir or None,
        download=config.download,
        verify=config.verify_checksums,
    )
    train_np, test = ds.train, ds.test
    if config.train_examples:
        train_np = train_np[: config.train_examples]
    if config.test_examples:
        test = test[: config.test_examples]
    if config.batch_size > len(train_np):
        raise ValueError(
            f"config.batch_size={config.batch_size} > {len(train_np)} training examples"
        )
    key = jax.random.key(_TEST_BINARIZATION_SEED)
    test = np.asarray(_binarize(jax.random.fold_in(key, 1), jnp.asarray(test)))
    if config.binarization == "static":
        train_np = np.asarray(_binarize(jax.random.fold_in(key, 2), jnp.asarray(train_np)))
    return ds, train_np, test


def check_inputs(config: ml_collections.ConfigDict) -> None:
    """Find, download if allowed, and verify the data before anything is written to a workdir.

    A corrupt file or a failed download raises ``DataError`` here, so the run leaves no trace;
    the verified files are cached in memory, so :func:`run` does not read them twice.
    """
    validate(config)
    load_data(config)


def grad_variance_batch(config: ml_collections.ConfigDict, train_np: np.ndarray) -> jax.Array:
    """The binary batch ``[grad_var_batch_size, D]`` every gradient variance of this seed is
    measured on: the first training images, binarised with the seed's key (tag 3). The run's
    own-parameters curve and :mod:`experiments.vae.compare`'s protocol share it."""
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    return _binarize(key, jnp.asarray(train_np[: config.grad_var_batch_size]))


def init_run(
    config: ml_collections.ConfigDict, data_dim: int, num_batches: int
) -> tuple[train.Setup, PyTree]:
    """The ``Setup`` and the initial training state of ``config`` (the seed's key, tag 0):
    the state every run of this config starts from, and the one a resume is matched against."""
    pieces, state = train.init_state(
        config, data_dim, jax.random.fold_in(jax.random.key(config.seed), 0), num_batches
    )
    setup = train.Setup(
        estimator=config.estimator,
        num_samples=train.num_samples(config, pieces["est"]),
        batch_size=config.batch_size,
        num_batches=num_batches,
        dynamic=config.binarization == "dynamic",
        latent_dim=config.latent_dim,
        **pieces,
    )
    return setup, state


# ----------------------------------------------------------------------------------------------
# Metrics


def read_metrics(workdir: Path) -> list[dict[str, Any]]:
    """The rows of ``<workdir>/metrics.jsonl``, one per finished epoch (``[]`` if none)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(workdir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


# ----------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass(frozen=True)
class _Loop:
    """What the training loop and the evaluation need besides the state; built once a run."""

    config: ml_collections.ConfigDict
    workdir: Path
    setup: train.Setup
    manager: Any  # the orbax CheckpointManager of workdir
    base: jax.Array  # the seed's key; fold_in tags 4-8 are the loop's and the evaluation's
    train_x: jax.Array  # [N, D] training images on the device
    test: jax.Array  # [M, D] binary test images
    var_batch: jax.Array  # [grad_var_batch_size, D], see grad_variance_batch
    train_epoch: Callable[..., tuple[PyTree, jax.Array]]  # compiled
    grad_variance: Callable[..., dict[str, jax.Array]]
    test_elbo: Callable[..., jax.Array]
    key_sharding: Any = None  # where train_epoch takes its epoch key (train.epoch_shardings)


def run(config: ml_collections.ConfigDict, workdir: Path, resume: bool = False) -> dict:
    """Train, checkpoint, evaluate and plot; returns the contents of ``results.json``.
    With ``config.num_seeds > 1`` the seeds train as one program (:mod:`.seeds`)."""
    validate(config)
    workdir = Path(workdir)
    if config.get("num_seeds", 1) > 1:
        from . import seeds

        return seeds.run(config, workdir, resume)
    mesh = make_mesh(config)
    _, train_np, test_np = load_data(config)
    setup, state = init_run(config, train_np.shape[1], len(train_np) // config.batch_size)
    manager = checkpoint.manager(workdir)
    state, start_epoch, rows = _start(config, workdir, manager, state, resume)
    state = _mesh.put(state, train.epoch_shardings(mesh)[0])  # replicated
    loop, compile_time = _prepare(config, workdir, setup, manager, state, train_np, test_np, mesh)
    state, stopped_by_budget = _train(loop, state, start_epoch, rows)
    results = _finish(loop, state, rows, compile_time, _evaluate(loop, state["params"]))
    results["stopped_by_time_budget"] = stopped_by_budget
    write_json(workdir / "results.json", results)
    return results


def _start(
    config: ml_collections.ConfigDict, workdir: Path, manager, state: PyTree, resume: bool
) -> tuple[PyTree, int, list[dict[str, Any]]]:
    """The state, the first epoch to train (0-based) and the metrics rows to continue from:
    the newest checkpoint's when resuming one, else the initial state's."""
    if not resume:
        if manager.latest_step() is not None:
            raise WorkdirError(
                f"{workdir / 'checkpoints'} holds checkpoints of another run; pass resume=True "
                "(--resume) to continue it, or use an empty workdir"
            )
        return state, 0, []
    restored = checkpoint.restore(manager, state)
    if restored is None:
        return state, 0, []
    if restored.missing:
        print(
            f"the checkpoint predates these state entries, which start from their initial "
            f"value: {', '.join(restored.missing)}",
            file=sys.stderr,
        )
    last_epoch = restored.epoch
    rows = [r for r in read_metrics(workdir) if r["epoch"] <= last_epoch + 1]
    step = int(restored.state["step"])
    print(f"resuming after epoch {last_epoch + 1} (step {step})", file=sys.stderr)
    return restored.state, last_epoch + 1, rows


def _prepare(
    config, workdir, setup, manager, state, train_np, test_np, mesh
) -> tuple[_Loop, float]:
    """The loop's arrays and compiled functions, and the training epoch's compile time (s):
    the epoch data-parallel on ``mesh`` (``state`` already placed on it, replicated)."""
    _, data_sharding, key_sharding = train.epoch_shardings(mesh)
    train_x = _mesh.put(jnp.asarray(train_np), data_sharding)
    key = _mesh.put(train.epoch_keys(0, 0), key_sharding)
    t0 = time.perf_counter()
    train_epoch = train.make_train_epoch(setup, mesh).lower(state, train_x, key).compile()
    compile_time = time.perf_counter() - t0
    loop = _Loop(
        config=config,
        workdir=workdir,
        setup=setup,
        manager=manager,
        base=jax.random.key(config.seed),
        train_x=train_x,
        test=jnp.asarray(test_np),
        var_batch=grad_variance_batch(config, train_np),
        train_epoch=train_epoch,
        grad_variance=train.make_grad_variance(setup, config.grad_var_num_estimates),
        test_elbo=train.make_test_elbo(setup.graphdef),
        key_sharding=key_sharding,
    )
    return loop, compile_time


def _train(
    loop: _Loop, state: PyTree, start_epoch: int, rows: list[dict[str, Any]]
) -> tuple[PyTree, bool]:
    """Epochs ``start_epoch .. num_epochs - 1``: appends each epoch's row to ``rows`` (and
    ``metrics.jsonl``), checkpoints every ``checkpoint_every_steps`` and on the way out
    (normal end, time budget, interrupt or divergence: the last good state). Returns the final
    state and whether the time budget stopped training early."""
    from tqdm import tqdm

    config = loop.config
    bar = tqdm(
        range(start_epoch, config.num_epochs),
        initial=start_epoch,
        total=config.num_epochs,
        desc=f"vae {config.estimator}",
        disable=not config.progress,
        file=sys.stderr,
        mininterval=1.0,
    )
    every = config.checkpoint_every_steps
    saved_step = int(state["step"])
    good_state, good_epoch = state, start_epoch - 1
    loop_start, last_elbo = time.perf_counter(), ""
    try:
        for epoch in bar:
            t = time.perf_counter()
            keys = _mesh.put(train.epoch_keys(config.seed, epoch), loop.key_sharding)
            new_state, losses = loop.train_epoch(state, loop.train_x, keys)
            losses = np.asarray(losses)
            seconds = time.perf_counter() - t
            _check_finite(loop, losses, int(state["step"]), epoch, good_epoch)
            state = good_state = new_state
            good_epoch = epoch
            row = _epoch_row(loop, state, epoch, losses, seconds)
            row["loop_time_s"] = time.perf_counter() - t
            rows.append(row)
            _write_metrics(loop.workdir, rows)
            last_elbo = f"{row['test_elbo']:.2f}" if "test_elbo" in row else last_elbo
            bar.set_postfix(loss=f"{row['train_loss']:.2f}", test_elbo=last_elbo, refresh=False)
            if int(state["step"]) // every > saved_step // every:
                checkpoint.save(loop.manager, state, epoch)
                saved_step = int(state["step"])
            if _out_of_time(config, loop_start, epoch):
                return state, True
    finally:
        bar.close()
        if good_epoch >= 0:
            checkpoint.save(loop.manager, good_state, good_epoch)
    return state, False


def _check_finite(loop: _Loop, losses: np.ndarray, step: int, epoch: int, good_epoch: int):
    """Raise ``TrainingDiverged`` naming the first non-finite loss of epoch ``epoch``."""
    if np.all(np.isfinite(losses)):
        return
    bad = int(np.argmin(np.isfinite(losses)))
    kept = (
        f"the last good checkpoint (end of epoch {epoch}) is kept in {loop.workdir / 'checkpoints'}"
        if good_epoch >= 0
        else "no epoch finished, so no checkpoint was written"
    )
    raise TrainingDiverged(
        f"estimator {loop.config.estimator}: training loss is {losses[bad]} at step "
        f"{step + bad + 1} (epoch {epoch + 1}); run stopped, {kept}. "
        f"A NaN or inf loss means {NAN_CAUSES}"
    )


def _epoch_row(
    loop: _Loop, state: PyTree, epoch: int, losses: np.ndarray, seconds: float
) -> dict[str, Any]:
    """The metrics row of epoch ``epoch`` (0-based) just trained: the loss and speed, the test
    ELBO every ``eval_every_epochs``, the own-parameters gradient variance after the first epoch,
    every ``grad_var_every_epochs`` and after the last."""
    config, base = loop.config, loop.base
    row = {
        "epoch": epoch + 1,
        "step": int(state["step"]),
        "train_loss": float(losses.mean()),
        "epoch_time_s": seconds,
        "examples_per_s": loop.setup.num_batches * config.batch_size / seconds,
    }
    last = epoch + 1 == config.num_epochs
    if (epoch + 1) % config.eval_every_epochs == 0 or last:
        elbos = loop.test_elbo(state["params"], loop.test, jax.random.fold_in(base, 4))
        row["test_elbo"] = float(jnp.mean(elbos))
    if epoch == 0 or (epoch + 1) % config.grad_var_every_epochs == 0 or last:
        # At this run's OWN parameters and baseline state: a curve along its training, not
        # comparable across estimators (vae.compare's protocol compares them).
        key = jax.random.fold_in(jax.random.fold_in(base, 5), epoch)
        sq_dev = loop.grad_variance(state, loop.var_batch, key)["sq_dev"]
        gv = train.variance_summary(sq_dev, loop.setup.evaluations_per_example)
        row["own_params_grad_var_per_sample"] = gv["per_sample_variance"]
        row["own_params_grad_var_per_sample_se"] = gv["per_sample_variance_se"]
        row["own_params_grad_var_num_estimates"] = gv["num_estimates"]
    return row


def _out_of_time(config: ml_collections.ConfigDict, loop_start: float, epoch: int) -> bool:
    """Whether ``train_time_budget_s`` (if set) has run out before the last epoch (says so)."""
    budget = config.train_time_budget_s
    if not budget or time.perf_counter() - loop_start < budget or epoch + 1 >= config.num_epochs:
        return False
    print(
        f"time budget of {budget} s reached after epoch {epoch + 1}; training stops",
        file=sys.stderr,
    )
    return True


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    elbo: np.ndarray  # [M] single-sample test ELBOs
    ll: np.ndarray  # [ll_test_examples] importance-sampled log p(x)
    seconds: float


def _evaluate(loop: _Loop, params: PyTree) -> _Evaluation:
    """The final test ELBOs and importance-sampled log-likelihoods (fold_in tags 6 and 7)."""
    config = loop.config
    t = time.perf_counter()
    ll_test = loop.test[: config.ll_test_examples] if config.ll_test_examples else loop.test
    log_likelihood = train.make_log_likelihood(
        loop.setup.graphdef,
        ll_num_samples=config.ll_num_samples,
        ll_chunk_size=config.ll_chunk_size,
    )
    elbo = np.asarray(loop.test_elbo(params, loop.test, jax.random.fold_in(loop.base, 6)))
    ll = np.asarray(log_likelihood(params, ll_test, jax.random.fold_in(loop.base, 7)))
    seconds = time.perf_counter() - t
    if not (np.all(np.isfinite(elbo)) and np.all(np.isfinite(ll))):
        raise TrainingDiverged(
            f"estimator {config.estimator}: non-finite test ELBO or log-likelihood: {NAN_CAUSES}"
        )
    return _Evaluation(elbo=elbo, ll=ll, seconds=seconds)


def _finish(
    loop: _Loop, state: PyTree, rows: list[dict[str, Any]], compile_time: float, ev: _Evaluation
) -> dict[str, Any]:
    """Write ``results.json`` and the figures' data, draw the figures; returns the results."""
    config, test = loop.config, loop.test
    elbo_mean, elbo_se = _mean_se(ev.elbo)
    ll_mean, ll_se = _mean_se(ev.ll)
    results = {
        "estimator": config.estimator,
        "dataset": config.dataset,
        "binarization": config.binarization,
        "architecture": f"{setup_arch(config, test.shape[1])}",
        "num_samples": loop.setup.num_samples,
        "epochs": len(rows),
        "steps": int(state["step"]),
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "test_elbo": elbo_mean,
        "test_elbo_se": elbo_se,
        "test_examples": int(test.shape[0]),
        "test_log_likelihood": ll_mean,
        "test_log_likelihood_se": ll_se,
        "ll_num_samples": config.ll_num_samples,
        "ll_test_examples": int(ev.ll.shape[0]),
        "train_wall_time_s": float(sum(r["epoch_time_s"] for r in rows)),
        "train_loop_time_s": float(sum(r.get("loop_time_s", r["epoch_time_s"]) for r in rows)),
        "examples_per_s": float(np.median([r["examples_per_s"] for r in rows])) if rows else None,
        "compile_time_s": compile_time,
        "eval_time_s": ev.seconds,
    }
    write_json(loop.workdir / "results.json", results)
    _save_figure_data(config, loop.workdir, loop.setup, state["params"], test, loop.base)
    if config.get("figures", True):  # runs made before the key existed drew figures
        plot(loop.workdir)
    print(
        f"{config.estimator}: test ELBO {elbo_mean:.2f} ± {elbo_se:.2f}, test log-likelihood "
        f"(k={config.ll_num_samples}, {ev.ll.shape[0]} examples) {ll_mean:.2f} ± {ll_se:.2f}",
        file=sys.stderr,
    )
    return results


def setup_arch(config, data_dim: int) -> str:
    """``784-400-20/20-400-784 relu``."""
    h = list(config.hidden)
    enc = "-".join(str(s) for s in [data_dim, *h, config.latent_dim])
    dec = "-".join(str(s) for s in [config.latent_dim, *h[::-1], data_dim])
    return f"{enc}/{dec} {config.activation}"


def _save_figure_data(config, workdir, setup, params, test, base) -> None:
    """Samples, reconstructions and (latent size 2) the manifold, for :func:`plot`."""
    fn = train.make_figure_data(setup.graphdef, latent_dim=config.latent_dim)
    arrays = {k: np.asarray(v) for k, v in fn(params, test, jax.random.fold_in(base, 8)).items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(workdir / "figures_data.npz", buf.getvalue())


def plot(workdir: Path) -> list[Path]:
    """Redraw the run's figures from ``metrics.jsonl``, ``results.json``, ``figures_data.npz``."""
    workdir = Path(workdir)
    config = read_json(workdir / "config.json")
    if config.get("num_seeds", 1) > 1:
        from . import seeds

        return seeds.plot(workdir)
    return plots.plot_run(workdir, config, read_metrics(workdir))
