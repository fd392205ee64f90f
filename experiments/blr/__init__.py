"""Bayesian logistic regression (Mohamed et al. 2020, section 8.3, Figures 8 to 14).

A mean-field Gaussian posterior over the 31 weights of a logistic regression on the
breast-cancer data is trained by SGD on the ELBO, its gradient estimated by each variant: a spec
of ``estimators.registry`` (the paper's six: ``score_function``, ``+moving_average``,
``+delta``; ``pathwise``, ``+delta``; ``measure_valued``, coupled), or any estimator of one's own
named by an importable path ``"pkg.mod:attr"`` that supports the Gaussian posterior. Every
``eval_every`` steps the ELBO, the accuracy and the per-coordinate variance of the gradient
estimator are measured on the full data set. With ``cost_budget > 0`` (Figure 14) the variants
are compared at equal cost instead of equal N: each gets ``cost_budget / cost_evaluations(D)``
samples, so every variant evaluates the log-likelihood ``cost_budget`` times per step.

One jitted program per variant (and sweep value) trains all seeds at once (``vmap``) with the
steps as a ``lax.scan``. The seeds are spread over the devices of the run's mesh
(``mesh.devices``, default every device) when their number is a multiple of the device count,
else every device runs every seed (replicated; the run says so): see :mod:`.train`.

Results: ``results.npz`` (every curve per seed, NaN for a diverged seed, ``<variant>/diverged``
``[S]`` flags, and ``labels``, each variant's legend label), ``finals.csv`` (each seed's final
ELBO and accuracy, and whether it diverged), ``summary.json`` (final values over the seeds that
did not diverge, the diverged seeds, timings), figures ``fig8`` to ``fig14`` (PNG and PDF), which
``plot(workdir)`` redraws from the saved files alone. At equal cost the results also hold
``num_samples`` and ``cost_evaluations`` ``[V]``, per variant in the order of ``config.variants``.
"""

from __future__ import annotations

import concurrent.futures
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from estimators import GradientEstimator
from models import logistic_regression as lr

from .. import _mesh
from .._diagnostics import NAN_CAUSES
from .._workdir import atomic_write_bytes, read_json, write_json
from . import plots, train
from .data import breast_cancer
from .train import Settings, make_program

_to_host = _mesh.to_host  # a module attribute: the sharding test records what passes here

NUM_DATA = 569
NUM_FEATURES = 31  # 30 standardised features and a bias column
# Each figure and the sweep it needs ("" for none).
FIGURES = {
    "fig8": "",
    "fig9": "",
    "fig10": "",
    "fig11": "num_samples",
    "fig12": "batch_size",
    "fig13": "",
    "fig14": "",
}
# The figures that draw the gradient variance over training.
VARIANCE_FIGURES = {"fig8", "fig9", "fig10", "fig13", "fig14"}
SWEEPS = ("", "num_samples", "batch_size")


