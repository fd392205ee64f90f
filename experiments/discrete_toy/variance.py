r"""The toy's variance figures: variance per cost of every estimator against :math:`\theta`
(``figure = "theta"``) or against the dimension :math:`D` (``figure = "dims"``).

Each estimate is of :math:`\partial E f / \partial\alpha_1` (the logit of coordinate 1) with
:math:`f(b) = \sum_{d \le D} (b_d - t)^2`; the y-axis is its variance times the evaluations
of ``f`` the estimate costs (``measure.evaluations``), so that one-sample, two-evaluation
(ARM/DisARM) and ``K``-sample estimators compare at equal cost. Lines: the exact values of
``exact.moments`` where one exists (REBAR's at its initial :math:`\eta = 1` and temperature,
dotted: its points are after ``adapt_steps`` updates); points: Monte Carlo, ``num_estimates``
independent estimates each, +-2 standard errors. Biased estimators also get a panel of their
bias :math:`E g - \partial E f/\partial\alpha_1` (exact lines, Monte Carlo points).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from tqdm import tqdm

from .. import _drawing
from .._workdir import atomic_write_text, read_json, save_figure, write_json
from . import _common, exact, measure

THETA_KEYS = {"theta_grid", "mc_every", "num_estimates", "adapt_steps"}
DIM_KEYS = {"dims", "theta", "num_estimates", "adapt_steps"}
POINT_FIELDS = (
    "estimator",
    "theta",
    "dim",
    "evaluations",
    "mc_variance",
    "mc_variance_se",
    "mc_variance_per_cost",
    "mc_variance_per_cost_se",
    "exact_variance",
    "exact_variance_per_cost",
    "mc_mean",
    "mc_mean_se",
    "exact_gradient",
    "exact_mean",
    "mc_bias",
)
# Whose exact value is at the estimator's initial state (the points come after adaptation).
INITIAL_STATE_EXACT = ("rebar",)


def validate(config: ml_collections.ConfigDict) -> list[str]:
    by_dim = config.figure == "dims"
    _common.check_keys(config, _common.COMMON_KEYS | (DIM_KEYS if by_dim else THETA_KEYS))
    specs = _common.check_common(config)
    _common.positive_int(config, "num_estimates", 2)
    _common.positive_int(config, "adapt_steps", 0)
    if by_dim:
        dims = config.dims
        if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
            _common.fail("dims", f"must be positive ints; got {dims!r}")
        _common.unit_interval(config, "theta")
        return specs
    g = config.theta_grid
    for key in ("start", "stop"):
        if not isinstance(g[key], int | float) or not 0 < g[key] < 1:
            _common.fail(f"theta_grid.{key}", f"must be in (0, 1); got {g[key]!r}")
    if not g.start < g.stop:
        _common.fail("theta_grid", f"needs start < stop; got {g.start}, {g.stop}")
    _common.positive_int(config.theta_grid, "num", 2)
    _common.positive_int(config, "mc_every", 1)
    return specs


def _exact(
    spec: str, theta: np.ndarray, dim: int, config: ml_collections.ConfigDict
) -> exact.Moments | None:
    est = measure.estimator(spec, float(config.temperature))
    m = exact.moments(
        spec,
        theta,
        float(config.target),
        dim=dim,
        num_samples=measure.samples_per_estimate(est, config.num_samples),
        temperature=float(config.temperature),
    )
    if m is not None and m.evaluations != measure.evaluations(est, config.num_samples, dim):
        return None  # the registered estimator is not the one the exact side computes
    return m


def _axes(config: ml_collections.ConfigDict) -> tuple[list[tuple[float, int]], np.ndarray]:
    """(theta, D) of each Monte Carlo point, and the dense axis of the exact lines."""
    if config.figure == "dims":
        dims = sorted(set(config.dims))
        return [(float(config.theta), d) for d in dims], np.array(dims, np.float64)
    g = config.theta_grid
    dense = np.linspace(g.start, g.stop, g.num)
    return [(float(x), 1) for x in dense[:: config.mc_every]], dense


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    specs = validate(config)
    by_dim = config.figure == "dims"
    mc_axis, dense = _axes(config)
    dims = sorted({d for _, d in mc_axis})
    t = float(config.target)
    curves = []
    for spec in specs:
        if by_dim:
            ms = [_exact(spec, np.array([config.theta]), d, config) for d in dims]
            if any(m is None for m in ms):
                continue
            mean = np.concatenate([m.mean for m in ms])  # type: ignore[union-attr]
            var = np.concatenate([m.variance for m in ms])  # type: ignore[union-attr]
            evals = np.array([m.evaluations for m in ms], np.float64)  # type: ignore[union-attr]
            gradient = np.full(len(dims), exact.exact_gradient(config.theta, t))
        else:
            m = _exact(spec, dense, 1, config)
            if m is None:
                continue
            mean, var, evals = m.mean, m.variance, np.full(len(dense), float(m.evaluations))
            gradient = exact.exact_gradient(dense, t)
        curves.append(
            {
                "estimator": spec,
                "x": dense.tolist(),
                "variance_per_cost": (var * evals).tolist(),
                "bias": (mean - gradient).tolist(),
                "initial_state": spec in INITIAL_STATE_EXACT,
            }
        )
    points = []
    tasks = [(s, d) for s in specs for d in dims]
    bar = tqdm(tasks, desc=f"{config.name} Monte Carlo", leave=False, disable=not config.progress)
    for spec, dim in bar:
        bar.set_postfix_str(spec + (f" D={dim}" if by_dim else ""))
        thetas = np.array([th for th, d in mc_axis if d == dim])
        mc = measure.measure(
            spec,
            thetas,
            t,
            seed=config.seed,
            dim=dim,
            num_samples=config.num_samples,
            num_estimates=config.num_estimates,
            adapt_steps=config.adapt_steps,
            temperature=float(config.temperature),
        )
        est = measure.estimator(spec, float(config.temperature))
        evals = measure.evaluations(est, config.num_samples, dim)
        ex = _exact(spec, thetas, dim, config)
        at_initial = est.adaptive and spec in INITIAL_STATE_EXACT and config.adapt_steps > 0
        if at_initial:
            ex = None  # the exact value is of the initial state, the points after adaptation
        gradient = exact.exact_gradient(thetas, t)
        for i, th in enumerate(thetas):
            row = {
                "estimator": spec,
                "theta": float(th),
                "dim": dim,
                "evaluations": evals,
                "mc_variance": mc["variance"][i],
                "mc_variance_se": mc["variance_se"][i],
                "mc_variance_per_cost": mc["variance"][i] * evals,
                "mc_variance_per_cost_se": mc["variance_se"][i] * evals,
                "exact_variance": None if ex is None else ex.variance[i],
                "exact_variance_per_cost": None if ex is None else ex.variance[i] * evals,
                "mc_mean": mc["mean"][i],
                "mc_mean_se": mc["mean_se"][i],
                "exact_gradient": gradient[i],
                "exact_mean": None if ex is None else ex.mean[i],
                "mc_bias": mc["mean"][i] - gradient[i],
            }
            points.append({k: _plain(v) for k, v in row.items()})
    for p in points:
        p["dim"] = int(p["dim"])
        p["evaluations"] = int(p["evaluations"])
    results = {
        "name": config.name,
        "title": config.title,
        "figure": config.figure,
        "target": t,
        "theta": float(config.theta) if by_dim else None,
        "cost": (
            "f(b) = sum_d (b_d - t)^2, b_d ~ Bernoulli(theta) independent, theta = sigmoid(alpha)"
        ),
        "gradient_of": "d E f / d alpha_1 (the logit of coordinate 1)",
        "statistic": (
            "variance of one estimate x evaluations of f per estimate (K samples x "
            "cost_evaluations(D)); Monte Carlo +-2 SE from num_estimates independent estimates"
        ),
        "num_estimates": config.num_estimates,
        "adapt_steps": config.adapt_steps,
        "temperature": float(config.temperature),
        "estimators": _common.describe(
            specs, float(config.temperature), config.num_samples, dims, config.adapt_steps
        ),
        "exact_method": (
            "NumPy float64: enumeration (REINFORCE, +optimal, straight-through; REINFORCE-LOO "
            "over the 2^K tuples), exact piecewise integration over u (ARM, DisARM), "
            "Gauss-Legendre over the noise split at the jumps (relaxations), 2-D "
            "Gauss-Legendre (REBAR at its initial eta = 1 and temperature)"
        ),
        "exact": curves,
        "points": points,
    }
    write_json(Path(workdir) / "results.json", results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=POINT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(points)
    atomic_write_text(Path(workdir) / "results.csv", buf.getvalue())
    _drawing.draw(plot, workdir)  # in a second process under `reproduce`
    return results


def _plain(v: Any) -> Any:
    return v if isinstance(v, str | None) else float(v)


def _log_limits(values: list[float]) -> tuple[float, float] | None:
    v = np.asarray([x for x in values if x is not None and x > 0 and math.isfinite(x)])
    if not v.size:
        return None
    keep = v[v >= 1e-9 * v.max()]
    return 0.5 * float(keep.min()), 2.0 * float(v.max())


def plot(workdir: str | Path) -> list[Path]:
    """Redraw the figure from ``workdir/results.json`` alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    results = read_json(workdir / "results.json")
    by_dim = results["figure"] == "dims"
    ests = results["estimators"]
    biased = [e for e, d in ests.items() if not d["unbiased"]]
    ncols = 2 if biased else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.8 * ncols, 6.2), squeeze=False)
    ax_var, ax_bias = axes[0, 0], (axes[0, 1] if biased else None)
    style = _common.styles(len(ests))
    shown: list[float] = []
    xkey = "dim" if by_dim else "theta"
    for i, (spec, info) in enumerate(ests.items()):
        color, line, marker = style[i]
        for curve in results["exact"]:
            if curve["estimator"] != spec:
                continue
            ls = ":" if curve["initial_state"] else line
            ax_var.plot(curve["x"], curve["variance_per_cost"], color=color, lw=1.4, ls=ls)
            shown += curve["variance_per_cost"]
            if ax_bias is not None and not info["unbiased"]:
                ax_bias.plot(curve["x"], curve["bias"], color=color, lw=1.4, ls=ls)
        pts = [p for p in results["points"] if p["estimator"] == spec]
        xs = np.array([p[xkey] for p in pts], np.float64)
        ys = np.array([p["mc_variance_per_cost"] for p in pts])
        err = 2 * np.array([p["mc_variance_per_cost_se"] for p in pts])
        ax_var.errorbar(
            xs, ys, yerr=err, fmt=marker, ms=3.5, mfc="white", color=color, elinewidth=1.0,
            capsize=0, zorder=3, label=info["label"],
        )  # fmt: skip
        shown += ys.tolist()
        if ax_bias is not None and not info["unbiased"]:
            bias = np.array([p["mc_bias"] for p in pts])
            err = 2 * np.array([p["mc_mean_se"] for p in pts])
            ax_bias.errorbar(
                xs, bias, yerr=err, fmt=marker, ms=3.5, mfc="white", color=color,
                elinewidth=1.0, capsize=0, zorder=3, label=info["label"],
            )  # fmt: skip
    ax_var.set_yscale("log")
    limits = _log_limits(shown)
    if limits:
        ax_var.set_ylim(*limits)
    what = r"$\partial/\partial\alpha_1$ (logit)"
    ax_var.set_ylabel(f"variance of one estimate of {what}\n× evaluations of $f$ per estimate")
    if by_dim:
        ax_var.set_xscale("log")
        ax_var.set_xlabel("dimension $D$")
    else:
        ax_var.set_xlabel(r"$\theta$")
    ax_var.grid(True, alpha=0.3)
    if ax_bias is not None:
        ax_bias.axhline(0.0, color="0.5", lw=0.8)
        ax_bias.set_xlabel(ax_var.get_xlabel())
        ax_bias.set_xscale(ax_var.get_xscale())
        ax_bias.set_ylabel(r"bias $E[g] - \partial E f/\partial\alpha_1$")
        ax_bias.set_title("biased estimators: bias (exact lines, MC points)", fontsize=9)
        ax_bias.grid(True, alpha=0.3)
    adaptive = [e for e, d in ests.items() if d["adaptive"]]
    note = (
        f"$t = {results['target']:g}$; lines: exact; points: Monte Carlo, "
        f"{results['num_estimates']:,} estimates each, ±2 SE"
    )
    if by_dim:
        note += f"; $\\theta = {results['theta']:g}$, $f = \\sum_d (b_d - t)^2$"
    if adaptive:
        note += (
            f"\nadaptive estimators updated {results['adapt_steps']} times at each point before "
            "measuring; dotted: REBAR's exact value at its initial $\\eta$, temperature"
        )
    fig.suptitle(f"{results['title']}\n{note}", fontsize=9)
    handles, labels = ax_var.get_legend_handles_labels()
    ncol = 3
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    rows = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, 0.04 * rows, 1, 1))
    paths = save_figure(fig, workdir / results["name"])
    plt.close(fig)
    return paths
