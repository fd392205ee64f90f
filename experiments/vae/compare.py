"""Comparison runner: train the same VAE with each listed encoder-gradient estimator, tabulate.

``config.estimators`` lists registry specs (``"score_function+loo"``) or importable paths
(``"mypkg.mymod:my_estimator"``, a user's own estimator), ``config.grad_var_reference`` one more.
Each estimator's run goes into ``<workdir>/<estimator>/`` (``:`` and ``/`` of a path become
``_``; a complete ``vae`` workdir: its own config.json, metrics, checkpoints, figures); a run
whose loss becomes NaN/inf is reported as diverged (``<estimator>/diverged.json``), never
averaged into anything.

The encoder-gradient variances are compared under ONE protocol (``grad_variance.json``):

- every estimator is evaluated at the SAME parameters: those of the reference estimator's run
  (``grad_var_reference``, pathwise) at the end of the epochs ``grad_var_checkpoint_epochs`` and
  of the last epoch. The reference run is replayed from its seed (every draw of epoch ``e`` is a
  function of ``(seed, e)``) and its final state is checked, bit for bit, against the reference
  run's final checkpoint when that run is in the workdir;
- on the same binary batch (``grad_var_batch_size`` training images) and with the same
  ``M = grad_var_num_estimates`` keys: estimate ``m`` of every estimator uses key ``m``;
- stateful baselines get a fair state at the shared parameters: the moving average and NVIL's
  network start from their initial state and are updated for ``grad_var_warmup_steps`` steps at
  the fixed checkpoint parameters, on random training batches drawn with one key shared by all
  estimators, read-then-update exactly as in training;
- reported: the variance of ONE estimate of the encoder gradient of the batch loss (the trace of
  its covariance) and per sample, ``K`` times it for a ``K``-sample estimator (it pays for ``K``
  cost evaluations per example; ``K`` also counts the estimator's ``cost_evaluations`` per
  sample, 2 for an antithetic pair: ``Setup.evaluations_per_example``), each with a jackknife
  standard error (leave one estimate out; closed form in ``train.jackknife_trace``), the
  number of estimates, and the ratio to the reference's per-sample variance with a paired
  jackknife SE (estimate ``m`` left out of both);
- an estimator of objective ``"log_mean_exp"`` (IWAE) estimates the gradient of the IWAE
  bound, a different objective: it is marked so (†) and its variance is not an
  ELBO-gradient estimator's.

The table (``table.md``, ``table.csv``) and ``grad_variance.png`` report this protocol;
``grad_variance_own_params.png`` is the other, labelled view: each run's variance along its own
training, at its own parameters (not comparable across estimators). ``--resume`` skips finished
(or diverged) estimators, resumes the interrupted one and reuses a finished protocol.

On a device mesh each estimator's run is laid out as ``vae.run`` lays it out (data-parallel,
several seeds as :mod:`experiments.vae.seeds` splits them); the estimators, programs of
different shapes, run one after another. The replay of the reference run uses the run's own
mesh and program, so it stays bit for bit the run's checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from .. import _mesh, vae
from .._config import config_from_dict, config_to_dict
from .._workdir import atomic_write_text, read_json, write_json
from . import checkpoint, plots, seeds, train
from .train import TrainingDiverged

RESUMABLE = True
PROTOCOL_KEYS = ("grad_var_reference", "grad_var_checkpoint_epochs", "grad_var_warmup_steps")
_KEY_VARIANCE, _KEY_WARMUP = 9, 10  # fold_in tags; vae.run uses 0-8 of the same seed's key

OBJECTIVE = "IWAE bound (other objective)"


def sub_config(config: ml_collections.ConfigDict, estimator: str) -> ml_collections.ConfigDict:
    """The ``vae`` config of one estimator: the comparison's settings plus ``estimator``."""
    d = config_to_dict(config)
    d.pop("estimators")
    for key in PROTOCOL_KEYS:
        d.pop(key, None)
    d["runner"] = "vae"
    d["estimator"] = estimator
    return config_from_dict(d)


def checkpoint_epochs(config: ml_collections.ConfigDict) -> list[int]:
    """The reference run's epochs the protocol measures at: the listed ones (capped at
    ``num_epochs``) and the last, sorted, each once."""
    last = int(config.num_epochs)
    return sorted({min(int(e), last) for e in config.grad_var_checkpoint_epochs} | {last})


