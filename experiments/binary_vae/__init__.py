r"""The binary-latent VAE benchmark: every discrete estimator trained on the DisARM setup, with
one table and variance curves under one protocol (``config.runner = "binary_vae"``).

For each model of ``config.models`` (``linear``, ``nonlinear``: :mod:`models.binary_vae`) and
each entry of ``config.estimators`` (``"spec"`` or ``"spec@K"``, K samples per example; a
registry spec or an importable path ``"pkg.mod:attr"``, so a user's estimator joins by
configuration), ``num_seeds`` seeds are trained as ONE jitted program (vmapped), in epochs
(:mod:`.train`). Written under the workdir:

- ``<model>/<entry>/``: ``metrics.jsonl`` (per epoch and seed: the 1-sample train ELBO, the
  per-evaluation variance of the encoder-gradient estimate at the run's own parameters with
  its jackknife SE, whether the seed has diverged), ``results.json`` (validation and test
  ``eval_num_samples``-sample bounds per seed, wall time, examples/s), orbax checkpoints
  (``checkpoints/``, every epoch; ``--resume`` continues bit for bit, and with a larger
  ``num_steps`` trains a finished run on);
- ``<model>/shared/epoch_<e>.npz``: the reference estimator's first-seed parameters after
  epoch ``e`` (``grad_var_epochs``), and ``<model>/grad_variance.json``: every estimator's
  variance there, on the same batch with the same keys (:func:`_protocol`);
- ``table.md``, ``table.csv`` (one row per model and estimator: mean +- SE over the seeds that
  did not diverge, with their number), ``<model>_elbo.png``, ``<model>_variance.png``.

Variances are per evaluation of the cost: the variance of one estimate of the batch's encoder
gradient (the trace of its covariance) times the evaluations it costs per example (``K *
cost_evaluations``), so estimators are compared at equal cost. A seed whose loss becomes NaN
or inf is reported as diverged from that epoch on, never averaged into anything; VIMCO (and any
estimator of objective ``"log_mean_exp"``) trains the K-sample bound, a different objective,
and is marked so, as are the biased relaxations.

Devices (issue 15): each pair's seeds are spread over the run's mesh (``mesh.devices``, default
every device) when ``num_seeds`` is a multiple of the device count, else every device trains
every seed (replicated; the run says so); see :mod:`.train`. The shared-parameter protocol
measures one parameter set per estimator and runs on one device.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import estimators
from models import binary_vae

from .. import _mesh
from .._workdir import WorkdirError, atomic_write_bytes, atomic_write_text, read_json, write_json
from ..vae import _write_metrics, checkpoint, read_metrics
from ..vae import data as vae_data
from ..vae.train import variance_ratio, variance_summary
from . import train

_host = _mesh.to_host

RESUMABLE = True
RESUME_MAY_RAISE = ("num_steps",)
_EVAL_BINARIZATION_SEED = 0  # every run is evaluated on the same validation and test bits
PyTree = Any


# ----------------------------------------------------------------------------------------------
# Configuration


def entry_dir(entry: str) -> str:
    """The folder name of an estimator entry (``:``, ``/`` and ``@`` of it become ``_``)."""
    return entry.replace(":", "_").replace("/", "_").replace("@", "_K")


def _estimator(entry: str, latent_dim: int) -> tuple[estimators.GradientEstimator, int]:
    spec, k = train.parse_entry(entry)
    try:
        est = estimators.registry.get(spec)
    except (KeyError, ValueError) as e:
        raise ValueError(f"config.estimators: entry {entry!r}: {e}") from None
    if not est.supports(estimators.Bernoulli(jnp.zeros((latent_dim,)))):
        raise ValueError(
            f"config.estimators: {est.name} does not support Bernoulli latents (it needs "
            f"{[r.__name__ for r in est.requires]})"
        )
    return est, train.entry_samples(est, entry, k)


def validate(config: ml_collections.ConfigDict) -> None:
    """Check the config before anything is written: names, sizes, estimators, the protocol."""
    for key in (
        "num_seeds",
        "latent_dim",
        "batch_size",
        "num_steps",
        "eval_num_samples",
        "grad_var_num_estimates",
        "grad_var_run_estimates",
        "grad_var_batch_size",
    ):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"config.{key} must be a positive int; got {config[key]!r}")
    for key in ("grad_var_num_estimates", "grad_var_run_estimates"):
        if config[key] < 3:
            raise ValueError(
                f"config.{key} must be >= 3 (a variance and its jackknife SE); got {config[key]}"
            )
    for key in ("eval_examples", "train_elbo_examples", "train_examples", "grad_var_warmup_steps"):
        if not isinstance(config[key], int) or config[key] < 0:
            raise ValueError(f"config.{key} must be an int >= 0; got {config[key]!r}")
    for key in ("learning_rate", "prior_learning_rate"):
        if not config[key] > 0:
            raise ValueError(f"config.{key} must be > 0; got {config[key]}")
    models = tuple(config.models)
    unknown = [m for m in models if m not in binary_vae.ARCHITECTURES]
    if not models or unknown:
        raise ValueError(
            f"config.models: unknown {unknown or 'none given'}; choose from "
            f"{sorted(binary_vae.ARCHITECTURES)}"
        )
    entries = tuple(config.estimators)
    if not entries or len(set(entries)) != len(entries):
        raise ValueError(f"config.estimators must list distinct entries; got {entries}")
    for entry in entries:
        _estimator(entry, config.latent_dim)
    if config.grad_var_reference not in entries:
        raise ValueError(
            f"config.grad_var_reference {config.grad_var_reference!r} is not one of "
            f"config.estimators {entries}"
        )
    epochs = tuple(config.grad_var_epochs)
    if not epochs or any(not isinstance(e, int) or e < -1 for e in epochs):
        raise ValueError(f"config.grad_var_epochs must be ints >= -1; got {epochs}")


def load_data(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """``{"train": [N, D] grey levels, "validation": [V, D] binary, "test": [M, D] binary,
    "train_elbo": [T, D] binary}``: the last ``validation_examples`` training images
    validate, the ones before them train (cut to ``train_examples``); the evaluation sets
    (cut to ``eval_examples``) and the train-ELBO images are binarised once, with a key that
    does not depend on the seed."""
    ds = vae_data.load_dataset(
        config.dataset,
        config.data_dir or None,
        download=config.download,
        verify=config.verify_checksums,
    )
    images = ds.train
    v = config.validation_examples
    if not 0 < v < len(images) - config.batch_size:
        raise ValueError(
            f"config.validation_examples={v} must leave at least batch_size training images "
            f"of {len(images)}"
        )
    train_np, validation = images[:-v], images[-v:]
    if config.train_examples:
        train_np = train_np[: config.train_examples]
    if config.batch_size > len(train_np):
        raise ValueError(f"config.batch_size={config.batch_size} > {len(train_np)} training images")
    test = ds.test
    if config.eval_examples:
        validation, test = validation[: config.eval_examples], test[: config.eval_examples]
    elbo_images = train_np[: config.train_elbo_examples or len(train_np)]
    key = jax.random.key(_EVAL_BINARIZATION_SEED)

    def bits(tag: int, x: np.ndarray) -> np.ndarray:
        return np.asarray(vae_data.binarize(jax.random.fold_in(key, tag), jnp.asarray(x)))

    return {
        "train": train_np,
        "validation": bits(1, validation),
        "test": bits(2, test),
        "train_elbo": bits(3, elbo_images),
    }


def check_inputs(config: ml_collections.ConfigDict) -> None:
    """Find, download if allowed, and verify the data before anything is written."""
    validate(config)
    load_data(config)


# ----------------------------------------------------------------------------------------------
# One (model, estimator) pair: S seeds in one program


def _setup(
    config, entry: str, model: str, data: dict[str, np.ndarray], seeds: Any = None
) -> tuple[train.Setup, Any]:
    est, k = _estimator(entry, config.latent_dim)
    mean = jnp.asarray(data["train"].mean(axis=0))
    hidden = binary_vae.ARCHITECTURES[model]
    graphdef, fixed = train.graph_pieces(mean, config.latent_dim, hidden)
    optimizer = train.make_optimizer(config.learning_rate, config.prior_learning_rate)
    setup = train.Setup(
        spec=entry,
        est=est,
        num_samples=k,
        batch_size=config.batch_size,
        steps_per_epoch=len(data["train"]) // config.batch_size,
        graphdef=graphdef,
        fixed=fixed,
        optimizer=optimizer,
        latent_dim=config.latent_dim,
    )
    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, train.TAG_INIT))(_seed_keys(config))
    states = train.init_states(
        {"optimizer": optimizer, "est": est}, mean, config.latent_dim, hidden, init_keys, seeds
    )
    return setup, states


def _seed_keys(config, seeds: Any = None) -> jax.Array:
    """The seeds' keys ``[S]`` (laid out as ``seeds``, :func:`.train.seed_sharding`, if given)."""

    def keys() -> jax.Array:
        return jnp.stack([jax.random.key(config.seed + s) for s in range(config.num_seeds)])

    return keys() if seeds is None else jax.jit(keys, out_shardings=seeds)()


