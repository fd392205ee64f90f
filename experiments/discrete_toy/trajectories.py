r"""Optimisation trajectories on the toy, as RELAX's Figure 1 (Grathwohl et al. 2018).

:math:`\min_\theta E_{b \sim \mathrm{Bernoulli}(\theta)}[(b - t)^2]`, :math:`\theta =
\sigma(\alpha)`, from :math:`\alpha = 0` (``theta0 = 0.5``), by Adam on the logit with the
estimator's gradient (one estimate per step: one sample, or ``K`` for a multi-sample
estimator), learning rate 0.01 as in the authors' toy (``rebar_toy.py`` of duvenaud/relax:
Adam(0.01) on ``log_alpha``, one sample per step, REBAR's :math:`\eta` and temperature trained
alongside by Adam on the squared estimate). For :math:`t < 1/2` the optimum is
:math:`\theta \to 0`; at :math:`t = 0.499` the gradient :math:`\theta(1-\theta)(1-2t)` is
tiny against the noise, which is the point of the figure.

Each estimator runs ``num_seeds`` seeds (vmapped; the steps a ``lax.scan``); a stateful one's
``update`` is called after every step with the :class:`estimators.EstimateInputs` of that
step's estimate (REBAR/RELAX train their control as they go). Every ``record_every`` steps the
variance of one estimate at the current :math:`\theta` and state is measured from
``variance_estimates`` independent estimates (the second panel, as RELAX's log-variance panel,
here times the evaluations per estimate). The exact gradient's Adam trajectory is the reference.

results.json reports per estimator: the seeds, the final :math:`\theta` of each, their mean
+- SE over the seeds that did not diverge, how many ended on the optimum's side
(:math:`\theta < 1/2`), and the diverged seeds (a non-finite :math:`\theta` at any record),
named and never averaged in. With ``config.paper`` (what a paper's figure shows: ``source``,
``note``, ``final_theta`` per spec), results.json's ``paper`` sets those beside ours (mean, SE
over the seeds), and the figure marks them with stars at the last step, draws those
estimators thicker and puts the note under the title.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

import estimators

from .._workdir import atomic_write_text, read_json, save_figure, write_json
from . import _common, exact, measure

KEYS = {
    "steps",
    "num_seeds",
    "learning_rate",
    "theta0",
    "record_every",
    "variance_estimates",
    "paper",
}
EXACT = "exact gradient"
PAPER_KEYS = {"source", "final_theta", "note"}


def validate(config: ml_collections.ConfigDict) -> list[str]:
    _common.check_keys(config, _common.COMMON_KEYS | KEYS)
    specs = _common.check_common(config)
    _common.positive_int(config, "steps", 1)
    _common.positive_int(config, "num_seeds", 1)
    _common.positive_int(config, "record_every", 1)
    _common.positive_int(config, "variance_estimates", 2)
    _common.unit_interval(config, "theta0")
    lr = config.learning_rate
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        _common.fail("learning_rate", f"must be a number > 0; got {lr!r}")
    if config.steps % config.record_every:
        _common.fail("steps", f"must be a multiple of record_every ({config.record_every})")
    _check_paper(config.paper)
    return specs


def _check_paper(paper: Any) -> None:
    """``config.paper``: None, or what a paper's figure shows, ``source`` and ``note`` (str)
    and ``final_theta`` (estimator spec -> the final theta read from the figure, in [0, 1])."""
    if paper is None:
        return
    keys = set(paper.keys()) if hasattr(paper, "keys") else None
    if keys != PAPER_KEYS:
        _common.fail("paper", f"must be None or have exactly the keys {sorted(PAPER_KEYS)}")
    for key in ("source", "note"):
        if not isinstance(paper[key], str):
            _common.fail("paper", f"{key} must be a str; got {paper[key]!r}")
    final = paper.final_theta
    if not hasattr(final, "items") or not all(
        isinstance(k, str) and isinstance(v, int | float) and 0 <= v <= 1 for k, v in final.items()
    ):
        _common.fail("paper", f"final_theta must map specs to numbers in [0, 1]; got {final!r}")


@partial(
    jax.jit,
    static_argnames=("spec", "temperature", "num_samples", "steps", "record_every", "var_n", "lr"),
)
def trajectories(
    keys: jax.Array,
    logit0: jax.Array,
    t: jax.Array,
    *,
    spec: str,
    temperature: float,
    num_samples: int,
    steps: int,
    record_every: int,
    var_n: int,
    lr: float,
) -> tuple[jax.Array, jax.Array]:
    """``(logits [S, R + 1], variances [S, R + 1])``: the logit at step 0, record_every, ...,
    and the variance of one estimate there, for each seed key of ``keys: [S]``
    (``spec == EXACT``: the exact gradient, variance 0)."""
    cost = measure.toy_cost(t)
    opt = optax.adam(lr)
    if spec == EXACT:

        def gradient(params, key, state):
            p = jax.nn.sigmoid(params["logits"])
            return {"logits": p * (1 - p) * (1 - 2 * t)}

        def update(state, params, key):
            return state

        def variance(params, key, state):
            return jnp.zeros(())

        init: Any = ()
    else:
        est = measure.estimator(spec, temperature)
        k = measure.samples_per_estimate(est, num_samples)

        def gradient(params, key, state):
            g = est.per_sample(cost, params, measure.bernoulli, key, num_samples=k, state=state)
            return jax.tree.map(lambda x: jnp.mean(x, axis=0), g)

        def update(state, params, key):
            if not jax.tree.leaves(state):
                return state
            xs = estimators.draw_samples(measure.bernoulli(params), key, k)
            inputs = estimators.EstimateInputs(cost, params, measure.bernoulli, key, k)
            return est.update(state, jax.vmap(cost)(xs), inputs=inputs)

        def variance(params, key, state):
            # var_n independent calls, each the estimate one step uses (k rows; a baseline
            # drawn inside a call sees what it sees in training).
            g = jax.vmap(lambda kk: gradient(params, kk, state)["logits"][0])(
                jax.random.split(key, var_n)
            )
            return jnp.var(g, ddof=1)

        init = est.init()

    def seed(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        params = {"logits": jnp.reshape(logit0, (1,))}
        carry = (params, opt.init(params), init)

        def step(carry, key):
            params, opt_state, state = carry
            g = gradient(params, key, state)
            state = update(state, params, key)
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, state), None

        def record(carry, key):
            k_steps, k_var = jax.random.split(key)
            carry, _ = jax.lax.scan(step, carry, jax.random.split(k_steps, record_every))
            params, _, state = carry
            return carry, (params["logits"][0], variance(params, k_var, state))

        k0, k_rec = jax.random.split(key)
        v0 = variance(params, k0, init)
        _, (logits, variances) = jax.lax.scan(
            record, carry, jax.random.split(k_rec, steps // record_every)
        )
        return (
            jnp.concatenate([params["logits"], logits]),
            jnp.concatenate([v0[None], variances]),
        )

    return jax.vmap(seed)(keys)


def _summary(theta: np.ndarray) -> dict[str, Any]:
    """Final theta per seed; mean +- SE over the finite runs; diverged seeds named."""
    final = theta[:, -1]
    diverged = [int(s) for s in np.flatnonzero(~np.all(np.isfinite(theta), axis=1))]
    ok = np.array([s for s in range(len(final)) if s not in diverged], int)
    good = final[ok]
    se = float(good.std(ddof=1) / math.sqrt(len(good))) if len(good) > 1 else None
    return {
        "seeds": len(final),
        "final_theta": [None if not math.isfinite(x) else float(x) for x in final],
        "final_theta_mean": float(good.mean()) if len(good) else None,
        "final_theta_se": se,
        "reached_optimum_side": int(np.sum(good < 0.5)),
        "diverged_seeds": diverged,
    }


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    specs = validate(config)
    t, temperature = float(config.target), float(config.temperature)
    logit0 = math.log(config.theta0) - math.log1p(-config.theta0)
    steps_axis = list(range(0, config.steps + 1, config.record_every))
    runs: dict[str, Any] = {}
    rows = []
    bar = tqdm([EXACT, *specs], desc=f"{config.name}", leave=False, disable=not config.progress)
    for spec in bar:
        bar.set_postfix_str(spec)
        stream = 0 if spec == EXACT else measure.stream(spec)
        key = jax.random.fold_in(jax.random.key(config.seed), stream)
        num_seeds = 1 if spec == EXACT else config.num_seeds
        logits, variances = trajectories(
            jax.random.split(key, num_seeds),
            jnp.float32(logit0),
            jnp.float32(t),
            spec=spec,
            temperature=temperature,
            num_samples=config.num_samples,
            steps=config.steps,
            record_every=config.record_every,
            var_n=config.variance_estimates,
            lr=float(config.learning_rate),
        )
        theta = exact.sigmoid(np.asarray(logits, np.float64))
        theta[~np.isfinite(np.asarray(logits))] = np.nan
        var = np.asarray(variances, np.float64)
        if spec == EXACT:
            evals = 0
            info: dict[str, Any] = {"label": "exact gradient (Adam)", "unbiased": True}
        else:
            est = measure.estimator(spec, temperature)
            evals = measure.evaluations(est, config.num_samples, 1)
            info = _common.describe([spec], temperature, config.num_samples, [1], None)[spec]
            if est.adaptive:
                info["label"] += " (control trained each step)"
        runs[spec] = {
            **info,
            **_summary(theta),
            "evaluations_per_step": evals,
            "theta": [[None if not math.isfinite(x) else x for x in row] for row in theta.tolist()],
            "variance": [
                [None if not math.isfinite(x) else x for x in row] for row in var.tolist()
            ],
        }
        for s in range(theta.shape[0]):
            for j, step in enumerate(steps_axis):
                rows.append(
                    {
                        "estimator": spec,
                        "seed": s,
                        "step": step,
                        "theta": theta[s, j],
                        "variance": var[s, j],
                        "variance_per_cost": var[s, j] * evals,
                    }
                )
    results = {
        "name": config.name,
        "title": config.title,
        "figure": "trajectories",
        "target": t,
        "theta0": float(config.theta0),
        "optimum": "theta -> 0" if t < 0.5 else ("theta -> 1" if t > 0.5 else "any theta"),
        "optimizer": f"Adam({config.learning_rate:g}) on the logit, one estimate per step",
        "steps": steps_axis,
        "num_seeds": config.num_seeds,
        "variance_estimates": config.variance_estimates,
        "runs": runs,
    }
    if config.paper is not None:
        final = {str(k): float(v) for k, v in config.paper.final_theta.items()}
        results["paper"] = {
            "source": config.paper.source,
            "note": config.paper.note,
            "final_theta": final,
            "ours_final_theta": {
                s: [runs[s]["final_theta_mean"], runs[s]["final_theta_se"]]
                for s in final
                if s in runs
            },
        }
    write_json(Path(workdir) / "results.json", results)
    buf = io.StringIO()
    fields = ("estimator", "seed", "step", "theta", "variance", "variance_per_cost")
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(workdir) / "results.csv", buf.getvalue())
    plot(workdir)
    return results


def plot(workdir: str | Path) -> list[Path]:
    """Redraw the figure from ``workdir/results.json`` alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    results = read_json(workdir / "results.json")
    steps = np.array(results["steps"])
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(13.6, 6.2))
    style = iter(_common.styles(len(results["runs"])))
    paper = results.get("paper", {}).get("final_theta", {})
    for spec, run in results["runs"].items():
        theta = np.array(run["theta"], dtype=np.float64)  # None -> nan
        if spec == EXACT:
            ax_t.plot(steps, theta[0], color="k", lw=1.6, ls="--", label=run["label"])
            continue
        color, ls, _ = next(style)
        ok = [s for s in range(theta.shape[0]) if s not in run["diverged_seeds"]]
        label = run["label"]
        if run["diverged_seeds"]:
            label += f" ({len(run['diverged_seeds'])} diverged)"
        if ok:
            th = theta[ok]
            lw = 2.4 if spec in paper else 1.3  # the paper's estimators stand out
            ax_t.plot(steps, th.mean(axis=0), color=color, ls=ls, lw=lw, label=label)
            ax_t.fill_between(steps, th.min(axis=0), th.max(axis=0), color=color, alpha=0.15)
            if spec in paper:
                ax_t.plot(
                    steps[-1], paper[spec], marker="*", ms=13, color=color, mec="k", clip_on=False
                )
            var = np.array(run["variance"], dtype=np.float64)[ok] * run["evaluations_per_step"]
            with np.errstate(divide="ignore", invalid="ignore"):
                log_var = np.log10(var)
            log_var[~np.isfinite(log_var)] = np.nan
            with np.errstate(all="ignore"):
                mean_log = np.nanmean(log_var, axis=0)
            ax_v.plot(steps, mean_log, color=color, ls=ls, lw=2.2 if spec in paper else 1.2)
    if paper:
        ax_t.plot([], [], "k*", ms=11, ls="none", label=results["paper"]["source"] + ": final θ")
    ax_t.axhline(0.5, color="0.6", lw=0.8)
    ax_t.set_xlabel("step")
    ax_t.set_ylabel(r"$\theta$ (mean over seeds; band: min to max)")
    ax_t.set_ylim(-0.02, 1.02)
    ax_t.grid(True, alpha=0.3)
    ax_v.set_xlabel("step")
    ax_v.set_ylabel(
        r"$\log_{10}$(Var[estimate of $\partial/\partial\alpha$] × evaluations)"
        "\nmean over seeds"
    )
    ax_v.grid(True, alpha=0.3)
    note = "\n" + textwrap.fill(results["paper"]["note"], 140) if "paper" in results else ""
    fig.suptitle(
        f"{results['title']}\n$t = {results['target']:g}$, {results['optimizer']}, "
        f"{results['num_seeds']} seeds; variance from {results['variance_estimates']} "
        f"estimates at each record{note}",
        fontsize=9,
    )
    handles, labels = ax_t.get_legend_handles_labels()
    ncol = 3
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    rows = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, 0.03 * rows, 1, 1))
    paths = save_figure(fig, workdir / results["name"])
    plt.close(fig)
    return paths
