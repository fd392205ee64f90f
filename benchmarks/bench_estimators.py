"""Per-sample gradient throughput of the pathwise and score-function estimators.

A D-dimensional diagonal Gaussian with parameters {loc, log_scale} and the cost
f(x) = sum_d cos(x_d) + x_d^2 / 2. For each D the estimators' throughput (samples per second,
one per-sample gradient of 2D numbers per sample) is printed next to the throughput of merely
drawing the same N x D standard normals, the floor no estimator can beat:

* ``normal (floor)``: one ``jax.random.normal(key, (N, D))`` call, which is how the estimators
  draw Gaussian samples (``estimators.draw_samples``);
* ``normal N keys``: for reference, ``jax.random.split(key, N)`` and one ``normal(k_i, (D,))``
  per sample under ``vmap`` (one key per sample, several times slower at small D).

The ratio columns are estimator throughput / floor throughput (1.0 = as fast as sampling alone).
Every function is jitted once, warmed up, then timed ``--repeats`` times with
``block_until_ready``; the median is reported. N is chosen per D so one call takes ~0.1-1 s.

    python benchmarks/bench_estimators.py [--repeats 7] [--dims 1 100 10000] [--target 0.3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# Run from a checkout without installing: the repository root holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import estimators  # noqa: E402


def cost(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.cos(x) + 0.5 * jnp.square(x))


def build(p):
    return estimators.Normal.from_log_scale(p["loc"], p["log_scale"])


def make_functions(dim: int, num_samples: int) -> dict:
    params = {"loc": jnp.full((dim,), 0.5), "log_scale": jnp.zeros((dim,))}
    n = num_samples
    return {
        "normal (floor)": jax.jit(lambda k: jax.random.normal(k, (n, dim))),
        "normal N keys": jax.jit(
            lambda k: jax.vmap(lambda ki: jax.random.normal(ki, (dim,)))(jax.random.split(k, n))
        ),
        "pathwise": jax.jit(lambda k: estimators.pathwise(cost, params, build, k, num_samples=n)),
        "score_function": jax.jit(
            lambda k: estimators.score_function(cost, params, build, k, num_samples=n)
        ),
    }


def median_seconds(fn, key, repeats: int) -> float:
    jax.block_until_ready(fn(key))  # compile
    jax.block_until_ready(fn(key))  # warm up
    times = []
    for i in range(repeats):
        k = jax.random.fold_in(key, i)
        jax.block_until_ready(k)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(k))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def choose_num_samples(dim: int, target: float, max_floats: int) -> int:
    """Scale N until the slower estimator takes ~``target`` seconds (capped by memory)."""
    n = max(1, 2**16 // dim)
    key = jax.random.key(0)
    while True:
        fns = make_functions(dim, n)
        t = max(median_seconds(fns[name], key, 1) for name in ("pathwise", "score_function"))
        if t >= target / 4 or 2 * n * dim > max_floats:
            scale = min(target / max(t, 1e-9), max_floats / (n * dim))
            return max(1, int(n * max(scale, 1.0)))
        n *= 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 100, 10_000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target", type=float, default=0.3, help="seconds per timed call")
    parser.add_argument("--max-floats", type=int, default=2**25, help="cap on N * D")
    args = parser.parse_args()

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, loadavg {os.getloadavg()}")
    print(f"cost: sum(cos x + x^2/2); params {{loc, log_scale}}; median of {args.repeats}\n")
    header = (
        f"{'D':>6} {'N':>9} | {'normal (floor)':>14} {'normal N keys':>14} | "
        f"{'pathwise':>11} {'ratio':>6} | {'score_fn':>11} {'ratio':>6}"
    )
    print("throughput in samples/s (one gradient of 2D numbers per sample)")
    print(header)
    print("-" * len(header))
    key = jax.random.key(1)
    for dim in args.dims:
        n = choose_num_samples(dim, args.target, args.max_floats)
        fns = make_functions(dim, n)
        rate = {name: n / median_seconds(fn, key, args.repeats) for name, fn in fns.items()}
        floor = rate["normal (floor)"]
        print(
            f"{dim:>6} {n:>9} | {floor:>14.3g} {rate['normal N keys']:>14.3g} | "
            f"{rate['pathwise']:>11.3g} {rate['pathwise'] / floor:>6.2f} | "
            f"{rate['score_function']:>11.3g} {rate['score_function'] / floor:>6.2f}",
            flush=True,
        )
    print(f"loadavg at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
