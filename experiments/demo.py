"""Demo runner: per-sample gradient variance of estimators on a Gaussian (default: pathwise and
score function; ``config.estimators`` takes any registry spec or importable path).

Cost ``f(x) = sum_d x_d^2`` under ``N(loc 1, scale^2 I_D)``; the closed forms per coordinate are
pathwise ``Var d/dmu = 4 sigma^2`` and score function ``mu^4/sigma^2 + 14 mu^2 + 15 sigma^2``
for D = 1, the score function's growing with D (Mohamed et al. 2020, section 3.3.3).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

import estimators

from ._workdir import write_json


def _normal(params: dict) -> estimators.Normal:
    return estimators.Normal(params["loc"], params["scale"])


def validate(config: ml_collections.ConfigDict) -> None:
    """Check values before anything runs, each estimator included (built from the registry and
    checked against the Gaussian: capabilities, objective, independent samples)."""
    if config.scale <= 0:
        raise ValueError(f"config.scale must be > 0; got {config.scale}")
    if config.num_samples < 2:
        raise ValueError(f"config.num_samples must be >= 2; got {config.num_samples}")
    if not config.dims or min(config.dims) < 1:
        raise ValueError(f"config.dims must be positive ints; got {config.dims}")
    if isinstance(config.estimators, str) or not config.estimators:
        raise ValueError(
            f"config.estimators must be a non-empty tuple of specs; got {config.estimators!r}"
        )
    probe = _normal({"loc": jnp.zeros(1), "scale": jnp.ones(1)})
    for spec in config.estimators:
        try:
            est = estimators.registry.get(spec)
            est.check(probe, config.num_samples)
        except (ValueError, TypeError) as e:
            raise ValueError(f"config.estimators: {e}") from None
        if est.objective != "mean" or est.multi_sample:
            raise ValueError(
                f"config.estimators: {spec!r} is not a per-sample estimator of grad E[f] "
                "(objective 'mean', independent samples), so its per-sample variance is not "
                "comparable here"
            )


def _cost(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(x))


@partial(jax.jit, static_argnames=("estimator", "dim", "num_samples"))
def _mean_variance(key, loc, scale, *, estimator, dim, num_samples):
    params = {"loc": jnp.full((dim,), loc), "scale": jnp.full((dim,), scale)}
    est = estimators.registry.get(estimator)
    jac = est.per_sample(_cost, params, _normal, key, num_samples=num_samples, state=est.init())
    out = {}
    for k, v in jac.items():
        # h_i = mean over coordinates of (g_id - mean_d)^2: its mean is the coordinate-averaged
        # single-sample variance (times (N-1)/N), its spread gives that mean's standard error.
        h = jnp.mean(jnp.square(v - jnp.mean(v, axis=0, keepdims=True)), axis=1)
        out[k] = jnp.mean(h) * num_samples / (num_samples - 1)
        out[f"{k}_se"] = jnp.std(h, ddof=1) / jnp.sqrt(num_samples)
    return out


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Print and save the mean per-coordinate variance (± its standard error) for each D and
    estimator; at each D every estimator gets the same key (common random numbers)."""
    key = jax.random.key(config.seed)
    rows = []
    width = max(15, *(len(name) for name in config.estimators))
    print(f"{'D':>6} {'estimator':>{width}} {'Var d/dmu':>20} {'Var d/dsigma':>20}")
    for dim in config.dims:
        key, sub = jax.random.split(key)
        for name in config.estimators:
            var = _mean_variance(
                sub,
                config.loc,
                config.scale,
                estimator=name,
                dim=dim,
                num_samples=config.num_samples,
            )
            row = {
                "dim": dim,
                "estimator": name,
                "num_samples": config.num_samples,
                **{
                    k.replace("loc", "var_loc").replace("scale", "var_scale"): float(v)
                    for k, v in var.items()
                },
            }
            rows.append(row)
            loc = f"{row['var_loc']:.2f} ± {row['var_loc_se']:.2f}"
            scale = f"{row['var_scale']:.2f} ± {row['var_scale_se']:.2f}"
            print(f"{dim:>6} {name:>{width}} {loc:>20} {scale:>20}")
    write_json(workdir / "results.json", rows)
    return {"rows": rows}
