"""Figures 8 to 14 of Mohamed et al. (2020) from the saved arrays of a BLR run.

Every curve and point averages only the seeds that did not diverge (NaN/inf during training);
the figures say how many seeds are behind each (``n = 3 of 5 seeds``) and how many diverged.
Curves are the mean over those seeds, bands their range (min to max); sweep points are the mean
± its standard error (sample sd / sqrt(n)), so points compare as estimates. A single seed gets
no band or error bar, and no line through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from estimators import registry

from .._workdir import save_figure

# The colours of the paper's six estimators; any other takes the next colour of CYCLE.
COLORS = {
    "score_function": "tab:red",
    "score_function+moving_average": "tab:orange",
    "score_function+delta": "tab:purple",
    "pathwise": "tab:blue",
    "pathwise+delta": "tab:cyan",
    "measure_valued": "tab:green",
}
CYCLE = ("tab:brown", "tab:pink", "tab:olive", "tab:gray", "black", "gold", "navy", "lime")
# Delta-method and measure-valued curves dashed: they often lie on top of another variant's.
STYLES = {"score_function+delta": "--", "pathwise+delta": "--", "measure_valued": "--"}
# The variants' names in results saved before the estimator registry (to redraw such runs).
OLD_NAMES = {
    "score_function_moving_average": "score_function+moving_average",
    "score_function_delta": "score_function+delta",
    "pathwise_delta": "pathwise+delta",
}


def _save(fig: Any, stem: Path) -> list[Path]:
    """Lay out ``fig``, save it as ``stem``.png/.pdf, close it; the written paths."""
    fig.tight_layout()
    paths = save_figure(fig, stem)
    _plt().close(fig)
    return paths


def looks(variants) -> dict[str, tuple[str, str]]:
    """``{variant: (colour, line style)}``: the paper's six keep theirs; any other variant takes
    the next colour of ``CYCLE`` (in the order given) and a solid line."""
    out, others = {}, 0
    for variant in variants:
        name = OLD_NAMES.get(variant, variant)
        if name in COLORS:
            out[variant] = (COLORS[name], STYLES.get(name, "-"))
        else:
            out[variant] = (CYCLE[others % len(CYCLE)], "-")
            others += 1
    return out


def labels(config: ml_collections.ConfigDict, arrays: dict) -> dict[str, str]:
    """``{variant: legend label}``: the estimators' labels saved with the results; for results
    saved before labels were, the registry's label of each (known) variant."""
    if "labels" in arrays:
        return dict(zip(config.variants, (str(s) for s in arrays["labels"]), strict=True))
    out = {}
    for variant in config.variants:
        try:
            out[variant] = registry.label(OLD_NAMES.get(variant, variant))
        except (ValueError, TypeError):  # a spec the registry no longer builds
            out[variant] = variant
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(arrays: dict, tag: str) -> np.ndarray:
    """``[S]`` mask of the seeds of ``tag`` (a variant, or ``variant/key=value``) that did not
    diverge: the runner's saved ``<tag>/diverged`` flags, or, for results saved before those
    existed, a finite ELBO curve (a diverged seed's accuracy stays finite: NaN weights classify
    as one class)."""
    if f"{tag}/diverged" in arrays:
        return ~np.asarray(arrays[f"{tag}/diverged"], bool)
    elbo = arrays[f"{tag}/elbo"]
    return np.isfinite(elbo).all(axis=tuple(range(1, elbo.ndim)))


def seed_counts(arrays: dict, tag: str) -> tuple[int, int]:
    """``(n, S)``: the seeds behind ``tag``'s curve or point (did not diverge), of ``S`` run."""
    ok = _ok(arrays, tag)
    return int(ok.sum()), int(ok.shape[0])


def count_label(n: int, total: int) -> str:
    """``"n = 3 of 5 seeds, 2/5 diverged"``, ``"n = 5 of 5 seeds"``, ``"all 5 seeds diverged"``."""
    if n == 0:
        return f"all {total} seeds diverged"
    lost = total - n
    return f"n = {n} of {total} seeds" + (f", {lost}/{total} diverged" if lost else "")


