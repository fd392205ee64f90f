"""Several seeds of one VAE config trained as ONE jitted program (``config.num_seeds > 1``).

The seeds are ``config.seed, config.seed + 1, ...``; seed ``s`` is the run ``vae.run`` makes of
the same config with ``seed = s`` (same initial state, same keys for every draw), and its
training epoch is that run's epoch ``jax.vmap``-ed over the seeds (:func:`train.make_seeds_epoch`):
one compilation, one program per epoch, larger matmuls. Seed ``s`` ends where the one-seed run
ends up to float32 rounding (the batched matmuls may sum in another order). Written under the
workdir:

- ``checkpoints/``: orbax checkpoints of the stacked state ``{"seeds": states (leaves [S,
  ...]), "step": [], "diverged": [S]}``; ``--resume`` continues bit for bit;
- ``seed_<s>/``: seed ``s``'s run as ``vae.run`` writes it (``config.json`` with ``num_seeds =
  1``, ``metrics.jsonl``, ``results.json``, ``figures_data.npz``, figures), or, for a seed
  whose loss became NaN or inf, its metrics up to the last good epoch and ``diverged.json``;
- ``results.json``: every seed's results and, over the seeds that did not diverge, the mean
  and the standard error across seeds (``std(ddof=1) / sqrt(n)``) of the test ELBO, the test
  log-likelihood and the final training loss; a diverged seed is named and never averaged in;
- ``seeds.md``, ``seeds.csv`` (one row per seed, the mean +- SE last), ``elbo_curves.png``,
  ``grad_variance_own_params.png`` (every seed's curves).

A seed that diverges keeps its last good state (its lanes of the program go on computing and
are discarded); the other seeds train on. If every seed diverges, ``TrainingDiverged``.

On the device mesh (``config.mesh``, ``n`` devices) the ``S`` seeds are laid out by one rule
(:func:`train.seeds_mesh`): ``g = gcd(S, n)`` seed groups of ``n / g`` devices, the states and
keys split along the seed axis over the groups, each seed's batch split over its group's
devices (data-parallel, its gradient summed within the group). ``S`` a multiple of ``n`` (8
seeds on 8 devices): a seed group per device and no communication at all; ``S`` a divisor of
``n`` (2 seeds on 8): each seed data-parallel on ``n / S`` devices; otherwise (3 seeds on 8:
``g = 1``) every seed data-parallel on all ``n``. The batch size must be a multiple of ``n /
g`` (``vae.make_mesh`` says so, naming ``config.batch_size``, before anything is written).
Seed ``s`` ends where it does on one device up to float32 rounding (the order of the batch
sums; ``tests/test_sharding_vae.py`` derives the bound); one device is the unsharded program
bit for bit.
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

from .. import _mesh, vae
from .._config import config_from_dict, config_to_dict
from .._diagnostics import NAN_CAUSES
from .._workdir import WorkdirError, atomic_write_text, read_json, write_json
from . import checkpoint, plots, train
from .train import TrainingDiverged

PyTree = Any


def seed_list(config: ml_collections.ConfigDict) -> list[int]:
    """``[seed, seed + 1, ..., seed + num_seeds - 1]``."""
    return [int(config.seed) + s for s in range(int(config.get("num_seeds", 1)))]


def seed_dir(seed: int) -> str:
    """The sub-workdir of seed ``seed``."""
    return f"seed_{seed}"


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The one-seed ``vae`` config of seed ``seed``."""
    d = config_to_dict(config)
    d.update(seed=seed, num_seeds=1)
    return config_from_dict(d)


def stack(states: list[PyTree]) -> PyTree:
    """One state with leaves ``[S, ...]`` from ``S`` states."""
    return jax.tree.map(lambda *a: jnp.stack(a), *states)


def unstack(states: PyTree, s: int) -> PyTree:
    """Seed ``s``'s state of a stacked state."""
    return jax.tree.map(lambda a: a[s], states)


def saved_state(states: PyTree, diverged: list[int]) -> dict[str, Any]:
    """What a checkpoint holds: the stacked state, a scalar step (the furthest seed's: a
    diverged seed's stops) and the epoch (1-based) each seed diverged in (0: it did not)."""
    return {
        "seeds": states,
        "step": jnp.max(states["step"]),
        "diverged": np.asarray(diverged, np.int32),
    }


def restore(workdir: Path, states: PyTree) -> checkpoint.Restored | None:
    """The newest checkpoint of a multi-seed run in ``workdir`` matched against the stacked
    initial state ``states`` (``Restored.state`` is :func:`saved_state`'s dict), or ``None``."""
    if not (Path(workdir) / checkpoint.DIRECTORY).exists():
        return None
    template = saved_state(states, [0] * int(states["step"].shape[0]))
    return checkpoint.restore(checkpoint.manager(workdir), template)