def run_dir(name: str) -> str:
    """The sub-workdir of estimator ``name``: the spec, with ``:`` and ``/`` as ``_``."""
    return name.replace(":", "_").replace("/", "_")


def other_objective(config: ml_collections.ConfigDict) -> set[str]:
    """The listed estimators (and reference) of objective ``"log_mean_exp"`` (IWAE-bound
    gradients), from the registry."""
    names = {*config.estimators, config.grad_var_reference}
    return {n for n in names if train.make_estimator(sub_config(config, n)).objective != "mean"}


def validate(config: ml_collections.ConfigDict) -> None:
    """Every listed estimator valid (a registry spec or importable path that applies to the
    VAE), listed once, the protocol's settings valid, and each sub-config valid."""
    names = list(config.estimators)
    if not names:
        raise ValueError("config.estimators is empty")
    if any(not isinstance(n, str) for n in names):
        raise ValueError(f"config.estimators must be specs (str); got {names!r}")
    dirs = [run_dir(n) for n in names]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"config.estimators lists an estimator twice: {names}")
    for name in (*names, config.grad_var_reference):
        try:
            vae.validate(sub_config(config, name))
        except ValueError as e:
            key = "grad_var_reference" if name == config.grad_var_reference else "estimators"
            raise ValueError(f"config.{key}: {name!r}: {e}") from None
    epochs = tuple(config.grad_var_checkpoint_epochs)
    if any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs):
        raise ValueError(f"config.grad_var_checkpoint_epochs must be epochs >= 1; got {epochs!r}")
    steps = config.grad_var_warmup_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"config.grad_var_warmup_steps must be an int >= 1; got {steps!r}")


def run(config: ml_collections.ConfigDict, workdir: Path, resume: bool = False) -> dict:
    """Train every estimator in turn (one sub-workdir each), measure the gradient variances
    under the protocol, then write the tables and plots."""
    validate(config)
    workdir = Path(workdir)
    results = []
    for name in config.estimators:
        sub = workdir / run_dir(name)
        cfg = sub_config(config, name)
        if resume and (sub / "results.json").exists():
            print(f"{name}: finished earlier, skipped", file=sys.stderr)
            results.append(read_json(sub / "results.json"))
            continue
        if resume and (sub / "diverged.json").exists():
            print(f"{name}: diverged earlier, skipped", file=sys.stderr)
            results.append(read_json(sub / "diverged.json"))
            continue
        sub_resume = resume and (sub / "config.json").exists()
        sub.mkdir(parents=True, exist_ok=True)
        write_json(sub / "config.json", config_to_dict(cfg))
        try:
            results.append(vae.run(cfg, sub, resume=sub_resume))
        except TrainingDiverged as e:
            print(f"{name}: diverged: {e}", file=sys.stderr)
            row = _diverged_row(cfg, sub, str(e))
            write_json(sub / "diverged.json", row)
            results.append(row)
    write_json(workdir / "results.json", results)
    if resume and (workdir / "grad_variance.json").exists():
        print("gradient-variance protocol: finished earlier, reused", file=sys.stderr)
        protocol = read_json(workdir / "grad_variance.json")
    else:
        protocol = measure_grad_variance(config, workdir)
    plot(workdir)
    print((workdir / "table.md").read_text(), file=sys.stderr)
    return {"runs": results, "grad_variance": protocol}


def _diverged_row(config, sub: Path, message: str) -> dict[str, Any]:
    rows = vae.read_metrics(sub)
    return {
        "estimator": config.estimator,
        "diverged": True,
        "message": message,
        "num_samples": train.num_samples(config, train.make_estimator(config)),
        "epochs": len(rows),
    }


# ----------------------------------------------------------------------------------------------
# The variance protocol


def _sha256(tree: Any) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _setup(config, name: str, data_dim: int, num_batches: int):
    """The ``Setup`` and initial state of estimator ``name`` (those ``vae.run`` starts from)."""
    return vae.init_run(sub_config(config, name), data_dim, num_batches)