def _diverged_note(arrays: dict, variants, names: dict[str, str]) -> str:
    """``"\ndiverged, left out: score function seed(s) 1, 3"`` or ``""`` (``names``: labels)."""
    parts = []
    for variant in variants:
        bad = np.flatnonzero(~_ok(arrays, variant))
        if bad.size:
            parts.append(f"{names[variant]} seed(s) {', '.join(map(str, bad))}")
    return f"\ndiverged, left out: {'; '.join(parts)}" if parts else ""


def _coefficient(config: ml_collections.ConfigDict) -> str:
    """The delta-method coefficient for a title: ``"1"``, or ``"optimal (25 samples)"``."""
    c = config.get("cv_coefficient", 1.0)
    if c == "optimal":
        return f"optimal ({config.get('cv_coefficient_samples', 20)} samples)"
    return f"{float(c):g}"


def _band(
    ax, x, per_seed: np.ndarray, color: str, label: str | None, log: bool = False, ls: str = "-"
):
    """Mean over seeds (axis 0; geometric if ``log``) as a line, min-max over seeds as a band.

    ``per_seed`` holds only the seeds that did not diverge. With one seed the line is that seed
    and there is no band; with none, only the legend entry is drawn.
    """
    if per_seed.shape[0] == 0:
        ax.plot([], [], color=color, label=label, lw=1.2, ls=ls)
        return
    mean = np.exp(np.log(per_seed).mean(axis=0)) if log else per_seed.mean(axis=0)
    ax.plot(x, mean, color=color, label=label, lw=1.2, ls=ls)
    if per_seed.shape[0] > 1:
        ax.fill_between(x, per_seed.min(axis=0), per_seed.max(axis=0), color=color, alpha=0.2)


def fig8(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """Per-feature variance of the log-scale gradient over training: score function, pathwise."""
    plt = _plt()
    steps = arrays["steps"]
    names = labels(config, arrays)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9), sharey=True)
    for ax, variant in zip(axes, ("score_function", "pathwise"), strict=True):
        var = arrays[f"{variant}/var_log_scale"][_ok(arrays, variant)]  # [n, E, D]
        n, total = seed_counts(arrays, variant)
        if n:
            per_feature = np.exp(np.log(var).mean(axis=0))  # geometric mean over seeds, [E, D]
            colors = plt.cm.viridis(np.linspace(0, 1, var.shape[-1]))
            for d in range(var.shape[-1]):
                ax.plot(steps, per_feature[:, d], color=colors[d], lw=0.6, alpha=0.8)
        band = "line = mean over features" + (", band = range over seeds" if n > 1 else "")
        _band(ax, steps, var.mean(axis=-1), "black", band, log=True)
        ax.set_yscale("log")
        ax.set_title(
            f"{names[variant]}: Var of d/d log-scale, per feature\n({count_label(n, total)})",
            fontsize=10,
        )
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="major")
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_ylabel("single-sample variance")
    fig.suptitle(
        f"Bayesian logistic regression, {arrays['pathwise/var_log_scale'].shape[-1]} features "
        "(colour = feature index): geometric mean over the seeds that did not diverge"
        + _diverged_note(arrays, ("score_function", "pathwise"), names),
        fontsize=10,
    )
    return _save(fig, stem)


