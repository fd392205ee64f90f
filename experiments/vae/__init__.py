"""VAE runner: train a Flax NNX VAE whose encoder gradient comes from one estimator, evaluate it.

Writes into the workdir: ``metrics.jsonl`` (one line per epoch: training loss, test ELBO, at
intervals the per-sample variance of the encoder's gradient estimate at this run's OWN parameters
with its jackknife SE, time), ``results.json`` (test ELBO, importance-sampled test
log-likelihood, wall time, examples/s), ``figures_data.npz``
(samples, reconstructions, the latent manifold), the figures (PNG + PDF), and orbax checkpoints
in ``checkpoints/``. ``RESUMABLE``: ``--resume`` continues from the last checkpoint and ends
with the same parameters, bit for bit, as an uninterrupted run (every random draw of epoch
``e`` comes from a key that depends only on ``(seed, e)``).
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from .._diagnostics import NAN_CAUSES
from .._workdir import WorkdirError, atomic_write_bytes, atomic_write_text, read_json, write_json
from . import data, plots, train
from .config import ESTIMATORS
from .train import MULTI_SAMPLE, TrainingDiverged

RESUMABLE = True
RESUME_MAY_RAISE = ("num_epochs",)  # --resume may train a finished run for longer
_binarize = jax.jit(data.binarize)
_TEST_BINARIZATION_SEED = 0  # every run, whatever its seed, is evaluated on the same test bits


def _positive_int(config, key: str, minimum: int = 1) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"config.{key} must be an int >= {minimum}; got {value!r}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad value; nothing is written before this passes."""
    if config.estimator not in ESTIMATORS:
        raise ValueError(
            f"config.estimator: unknown estimator {config.estimator!r}; choose one of {ESTIMATORS}"
        )
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
    for key in ("train_examples", "test_examples", "ll_test_examples"):
        _positive_int(config, key, 0)
    _positive_int(config, "num_samples", 2 if config.estimator == "score_function_loo" else 1)
    if config.ll_num_samples % config.ll_chunk_size:
        raise ValueError(
            f"config.ll_num_samples={config.ll_num_samples} must be a multiple of "
            f"config.ll_chunk_size={config.ll_chunk_size}"
        )
    for key in ("learning_rate", "baseline_learning_rate"):
        if not config[key] > 0:
            raise ValueError(f"config.{key} must be > 0; got {config[key]}")
    if not 0 <= config.ma_decay < 1:
        raise ValueError(f"config.ma_decay must be in [0, 1); got {config.ma_decay}")


# ----------------------------------------------------------------------------------------------
# Data


def _load(config) -> tuple[data.Dataset, np.ndarray, np.ndarray]:
    """The data set, the training images (binary if static) and the binary test images."""
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
    _load(config)


# ----------------------------------------------------------------------------------------------
# Checkpoints (orbax): the training state's leaves, flattened, plus the last finished epoch.


def _manager(workdir: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (workdir / "checkpoints").resolve(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=2, create=True, enable_async_checkpointing=False
        ),
    )


def _to_tree(state, epoch: int) -> dict[str, Any]:
    leaves = jax.tree.leaves(state)
    return {
        "leaves": {f"{i:04d}": np.asarray(v) for i, v in enumerate(leaves)},
        "epoch": np.asarray(epoch, np.int64),
    }


def _save(manager, state, epoch: int) -> None:
    import orbax.checkpoint as ocp

    step = int(state["step"])
    if manager.latest_step() == step:
        return
    manager.save(step, args=ocp.args.StandardSave(_to_tree(state, epoch)))
    manager.wait_until_finished()