def _reference_states(config, setup, state, train_x, epochs: list[int]) -> dict[int, Any]:
    """The reference run's training state at the end of each epoch in ``epochs`` (replayed).

    With ``num_seeds > 1`` the reference run trained its seeds as one program, so the replay
    runs that program and keeps the first seed's (``config.seed``) state: the same state, bit
    for bit, as the run's (a one-seed program agrees with it only to float32 rounding)."""
    num_seeds = int(config.get("num_seeds", 1))
    ref_cfg = sub_config(config, config.grad_var_reference)
    mesh = vae.make_mesh(ref_cfg)  # the run's own mesh and program: the same bits
    state_sharding, data_sharding, key_sharding = train.epoch_shardings(mesh)
    train_x = _mesh.put(train_x, data_sharding)
    if num_seeds > 1:
        _, states = seeds.init_seeds(ref_cfg, train_x.shape[1], setup.num_batches)
        many = train.make_seeds_epoch(setup, mesh)
        seed_list = seeds.seed_list(ref_cfg)

        def train_epoch(st, x, e):
            keys = jnp.stack([train.epoch_keys(s, e) for s in seed_list])
            st, losses = many(st, x, _mesh.put(keys, key_sharding))
            return st, losses[0]

        state, first = _mesh.put(states, state_sharding), lambda st: seeds.unstack(st, 0)
    else:
        one = train.make_train_epoch(setup, mesh)
        state = _mesh.put(state, state_sharding)

        def train_epoch(st, x, e):
            return one(st, x, _mesh.put(train.epoch_keys(config.seed, e), key_sharding))

        def first(st):
            return st

    out = {}
    for e in range(epochs[-1]):
        state, losses = train_epoch(state, train_x, e)
        if not np.all(np.isfinite(np.asarray(losses))):
            raise TrainingDiverged(
                f"the reference run ({setup.estimator}) diverged in epoch {e + 1}: the variance "
                "protocol needs a reference that trains; choose another grad_var_reference"
            )
        if e + 1 in epochs:
            out[e + 1] = first(state)
    return out


def _replay_matches_run(sub: Path, state, last_epoch: int) -> bool | None:
    """Whether the replayed final state equals the reference run's final checkpoint, leaf for
    leaf (``None``: no finished reference run in the workdir to compare with)."""
    if not (sub / "results.json").exists() or not (sub / "checkpoints").exists():
        return None
    num_seeds = int(read_json(sub / "results.json").get("num_seeds", 1))
    if num_seeds > 1:  # the run's first seed, config.seed
        restored = seeds.restore(sub, seeds.stack([state] * num_seeds))
        if restored is not None:
            restored = dataclasses.replace(
                restored, state=seeds.unstack(restored.state["seeds"], 0)
            )
    else:
        restored = checkpoint.restore(checkpoint.manager(sub), state)
    if restored is None or restored.epoch != last_epoch - 1 or restored.missing:
        return None
    return all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state), strict=True)
    )