def _positive_int(config: ml_collections.ConfigDict, name: str, minimum: int = 1) -> int:
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"config.{name} must be an int >= {minimum}; got {value!r}")
    return value


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad value; nothing has been written yet."""
    for name in ("steps", "eval_every", "num_seeds", "num_samples", "eval_samples"):
        _positive_int(config, name)
    if config.steps % config.eval_every:
        raise ValueError(
            f"config.eval_every ({config.eval_every}) must divide config.steps ({config.steps})"
        )
    batch = _positive_int(config, "batch_size")
    if batch > NUM_DATA:
        raise ValueError(f"config.batch_size must be <= {NUM_DATA} (the data set); got {batch}")
    for name in ("variance_samples", "measure_valued_variance_samples"):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value == 1 or value < 0:
            raise ValueError(f"config.{name} must be 0 (off) or an int >= 2; got {value!r}")
    rate = config.learning_rate
    if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"config.learning_rate must be a finite number > 0; got {rate!r}")
    if config.get("lr_decay", "cosine") not in train.LR_DECAYS:
        raise ValueError(
            f"config.lr_decay must be one of {train.LR_DECAYS}; got {config.lr_decay!r}"
        )
    decay = config.moving_average_decay
    if not (isinstance(decay, int | float) and 0 <= decay < 1):
        raise ValueError(f"config.moving_average_decay must be in [0, 1); got {decay!r}")
    cv_coefficient(config)
    _positive_int(config, "cv_coefficient_samples", minimum=2)
    if not isinstance(config.progress, bool):
        raise ValueError(f"config.progress must be True or False; got {config.progress!r}")
    if config.sweep not in SWEEPS:
        raise ValueError(f"config.sweep must be one of {SWEEPS}; got {config.sweep!r}")
    values = tuple(config.sweep_values)
    if config.sweep:
        if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ValueError(
                f"config.sweep_values must be a non-empty tuple of ints; got {values!r}"
            )
        if min(values) < 1 or (config.sweep == "batch_size" and max(values) > NUM_DATA):
            top = f" <= {NUM_DATA}" if config.sweep == "batch_size" else ""
            raise ValueError(f"config.sweep_values must be >= 1{top}; got {values!r}")
    figures = tuple(config.figures)
    for fig in figures:
        if fig not in FIGURES:
            raise ValueError(f"config.figures: unknown figure {fig!r}; choose from {list(FIGURES)}")
        if FIGURES[fig] != config.sweep:
            raise ValueError(
                f"config.figures: {fig} needs config.sweep={FIGURES[fig]!r}; got {config.sweep!r}"
            )
    budget = cost_budget(config)
    if budget and cv_coefficient(config) == "optimal":
        raise ValueError(
            'config.cost_budget needs a fixed config.cv_coefficient (e.g. "1.0"): "optimal" '
            "spends cv_coefficient_samples more evaluations per step, which the budget does not "
            "count"
        )
    if bool(budget) != ("fig14" in figures):
        raise ValueError(
            "config.figures: fig14 (equal cost) needs config.cost_budget > 0, and a cost budget "
            f"is drawn only by fig14; got cost_budget={budget} and figures={figures!r}"
        )
    if budget and set(figures) != {"fig14"}:
        raise ValueError(
            f"config.figures: with config.cost_budget each variant has its own N: draw only "
            f"fig14; got {figures!r}"
        )
    variants = _check_variants(config)
    if "fig8" in figures and not {"score_function", "pathwise"} <= set(variants):
        raise ValueError("config.figures: fig8 needs the score_function and pathwise variants")
    if VARIANCE_FIGURES & set(figures) and not config.variance_samples:
        raise ValueError(
            f"config.figures: {', '.join(sorted(VARIANCE_FIGURES))} need "
            "config.variance_samples >= 2"
        )


def _check_variants(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """``config.variants``, each built by the registry and checked against the problem: it
    estimates the gradient of an expectation, supports the Gaussian posterior, and gets enough
    samples (training, and the variance evaluation); else a ``ValueError`` naming it."""
    variants = tuple(config.variants)
    if not variants or not all(isinstance(v, str) and v.strip() for v in variants):
        raise ValueError(
            f"config.variants must be a non-empty tuple of estimator specs (e.g. "
            f"'pathwise+delta', 'pkg.mod:attr'); got {variants!r}"
        )
    if len(set(variants)) != len(variants):
        raise ValueError(f"config.variants lists a variant twice: {variants!r}")
    posterior = lr.posterior(lr.init_params(NUM_FEATURES))
    budget = cost_budget(config)
    for spec in variants:
        try:
            est = estimator(config, spec)
        except (ValueError, TypeError) as e:
            raise ValueError(f"config.variants: {spec!r} is not an estimator: {e}") from None
        if budget:
            per_sample = est.cost_evaluations(NUM_FEATURES)
            if budget % per_sample:
                raise ValueError(
                    f"config.cost_budget ({budget}) must be a multiple of every variant's "
                    f"evaluations per sample: {spec!r} evaluates the cost {per_sample} times "
                    "per sample"
                )
            counts: tuple[int, ...] = (budget // per_sample,)
        elif config.sweep == "num_samples":
            counts = tuple(config.sweep_values)
        else:
            counts = (config.num_samples,)
        if est.objective != "mean":
            raise ValueError(
                f"config.variants: {spec!r} estimates the gradient of objective "
                f"{est.objective!r}; the ELBO needs the gradient of an expectation ('mean')"
            )
        variance = _variance_samples(config, est)
        try:
            for n in counts:
                est.check(posterior, n)
                if variance and est.multi_sample and variance // n < 2:
                    raise ValueError(
                        f"estimator {spec!r} uses its samples jointly: its variance is measured "
                        f"over variance_samples // num_samples estimates, which needs "
                        f"variance_samples >= {2 * n}; got {variance}"
                    )
            if variance and not est.multi_sample:
                est.check(posterior, variance)
        except ValueError as e:
            raise ValueError(f"config.variants: {e}") from None
    return variants


def estimator(config: ml_collections.ConfigDict, spec: str) -> GradientEstimator:
    """The registry's estimator for ``spec`` with the config's options (a ``ValueError`` or
    ``TypeError`` from the registry if it names none)."""
    return train.estimator(_settings(config, spec, None))


def _variance_samples(config: ml_collections.ConfigDict, est: GradientEstimator) -> int:
    """``config.variance_samples``, or ``measure_valued_variance_samples`` for an estimator whose
    cost per sample grows with the dimension (``cost_evaluations(D) >= D``: measure-valued)."""
    if config.variance_samples and est.cost_evaluations(NUM_FEATURES) >= NUM_FEATURES:
        return config.measure_valued_variance_samples
    return config.variance_samples


def cost_budget(config: ml_collections.ConfigDict) -> int:
    """``config.cost_budget``: log-likelihood evaluations per step at equal cost (a key of the
    ``fig14`` config only), 0 for off or absent; else a ``ValueError``."""
    value = config.get("cost_budget", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"config.cost_budget must be 0 (off) or an int >= 1; got {value!r}")
    return value


def cv_coefficient(config: ml_collections.ConfigDict) -> float | str:
    """``config.cv_coefficient`` as ``with_control_variate`` takes it: a float or ``"optimal"``.

    Accepts a finite number, ``"optimal"``, or a finite number written as text (``"0.5"``, as
    the command line gives it); anything else is a ``ValueError`` naming the value.
    """
    value = config.cv_coefficient
    if isinstance(value, str):
        if value.strip() == "optimal":
            return "optimal"
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(
            'config.cv_coefficient must be "optimal" or a finite number (e.g. "1.0"); '
            f"got {config.cv_coefficient!r}"
        )
    return float(value)


def _settings(config: ml_collections.ConfigDict, variant: str, value: int | None) -> Settings:
    """The program settings of ``variant`` (at the swept ``value``, if any)."""
    overrides = {config.sweep: value} if config.sweep and value is not None else {}
    settings = Settings(
        variant=variant,
        steps=config.steps,
        eval_every=config.eval_every,
        batch_size=overrides.get("batch_size", config.batch_size),
        num_samples=overrides.get("num_samples", config.num_samples),  # equal cost: below
        learning_rate=float(config.learning_rate),
        eval_samples=config.eval_samples,
        variance_samples=config.variance_samples,
        moving_average_decay=float(config.moving_average_decay),
        cv_coefficient=cv_coefficient(config),
        cv_coefficient_samples=config.cv_coefficient_samples,
        lr_decay=str(config.get("lr_decay", "cosine")),
    )
    est = train.estimator(settings)
    settings = settings._replace(variance_samples=_variance_samples(config, est))
    budget = cost_budget(config)
    if budget:  # equal cost: cost_budget log-likelihood evaluations per step
        settings = settings._replace(num_samples=budget // est.cost_evaluations(NUM_FEATURES))
    return settings


def _compile(settings: Settings, features, labels, keys, desc: str, progress: bool, seeds=None):
    """Trace and compile one program; returns ``(compiled, progress holder, seconds)``.

    ``seeds``: the sharding of the seed axis (:func:`.train.seed_sharding`).

    With ``progress`` the program calls back after every block to update ``holder["bar"]``, a
    tqdm bar made when the program runs; without, the program has no callback.
    """
    holder: dict[str, Any] = {}
    # The callback runs once per block for all seeds together (it does not depend on the seed).
    callback = (lambda _: holder["bar"].update(1)) if progress else None
    program = make_program(settings, progress=callback, seeds=seeds)
    start = time.perf_counter()
    compiled = program.lower(features, labels, keys).compile()
    return compiled, holder, time.perf_counter() - start


def _train(
    compiled, holder, settings: Settings, features, labels, keys, desc, allow_divergence, progress
) -> tuple[dict, float, list[int]]:
    """Run one compiled program; returns (numpy metrics, seconds, diverged seeds).

    A seed whose training produced NaN or inf is an error, unless ``allow_divergence`` (sweeps
    that push the estimators to where some diverge); then its curves stay NaN in the results.
    """
    from tqdm import tqdm

    holder["bar"] = tqdm(
        total=settings.steps // settings.eval_every,
        desc=desc,
        unit="block",
        file=sys.stderr,
        disable=not progress,
    )
    start = time.perf_counter()
    params, metrics = jax.block_until_ready(compiled(features, labels, keys))
    seconds = time.perf_counter() - start
    holder["bar"].close()
    metrics = {k: _to_host(v) for k, v in metrics.items()}
    params = {k: _to_host(v) for k, v in params.items()}
    bad = [
        s
        for s in range(keys.shape[0])
        if not all(np.isfinite(a[s]).all() for a in (*metrics.values(), *params.values()))
    ]
    if bad and not allow_divergence:
        raise ValueError(
            f"{desc}: training produced NaN or inf for seed(s) {bad}: {NAN_CAUSES} "
            "(config.learning_rate, config.num_samples; or set config.allow_divergence=True "
            "to record diverged seeds as NaN)"
        )
    if bad:
        print(f"warning: {desc}: seed(s) {bad} diverged (NaN/inf); kept as NaN", file=sys.stderr)
    return metrics, seconds, bad


def _final(metrics: dict, diverged: list[int], value: int | None, num_seeds: int) -> dict:
    """Final values: mean over the ``seeds_averaged`` seeds that did not diverge, and the sample
    sd (``ddof=1``) of the final ELBO over them when there are at least two."""
    ok = [s for s in range(num_seeds) if s not in diverged]
    final: dict[str, Any] = {
        "value": value,
        "num_seeds": num_seeds,
        "seeds_averaged": len(ok),
        "diverged_seeds": diverged,
    }
    for name in ("elbo", "accuracy", "var_loc", "var_log_scale"):
        if name in metrics and ok:
            last = metrics[name][ok, -1]
            final[f"{name}_mean"] = float(last.mean())
            if name == "elbo" and len(ok) > 1:
                final["elbo_std"] = float(last.std(ddof=1))
                final["elbo_se"] = float(last.std(ddof=1) / np.sqrt(len(ok)))
    return final


def _csv_rows(
    variant: str, value: int | None, metrics: dict, diverged: list[int], num_seeds: int
) -> list[str]:
    """One ``finals.csv`` line per seed: its final ELBO and accuracy (``nan`` if diverged)."""
    rows = []
    for s in range(num_seeds):
        bad = s in diverged
        elbo = "nan" if bad else repr(float(metrics["elbo"][s, -1]))
        acc = "nan" if bad else repr(float(metrics["accuracy"][s, -1]))
        rows.append(f"{variant},{'' if value is None else value},{s},{int(bad)},{elbo},{acc}\n")
    return rows


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """Train every variant (and sweep value) for all seeds; save results and figures."""
    validate(config)
    features, labels = breast_cancer()
    seeds = _mesh.seed_layout(config)
    # The seeds' keys, made on the mesh (laid out as the seed axis; the same on every process).
    keys = jax.jit(lambda key: jax.random.split(key, config.num_seeds), out_shardings=seeds)(
        jax.random.key(config.seed)
    )
    values = tuple(config.sweep_values) if config.sweep else (None,)
    arrays: dict[str, np.ndarray] = {
        "steps": np.arange(1, config.steps // config.eval_every + 1) * config.eval_every
    }
    if config.sweep:
        arrays["sweep_values"] = np.asarray(values)
    # The legend label of each variant, in the order of config.variants (plots read only these).
    arrays["labels"] = np.asarray([estimator(config, v).label for v in config.variants])
    # The samples behind each variant's variance curves (fewer for the costly measure-valued).
    arrays["variance_samples"] = np.asarray(
        [_settings(config, v, None).variance_samples for v in config.variants]
    )
    if cost_budget(config):  # equal cost: each variant's N, and its evaluations per sample
        arrays["num_samples"] = np.asarray(
            [_settings(config, v, None).num_samples for v in config.variants]
        )
        arrays["cost_evaluations"] = np.asarray(
            [estimator(config, v).cost_evaluations(NUM_FEATURES) for v in config.variants]
        )
    summary: dict[str, Any] = {"variants": {}, "timings": {}}
    finals: dict[str, list] = {v: [] for v in config.variants}
    rows: list[str] = []
    jobs = []
    for variant in config.variants:
        for value in values:
            tag = variant if value is None else f"{variant}/{config.sweep}={value}"
            jobs.append((variant, value, tag, _settings(config, variant, value)))
    start, cpu_start = time.perf_counter(), time.process_time()
    # One background thread compiles the programs in order while the main thread runs those
    # already compiled: on a 2-core CPU, compiling overlaps with training.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        futures = [
            pool.submit(_compile, settings, features, labels, keys, tag, config.progress, seeds)
            for _, _, tag, settings in jobs
        ]
        try:
            for (variant, value, tag, settings), future in zip(jobs, futures, strict=True):
                compiled, holder, compile_s = future.result()
                metrics, run_s, diverged = _train(
                    compiled,
                    holder,
                    settings,
                    features,
                    labels,
                    keys,
                    tag,
                    config.allow_divergence,
                    config.progress,
                )
                for name, array in metrics.items():
                    arrays[f"{tag}/{name}"] = array
                # [S] True for a seed whose training produced NaN/inf anywhere (the figures
                # leave it out and count it).
                arrays[f"{tag}/diverged"] = np.isin(np.arange(config.num_seeds), diverged)
                rows += _csv_rows(variant, value, metrics, diverged, config.num_seeds)
                summary["timings"][tag] = {
                    "compile_s": round(compile_s, 3),
                    "run_s": round(run_s, 3),
                }
                final = _final(metrics, diverged, value, config.num_seeds)
                if cost_budget(config):  # equal cost: this variant's own N
                    final["num_samples"] = settings.num_samples
                finals[variant].append(final)
                kept = f"n = {final['seeds_averaged']}/{config.num_seeds}"
                result = (
                    f"final ELBO {final['elbo_mean']:10.2f} +- "
                    f"{final.get('elbo_std', float('nan')):7.2f} ({kept})  "
                    f"accuracy {final['accuracy_mean']:.3f}"
                    if "elbo_mean" in final
                    else "diverged (all seeds)"
                )
                print(f"{tag:44s} {result}  compile {compile_s:5.1f} s  run {run_s:6.1f} s")
        finally:
            for future in futures:
                future.cancel()
    for variant in config.variants:
        summary["variants"][variant] = finals[variant] if config.sweep else finals[variant][0]
    summary["timings"]["total_s"] = round(time.perf_counter() - start, 3)
    summary["timings"]["total_cpu_s"] = round(time.process_time() - cpu_start, 3)
    print(
        f"trained {len(config.variants)} variant(s) x {config.num_seeds} seeds in "
        f"{summary['timings']['total_s']:.1f} s wall, compiles included "
        f"({summary['timings']['total_cpu_s']:.1f} s CPU; compiles overlap training)"
    )
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(workdir / "results.npz", buf.getvalue())
    write_json(workdir / "summary.json", summary)
    header = f"variant,{config.sweep or 'sweep_value'},seed,diverged,final_elbo,final_accuracy\n"
    atomic_write_bytes(workdir / "finals.csv", (header + "".join(rows)).encode())
    plot(workdir)
    return summary


def load_results(workdir: str | Path) -> tuple[ml_collections.ConfigDict, dict[str, np.ndarray]]:
    """The saved config and arrays of a finished run (clear error if missing or corrupt)."""
    from .._config import config_from_dict
    from .._workdir import WorkdirError

    workdir = Path(workdir)
    config = config_from_dict(read_json(workdir / "config.json"))
    path = workdir / "results.npz"
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise WorkdirError(f"{path} not found: is this the workdir of a finished run?") from None
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{path} cannot be read ({e}); the file is corrupt") from None
    return config, arrays


def plot(workdir: str | Path) -> list[Path]:
    """Redraw the run's figures from ``config.json`` and ``results.npz`` only."""
    workdir = Path(workdir)
    config, arrays = load_results(workdir)
    paths: list[Path] = []
    for fig in config.figures:
        paths += plots.DRAW[fig](config, arrays, workdir / fig)
    return paths