def init_seeds(
    config: ml_collections.ConfigDict, data_dim: int, num_batches: int
) -> tuple[train.Setup, PyTree]:
    """The ``Setup`` and the stacked initial states ``[S, ...]`` of the config's seeds: seed
    ``s``'s is ``vae.init_run``'s for seed ``s``, bit for bit (the same draws, vmapped over the
    seeds' keys in one compiled program instead of ``S`` compilations of the initialisers)."""
    seeds = seed_list(config)
    # The seeds' setups differ only in initial values, which the state holds.
    setup, _ = vae.init_run(seed_config(config, seeds[0]), data_dim, num_batches)
    keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 0) for s in seeds])

    def init(k: jax.Array) -> PyTree:
        return train.init_state(config, data_dim, k, num_batches)[1]

    states = jax.jit(jax.vmap(init))(keys)
    return setup, states


def _seed_keys(seeds: list[int], epoch: int) -> jax.Array:
    return jnp.stack([train.epoch_keys(s, epoch) for s in seeds])


def run(config: ml_collections.ConfigDict, workdir: Path, resume: bool = False) -> dict:
    """Train ``config.num_seeds`` seeds in one program, evaluate each, write the per-seed runs
    and the summary (module docstring); returns the contents of ``results.json``."""
    workdir = Path(workdir)
    seeds = seed_list(config)
    _, train_np, test_np = vae.load_data(config)
    num_batches = len(train_np) // config.batch_size
    configs = [seed_config(config, s) for s in seeds]
    mesh = vae.make_mesh(config)
    shardings = train.epoch_shardings(mesh)
    setup, states = init_seeds(config, train_np.shape[1], num_batches)
    dirs = [workdir / seed_dir(s) for s in seeds]
    manager = checkpoint.manager(workdir)
    start, diverged = 0, [0] * len(seeds)
    rows: list[list[dict[str, Any]]] = [[] for _ in seeds]
    if not resume and manager.latest_step() is not None:
        raise WorkdirError(
            f"{workdir / 'checkpoints'} holds checkpoints of another run; pass resume=True "
            "(--resume) to continue it, or use an empty workdir"
        )
    restored = restore(workdir, states) if resume else None
    if restored is not None:
        if restored.missing:
            print(f"the checkpoint lacks {', '.join(restored.missing)}", file=sys.stderr)
        states = restored.state["seeds"]
        diverged = [int(d) for d in np.asarray(restored.state["diverged"])]
        start = restored.epoch + 1
        rows = [[r for r in vae.read_metrics(d) if r["epoch"] <= start] for d in dirs]
        print(f"resuming {len(seeds)} seeds after epoch {start}", file=sys.stderr)
    for c, d in zip(configs, dirs, strict=True):
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "config.json", config_to_dict(c))
    states = _mesh.put(states, shardings[0])
    train_x, test = _mesh.put(jnp.asarray(train_np), shardings[1]), jnp.asarray(test_np)
    keys = _mesh.put(_seed_keys(seeds, 0), shardings[2])
    t0 = time.perf_counter()
    epoch_fn = train.make_seeds_epoch(setup, mesh).lower(states, train_x, keys).compile()
    compile_time = time.perf_counter() - t0
    grad_variance = train.make_grad_variance(setup, config.grad_var_num_estimates)
    test_elbo = train.make_test_elbo(setup.graphdef)
    loops = [
        vae._Loop(
            config=c,
            workdir=d,
            setup=setup,
            manager=None,
            base=jax.random.key(s),
            train_x=train_x,
            test=test,
            var_batch=vae.grad_variance_batch(c, train_np),
            train_epoch=epoch_fn,
            grad_variance=grad_variance,
            test_elbo=test_elbo,
        )
        for c, d, s in zip(configs, dirs, seeds, strict=True)
    ]
    states, stopped = _train(
        config, manager, loops, (epoch_fn, shardings), states, start, rows, diverged
    )
    per_seed = []
    for s, loop in enumerate(loops):
        per_seed.append(_finish_seed(loop, unstack(states, s), rows[s], compile_time, diverged, s))
    summary = _summary(config, seeds, per_seed, diverged, rows, compile_time, stopped)
    write_json(workdir / "results.json", summary)
    _draw(workdir, config_to_dict(config), each_seed=False)  # vae's _finish drew each seed's
    if all(diverged):
        raise TrainingDiverged(
            f"estimator {config.estimator}: every seed diverged (epochs {diverged}): {NAN_CAUSES}"
        )
    return summary


