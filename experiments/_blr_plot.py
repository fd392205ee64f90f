"""Figures 8, 9, 11 and 12 of Mohamed et al. (2020) from the saved arrays of a BLR run.

Curves are the mean over seeds, bands the range (min to max) over seeds.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np

from ._blr_train import LABELS
from ._workdir import save_figure

COLORS = {
    "score_function": "tab:red",
    "score_function_moving_average": "tab:orange",
    "score_function_delta": "tab:purple",
    "pathwise": "tab:blue",
    "pathwise_delta": "tab:cyan",
    "measure_valued": "tab:green",
}


# Delta-method and measure-valued curves dashed: they often lie on top of another variant's.
STYLES = {"score_function_delta": "--", "pathwise_delta": "--", "measure_valued": "--"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite_seeds(per_seed: np.ndarray) -> np.ndarray:
    """The seeds (rows) whose whole curve is finite: diverged seeds are left out of the curves."""
    return per_seed[np.isfinite(per_seed).all(axis=tuple(range(1, per_seed.ndim)))]


def _ok(arrays: dict, variant: str) -> np.ndarray:
    """``[S]`` mask of the seeds that did not diverge (their ELBO curve is finite); a diverged
    seed's accuracy stays finite (NaN weights classify as one class), so test the ELBO."""
    elbo = arrays[f"{variant}/elbo"]
    return np.isfinite(elbo).all(axis=tuple(range(1, elbo.ndim)))


def _diverged_note(config: ml_collections.ConfigDict, arrays: dict, variants) -> str:
    """``"; diverged (left out): score function seeds 1, 3"`` or ``""``."""
    parts = []
    for variant in variants:
        elbo = arrays[f"{variant}/elbo"]
        bad = [s for s in range(elbo.shape[0]) if not np.isfinite(elbo[s]).all()]
        if bad:
            parts.append(f"{LABELS[variant]} seed(s) {', '.join(map(str, bad))}")
    return f"\ndiverged, left out: {'; '.join(parts)}" if parts else ""


def _band(
    ax, x, per_seed: np.ndarray, color: str, label: str | None, log: bool = False, ls: str = "-"
):
    """Mean over seeds (axis 0; geometric if ``log``) as a line, min-max over seeds as a band.

    Seeds that diverged (a non-finite value anywhere) are left out; nothing is drawn if none
    is left.
    """
    per_seed = _finite_seeds(per_seed)
    if per_seed.shape[0] == 0:
        return
    mean = np.exp(np.log(per_seed).mean(axis=0)) if log else per_seed.mean(axis=0)
    ax.plot(x, mean, color=color, label=label, lw=1.2, ls=ls)
    if per_seed.shape[0] > 1:
        ax.fill_between(x, per_seed.min(axis=0), per_seed.max(axis=0), color=color, alpha=0.2)