def fig9(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """ELBO, accuracy and the average gradient variances over training, every variant.

    Each curve averages the seeds that did not diverge; the legend gives how many (n of S) and
    how many diverged. Figure 10 is this figure at N = 5.
    """
    return _curves(config, arrays, stem, equal_cost=False)


def fig14(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """Fig 9's panels at equal cost: every variant evaluates the log-likelihood
    ``config.cost_budget`` times per step, with its own N (in the legend); the variance panels
    show the variance of the step's N-sample estimate (single-sample variance / N), the
    quantity that matters at equal cost."""
    return _curves(config, arrays, stem, equal_cost=True)


def _curves(
    config: ml_collections.ConfigDict, arrays: dict, stem: Path, *, equal_cost: bool
) -> list[Path]:
    """Figures 9, 10 (``equal_cost=False``) and 14 (``True``: per-variant N from the saved
    ``num_samples``, variances divided by it)."""
    plt = _plt()
    steps = arrays["steps"]
    names, look = labels(config, arrays), looks(config.variants)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.8))
    what = "Var of the step's N-sample estimate of" if equal_cost else "Var of"
    panels = (
        ("elbo", "ELBO (full data)", False),
        ("accuracy", "accuracy (full data)", False),
        ("var_loc", f"{what} d/d mean (average over features)", True),
        ("var_log_scale", f"{what} d/d log-scale (average over features)", True),
    )
    if equal_cost:  # per variant, in the order of config.variants
        own_n = dict(zip(config.variants, arrays["num_samples"].tolist(), strict=True))
    lows, tops = [], []
    for ax, (name, title, log) in zip(axes.flat, panels, strict=True):
        for variant in config.variants:
            per_seed = arrays[f"{variant}/{name}"][_ok(arrays, variant)]
            if per_seed.ndim == 3:
                per_seed = per_seed.mean(axis=-1)
                if equal_cost:  # single-sample variance -> variance of the N-sample mean
                    per_seed = per_seed / own_n[variant]
            n, total = seed_counts(arrays, variant)
            label = f"{names[variant]} ({count_label(n, total)})"
            if equal_cost:
                label = f"{names[variant]}, N = {own_n[variant]} ({count_label(n, total)})"
            color, style = look[variant]
            _band(ax, steps, per_seed, color, label, log=log, ls=style)
            if name == "elbo" and n:
                lows.append(np.percentile(per_seed.mean(axis=0), 5))
                tops.append(per_seed.max())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
    # The first few hundred steps of ELBO are far below the rest; show the interesting part.
    if lows:  # some seed of some variant did not diverge
        top, low = max(tops), min(lows)
        axes[0, 0].set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
    axes[0, 1].legend(loc="lower right", fontsize=7.5)
    if "variance_samples" in arrays:  # per variant, in the order of config.variants
        counts = dict(zip(config.variants, arrays["variance_samples"].tolist(), strict=True))
    else:  # results saved before the counts were: only the measure-valued one had its own
        counts = {v: config.measure_valued_variance_samples for v in config.variants}
        counts = {v: c for v, c in counts.items() if v == "measure_valued"}
    own = [f"{names[v]}: {c}" for v, c in counts.items() if c != config.variance_samples]
    mvd = f" ({'; '.join(own)})" if own else ""
    n_seeds = arrays[f"{config.variants[0]}/elbo"].shape[0]
    samples = f"N = {config.num_samples} samples, "
    if equal_cost:
        samples = (
            f"equal cost, {config.cost_budget} log-likelihood evaluations per step for every "
            "variant (N = that / its evaluations per sample, in the legend);\n"
        )
    fig.suptitle(
        f"Bayesian logistic regression: {samples}batch "
        f"{config.batch_size}, {n_seeds} seeds per variant; line = mean over the n seeds that "
        "did not diverge (n in the legend), band = their range (none when n = 1)\n"
        f"evaluated every {config.eval_every} steps on the full data: ELBO and accuracy from "
        f"{config.eval_samples} samples, variances from {config.variance_samples}{mvd}; "
        f"delta-method coefficient {_coefficient(config)}"
        + _diverged_note(arrays, config.variants, names),
        fontsize=10,
    )
    return _save(fig, stem)