def _train(config, manager, loops, program, states, start, rows, diverged) -> tuple[Any, bool]:
    """Epochs ``start .. num_epochs - 1`` of every seed in one program (``program``: the
    compiled epoch and its :func:`train.epoch_shardings`); a seed whose losses are not all
    finite is marked diverged (``diverged[s]``: the 1-based epoch) and keeps its last good
    state. Checkpoints as ``vae.run`` does. Returns the states and whether the time budget
    stopped training."""
    epoch_fn, (state_sharding, _, key_sharding) = program
    seeds = [loop.config.seed for loop in loops]
    every = config.checkpoint_every_steps
    saved_step = int(jnp.max(states["step"]))
    good_epoch, loop_start = start - 1, time.perf_counter()
    try:
        for epoch in range(start, config.num_epochs):
            if all(diverged):
                break
            t = time.perf_counter()
            new, losses = epoch_fn(
                _mesh.put(states, state_sharding),  # _keep_good's may lie elsewhere
                loops[0].train_x,
                _mesh.put(_seed_keys(seeds, epoch), key_sharding),
            )
            losses = np.asarray(losses)
            seconds = time.perf_counter() - t
            for s, ok in enumerate(np.isfinite(losses).all(axis=1)):
                if not diverged[s] and not ok:
                    diverged[s] = epoch + 1
                    print(
                        f"seed {seeds[s]}: training loss non-finite in epoch {epoch + 1}; the "
                        f"seed stops at its last good state, the others go on ({NAN_CAUSES})",
                        file=sys.stderr,
                    )
            states = _keep_good(new, states, [d == 0 for d in diverged])
            good_epoch = epoch
            for s, loop in enumerate(loops):
                if diverged[s]:
                    continue
                row = vae._epoch_row(loop, unstack(states, s), epoch, losses[s], seconds)
                row["loop_time_s"] = time.perf_counter() - t
                rows[s].append(row)
                vae._write_metrics(loop.workdir, rows[s])
            step = int(jnp.max(states["step"]))
            if step // every > saved_step // every:
                checkpoint.save(manager, saved_state(states, diverged), epoch)
                saved_step = step
            if config.progress:
                alive = [r[-1]["train_loss"] for s, r in enumerate(rows) if not diverged[s]]
                print(
                    f"vae {config.estimator}: epoch {epoch + 1}/{config.num_epochs}, "
                    f"{len(alive)}/{len(seeds)} seeds, train loss {np.mean(alive):.2f} (mean), "
                    f"{seconds:.2f} s",
                    file=sys.stderr,
                )
            if vae._out_of_time(config, loop_start, epoch):
                return states, True
    finally:
        if good_epoch >= 0:
            checkpoint.save(manager, saved_state(states, diverged), good_epoch)
    return states, False


def _keep_good(new: PyTree, old: PyTree, keep: list[bool]) -> PyTree:
    """``new``'s seeds where ``keep``, ``old``'s elsewhere (a diverged seed's last good state)."""
    mask = jnp.asarray(keep)
    return jax.tree.map(
        lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old
    )


def _finish_seed(loop, state, rows, compile_time, diverged, s) -> dict[str, Any]:
    """Seed ``s``'s evaluation and outputs (``vae.run``'s), or its ``diverged.json``."""
    config = loop.config
    if not diverged[s]:
        try:
            ev = vae._evaluate(loop, state["params"])
            results = vae._finish(loop, state, rows, compile_time, ev)
            results["seed"] = config.seed
            write_json(loop.workdir / "results.json", results)
            return results
        except TrainingDiverged as e:  # a non-finite test ELBO or log-likelihood
            diverged[s] = len(rows) + 1
            message = str(e)
    else:
        message = f"training loss non-finite in epoch {diverged[s]}: {NAN_CAUSES}"
    out = {
        "estimator": config.estimator,
        "seed": config.seed,
        "diverged": True,
        "diverged_in_epoch": diverged[s],
        "epochs": len(rows),
        "message": message,
    }
    write_json(loop.workdir / "diverged.json", out)
    return out


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error across seeds (nan SE for one seed)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return math.nan, math.nan
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return float(v.mean()), se