def num_epochs(config, steps_per_epoch: int) -> int:
    """Epochs to run ``num_steps`` steps (the last may be partial)."""
    return -(-config.num_steps // steps_per_epoch)


def _steps_in(config, steps_per_epoch: int, epoch: int) -> int:
    return min(steps_per_epoch, config.num_steps - epoch * steps_per_epoch)


def _var_batch(config, data) -> jax.Array:
    key = jax.random.fold_in(jax.random.key(_EVAL_BINARIZATION_SEED), train.TAG_VAR_BATCH)
    return vae_data.binarize(key, jnp.asarray(data["train"][: config.grad_var_batch_size]))


class _Programs:
    """The compiled programs of one pair (built once; the partial last epoch compiles its own)."""

    def __init__(self, config, setup: train.Setup, shared: dict[str, Any], seeds: Any = None):
        self.setup = setup
        self.seeds = seeds  # the seed axis's layout (train.seed_sharding), or None
        self.epochs: dict[int, Any] = {}
        # The evaluation programs depend on the model only: one compilation per model.
        if not shared:
            shared["elbo"] = train.make_bound(setup, 1, seeds=seeds)
            shared["bound"] = train.make_bound(setup, config.eval_num_samples, seeds=seeds)
        self.elbo, self.bound = shared["elbo"], shared["bound"]
        variance = jax.vmap(
            train.make_grad_estimates(setup, config.grad_var_run_estimates),
            in_axes=(0, 0, None, None),
        )
        if seeds is None:
            self.run_variance = jax.jit(variance)
        else:
            other = _mesh.replicated(seeds.mesh)
            self.run_variance = jax.jit(
                variance, in_shardings=(seeds, seeds, other, other), out_shardings=seeds
            )

    def epoch(self, num_steps: int, *args: Any) -> tuple[Any, float]:
        """The compiled epoch of ``num_steps`` steps for ``args``, and the seconds its
        compilation took now (0 if it was compiled before)."""
        if num_steps in self.epochs:
            return self.epochs[num_steps], 0.0
        t0 = time.perf_counter()
        program = train.make_train_epoch(self.setup, num_steps, self.seeds)
        compiled = program.lower(*args).compile()
        self.epochs[num_steps] = compiled
        return compiled, time.perf_counter() - t0


def _saved_state(states: PyTree) -> dict[str, Any]:
    # vae.checkpoint saves a dict with a scalar "step"; the seeds' steps agree.
    return {"seeds": states, "step": states["step"][0]}


def _per_evaluation(setup: train.Setup, sq_dev: np.ndarray) -> dict[str, float | int]:
    return variance_summary(sq_dev, setup.evaluations_per_example)


def _epoch_row(
    config, programs: _Programs, states, data, var_batch, seeds, epoch: int, diverged: list
) -> dict[str, Any]:
    setup = programs.setup
    elbo = _host(
        programs.elbo(
            states["params"], jnp.asarray(data["train_elbo"]), seeds, jnp.asarray(10_000 + epoch)
        )
    )
    key = jax.random.fold_in(jax.random.key(_EVAL_BINARIZATION_SEED), train.TAG_VAR)
    sq = _host(
        programs.run_variance(
            states["params"], states["estimator"], var_batch, jax.random.fold_in(key, epoch)
        )
    ).astype(np.float64)
    variances = [_per_evaluation(setup, sq[s]) for s in range(config.num_seeds)]
    return {
        "epoch": epoch,
        "step": int(_host(states["step"])[0]),
        "train_elbo": [float(v) for v in elbo.mean(axis=1)],
        "per_eval_variance": [v["per_sample_variance"] for v in variances],
        "per_eval_variance_se": [v["per_sample_variance_se"] for v in variances],
        "diverged": list(diverged),
    }


def _shared_epochs(config, total: int) -> list[int]:
    return sorted({total if e == -1 else min(e, total) for e in config.grad_var_epochs})


def _save_shared(path: Path, params: PyTree) -> None:
    flat = checkpoint.flatten(jax.tree.map(lambda a: _host(a)[0], params))
    buf = io.BytesIO()
    np.savez(buf, **flat)
    atomic_write_bytes(path, buf.getvalue())


def _load_shared(path: Path, template: PyTree) -> PyTree:
    if not path.exists():
        raise WorkdirError(f"{path} is missing: the reference estimator's run did not finish")
    with np.load(path) as z:
        flat = checkpoint.flatten(template)
        missing = [n for n in flat if n not in z.files]
        if missing:
            raise WorkdirError(f"{path} lacks {missing}: it belongs to another model")
        leaves = [jnp.asarray(z[n]) for n in flat]
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def _train_pair(
    config,
    model: str,
    entry: str,
    data,
    workdir: Path,
    resume: bool,
    shared: dict[str, Any],
    seeds: Any = None,
) -> dict:
    """Train one pair's seeds (resuming from its checkpoint), evaluate, write its results.

    ``seeds``: the layout of the seed axis on the run's mesh (:func:`.train.seed_sharding`)."""
    run_dir = workdir / model / entry_dir(entry)
    if (run_dir / "results.json").exists():
        if not resume:
            raise WorkdirError(f"{run_dir} holds a finished run; use an empty workdir or --resume")
        done = read_json(run_dir / "results.json")
        if done["steps"] >= config.num_steps or all(d is not None for d in done["diverged"]):
            return done
        # --resume with a larger num_steps: train on from the last checkpoint.
    run_dir.mkdir(parents=True, exist_ok=True)
    layout = seeds
    setup, states = _setup(config, entry, model, data, layout)
    seeds = _seed_keys(config, layout)
    total = num_epochs(config, setup.steps_per_epoch)
    manager = checkpoint.manager(run_dir)
    start, rows = 0, []
    restored = checkpoint.restore(manager, _saved_state(states)) if resume else None
    if manager.latest_step() is not None and not resume:
        raise WorkdirError(f"{run_dir / 'checkpoints'} holds another run; pass --resume")
    if restored is not None:
        states = restored.state["seeds"]
        if layout is not None:  # onto the mesh, as the initial state lies
            states = jax.jit(lambda s: s, out_shardings=layout)(jax.tree.map(np.asarray, states))
        start = restored.epoch + 1
        rows = [r for r in read_metrics(run_dir) if r["epoch"] <= start]
        print(f"{model}/{entry}: resuming after epoch {start}", file=sys.stderr)
    programs = _Programs(config, setup, shared, layout)
    train_x = jnp.asarray(data["train"])
    var_batch = _var_batch(config, data)
    shared = workdir / model / "shared"
    is_reference = entry == config.grad_var_reference
    shared_epochs = _shared_epochs(config, total)
    diverged: list[int | None] = list(rows[-1]["diverged"]) if rows else [None] * config.num_seeds
    if not rows:
        rows.append(_epoch_row(config, programs, states, data, var_batch, seeds, 0, diverged))
        _write_metrics(run_dir, rows)
    if is_reference and 0 in shared_epochs and start == 0:
        shared.mkdir(parents=True, exist_ok=True)
        _save_shared(shared / "epoch_0.npz", states["params"])
    train_time = sum(r.get("seconds", 0.0) for r in rows)
    compile_time = 0.0
    for epoch in range(start, total):
        steps = _steps_in(config, setup.steps_per_epoch, epoch)
        fn, seconds = programs.epoch(steps, states, train_x, seeds, epoch)
        compile_time += seconds
        t0 = time.perf_counter()
        states, losses = fn(states, train_x, seeds, epoch)
        losses = _host(losses)
        seconds = time.perf_counter() - t0
        train_time += seconds
        for s in range(config.num_seeds):
            if diverged[s] is None and not np.isfinite(losses[s]).all():
                diverged[s] = epoch + 1
        row = _epoch_row(config, programs, states, data, var_batch, seeds, epoch + 1, diverged)
        row["seconds"] = seconds
        row["train_loss"] = [float(np.mean(losses[s])) for s in range(config.num_seeds)]
        rows.append(row)
        _write_metrics(run_dir, rows)
        if is_reference and epoch + 1 in shared_epochs:
            shared.mkdir(parents=True, exist_ok=True)
            _save_shared(shared / f"epoch_{epoch + 1}.npz", states["params"])
        checkpoint.save(manager, _saved_state(states), epoch)
        if config.progress:
            elbo = np.nanmean(np.where([d is None for d in diverged], row["train_elbo"], np.nan))
            print(
                f"{model}/{entry}: epoch {epoch + 1}/{total}, step {row['step']}, train ELBO "
                f"{elbo:.2f} (mean of seeds), {seconds:.1f} s",
                file=sys.stderr,
            )
        if all(d is not None for d in diverged):
            break
    bounds = {}
    for name, tag in (("validation", 1), ("test", 2)):
        xs = jnp.asarray(data[name])
        bound = _host(programs.bound(states["params"], xs, seeds, jnp.asarray(tag)))
        bounds[name] = [float(v) for v in bound.mean(1)]
    steps_done = int(_host(states["step"])[0])
    results = {
        "model": model,
        "estimator": entry,
        "label": setup.est.label if hasattr(setup.est, "label") else setup.est.name,
        "evaluations_per_example": setup.evaluations_per_example,
        "num_samples": setup.num_samples,
        "objective": setup.est.objective,
        "unbiased": bool(setup.est.unbiased),
        "num_seeds": config.num_seeds,
        "diverged": diverged,
        "steps": steps_done,
        "train_elbo": rows[-1]["train_elbo"],
        "validation_bound": bounds["validation"],
        "test_bound": bounds["test"],
        "eval_num_samples": config.eval_num_samples,
        "train_seconds": train_time,
        "compile_seconds": compile_time,
        "examples_per_second": config.num_seeds * config.batch_size * steps_done / train_time
        if train_time > 0
        else float("nan"),
    }
    write_json(run_dir / "results.json", results)
    return results


# ----------------------------------------------------------------------------------------------
# The shared-parameter protocol


def _protocol(config, model: str, data, workdir: Path, resume: bool) -> dict[str, Any]:
    """Every estimator's encoder-gradient variance at the reference's first-seed parameters
    after each of ``grad_var_epochs``, on one batch with the same ``grad_var_num_estimates``
    keys; adaptive or running states first warmed for ``grad_var_warmup_steps`` at those
    parameters on the same batches. Written to ``<model>/grad_variance.json``."""
    path = workdir / model / "grad_variance.json"
    if path.exists() and resume:
        done = read_json(path)
        if done.get("reference_steps") == read_json(
            workdir / model / entry_dir(config.grad_var_reference) / "results.json"
        )["steps"] and set(done["rows"]) == set(config.estimators):
            return done
    reference_dir = workdir / model / entry_dir(config.grad_var_reference)
    steps_per_epoch = len(data["train"]) // config.batch_size
    reached = read_json(reference_dir / "results.json")["steps"]
    last = -(-reached // steps_per_epoch)
    epochs = [e for e in _shared_epochs(config, num_epochs(config, steps_per_epoch)) if e <= last]
    var_batch = _var_batch(config, data)
    base = jax.random.fold_in(jax.random.key(_EVAL_BINARIZATION_SEED), train.TAG_VAR + 100)
    train_x = jnp.asarray(data["train"])
    out: dict[str, Any] = {
        "epochs": epochs,
        "reference": config.grad_var_reference,
        "reference_steps": reached,
        "rows": {},
    }
    sq_devs: dict[tuple[str, int], np.ndarray] = {}
    for entry in config.estimators:
        setup, states = _setup(config, entry, model, data)
        template = jax.tree.map(lambda a: a[0], states["params"])
        measure = train.make_grad_estimates(setup, config.grad_var_num_estimates)
        warm = train.make_warm_estimator(setup, max(config.grad_var_warmup_steps, 1))
        stateful = bool(jax.tree.leaves(setup.est.init()))
        row = {}
        for e in epochs:
            params = _load_shared(workdir / model / "shared" / f"epoch_{e}.npz", template)
            est_state = setup.est.init()
            if stateful and config.grad_var_warmup_steps:
                est_state = warm(params, est_state, train_x, jax.random.fold_in(base, 2 * e + 1))
            sq = np.asarray(
                measure(params, est_state, var_batch, jax.random.fold_in(base, 2 * e)), np.float64
            )
            sq_devs[entry, e] = sq
            row[str(e)] = _per_evaluation(setup, sq)
        out["rows"][entry] = row
    ref = config.grad_var_reference
    ref_k = read_json(reference_dir / "results.json")["evaluations_per_example"]
    for entry in config.estimators:
        k = out["rows"][entry][str(epochs[0])]["samples_per_example"]
        for e in epochs:
            ratio, se = variance_ratio(sq_devs[entry, e], k, sq_devs[ref, e], ref_k)
            out["rows"][entry][str(e)]["ratio_to_reference"] = ratio
            out["rows"][entry][str(e)]["ratio_se"] = se
    write_json(path, out)
    return out


# ----------------------------------------------------------------------------------------------
# The run, the table


def run(config: ml_collections.ConfigDict, workdir: Path, resume: bool = False) -> dict:
    """Train every (model, estimator) pair (the reference estimator first), measure the
    shared-parameter variances, write the table and figures; returns the table's rows."""
    validate(config)
    workdir = Path(workdir)
    data = load_data(config)
    ordered = [config.grad_var_reference] + [
        e for e in config.estimators if e != config.grad_var_reference
    ]
    seeds = _mesh.seed_layout(config)
    start = time.perf_counter()
    for model in config.models:
        shared: dict[str, Any] = {}  # the model's evaluation programs
        for entry in ordered:
            _train_pair(config, model, entry, data, workdir, resume, shared, seeds)
        _protocol(config, model, data, workdir, resume)
    rows = table_rows(workdir, config)
    write_table(workdir, rows, config)
    results = {"rows": rows, "wall_seconds": time.perf_counter() - start}
    write_json(workdir / "results.json", results)
    if config.figures:
        plot(workdir)
    return results


def _mean_se(values: list[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se, int(v.size)


def table_rows(workdir: Path, config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """One row per (model, estimator) from the saved results: seeds that did not diverge
    averaged (mean, SE, their number), the shared-parameter variances per evaluation."""
    rows = []
    for model in config.models:
        protocol = read_json(workdir / model / "grad_variance.json")
        for entry in config.estimators:
            res = read_json(workdir / model / entry_dir(entry) / "results.json")
            ok = [d is None for d in res["diverged"]]
            row: dict[str, Any] = {
                "model": model,
                "estimator": entry,
                "evaluations": res["evaluations_per_example"],
                "objective": res["objective"],
                "unbiased": res["unbiased"],
                "seeds": int(sum(ok)),
                "diverged": len(ok) - int(sum(ok)),
                "steps": res["steps"],
            }
            for key in ("train_elbo", "validation_bound", "test_bound"):
                vals = [v for v, good in zip(res[key], ok, strict=True) if good]
                row[key], row[key + "_se"], _ = _mean_se(vals)
            for e in protocol["epochs"]:
                cell = protocol["rows"][entry][str(e)]
                row[f"variance_epoch{e}"] = cell["per_sample_variance"]
                row[f"variance_epoch{e}_se"] = cell["per_sample_variance_se"]
                row[f"ratio_epoch{e}"] = cell["ratio_to_reference"]
                row[f"ratio_epoch{e}_se"] = cell["ratio_se"]
            row["train_seconds"] = res["train_seconds"]
            row["examples_per_second"] = res["examples_per_second"]
            rows.append(row)
    return rows


def _pm(value: float, se: float, digits: int = 2) -> str:
    if not np.isfinite(value):
        return "—"
    return f"{value:.{digits}f} ± {se:.{digits}f}" if np.isfinite(se) else f"{value:.{digits}f}"


def _sci(value: float, se: float) -> str:
    return f"{value:.3g} ± {se:.2g}" if np.isfinite(value) else "—"


def write_table(workdir: Path, rows: list[dict[str, Any]], config) -> None:
    """``table.csv`` (every field) and ``table.md`` (one table per model)."""
    buf = io.StringIO()
    fields = list(rows[0])
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(workdir / "table.csv", buf.getvalue())
    lines = []
    for model in config.models:
        mrows = [r for r in rows if r["model"] == model]
        epochs = [
            k[len("variance_epoch") :]
            for k in mrows[0]
            if k.startswith("variance_epoch") and not k.endswith("_se")
        ]
        b = config.eval_num_samples
        lines += [
            f"### {model} model, {config.dataset}, {mrows[0]['steps']} steps, "
            f"{config.num_seeds} seeds",
            "",
            "| estimator | E | seeds | train ELBO | validation bound "
            f"(k={b}) | test bound (k={b}) | "
            + " | ".join(f"variance × E, epoch {e}" for e in epochs)
            + f" | ratio to {config.grad_var_reference} (epoch {epochs[-1]})"
            + " | train s | examples/s |",
            "|---|---|---|---|---|---|" + "---|" * len(epochs) + "---|---|---|",
        ]
        for r in mrows:
            mark = "" if r["unbiased"] else " (biased)"
            mark += " †" if r["objective"] != "mean" else ""
            seeds = f"{r['seeds']}" + (f" ({r['diverged']} diverged)" if r["diverged"] else "")
            lines.append(
                f"| {r['estimator']}{mark} | {r['evaluations']} | {seeds} | "
                f"{_pm(r['train_elbo'], r['train_elbo_se'])} | "
                f"{_pm(r['validation_bound'], r['validation_bound_se'])} | "
                f"{_pm(r['test_bound'], r['test_bound_se'])} | "
                + " | ".join(
                    _sci(r[f"variance_epoch{e}"], r[f"variance_epoch{e}_se"]) for e in epochs
                )
                + f" | {_pm(r[f'ratio_epoch{epochs[-1]}'], r[f'ratio_epoch{epochs[-1]}_se'], 3)} | "
                f"{r['train_seconds']:.0f} | {r['examples_per_second']:.0f} |"
            )
        lines.append("")
    lines += [
        "E: evaluations of the cost per example and step (K samples × the estimator's "
        "evaluations per sample). Train ELBO: the 1-sample ELBO of "
        + (f"the first {config.train_elbo_examples}" if config.train_elbo_examples else "all")
        + " training images at the end, mean ± SE over the "
        "seeds that did not diverge. Bounds: one draw of the k-sample importance-weighted "
        "bound per image. Variance × E: the trace of the covariance of one estimate of the "
        "batch's encoder gradient times E, at the reference's first-seed parameters after "
        "that epoch (0: initial), on one batch with the same keys for every estimator "
        "(± jackknife SE). † trains the K-sample bound (another objective).",
    ]
    atomic_write_text(workdir / "table.md", "\n".join(lines) + "\n")


def plot(workdir: Path) -> list[Path]:
    """Draw the ELBO and variance curves of every model from the saved results."""
    from . import plots

    return plots.plot(Path(workdir))