def fig13(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """The single-sample gradient variance over training of each variant (the estimators
    without control variates, in the paper), for the mean and the log-scale, averaged over the
    features: geometric mean over the seeds that did not diverge, band = their range."""
    plt = _plt()
    steps = arrays["steps"]
    names, look = labels(config, arrays), looks(config.variants)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    panels = (("var_loc", "d/d mean"), ("var_log_scale", "d/d log-scale"))
    for ax, (name, title) in zip(axes, panels, strict=True):
        for variant in config.variants:
            per_seed = arrays[f"{variant}/{name}"][_ok(arrays, variant)].mean(axis=-1)  # [n, E]
            n, total = seed_counts(arrays, variant)
            color, style = look[variant]
            label = f"{names[variant]} ({count_label(n, total)})"
            _band(ax, steps, per_seed, color, label, log=True, ls=style)
        ax.set_yscale("log")
        ax.set_title(f"Var of {title} (single sample, average over features)", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("single-sample variance")
    axes[1].legend(loc="upper right", fontsize=7.5)
    counts = dict(zip(config.variants, arrays["variance_samples"].tolist(), strict=True))
    samples = ", ".join(f"{names[v]} {c}" for v, c in counts.items())
    n_seeds = arrays[f"{config.variants[0]}/elbo"].shape[0]
    fig.suptitle(
        f"Bayesian logistic regression, gradient variance without control variates: trained "
        f"with N = {config.num_samples}, batch {config.batch_size}, {n_seeds} seeds per variant;"
        f"\nline = geometric mean over the n seeds that did not diverge, band = their range;"
        f"\nevery {config.eval_every} steps on the full data from {samples} samples"
        + _diverged_note(arrays, config.variants, names),
        fontsize=9.5,
    )
    return _save(fig, stem)


def sweep_statistics(finals: np.ndarray, ok: np.ndarray) -> dict[str, np.ndarray]:
    """Per swept value, the statistics of the final ELBO over the seeds that did not diverge.

    Args:
      finals: ``[S, V]`` final ELBO per seed and value; ok: ``[S, V]`` True where the seed did
        not diverge (only those entries are read).

    Returns:
      ``{"n": [V] int, "mean": [V], "sd": [V], "se": [V]}``: the mean (NaN where n = 0), the
      sample sd (``ddof=1``) and the mean's standard error ``sd / sqrt(n)`` (both NaN where
      n < 2, so no error bar comes from a single seed).
    """
    n = ok.sum(axis=0)
    kept = np.where(ok, finals, 0.0)  # diverged entries (NaN/inf) never enter the arithmetic
    mean = np.where(n > 0, kept.sum(axis=0) / np.maximum(n, 1), np.nan)
    dev = np.where(ok, kept - np.nan_to_num(mean)[None], 0.0)
    sd = np.where(n > 1, np.sqrt(np.square(dev).sum(axis=0) / np.maximum(n - 1, 1)), np.nan)
    se = sd / np.sqrt(np.maximum(n, 1))
    return {"n": n, "mean": mean, "sd": sd, "se": se}


def _sweep_limits(all_stats: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    """ELBO axis limits: every point of two seeds or more with its error bar, plus a margin;
    single-seed points widen the axis only up to 3 times that range (beyond it, they are drawn
    at the edge). ``(-inf, inf)`` if no point has two seeds."""
    lows, highs, singles = [], [], []
    for stats in all_stats:
        several = stats["n"] >= 2
        lows += list(stats["mean"][several] - stats["se"][several])
        highs += list(stats["mean"][several] + stats["se"][several])
        singles += list(stats["mean"][stats["n"] == 1])
    if not lows:
        return -np.inf, np.inf
    low, high = min(lows), max(highs)
    span = max(high - low, 1e-3)
    reach_low, reach_high = low - 3 * span, high + 3 * span
    low = min([low] + [v for v in singles if v >= reach_low])
    high = max([high] + [v for v in singles if v <= reach_high])
    margin = 0.06 * (high - low) or 0.5
    return low - margin, high + margin


def _sweep(config, arrays, stem: Path, xlabel: str, swept: str, fixed: str) -> list[Path]:
    """Final ELBO against the swept value, with the seeds behind each point and the divergences.

    Top: mean ± standard error over the seeds that did not diverge. A line joins two
    neighbouring points only when both average at least two seeds; a point from a single seed is
    a hollow marker with no line and no error bar; every point with fewer than all seeds is
    labelled ``n=k``. Bottom: the number of seeds that diverged at each value.
    """
    plt = _plt()
    values = arrays["sweep_values"]
    total = arrays[f"{config.variants[0]}/{config.sweep}={values[0]}/elbo"].shape[0]
    fig, (ax, ax_div) = plt.subplots(
        2, 1, figsize=(7, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1.1]}
    )
    width = 0.03
    names, look = labels(config, arrays), looks(config.variants)
    points = {}
    for i, variant in enumerate(config.variants):
        tags = [f"{variant}/{config.sweep}={v}" for v in values]
        finals = np.stack([arrays[f"{t}/elbo"][:, -1] for t in tags], axis=1)  # [S, V]
        ok = np.stack([_ok(arrays, t) for t in tags], axis=1)  # [S, V]
        # Small horizontal offsets keep the error bars of different variants apart.
        x = values * (1 + width * (i - (len(config.variants) - 1) / 2))
        points[variant] = (x, sweep_statistics(finals, ok))
    low, high = _sweep_limits([stats for _, stats in points.values()])
    for variant, (x, stats) in points.items():
        n, mean, se = stats["n"], stats["mean"], stats["se"]
        color, style = look[variant]
        several = n >= 2
        # NaN breaks the line: it runs only between neighbouring points of >= 2 seeds.
        ax.plot(
            x,
            np.where(several, mean, np.nan),
            color=color,
            ls=style,
            lw=1.2,
            marker="o",
            ms=3.5,
            label=names[variant],
        )
        ax.errorbar(
            x[several], mean[several], yerr=se[several], color=color, ls="none", capsize=2, lw=1.0
        )
        # A single seed: an isolated hollow marker; one off the scale of the multi-seed points
        # is drawn at the edge as a triangle pointing to it, its value written beside it.
        single = n == 1
        shown = np.clip(mean, low, high)
        off = single & (mean != shown)
        below, above = off & (mean < low), off & (mean > high)
        for where, marker in ((single & ~off, "o"), (below, "v"), (above, "^")):
            ax.plot(
                x[where],
                shown[where],
                ls="none",
                marker=marker,
                ms=6,
                mfc="white",
                mec=color,
                mew=1.3,
            )
        for xi, yi, ni, mi, o in zip(x, shown, n, mean, off, strict=True):
            if 0 < ni < total:
                note = f"n={ni}: {mi:.0f} (off scale)" if o else f"n={ni}"
                ax.annotate(
                    note,
                    (xi, yi),
                    xytext=(3, 3),
                    textcoords="offset points",
                    fontsize=6.5,
                    color=color,
                )
        ax_div.plot(x, total - n, color=color, ls=style, lw=1.0, marker="o", ms=3)
    if np.isfinite([low, high]).all():
        ax.set_ylim(low, high)
    ax.plot(
        [],
        [],
        ls="none",
        marker="o",
        ms=6,
        mfc="white",
        mec="gray",
        mew=1.3,
        label="a single seed (n=1): no line, no bar",
    )
    ax.set_xscale("log")
    ax.set_ylabel(f"ELBO after {config.steps} steps")
    ax.set_title(
        f"Final ELBO against {swept} ({fixed}): mean ± SE over the seeds that did not diverge,\n"
        f"of {total} seeds per point; n=k marks a point with fewer, the lower panel counts "
        "the diverged",
        fontsize=9.5,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    ax_div.set_xscale("log")
    ax_div.set_xticks(values, [str(v) for v in values])
    ax_div.minorticks_off()
    ax_div.set_ylim(-0.4, total + 0.4)
    ax_div.set_yticks(range(0, total + 1, max(1, total // 5)))
    ax_div.set_ylabel(f"diverged\n(of {total})", fontsize=8)
    ax_div.set_xlabel(xlabel)
    ax_div.grid(alpha=0.3)
    return _save(fig, stem)


def fig11(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """Final ELBO against the number of samples N (mean and SE over seeds)."""
    xlabel = "number of samples N per gradient estimate"
    fixed = f"batch {config.batch_size}, delta-method c = {_coefficient(config)}"
    return _sweep(config, arrays, stem, xlabel, "N", fixed)


def fig12(config: ml_collections.ConfigDict, arrays: dict, stem: Path) -> list[Path]:
    """Final ELBO against the minibatch size (mean and SE over seeds)."""
    fixed = f"N = {config.num_samples}, delta-method c = {_coefficient(config)}"
    return _sweep(config, arrays, stem, "minibatch size", "batch size", fixed)


DRAW = {
    "fig8": fig8,
    "fig9": fig9,
    "fig10": fig9,  # Figure 9 at N = 5
    "fig11": fig11,
    "fig12": fig12,
    "fig13": fig13,
    "fig14": fig14,
}
