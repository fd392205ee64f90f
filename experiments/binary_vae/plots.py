"""Figures of the binary-VAE benchmark, drawn only from saved results (``plot(workdir)``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._config import config_from_dict
from .._workdir import read_json, save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _good(values: list[float], diverged: list[int | None], epoch: int) -> np.ndarray:
    # A seed counts at an epoch only before it diverged.
    return np.asarray(
        [v for v, d in zip(values, diverged, strict=True) if d is None or epoch < d], np.float64
    )


def _curve(rows, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    steps, mean, se, n = [], [], [], []
    for r in rows:
        v = _good(r[key], r["diverged"], r["epoch"])
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        steps.append(r["step"])
        mean.append(v.mean())
        se.append(v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0)
        n.append(v.size)
    return np.asarray(steps), np.asarray(mean), np.asarray(se), np.asarray(n)


def plot(workdir: Path) -> list[Path]:
    """``<model>_elbo`` (the 1-sample train ELBO along training, mean ± SE over seeds) and
    ``<model>_variance`` (the per-evaluation encoder-gradient variance along each run, at its
    own parameters, and at the reference's shared parameters) for every model."""
    from . import entry_dir, read_metrics

    plt = _pyplot()
    workdir = Path(workdir)
    config = config_from_dict(read_json(workdir / "config.json"))
    paths: list[Path] = []
    for model in config.models:
        fig_e, ax_e = plt.subplots(figsize=(7, 4.5))
        fig_v, (ax_run, ax_shared) = plt.subplots(1, 2, figsize=(12, 4.5))
        protocol_path = workdir / model / "grad_variance.json"
        protocol = read_json(protocol_path) if protocol_path.exists() else None
        for i, entry in enumerate(config.estimators):
            rows = read_metrics(workdir / model / entry_dir(entry))
            if not rows:
                continue
            color = f"C{i % 10}"
            style = "-" if i < 10 else "--"
            steps, mean, se, n = _curve(rows, "train_elbo")
            ax_e.plot(steps, mean, style, color=color, label=f"{entry} ({n[-1]} seeds)")
            ax_e.fill_between(steps, mean - se, mean + se, color=color, alpha=0.2)
            steps, mean, se, n = _curve(rows, "per_eval_variance")
            ax_run.plot(steps, mean, style, color=color, label=entry)
            ax_run.fill_between(steps, mean - se, mean + se, color=color, alpha=0.2)
            if protocol is not None and entry in protocol["rows"]:
                cells = [protocol["rows"][entry][str(e)] for e in protocol["epochs"]]
                x = np.arange(len(cells)) + (i - len(config.estimators) / 2) * 0.05
                ax_shared.errorbar(
                    x,
                    [c["per_sample_variance"] for c in cells],
                    yerr=[c["per_sample_variance_se"] for c in cells],
                    fmt="o",
                    color=color,
                    label=entry,
                    ms=4,
                )
        ax_e.set_xlabel("step")
        ax_e.set_ylabel("train ELBO (1 sample)")
        ax_e.set_title(f"{model} model: train ELBO, mean ± SE over seeds")
        ax_e.legend(fontsize=7, ncol=2)
        for ax in (ax_run, ax_shared):
            ax.set_yscale("log")
            ax.set_ylabel("variance of the encoder gradient × evaluations")
        ax_run.set_xlabel("step")
        ax_run.set_title("along each run, at its own parameters (mean ± SE over seeds)")
        if protocol is not None:
            ax_shared.set_xticks(range(len(protocol["epochs"])))
            ax_shared.set_xticklabels([f"epoch {e}" for e in protocol["epochs"]])
            ax_shared.set_title(f"at {protocol['reference']}'s shared parameters (± jackknife SE)")
        ax_shared.legend(fontsize=6, ncol=2)
        paths += save_figure(fig_e, workdir / f"{model}_elbo")
        paths += save_figure(fig_v, workdir / f"{model}_variance")
        plt.close(fig_e)
        plt.close(fig_v)
    return paths