def measure_grad_variance(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """Every estimator's encoder-gradient variance under the protocol (module docstring);
    writes and returns ``grad_variance.json``: the settings and one row per (epoch, estimator).
    """
    epochs = checkpoint_epochs(config)
    ref = config.grad_var_reference
    ref_cfg = sub_config(config, ref)
    _, train_np, _ = vae.load_data(ref_cfg)
    data_dim = train_np.shape[1]
    num_batches = len(train_np) // config.batch_size
    base = jax.random.key(config.seed)
    train_x = jnp.asarray(train_np)
    batch = vae.grad_variance_batch(ref_cfg, train_np)  # the batch vae.run measures on, too
    batch_hash = _sha256(batch)
    num_estimates = int(config.grad_var_num_estimates)
    steps = int(config.grad_var_warmup_steps)

    ref_setup, ref_state = _setup(config, ref, data_dim, num_batches)
    print(
        f"gradient-variance protocol: replaying the {ref} run to epoch {epochs[-1]}",
        file=sys.stderr,
    )
    states = _reference_states(config, ref_setup, ref_state, train_x, epochs)
    match = _replay_matches_run(workdir / run_dir(ref), states[epochs[-1]], epochs[-1])
    if match is False:
        raise RuntimeError(
            f"the replayed {ref} run differs from {workdir / run_dir(ref)}'s final checkpoint: the "
            "protocol's parameters would not be the reference run's; rerun with --overwrite"
        )

    names = [ref, *(n for n in config.estimators if n != ref)]
    pieces = {}
    for name in names:
        setup, state = _setup(config, name, data_dim, num_batches)
        pieces[name] = (
            setup,
            state,
            train.make_warm_baselines(setup, steps, config.batch_size),
            train.make_grad_variance(setup, num_estimates),
        )
    rows = []
    for epoch in epochs:
        params = states[epoch]["params"]
        params_hash = _sha256(params)
        k_var = jax.random.fold_in(jax.random.fold_in(base, _KEY_VARIANCE), epoch)
        k_warm = jax.random.fold_in(jax.random.fold_in(base, _KEY_WARMUP), epoch)
        sq_dev = {}
        for name in names:
            setup, init, warm, variance = pieces[name]
            state = dict(init, params=params)
            state = warm(state, train_x, k_warm)
            out = variance(state, batch, k_var)
            sq_dev[name] = np.asarray(out["sq_dev"], np.float64)
            finite = bool(np.all(np.isfinite(sq_dev[name])))
            row: dict[str, Any] = {
                "estimator": name,
                "epoch": epoch,
                "objective": OBJECTIVE if setup.est.objective != "mean" else "ELBO",
                "finite": finite,
            }
            if finite:
                row.update(train.variance_summary(sq_dev[name], setup.evaluations_per_example))
            else:
                row.update(
                    samples_per_example=setup.evaluations_per_example,
                    num_estimates=num_estimates,
                )
            row["mean_grad_norm"] = float(out["mean_grad_norm"])
            row["baseline_warmup_steps"] = steps if setup.stateful else 0
            row["params_sha256"] = params_hash
            row["batch_sha256"] = batch_hash
            row["key_data"] = np.asarray(jax.random.key_data(k_var)).tolist()
            rows.append(row)
            print(
                f"  epoch {epoch} {name}: per-sample variance "
                f"{row.get('per_sample_variance', float('nan')):.4g}",
                file=sys.stderr,
            )
        ref_row = next(r for r in rows if r["epoch"] == epoch and r["estimator"] == ref)
        for row in rows:
            if row["epoch"] != epoch or not (row["finite"] and ref_row["finite"]):
                continue
            ratio, se = train.variance_ratio(
                sq_dev[row["estimator"]],
                row["samples_per_example"],
                sq_dev[ref],
                ref_row["samples_per_example"],
            )
            row["ratio_to_reference"], row["ratio_to_reference_se"] = ratio, se
    protocol = {
        "reference": ref,
        "checkpoint_epochs": epochs,
        "num_estimates": num_estimates,
        "batch_size": int(batch.shape[0]),
        "baseline_warmup_steps": steps,
        "encoder_weights": int(
            sum(x.size for x in jax.tree.leaves(ref_state["params"]["encoder"]))
        ),
        "replay_matches_reference_run": match,
        "standard_error": "jackknife, leaving one estimate out (paired across estimators for "
        "the ratios)",
        "rows": rows,
    }
    write_json(workdir / "grad_variance.json", protocol)
    return protocol


# ----------------------------------------------------------------------------------------------
# Tables


def _num(value: float, se: float | None = None) -> str:
    text = f"{value:.3g}"
    return text if se is None else f"{text} ± {se:.2g}"


def _label(name: str, other: Collection[str]) -> str:
    return f"{name} †" if name in other else name


def _table_rows(
    results, protocol, other: Collection[str]
) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    epochs = protocol["checkpoint_epochs"] if protocol else []
    ref = protocol["reference"] if protocol else None
    header = [
        "estimator",
        "samples per example (K)",
        "epochs trained",
        "test ELBO",
        "test log p(x)",
    ]
    header += [f"per-sample grad variance at {ref} epoch {e}" for e in epochs]
    if epochs:
        header.append(f"× {ref}, epoch {epochs[-1]}")
    header += ["train time (s)", "examples/s"]
    by_key = {(r["estimator"], r["epoch"]): r for r in (protocol or {}).get("rows", [])}
    md, flat = [], []
    for r in results:
        name = r["estimator"]
        diverged = r.get("diverged", False)
        cells = [_label(name, other), str(r["num_samples"])]
        record: dict[str, Any] = {
            "estimator": name,
            "objective": OBJECTIVE if name in other else "ELBO",
            "samples_per_example": r["num_samples"],
            "diverged": diverged,
        }
        if diverged:
            cells += [f"diverged in epoch {r['epochs'] + 1}", "—", "—"]
            record["epochs_trained"] = r["epochs"]
        else:
            cells += [
                _epochs_cell(r),
                f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}",
                f"{r['test_log_likelihood']:.2f} ± {r['test_log_likelihood_se']:.2f}",
            ]
            record.update(
                epochs_trained=r["epochs"],
                test_elbo=r["test_elbo"],
                test_elbo_se=r["test_elbo_se"],
                test_log_likelihood=r["test_log_likelihood"],
                test_log_likelihood_se=r["test_log_likelihood_se"],
                ll_num_samples=r["ll_num_samples"],
            )
            if r.get("num_seeds", 1) > 1:
                record.update(
                    num_seeds=r["num_seeds"],
                    seeds_averaged=r["seeds_averaged"],
                    diverged_seeds=[
                        s for s, d in zip(r["seeds"], r["diverged_in_epoch"], strict=True) if d
                    ],
                )
        for e in epochs:
            v = by_key.get((name, e))
            if v is None or not v["finite"]:
                cells.append("—" if v is None else "non-finite")
                continue
            cells.append(_num(v["per_sample_variance"], v["per_sample_variance_se"]))
            record[f"per_sample_grad_var_epoch_{e}"] = v["per_sample_variance"]
            record[f"per_sample_grad_var_epoch_{e}_se"] = v["per_sample_variance_se"]
        if epochs:
            v = by_key.get((name, epochs[-1]))
            if v is not None and "ratio_to_reference" in v:
                cells.append(_num(v["ratio_to_reference"], v["ratio_to_reference_se"]))
                record["ratio_to_reference"] = v["ratio_to_reference"]
                record["ratio_to_reference_se"] = v["ratio_to_reference_se"]
            else:
                cells.append("—")
        if diverged:
            cells += ["—", "—"]
        else:
            cells += [f"{r['train_wall_time_s']:.0f}", f"{r['examples_per_s']:.0f}"]
            record.update(
                train_wall_time_s=r["train_wall_time_s"], examples_per_s=r["examples_per_s"]
            )
        md.append(cells)
        flat.append(record)
    return header, md, flat


