"""What the toy's three figures share: the config checks, the estimator list, labels."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import ml_collections

import estimators
from estimators import registry

from . import measure

# ``config.estimators = ("all",)``: every registered base that estimates grad E[f] of a
# Bernoulli, and the score function's baselines below; estimators registered later appear.
ALL = "all"
BASELINES = ("loo", "optimal")
COMMON_KEYS = {
    "runner",
    "figure",
    "name",
    "title",
    "seed",
    "target",
    "estimators",
    "temperature",
    "num_samples",
    "progress",
    "mesh",
}


def fail(key: str, problem: str) -> None:
    raise ValueError(f"config.{key} {problem}")


def check_keys(config: ml_collections.ConfigDict, allowed: set[str]) -> None:
    keys = set(config.keys())
    if keys - allowed:
        raise ValueError(f"unknown config key(s) {sorted(keys - allowed)} for this figure")
    if allowed - keys:
        raise ValueError(f"missing config key(s) {sorted(allowed - keys)}")


def positive_int(config: ml_collections.ConfigDict, key: str, least: int = 1) -> None:
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        fail(key, f"must be an int >= {least}; got {v!r}")


def unit_interval(config: ml_collections.ConfigDict, key: str) -> None:
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1:
        fail(key, f"must be a number in (0, 1); got {v!r}")


def _fits(est: estimators.GradientEstimator) -> bool:
    return est.objective == "mean" and est.supports(estimators.Bernoulli(jnp.zeros(1)))


def expand(specs: Any, temperature: float) -> list[str]:
    """The estimator specs ``config.estimators`` names (``"all"`` expanded, in registry order)."""
    out: list[str] = []
    for spec in specs:
        if spec != ALL:
            out.append(spec)
            continue
        for name in registry.names():
            if name.startswith("+"):
                continue
            est = measure.estimator(name, temperature)
            if not _fits(est):
                continue
            out.append(name)
            if est.with_baseline is not None:
                out += [f"{name}+{b}" for b in BASELINES]
    return list(dict.fromkeys(out))


def check_common(config: ml_collections.ConfigDict) -> list[str]:
    """Check the keys every figure has; returns the expanded estimator specs."""
    for key in ("name", "title"):
        if not isinstance(config[key], str) or not config[key]:
            fail(key, f"must be a non-empty str; got {config[key]!r}")
    if not isinstance(config.seed, int) or isinstance(config.seed, bool):
        fail("seed", f"must be an int; got {config.seed!r}")
    t = config.target
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        fail("target", f"must be a finite number; got {t!r}")
    temp = config.temperature
    if isinstance(temp, bool) or not isinstance(temp, int | float) or not temp > 0:
        fail("temperature", f"must be a number > 0; got {temp!r}")
    positive_int(config, "num_samples", 1)
    if not isinstance(config.progress, bool):
        fail("progress", f"must be true or false; got {config.progress!r}")
    specs = config.estimators
    if (
        isinstance(specs, str)
        or not specs
        or any(not isinstance(s, str) or not s.strip() for s in specs)
        or len(set(specs)) < len(specs)
    ):
        fail("estimators", f"must be distinct estimator specs (or 'all'); got {specs!r}")
    expanded = expand(specs, float(temp))
    dist = estimators.Bernoulli(jnp.zeros(1))
    for spec in expanded:
        try:
            est = measure.estimator(spec, float(temp))
        except (ValueError, TypeError) as e:
            fail("estimators", f"has {spec!r}, which the registry cannot build: {e}")
        if est.objective != "mean":
            fail(
                "estimators",
                f"has {spec!r}, whose objective is {est.objective!r}; the toy compares "
                "estimates of grad E[f] (objective 'mean')",
            )
        try:
            est.check(dist, measure.samples_per_estimate(est, config.num_samples))
        except ValueError as e:
            fail("estimators", f"has {spec!r}, which cannot run on a Bernoulli: {e}")
    if not expanded:
        fail("estimators", "names no estimator")
    return expanded


def label(est: estimators.GradientEstimator, num_samples: int, adapt_steps: int | None) -> str:
    """The legend entry: the estimator's label, its K if multi-sample, its adaptation."""
    text = est.label
    if est.multi_sample:
        text += f", K={measure.samples_per_estimate(est, num_samples)}"
    if adapt_steps is not None and est.adaptive:
        text += f" (after {adapt_steps} updates)" if adapt_steps else " (initial state)"
    return text


def describe(
    specs: list[str], temperature: float, num_samples: int, dims: list[int], adapt_steps: int | None
) -> dict[str, dict[str, Any]]:
    """What results.json records of each estimator."""
    out = {}
    for spec in specs:
        est = measure.estimator(spec, temperature)
        out[spec] = {
            "label": label(est, num_samples, adapt_steps),
            "unbiased": bool(est.unbiased),
            "bias": est.bias,
            "adaptive": bool(est.adaptive),
            "multi_sample": bool(est.multi_sample),
            "samples_per_estimate": measure.samples_per_estimate(est, num_samples),
            "evaluations_per_estimate": {
                str(d): measure.evaluations(est, num_samples, d) for d in dims
            },
        }
    return out


def styles(n: int) -> list[tuple[Any, str, str]]:
    """``n`` distinct (colour, line style, marker): tab10 then Dark2 (18 colours) solid, then
    again dashed, ..."""
    import matplotlib

    colors = [*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["Dark2"].colors]
    lines, markers = ("-", "--", "-.", ":"), "osD^v<>ph*"
    k = len(colors)
    return [
        (colors[i % k], lines[(i // k) % len(lines)], markers[i % len(markers)]) for i in range(n)
    ]