def _summary(config, seeds, per_seed, diverged, rows, compile_time, stopped) -> dict[str, Any]:
    ok = [r for r in per_seed if not r.get("diverged")]
    longest = max(rows, key=len)
    out: dict[str, Any] = {
        "estimator": config.estimator,
        "num_seeds": len(seeds),
        "seeds": seeds,
        "diverged": all(diverged),  # as a one-seed comparison row reads it: the run failed
        "diverged_in_epoch": [d or None for d in diverged],  # per seed (1-based), None: trained
        "seeds_averaged": len(ok),
        "se": "standard error across the seeds that did not diverge: std(ddof=1) / sqrt(n)",
        "num_samples": per_seed[0].get("num_samples"),
        "epochs": len(longest),
        "train_wall_time_s": float(sum(r["epoch_time_s"] for r in longest)),
        "examples_per_s": float(
            np.median([len(seeds) * r["examples_per_s"] for r in longest]) if longest else "nan"
        ),
        "examples_per_s_counts": "every seed's examples (the program trains them together)",
        "compile_time_s": compile_time,
        "stopped_by_time_budget": stopped,
    }
    if ok:
        for key in ("dataset", "binarization", "architecture", "test_examples"):
            out[key] = ok[0][key]
        out["ll_num_samples"], out["ll_test_examples"] = (
            ok[0]["ll_num_samples"],
            ok[0]["ll_test_examples"],
        )
        out["steps"] = ok[0]["steps"]
        for key in ("test_elbo", "test_log_likelihood", "final_train_loss"):
            out[key], out[f"{key}_se"] = _mean_se([r[key] for r in ok])
    out["per_seed"] = per_seed
    return out


def write_table(workdir: Path, summary: dict[str, Any]) -> None:
    """``seeds.md`` and ``seeds.csv``: one row per seed (test-set SEs), then the mean ± SE
    across the seeds that did not diverge."""
    head = ["seed", "epochs", "test ELBO", "test log p(x)", "final train loss", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    flat = []
    for r in summary["per_seed"]:
        if r.get("diverged"):
            cells = [str(r["seed"]), str(r["epochs"]), "—", "—", "—"]
            cells.append(f"diverged in epoch {r['diverged_in_epoch']}")
            flat.append({"seed": r["seed"], "epochs": r["epochs"], "diverged": True})
        else:
            cells = [
                str(r["seed"]),
                str(r["epochs"]),
                f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}",
                f"{r['test_log_likelihood']:.2f} ± {r['test_log_likelihood_se']:.2f}",
                f"{r['final_train_loss']:.2f}",
                "trained",
            ]
            flat.append(
                {k: r[k] for k in ("seed", "epochs", "test_elbo", "test_elbo_se")}
                | {
                    "test_log_likelihood": r["test_log_likelihood"],
                    "test_log_likelihood_se": r["test_log_likelihood_se"],
                    "final_train_loss": r["final_train_loss"],
                    "diverged": False,
                }
            )
        lines.append("| " + " | ".join(cells) + " |")
    n = summary["seeds_averaged"]
    if n:
        cells = [f"mean ± SE ({n} of {summary['num_seeds']} seeds)", str(summary["epochs"])]
        cells += [
            f"{summary[k]:.2f} ± {summary[k + '_se']:.2f}"
            for k in ("test_elbo", "test_log_likelihood", "final_train_loss")
        ]
        cells.append("diverged seeds left out" if n < summary["num_seeds"] else "")
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"{summary['estimator']}: {summary['num_seeds']} seeds trained as one program. Per seed: "
        "± 1 SE over the test images; last row: the mean over the seeds that did not diverge, "
        f"± {summary['se']}."
    )
    atomic_write_text(workdir / "seeds.md", "\n".join(lines) + "\n\n" + note + "\n")
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in flat for k in r))
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(flat)
    atomic_write_text(workdir / "seeds.csv", buf.getvalue())


def plot(workdir: Path, each_seed: bool = True) -> list[Path]:
    """The seeds' table and curves and (``each_seed``) each trained seed's own figures, from
    the saved files."""
    workdir = Path(workdir)
    return _draw(workdir, read_json(workdir / "config.json"), each_seed)


def _draw(workdir: Path, config: dict[str, Any], each_seed: bool) -> list[Path]:
    paths: list[Path] = []
    runs = {}
    for s in seed_list(config_from_dict(config)):
        sub = workdir / seed_dir(s)
        if (sub / "metrics.jsonl").exists() and vae.read_metrics(sub):
            runs[f"seed {s}"] = vae.read_metrics(sub)
        if each_seed and (sub / "results.json").exists() and config.get("figures", True):
            paths += vae.plot(sub)
    if runs and config.get("figures", True):
        title = f"{config['dataset']}, {config['estimator']}, {len(runs)} seeds"
        paths += plots.plot_curves(workdir, runs, title=title)
    if (workdir / "results.json").exists():
        write_table(workdir, read_json(workdir / "results.json"))
    return paths