def _restore(manager, template) -> tuple[Any, int] | None:
    """The latest checkpoint as (state, last finished epoch), or ``None`` if there is none."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), _to_tree(template, 0)
    )
    tree = manager.restore(step, args=ocp.args.StandardRestore(target))
    treedef = jax.tree.structure(template)
    leaves = [jnp.asarray(tree["leaves"][f"{i:04d}"]) for i in range(treedef.num_leaves)]
    return jax.tree.unflatten(treedef, leaves), int(tree["epoch"])


# ----------------------------------------------------------------------------------------------
# Metrics


def _read_metrics(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "metrics.jsonl"
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


def run(config: ml_collections.ConfigDict, workdir: Path, resume: bool = False) -> dict:
    """Train, checkpoint, evaluate and plot; returns the contents of ``results.json``."""
    validate(config)
    workdir = Path(workdir)
    ds, train_np, test_np = _load(config)
    data_dim = train_np.shape[1]
    base = jax.random.key(config.seed)
    pieces, state = train.init_state(config, data_dim, jax.random.fold_in(base, 0))
    num_batches = len(train_np) // config.batch_size
    setup = train.Setup(
        estimator=config.estimator,
        num_samples=config.num_samples if config.estimator in MULTI_SAMPLE else 1,
        batch_size=config.batch_size,
        num_batches=num_batches,
        dynamic=config.binarization == "dynamic",
        ma_decay=config.ma_decay,
        **pieces,
    )
    manager = _manager(workdir)
    start_epoch, rows = 0, []
    if resume:
        restored = _restore(manager, state)
        if restored is not None:
            state, last_epoch = restored
            start_epoch = last_epoch + 1
            rows = [r for r in _read_metrics(workdir) if r["epoch"] <= last_epoch + 1]
            print(
                f"resuming after epoch {last_epoch + 1} (step {int(state['step'])})",
                file=sys.stderr,
            )
    elif manager.latest_step() is not None:
        raise WorkdirError(
            f"{workdir / 'checkpoints'} holds checkpoints of another run; pass resume=True "
            "(--resume) to continue it, or use an empty workdir"
        )

    train_x = jnp.asarray(train_np)
    test = jnp.asarray(test_np)
    var_batch = jnp.asarray(
        np.asarray(
            _binarize(
                jax.random.fold_in(base, 3), jnp.asarray(train_np[: config.grad_var_batch_size])
            )
        )
    )
    t0 = time.perf_counter()
    train_epoch = (
        train.make_train_epoch(setup).lower(state, train_x, train.epoch_keys(0, 0)).compile()
    )
    compile_time = time.perf_counter() - t0
    grad_variance = train.make_grad_variance(setup, config.grad_var_num_estimates)
    test_elbo_fn = train.make_test_elbo(setup.graphdef)

    from tqdm import tqdm

    saved_step = int(state["step"])
    bar = tqdm(
        range(start_epoch, config.num_epochs),
        initial=start_epoch,
        total=config.num_epochs,
        desc=f"vae {config.estimator}",
        disable=not config.progress,
        file=sys.stderr,
        mininterval=1.0,
    )
    good_state, good_epoch = state, start_epoch - 1
    loop_start = time.perf_counter()
    stopped_by_budget = False
    last_elbo = ""
    try:
        for epoch in bar:
            t = time.perf_counter()
            new_state, losses = train_epoch(state, train_x, train.epoch_keys(config.seed, epoch))
            losses = np.asarray(losses)
            seconds = time.perf_counter() - t
            if not np.all(np.isfinite(losses)):
                bad = int(np.argmin(np.isfinite(losses)))
                kept = (
                    f"the last good checkpoint (end of epoch {epoch}) is kept in "
                    f"{workdir / 'checkpoints'}"
                    if good_epoch >= 0
                    else "no epoch finished, so no checkpoint was written"
                )
                raise TrainingDiverged(
                    f"estimator {config.estimator}: training loss is {losses[bad]} at step "
                    f"{int(state['step']) + bad + 1} (epoch {epoch + 1}); run stopped, {kept}. "
                    f"A NaN or inf loss means {NAN_CAUSES}"
                )
            state = new_state
            good_state, good_epoch = state, epoch
            row = {
                "epoch": epoch + 1,
                "step": int(state["step"]),
                "train_loss": float(losses.mean()),
                "epoch_time_s": seconds,
                "examples_per_s": num_batches * config.batch_size / seconds,
            }
            if (epoch + 1) % config.eval_every_epochs == 0 or epoch + 1 == config.num_epochs:
                row["test_elbo"] = float(
                    jnp.mean(test_elbo_fn(state["params"], test, jax.random.fold_in(base, 4)))
                )
            if (
                epoch == 0
                or (epoch + 1) % config.grad_var_every_epochs == 0
                or epoch + 1 == config.num_epochs
            ):
                # At this run's OWN parameters and baseline state: a curve along its training,
                # not comparable across estimators (vae.compare's protocol compares them).
                gv = train.variance_summary(
                    grad_variance(
                        state, var_batch, jax.random.fold_in(jax.random.fold_in(base, 5), epoch)
                    )["sq_dev"],
                    setup.num_samples,
                )
                row["own_params_grad_var_per_sample"] = gv["per_sample_variance"]
                row["own_params_grad_var_per_sample_se"] = gv["per_sample_variance_se"]
                row["own_params_grad_var_num_estimates"] = gv["num_estimates"]
            row["loop_time_s"] = time.perf_counter() - t
            rows.append(row)
            _write_metrics(workdir, rows)
            if "test_elbo" in row:
                last_elbo = f"{row['test_elbo']:.2f}"
            bar.set_postfix(loss=f"{row['train_loss']:.2f}", test_elbo=last_elbo, refresh=False)
            if (
                int(state["step"]) // config.checkpoint_every_steps
                > saved_step // config.checkpoint_every_steps
            ):
                _save(manager, state, epoch)
                saved_step = int(state["step"])
            budget = config.train_time_budget_s
            if (
                budget
                and time.perf_counter() - loop_start >= budget
                and epoch + 1 < config.num_epochs
            ):
                stopped_by_budget = True
                print(
                    f"time budget of {budget} s reached after epoch {epoch + 1}; training stops",
                    file=sys.stderr,
                )
                break
    finally:
        bar.close()
        if (
            good_epoch >= 0
        ):  # checkpoint on exit (normal, interrupt or divergence): the last good state
            _save(manager, good_state, good_epoch)

    results = _evaluate_and_finish(
        config, workdir, setup, state, test, rows, compile_time, base, test_elbo_fn
    )
    results["stopped_by_time_budget"] = stopped_by_budget
    write_json(workdir / "results.json", results)
    return results


def _evaluate_and_finish(
    config, workdir, setup, state, test, rows, compile_time, base, test_elbo_fn
) -> dict:
    params = state["params"]
    t = time.perf_counter()
    ll_test = test[: config.ll_test_examples] if config.ll_test_examples else test
    log_likelihood = train.make_log_likelihood(
        setup.graphdef, ll_num_samples=config.ll_num_samples, ll_chunk_size=config.ll_chunk_size
    )
    elbo = np.asarray(test_elbo_fn(params, test, jax.random.fold_in(base, 6)))
    ll = np.asarray(log_likelihood(params, ll_test, jax.random.fold_in(base, 7)))
    eval_time = time.perf_counter() - t
    if not (np.all(np.isfinite(elbo)) and np.all(np.isfinite(ll))):
        raise TrainingDiverged(
            f"estimator {config.estimator}: non-finite test ELBO or log-likelihood: {NAN_CAUSES}"
        )
    elbo_mean, elbo_se = _mean_se(elbo)
    ll_mean, ll_se = _mean_se(ll)
    results = {
        "estimator": config.estimator,
        "dataset": config.dataset,
        "binarization": config.binarization,
        "architecture": f"{setup_arch(config, test.shape[1])}",
        "num_samples": setup.num_samples,
        "epochs": len(rows),
        "steps": int(state["step"]),
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "test_elbo": elbo_mean,
        "test_elbo_se": elbo_se,
        "test_examples": int(test.shape[0]),
        "test_log_likelihood": ll_mean,
        "test_log_likelihood_se": ll_se,
        "ll_num_samples": config.ll_num_samples,
        "ll_test_examples": int(ll_test.shape[0]),
        "train_wall_time_s": float(sum(r["epoch_time_s"] for r in rows)),
        "train_loop_time_s": float(sum(r.get("loop_time_s", r["epoch_time_s"]) for r in rows)),
        "examples_per_s": float(np.median([r["examples_per_s"] for r in rows])) if rows else None,
        "compile_time_s": compile_time,
        "eval_time_s": eval_time,
    }
    write_json(workdir / "results.json", results)
    _save_figure_data(config, workdir, setup, params, test, base)
    if config.get("figures", True):  # runs made before the key existed drew figures
        plot(workdir)
    print(
        f"{config.estimator}: test ELBO {elbo_mean:.2f} ± {elbo_se:.2f}, test log-likelihood "
        f"(k={config.ll_num_samples}, {ll_test.shape[0]} examples) {ll_mean:.2f} ± {ll_se:.2f}",
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
    return plots.plot_run(workdir, config, _read_metrics(workdir))
