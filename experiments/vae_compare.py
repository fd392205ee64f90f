"""Comparison runner: train the same VAE with every encoder-gradient estimator, tabulate them.

Each estimator's run goes into ``<workdir>/<estimator>/`` (a complete ``vae`` workdir: its own
config.json, metrics, checkpoints, figures); the comparison writes ``table.md``, ``table.csv``
and ``results.json`` (test ELBO, test log-likelihood, mean gradient variance, wall time,
examples/s per estimator) and the ELBO and gradient-variance curves of all estimators on one
plot each. ``--resume`` skips finished estimators and resumes the interrupted one.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import ml_collections

from . import _vae_plots, vae
from ._config import config_from_dict, config_to_dict
from ._vae_config import ESTIMATORS
from ._workdir import atomic_write_text, read_json, write_json

RESUMABLE = True

COLUMNS = (
    ("estimator", "estimator"),
    ("num_samples", "samples per example"),
    ("epochs", "epochs"),
    ("test_elbo", "test ELBO"),
    ("test_log_likelihood", "test log p(x)"),
    ("grad_var_mean", "encoder grad variance (mean over coords)"),
    ("grad_var_trace", "trace"),
    ("train_wall_time_s", "train time (s)"),
    ("examples_per_s", "examples/s"),
)


def sub_config(config: ml_collections.ConfigDict, estimator: str) -> ml_collections.ConfigDict:
    """The ``vae`` config of one estimator: the comparison's settings plus ``estimator``."""
    d = config_to_dict(config)
    d.pop("estimators")
    d["runner"] = "vae"
    d["estimator"] = estimator
    return config_from_dict(d)


def validate(config: ml_collections.ConfigDict) -> None:
    """Every listed estimator known, listed once, and each sub-config valid."""
    names = list(config.estimators)
    if not names:
        raise ValueError("config.estimators is empty")
    for name in names:
        if name not in ESTIMATORS:
            raise ValueError(
                f"config.estimators: unknown estimator {name!r}; choose from {ESTIMATORS}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"config.estimators lists an estimator twice: {names}")
    for name in names:
        vae.validate(sub_config(config, name))


def run(config: ml_collections.ConfigDict, workdir: Path, resume: bool = False) -> dict:
    """Train every estimator in turn (one sub-workdir each), then write the table and plots."""
    validate(config)
    workdir = Path(workdir)
    results = []
    for name in config.estimators:
        sub = workdir / name
        cfg = sub_config(config, name)
        if resume and (sub / "results.json").exists():
            print(f"{name}: finished earlier, skipped", file=sys.stderr)
            results.append(read_json(sub / "results.json"))
            continue
        sub_resume = resume and (sub / "config.json").exists()
        sub.mkdir(parents=True, exist_ok=True)
        write_json(sub / "config.json", config_to_dict(cfg))
        results.append(vae.run(cfg, sub, resume=sub_resume))
    write_json(workdir / "results.json", results)
    write_tables(workdir, results)
    plot(workdir)
    print((workdir / "table.md").read_text(), file=sys.stderr)
    return {"runs": results}


def _fmt(key: str, value: Any, row: dict[str, Any]) -> str:
    if value is None:
        return ""
    if key in ("test_elbo", "test_log_likelihood"):
        return f"{value:.2f} ± {row[key + '_se']:.2f}"
    if key.startswith("grad_var"):
        return f"{value:.3g}"
    if key in ("train_wall_time_s", "examples_per_s"):
        return f"{value:.0f}"
    return str(value)


def write_tables(workdir: Path, results: list[dict[str, Any]]) -> None:
    """``table.md`` and ``table.csv`` of the runs' results."""
    header = [title for _, title in COLUMNS]
    first = results[0]
    note = (
        f"{first['dataset']} ({first['binarization']} binarisation), {first['architecture']}; "
        f"test ELBO on {first['test_examples']} test images, log p(x) importance-sampled with "
        f"k = {first['ll_num_samples']} on {first['ll_test_examples']} test images (± 1 SE); "
        "gradient variance over independent estimates at fixed parameters on a fixed batch, "
        "averaged over the measurements made during training."
    )
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    for r in results:
        lines.append("| " + " | ".join(_fmt(k, r.get(k), r) for k, _ in COLUMNS) + " |")
    atomic_write_text(workdir / "table.md", "\n".join(lines) + "\n\n" + note + "\n")
    buf = io.StringIO()
    keys = [k for k, _ in COLUMNS] + ["test_elbo_se", "test_log_likelihood_se", "ll_num_samples"]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in results:
        w.writerow(r)
    atomic_write_text(workdir / "table.csv", buf.getvalue())


def plot(workdir: Path) -> list[Path]:
    """ELBO and gradient-variance curves of all estimators, from the sub-workdirs' metrics."""
    workdir = Path(workdir)
    config = read_json(workdir / "config.json")
    runs = {
        name: _vae_plots.read_rows(workdir / name)
        for name in config["estimators"]
        if (workdir / name / "metrics.jsonl").exists()
    }
    paths = _vae_plots.plot_curves(workdir, runs, title=f"{config['dataset']}, all estimators")
    if (workdir / "results.json").exists():
        write_tables(workdir, read_json(workdir / "results.json"))
    return paths