def fig8(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """Per-feature variance of the log-scale gradient over training: score function, pathwise."""
    plt = _plt()
    steps = arrays["steps"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, variant in zip(axes, ("score_function", "pathwise"), strict=True):
        var = arrays[f"{variant}/var_log_scale"][_ok(arrays, variant)]  # [S, E, D]
        per_feature = np.exp(np.log(var).mean(axis=0))  # geometric mean over seeds, [E, D]
        colors = plt.cm.viridis(np.linspace(0, 1, var.shape[-1]))
        for d in range(var.shape[-1]):
            ax.plot(steps, per_feature[:, d], color=colors[d], lw=0.6, alpha=0.8)
        _band(ax, steps, var.mean(axis=-1), "black", "mean over features", log=True)
        ax.set_yscale("log")
        ax.set_title(f"{LABELS[variant]}: Var of d/d log-scale, per feature")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="major")
    axes[0].set_ylabel("single-sample variance")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(
        f"Bayesian logistic regression, {var.shape[-1]} features (colour = feature index); "
        f"{var.shape[0]} seeds" + _diverged_note(config, arrays, ("score_function", "pathwise")),
        fontsize=10,
    )
    fig.tight_layout()
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def fig9(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """ELBO, accuracy and the average gradient variances over training, every variant."""
    plt = _plt()
    steps = arrays["steps"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = (
        ("elbo", "ELBO (full data)", False),
        ("accuracy", "accuracy (full data)", False),
        ("var_loc", "Var of d/d mean (average over features)", True),
        ("var_log_scale", "Var of d/d log-scale (average over features)", True),
    )
    lows = []
    for ax, (name, title, log) in zip(axes.flat, panels, strict=True):
        for variant in config.variants:
            per_seed = arrays[f"{variant}/{name}"][_ok(arrays, variant)]
            if per_seed.ndim == 3:
                per_seed = per_seed.mean(axis=-1)
            style = STYLES.get(variant, "-")
            _band(ax, steps, per_seed, COLORS[variant], LABELS[variant], log=log, ls=style)
            if name == "elbo" and len(_finite_seeds(per_seed)):
                lows.append(np.percentile(_finite_seeds(per_seed).mean(axis=0), 5))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
    # The first few hundred steps of ELBO are far below the rest; show the interesting part.
    if lows:  # some seed of some variant did not diverge
        ok = [arrays[f"{v}/elbo"][_ok(arrays, v)] for v in config.variants]
        top = max(a.max() for a in ok if a.size)
        low = min(lows)
        axes[0, 0].set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
    if axes[0, 1].get_legend_handles_labels()[0]:
        axes[0, 1].legend(loc="lower right", fontsize=8)
    n_seeds = arrays[f"{config.variants[0]}/elbo"].shape[0]
    mvd = (
        f" (measure-valued: {config.measure_valued_variance_samples})"
        if "measure_valued" in config.variants
        else ""
    )
    fig.suptitle(
        f"Bayesian logistic regression: N = {config.num_samples} samples, batch "
        f"{config.batch_size}, {n_seeds} seeds (line = mean, band = range over seeds)\n"
        f"evaluated every {config.eval_every} steps on the full data: ELBO and accuracy from "
        f"{config.eval_samples} samples, variances from {config.variance_samples}{mvd}"
        + _diverged_note(config, arrays, config.variants),
        fontsize=10,
    )
    fig.tight_layout()
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def _sweep(config, arrays, stem: Path, xlabel: str, swept: str, fixed: str) -> list[Path]:
    """Final ELBO against the swept value; diverged seeds (NaN) are left out and listed."""
    plt = _plt()
    values = arrays["sweep_values"]
    seeds = arrays[f"{config.variants[0]}/{config.sweep}={values[0]}/elbo"].shape[0]
    title = f"Final ELBO against {swept} ({fixed}; mean ± sd over {seeds} seeds)"
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    notes = []
    for i, variant in enumerate(config.variants):
        finals = np.stack(
            [arrays[f"{variant}/{config.sweep}={v}/elbo"][:, -1] for v in values], axis=1
        )  # [S, V]
        ok = np.isfinite(finals)
        kept = np.where(ok, finals, 0.0)
        count = ok.sum(axis=0)
        mean = np.where(count > 0, kept.sum(axis=0) / np.maximum(count, 1), np.nan)
        sq = np.where(ok, np.square(finals - mean[None]), 0.0).sum(axis=0)
        std = np.sqrt(sq / np.maximum(count, 1))
        # Small horizontal offsets keep the error bars of different variants apart.
        x = values * (1 + 0.03 * (i - (len(config.variants) - 1) / 2))
        ax.errorbar(
            x,
            mean,
            yerr=std,
            color=COLORS[variant],
            label=LABELS[variant],
            ls=STYLES.get(variant, "-"),
            marker="o",
            ms=3,
            capsize=2,
            lw=1.2,
        )
        lost = [
            f"{v} ({finals.shape[0] - c}/{finals.shape[0]})"
            for v, c in zip(values, count, strict=True)
            if c < finals.shape[0]
        ]
        if lost:
            notes.append(f"{LABELS[variant]} at {', '.join(lost)}")
    ax.set_xscale("log")
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"ELBO after {config.steps} steps")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if notes:
        fig.text(
            0.01,
            -0.02,
            "Diverged seeds (NaN/inf, left out): " + "; ".join(notes),
            fontsize=7,
            va="top",
            wrap=True,
        )
    fig.tight_layout()
    paths = save_figure(fig, stem)
    plt.close(fig)
    return paths


def fig11(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """Final ELBO against the number of samples N (mean and sd over seeds)."""
    xlabel = "number of samples N per gradient estimate"
    return _sweep(config, arrays, stem, xlabel, "N", f"batch {config.batch_size}")


def fig12(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """Final ELBO against the minibatch size (mean and sd over seeds)."""
    fixed = f"N = {config.num_samples}"
    return _sweep(config, arrays, stem, "minibatch size", "batch size", fixed)


DRAW = {"fig8": fig8, "fig9": fig9, "fig11": fig11, "fig12": fig12}