def _epochs_cell(r: dict[str, Any]) -> str:
    if r.get("num_seeds", 1) == 1:
        return str(r["epochs"])
    return f"{r['epochs']} ({r['seeds_averaged']} of {r['num_seeds']} seeds)"


def _note(results, protocol, other: Collection[str]) -> str:
    first = next((r for r in results if not r.get("diverged")), None)
    parts = []
    multi = next((r for r in results if r.get("num_seeds", 1) > 1), None)
    if multi is not None:
        parts.append(
            f"Runs of several seeds ({multi['num_seeds']} seeds, trained as one program): the "
            "test ELBO and log p(x) are the mean over the seeds that did not diverge ± the "
            "standard error across those seeds (the seeds' own figures: <estimator>/seeds.md)."
        )
    if first is not None:
        parts.append(
            f"{first['dataset']} ({first['binarization']} binarisation), {first['architecture']}; "
            f"test ELBO on {first['test_examples']} test images, log p(x) importance-sampled with "
            f"k = {first['ll_num_samples']} on {first['ll_test_examples']} test images (± 1 SE)."
        )
    if protocol:
        p = protocol
        match = {
            True: "bit for bit equal to the reference run's final checkpoint",
            False: "NOT equal to the reference run's final checkpoint",
            None: "not compared with a reference run (none in this workdir)",
        }[p["replay_matches_reference_run"]]
        parts.append(
            f"Gradient variance: one protocol for every estimator. All are evaluated at the SAME "
            f"parameters, the {p['reference']} run's at the end of epochs "
            f"{', '.join(map(str, p['checkpoint_epochs']))} (replayed from its seed, {match}), "
            f"on the same batch of {p['batch_size']} training images with the same "
            f"{p['num_estimates']} keys. Reported: the total variance (trace of the covariance, "
            f"over {p['encoder_weights']} encoder weights) of one estimate of the encoder "
            f"gradient of the batch loss, times E, the evaluations of the cost per example (a "
            f"K-sample estimator pays for K, an antithetic pair for 2), ± its standard error "
            f"({p['standard_error']}), "
            f"from {p['num_estimates']} estimates; × {p['reference']}: the ratio of per-sample "
            f"variances. The moving average and NVIL's network are warmed up for "
            f"{p['baseline_warmup_steps']} steps at the checkpoint's fixed parameters "
            "(read, then update, as in training) from their initial state."
        )
    iwae = (
        f"† {', '.join(sorted(other))}: the gradient of the IWAE bound, a different objective: "
        "its variance is not comparable with the ELBO-gradient estimators'. "
        if other
        else ""
    )
    parts.append(
        f"{iwae}A diverged run (NaN/inf loss) is reported as diverged; the variance protocol "
        "does not depend on it."
    )
    return "\n\n".join(parts)


