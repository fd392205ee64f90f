r"""Variance figures (Mohamed et al. 2020, Figs 2-7): exact curves and Monte Carlo dots.

A :class:`problems.Problem` (``config.problem``; the Gaussian :math:`x \sim N(\mu 1_D,
\sigma^2 I_D)` of the paper by default) and a cost ``f`` from a family (``f(x) = (x - k)^2``
over ``k``, or a sum over coordinates as the dimension ``D`` grows): each figure shows the
single-sample variance of the estimates of the gradient with respect to each parameter
(:math:`\partial E f / \partial\mu` and :math:`\partial E f / \partial\sigma` for the
Gaussian) made by several estimators, computed two ways:

- exact, from the problem (numerical integration in float64 for the Gaussian,
  ``experiments.variance.exact``), drawn as lines, for the estimators whose variance it knows;
- Monte Carlo, with ``num_samples`` samples per point, from any estimator of
  ``estimators.registry`` that supports the problem's distribution: ``config.estimators`` holds
  registry specs (``"score_function+optimal"``, ``"measure_valued"``) or importable paths
  ``"package.module:attribute"`` of a user's own estimator (``monte_carlo``: one jitted
  program for all the estimators over the whole grid, per ``D``), drawn as points with +-2
  standard-error bars. Legends use each estimator's ``label``. The points share their random
  numbers (common random numbers over the grid's rows and the estimators: one key per chunk
  of samples, so estimators that draw alike use the same samples): each point is unbiased
  with the standard error shown, and the points are correlated with each other.

A multi-sample estimator (``multi_sample``: REINFORCE-LOO, whose rows are not independent) is
measured over ``num_samples`` independent calls of ``K = min_samples`` samples each, and its
point is the variance of one call's estimate times ``K``: the variance per sample, the value a
single-sample estimator's average of ``K`` samples would be compared at.

For ``D > 1`` the exact value is the variance for one coordinate (all coordinates are alike);
the Monte Carlo value is the per-coordinate sample variance averaged over the ``D``
coordinates, which estimates the same number with less noise. Each point also carries the
exact gradient of the first coordinate and its Monte Carlo mean with a standard error.

``num_samples`` may be any int (10^9 and more: streamed in launches, ``monte_carlo.plan``);
the chunks of samples are spread over the config's mesh (``mesh.devices``, default every
device; ``experiments._mesh``), with results equal to one device's within float32 rounding.

Writes ``results.json`` (the exact curves and every Monte Carlo point with its exact value),
``results.csv`` (the points) and ``<name>.png``/``.pdf``; :func:`plot` redraws the figure from
``results.json`` alone.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from .. import _drawing, _mesh
from .._workdir import atomic_write_text, read_json, save_figure, write_json
from . import exact as quadrature
from . import monte_carlo, problems
from .costs import Rows, active_terms

if TYPE_CHECKING:
    from jax.sharding import Mesh

# Axis labels of results written before problems named their parameters (redrawing old runs).
_GAUSSIAN_LABELS = {"loc": r"$\mu$", "scale": r"$\sigma$"}
_KEYS = {
    "runner",
    "name",
    "title",
    "seed",
    "problem",
    "num_samples",
    "estimators",
    "parameters",
    "costs",
    "num_nodes",
    "yscale",
    "progress",
    "mesh",
}
_GRID_KEYS = {"grid", "mc_every"}
_DIM_KEYS = {"dims"}
_POINT_FIELDS = (
    "cost",
    "estimator",
    "parameter",
    "x",
    "exact_variance",
    "mc_variance",
    "mc_se",
    "exact_gradient",
    "mc_gradient",
    "mc_gradient_se",
)


def _fail(key: str, problem: str) -> None:
    raise ValueError(f"config.{key} {problem}")


def _problem(config: ml_collections.ConfigDict) -> problems.Problem:
    return problems.load(config.problem)


def _values(config: ml_collections.ConfigDict, problem: problems.Problem) -> dict[str, float]:
    """The problem's parameter values, from the config keys it declares."""
    return {key: config[key] for key in problem.values}


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the key of any unusable value; called before anything runs."""
    keys = set(config.keys())
    by_dim = "dims" in keys
    if "problem" not in keys:
        raise ValueError("missing config key(s) ['problem'] (e.g. 'gaussian')")
    problem = _problem(config)
    allowed = _KEYS | set(problem.values) | (_DIM_KEYS if by_dim else _GRID_KEYS)
    if keys - allowed:
        raise ValueError(f"unknown config key(s) {sorted(keys - allowed)} for the variance runner")
    if keys < allowed:
        raise ValueError(f"missing config key(s) {sorted(allowed - keys)}")
    problem.check_values(_values(config, problem))
    if not isinstance(config.num_samples, int) or config.num_samples < 2:
        _fail("num_samples", f"must be an int >= 2; got {config.num_samples!r}")
    if not isinstance(config.seed, int):
        _fail("seed", f"must be an int; got {config.seed!r}")
    if not isinstance(config.num_nodes, int) or config.num_nodes < quadrature.PANEL_ORDER:
        _fail("num_nodes", f"must be an int >= {quadrature.PANEL_ORDER}")
    _validate_estimators(config, problem)
    for key, known in (
        ("parameters", problem.parameters),
        ("costs", problem.costs),
    ):
        values = config[key]
        if not values or any(v not in known for v in values) or len(set(values)) < len(values):
            _fail(key, f"must be distinct names from {sorted(known)}; got {list(values)}")
    if not isinstance(config.progress, bool):
        _fail("progress", f"must be true or false; got {config.progress!r}")
    if config.yscale not in ("linear", "log"):
        _fail("yscale", f"must be 'linear' or 'log'; got {config.yscale!r}")
    if by_dim:
        dims = config.dims
        if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
            _fail("dims", f"must be positive ints; got {list(dims)}")
        return
    if not isinstance(config.mc_every, int) or config.mc_every < 1:
        _fail("mc_every", f"must be an int >= 1; got {config.mc_every!r}")
    for cost in config.costs:
        if not problem.costs[cost].uses_k:
            _fail("costs", f"cost {cost!r} has no parameter k; use it with dims")
        if cost not in config.grid:
            _fail("grid", f"needs an entry for cost {cost!r}")
        g = config.grid[cost]
        if not (isinstance(g.num, int) and g.num >= 2):
            _fail(f"grid.{cost}.num", f"must be an int >= 2; got {g.num!r}")
        if not g.start < g.stop:
            _fail(f"grid.{cost}", f"needs start < stop; got {g.start}, {g.stop}")
        if g.log and g.start <= 0:
            _fail(f"grid.{cost}.start", f"must be > 0 for a log grid; got {g.start}")


def _validate_estimators(config: ml_collections.ConfigDict, problem: problems.Problem) -> None:
    """Each spec resolves in the registry, estimates ``grad E[f]`` and supports the problem."""
    specs = config.estimators
    if (
        not specs
        or any(not isinstance(s, str) or not s.strip() for s in specs)
        or len(set(specs)) < len(specs)
    ):
        _fail("estimators", f"must be distinct estimator specs; got {list(specs)}")
    params = problem.params({k: float(v) for k, v in _values(config, problem).items()}, 1)
    dist = problem.dist_builder(params)
    for spec in specs:
        try:
            est = monte_carlo.estimator(spec)
        except (ValueError, TypeError) as e:
            _fail("estimators", f"has {spec!r}, which the registry cannot build: {e}")
        if est.objective != "mean":
            _fail(
                "estimators",
                f"has {spec!r}, whose objective is {est.objective!r}; the variance runner "
                "compares estimates of grad E[f] (objective 'mean')",
            )
        try:
            est.check(dist, max(est.min_samples, 1 if est.multi_sample else config.num_samples))
        except ValueError as e:
            _fail(
                "estimators", f"has {spec!r}, which cannot run on the {problem.name} problem: {e}"
            )


def _axes_values(config: ml_collections.ConfigDict, cost: str) -> tuple[np.ndarray, np.ndarray]:
    """(x of the exact curve, x of the Monte Carlo points) for one cost."""
    if "dims" in config:
        mc = np.array(sorted(set(config.dims)), np.float64)
        dense = np.unique(np.round(np.geomspace(1, mc.max(), 200)))
        return np.union1d(dense, mc), mc
    g = config.grid[cost]
    space = np.geomspace if g.log else np.linspace
    x = space(g.start, g.stop, g.num)
    return x, x[:: config.mc_every]


def _rows(config: ml_collections.ConfigDict, cost: str, x: np.ndarray) -> Rows:
    """Exact-side rows of one cost at the axis values ``x`` (``k`` or ``D``)."""
    c = _problem(config).costs[cost]
    n = x.shape[0]
    by_dim = "dims" in config
    return Rows(
        weights=np.tile(np.asarray(c.weight_vector()), (n, 1)),
        k=np.zeros(n) if by_dim else x,
        constant=np.full(n, c.constant),
        dim=x if by_dim else np.ones(n),
    )


def _exact(config, estimator: str, parameter: str, rows: Rows) -> np.ndarray | None:
    """The exact variance of ``estimator`` at ``rows``, or ``None`` if the problem lacks it."""
    problem = _problem(config)
    values = _values(config, problem)
    return problem.exact_variance(estimator, parameter, rows, values, config.num_nodes)


def _exact_gradient(config, parameter: str, rows: Rows) -> np.ndarray:
    problem = _problem(config)
    values = _values(config, problem)
    return problem.exact_gradient(parameter, rows, values, config.num_nodes)


def _mc_tasks(config: ml_collections.ConfigDict) -> list[tuple[int, list[tuple[str, float]]]]:
    """(D, [(cost, x), ...]) for each jitted call: the rows it computes, for every estimator."""
    if "dims" in config:
        return [(dim, [(c, float(dim)) for c in config.costs]) for dim in sorted(set(config.dims))]
    return [(1, [(c, float(x)) for c in config.costs for x in _axes_values(config, c)[1]])]


def _run_mc(config, dim: int, rows: list[tuple[str, float]], mesh: Mesh | None = None) -> dict:
    """Per estimator and parameter, ``(variance, se, gradient, gradient_se)`` ``[R]`` for the
    rows of one call: all of the config's estimators in one program, sharing their samples
    (``monte_carlo.mc_statistics``: common random numbers over rows and estimators), the chunks
    of samples spread over ``mesh``'s devices and streamed in launches (any ``num_samples``)."""
    by_dim = "dims" in config
    problem = _problem(config)
    specs = tuple(config.estimators)
    key = jax.random.key(config.seed)
    if by_dim:
        key = jax.random.fold_in(key, dim)
    costs = [problem.costs[c] for c, _ in rows]
    joints = {e: monte_carlo.samples_per_estimate(monte_carlo.estimator(e)) for e in specs}
    evaluations = max(monte_carlo.estimator(e).cost_evaluations(dim) * joints[e] for e in specs)
    device = mesh.devices.flat[0] if mesh is not None else None
    plan = monte_carlo.plan(
        config.num_samples,
        len(rows),
        dim,
        evaluations,
        monte_carlo.step_elements(device),
        outputs=len(specs) * len(problem.parameters),
    )
    dist = problem.dist_builder(problem.params(_values(config, problem), dim))
    for e in specs:  # a clear error if an estimator needs more samples than a chunk holds
        monte_carlo.estimator(e).check(dist, joints[e] if joints[e] > 1 else plan.last)
    statistics = monte_carlo.mc_statistics(
        key,
        np.array([c.weight_vector() for c in costs], np.float32),
        np.array([0.0 if by_dim else x for _, x in rows], np.float32),
        np.array([c.constant for c in costs], np.float32),
        {k: np.float32(v) for k, v in _values(config, problem).items()},
        problem=problem,
        specs=specs,
        terms=active_terms([c for c, _ in rows]),
        dim=dim,
        plan=plan,
        mesh=mesh,
    )
    # A multi-sample estimate's variance times its K samples: the variance per sample, what
    # averaging K single-sample estimates would give (monte_carlo.samples_per_estimate).
    return {
        e: {
            p: tuple(joints[e] * v for v in statistics[e][p].variance())
            + statistics[e][p].gradient()
            for p in config.parameters
        }
        for e in specs
    }


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """Compute the figure's exact curves and Monte Carlo points, save them, draw the figure."""
    validate(config)
    workdir = Path(workdir)
    problem = _problem(config)
    mesh = _mesh.make_mesh(config)
    by_dim = "dims" in config
    dims = sorted(set(config.dims)) if by_dim else [1]
    exact_curves = []
    for cost in config.costs:
        x, _ = _axes_values(config, cost)
        rows = _rows(config, cost, x)
        for est in config.estimators:
            for p in config.parameters:
                variance = _exact(config, est, p, rows)
                if variance is None:
                    continue
                exact_curves.append(
                    {
                        "cost": cost,
                        "estimator": est,
                        "parameter": p,
                        "x": x.tolist(),
                        "variance": variance.tolist(),
                    }
                )
    points = []
    tasks = _mc_tasks(config)
    bar = tqdm(
        tasks,
        desc=f"{config.name} Monte Carlo",
        unit="run",
        leave=False,
        disable=not config.progress,
    )
    for dim, rows in bar:
        if by_dim:
            bar.set_postfix_str(f"D={dim}")
        mc_all = _run_mc(config, dim, rows, mesh)
        for est in config.estimators:
            mc = mc_all[est]
            for p in config.parameters:
                variance, se, gradient, gradient_se = mc[p]
                for cost in dict.fromkeys(c for c, _ in rows):
                    idx = [i for i, (c, _) in enumerate(rows) if c == cost]
                    xs = np.array([rows[i][1] for i in idx])
                    exact_rows = _rows(config, cost, xs)
                    exact = _exact(config, est, p, exact_rows)
                    exact_gradient = _exact_gradient(config, p, exact_rows)
                    for j, i in enumerate(idx):
                        values = (
                            *(cost, est, p, xs[j]),
                            None if exact is None else exact[j],
                            *(variance[i], se[i], exact_gradient[j], gradient[i], gradient_se[i]),
                        )
                        points.append(dict(zip(_POINT_FIELDS, values, strict=True)))
    points = [
        {k: (_float_or_none(v) if k in _POINT_FIELDS[3:] else v) for k, v in r.items()}
        for r in points
    ]
    results = {
        "name": config.name,
        "title": config.title,
        "problem": problem.name,
        "values": _values(config, problem),
        "value_labels": dict(problem.value_labels),
        "parameter_labels": {p: problem.parameters[p] for p in config.parameters},
        "exact_method": problem.exact_method,
        "axis": "dim" if by_dim else "k",
        "xscale": {c: "log" if by_dim or config.grid[c].log else "linear" for c in config.costs},
        "yscale": config.yscale,
        "num_samples": config.num_samples,
        "statistic": (
            "exact: variance of the estimate for one coordinate; Monte Carlo: per-coordinate "
            "sample variance averaged over the D coordinates, +-2 SE"
            if by_dim
            else "single-sample variance; Monte Carlo +-2 SE"
        )
        + (
            "; a multi-sample estimator (samples used jointly): the variance of one call's "
            "estimate from K = min_samples samples, over independent calls, times K"
        ),
        "sampling": (
            "common random numbers: every Monte Carlo point of one D (all rows and all "
            "estimators) is computed from the same key, so estimators that draw alike share "
            "their samples; each point is unbiased with the standard error shown, and the "
            "points are correlated with each other"
        ),
        "costs": {c: problem.costs[c].label for c in config.costs},
        "estimators": {e: monte_carlo.estimator(e).label for e in config.estimators},
        "evaluations_per_sample": {
            e: {str(d): monte_carlo.estimator(e).cost_evaluations(d) for d in dims}
            for e in config.estimators
        },
        "parameters": list(config.parameters),
        "exact": exact_curves,
        "points": points,
    }
    write_json(workdir / "results.json", results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_POINT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(points)
    atomic_write_text(workdir / "results.csv", buf.getvalue())
    _drawing.draw(plot, workdir)  # in a second process under `reproduce`
    return results


def _panels(results: dict) -> list[tuple[str | None, str]]:
    """(cost or None for all costs, parameter) of each panel, in reading order."""
    params = results["parameters"]
    if results["axis"] == "dim":
        return [(None, p) for p in params]
    return [(c, p) for c in results["costs"] for p in params]


def results_first_cost(results: dict) -> str:
    return next(iter(results["costs"]))


def _log_floor(values: list[float]) -> float:
    """Lower y-limit for a log axis: ignores exact zeros (and float rounding below 1e-12 max)."""
    v = np.asarray([x for x in values if x > 0 and math.isfinite(x)])
    keep = v[v >= 1e-12 * v.max()]
    return 0.5 * float(keep.min())


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")  # exponents as plain text


def _plain_log_labels(formatter_class: type) -> type:
    """matplotlib's log-axis formatter writing ``10⁻³``, ``2×10⁻³`` in plain text.

    The same labels at the same ticks as the default (``LogFormatterSciNotation``), without
    its mathtext (a TeX parser run for every tick label of every drawing: a sixth of a
    figure's drawing time).
    """

    class PlainLogFormatter(formatter_class):  # type: ignore[misc, valid-type]
        def __call__(self, x: float, pos: int | None = None) -> str:
            label = super().__call__(x, pos)
            if not (label.startswith("$\\mathdefault{") and label.endswith("}$")):
                return label
            body = label[len("$\\mathdefault{") : -2].replace("\\times", "\u00d7")
            base, _, exponent = body.partition("^")
            return base + exponent.strip("{}").translate(_SUPERSCRIPT)

    return PlainLogFormatter


def plot(workdir: str | Path) -> list[Path]:
    """Redraw the figure from ``workdir/results.json`` alone; returns the PNG and PDF paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation

    log_labels = _plain_log_labels(LogFormatterSciNotation)

    workdir = Path(workdir)
    results = read_json(workdir / "results.json")
    parameter_labels = results.get("parameter_labels", _GAUSSIAN_LABELS)
    panels = _panels(results)
    params = results["parameters"]
    ncols = len(params) if len(params) > 1 or results["axis"] == "dim" else len(panels)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    overlay = results["axis"] == "dim"
    series = [
        (c, e) for c in (results["costs"] if overlay else [None]) for e in results["estimators"]
    ]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = {}
    for ax, (cost, param) in zip(axes.ravel(), panels, strict=False):
        shown = []
        for i, (scost, est) in enumerate(series):
            color = colors[i % len(colors)]
            want = scost if overlay else cost
            label = results["estimators"][est]
            if overlay:
                label = f"{results['costs'][scost]}" + (
                    f", {label}" if len(results["estimators"]) > 1 else ""
                )
            exact_line = handles.get(label, (color, False))[1]
            for curve in results["exact"]:
                if (curve["cost"], curve["estimator"], curve["parameter"]) == (want, est, param):
                    ax.plot(curve["x"], curve["variance"], color=color, lw=1.6)
                    shown += curve["variance"]
                    exact_line = True
            pts = [
                r
                for r in results["points"]
                if (r["cost"], r["estimator"], r["parameter"]) == (want, est, param)
            ]
            if pts:
                xs = np.array([r["x"] for r in pts])
                ys = np.array([r["mc_variance"] for r in pts])
                err = 2 * np.array([r["mc_se"] for r in pts])
                ax.errorbar(
                    xs, ys, yerr=err, fmt="o", ms=3.2, mfc="white", mew=1.0, color=color,
                    elinewidth=1.0, capsize=0, zorder=3,
                )  # fmt: skip
                shown += ys.tolist()
            handles[label] = (color, exact_line)
        ax.set_xscale(results["xscale"][cost or results_first_cost(results)])
        if ax.get_xscale() == "log":
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(
                FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
            )
        ax.set_yscale(results["yscale"])
        if ax.get_yscale() == "log":
            ax.yaxis.set_major_formatter(log_labels())
            ax.yaxis.set_minor_formatter(log_labels(labelOnlyBase=False))
        if results["yscale"] == "log" and shown:
            ax.set_ylim(_log_floor(shown), 1.6 * max(shown))
        ax.set_xlabel("dimension $D$" if overlay else "$k$")
        ax.set_ylabel("variance per coordinate" if overlay else "variance")
        title = f"$\\partial/\\partial${parameter_labels[param]}"
        if cost is not None:
            title = f"{results['costs'][cost]}, {title}"
        ax.set_title(title, fontsize=10, y=1.0)  # fixed: no per-drawing search for top labels
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    legend = [  # a line where an exact curve is drawn, points only where there is none
        Line2D(
            [],
            [],
            color=c,
            lw=1.6,
            ls="-" if line else "none",
            marker="o",
            ms=4,
            mfc="white",
            label=label,
        )  # fmt: skip
        for label, (c, line) in handles.items()
    ]
    fig.legend(
        handles=legend,
        loc="lower center",
        ncol=len(legend) if len(legend) <= 4 else 3,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    n = results["num_samples"]
    values = results.get("values") or {"loc": results["loc"], "scale": results["scale"]}
    symbols = results.get("value_labels", {"loc": r"\mu", "scale": r"\sigma"})
    note = (
        f"lines: exact ({results.get('exact_method', 'numerical integration')}); points: Monte "
        f"Carlo, {n:,} samples each, $\\pm$2 SE; "
        + ", ".join(f"${symbols[k]} = {v:g}$" for k, v in values.items())
    )
    if overlay:
        note += "; MC: mean over coordinates"
    fig.suptitle(f"{results['title']}\n{note}", fontsize=10)
    rows_legend = 1 if len(legend) <= 4 else -(-len(legend) // 3)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0.3 * rows_legend / height, 1, 1))
    paths = save_figure(fig, workdir / results["name"])
    plt.close(fig)
    return paths