def write_tables(
    workdir: Path,
    results: list[dict[str, Any]],
    protocol: dict[str, Any] | None = None,
    other: Collection[str] = (),
) -> None:
    """``table.md``/``table.csv`` (training results and the protocol's per-sample variances)
    and ``grad_variance.md``/``grad_variance.csv`` (every protocol figure)."""
    header, md, flat = _table_rows(results, protocol, other)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in md]
    note = _note(results, protocol, other)
    atomic_write_text(workdir / "table.md", "\n".join(lines) + "\n\n" + note + "\n")
    atomic_write_text(workdir / "table.csv", _csv(flat))
    if protocol:
        keys = [
            "epoch",
            "estimator",
            "objective",
            "samples_per_example",
            "num_estimates",
            "variance",
            "variance_se",
            "per_sample_variance",
            "per_sample_variance_se",
            "ratio_to_reference",
            "ratio_to_reference_se",
            "baseline_warmup_steps",
            "params_sha256",
            "batch_sha256",
        ]
        rows = sorted(protocol["rows"], key=lambda r: r["epoch"])  # stable: the run's order
        atomic_write_text(workdir / "grad_variance.csv", _csv(rows, keys))
        head = ["epoch", "estimator", "E", "M", "variance of one estimate", "per evaluation (× E)"]
        head.append(f"× {protocol['reference']}")
        out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
        for r in rows:
            cells = [str(r["epoch"]), _label(r["estimator"], other)]
            cells.append(str(r["samples_per_example"]))
            cells.append(str(r["num_estimates"]))
            if r["finite"]:
                cells += [
                    _num(r["variance"], r["variance_se"]),
                    _num(r["per_sample_variance"], r["per_sample_variance_se"]),
                    _num(r["ratio_to_reference"], r["ratio_to_reference_se"])
                    if "ratio_to_reference" in r
                    else "—",
                ]
            else:
                cells += ["non-finite", "non-finite", "—"]
            out.append("| " + " | ".join(cells) + " |")
        atomic_write_text(workdir / "grad_variance.md", "\n".join(out) + "\n\n" + note + "\n")


def _csv(rows: list[dict[str, Any]], keys: list[str] | None = None) -> str:
    if keys is None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))})
    return buf.getvalue()


def plot(workdir: Path) -> list[Path]:
    """The tables, the protocol's variance figure, and the ELBO and own-parameters variance
    curves of all estimators, from the saved results only."""
    workdir = Path(workdir)
    config = read_json(workdir / "config.json")
    other = other_objective(config_from_dict(config))
    runs = {
        name: plots.read_rows(workdir / run_dir(name))
        for name in config["estimators"]
        if (workdir / run_dir(name) / "metrics.jsonl").exists()
    }
    title = f"{config['dataset']}, all estimators"
    paths = plots.plot_curves(workdir, runs, title=title, other_objective=other) if runs else []
    protocol = None
    if (workdir / "grad_variance.json").exists():
        protocol = read_json(workdir / "grad_variance.json")
        paths += plots.plot_protocol_variance(workdir, protocol, title=config["dataset"])
    if (workdir / "results.json").exists():
        write_tables(workdir, read_json(workdir / "results.json"), protocol, other)
    return paths
