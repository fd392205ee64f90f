"""Speed of the variance figures' Monte Carlo side: one jitted grid against a loop of optax 0.2.6.

The work is Figure 2's: the single-sample variance of the estimates of d/dmu and d/dsigma of
E_{N(x; 1, 1)}[(x - k)^2] at every k of a grid (default 100 points of linspace(-3, 3)), from
``--num-samples`` samples per point, for the score-function, pathwise and coupled
measure-valued estimators.

- ours: ``experiments.variance.monte_carlo.mc_moments``, the whole grid in ONE jitted
  computation per estimator (the grid vmapped, samples in chunks), as
  ``python -m experiments run fig2`` does;
- baseline: optax 0.2.6's ``optax.monte_carlo.*_jacobians`` with ``multi_normal``, jitted once
  with ``k`` as an argument and called in a Python loop over the grid, the variance and its
  standard error computed inside the jitted function.

Each side runs in its own interpreter (the baseline in ``--baseline-python``, skipped with a
message if absent). Printed per estimator: the first call (compile included) and the median of
``--repeats`` further calls of the whole grid, in seconds, and the ratio baseline / ours.

    python benchmarks/bench_variance_figures.py [--num-samples 100000] [--grid 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from _optax026 import DEFAULT_BASELINE  # noqa: E402

ESTIMATORS = ("score_function", "pathwise", "measure_valued")  # estimators.registry names


def _ours(num_samples: int, grid: int, repeats: int) -> dict:
    sys.path.insert(0, str(REPO))
    import jax
    import numpy as np

    from experiments.variance import monte_carlo
    from experiments.variance.costs import COSTS, K_TERMS
    from experiments.variance.problems.gaussian import PROBLEM as GAUSSIAN

    ks = np.linspace(-3, 3, grid).astype(np.float32)
    weights = np.tile(COSTS["quadratic"].weight_vector(), (grid, 1)).astype(np.float32)
    constants = np.zeros(grid, np.float32)
    values = {"loc": np.float32(1), "scale": np.float32(1)}
    out = {}
    for est in ESTIMATORS:
        evaluations = monte_carlo.estimator(est).cost_evaluations(1)
        chunks = tuple(monte_carlo.chunk_sizes(num_samples, grid, 1, evaluations))

        def call(seed: int, est=est, chunks=chunks) -> np.ndarray:
            m = monte_carlo.mc_moments(
                jax.random.key(seed), weights, ks, constants, values, problem=GAUSSIAN,
                estimator=est, terms=K_TERMS, dim=1, chunks=chunks,
            )  # fmt: skip
            return np.stack([monte_carlo.combine(m[p], chunks)[0] for p in ("loc", "scale")])

        out[est] = _timed(call, repeats)
    return out


def _optax(num_samples: int, grid: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from optax import monte_carlo as mc
    from optax._src.utils import multi_normal

    ks = np.linspace(-3, 3, grid).astype(np.float32)
    # optax parameterises the scale by its log; d/dsigma = (d/dlog sigma) / sigma = same at 1.
    params = [jnp.ones(1), jnp.zeros(1)]
    fns = {
        "score_function": mc.score_function_jacobians,
        "pathwise": mc.pathwise_jacobians,
        "measure_valued": lambda *a: mc.measure_valued_jacobians(*a, coupling=True),
    }
    out = {}
    for est, fn in fns.items():

        @jax.jit
        def one(key, k, fn=fn):
            jac = fn(lambda x: jnp.sum((x - k) ** 2), params, multi_normal, key, num_samples)
            var = jnp.stack([jnp.var(j[:, 0]) for j in jac])
            dev2 = jnp.stack([jnp.square(j[:, 0] - jnp.mean(j[:, 0])) for j in jac])
            return var, jnp.sqrt(jnp.var(dev2, axis=1) / num_samples)

        def call(seed: int, one=one) -> np.ndarray:
            key = jax.random.PRNGKey(seed)
            res = []
            for i, k in enumerate(ks):
                var, _ = one(jax.random.fold_in(key, i), k)
                res.append(np.asarray(var))
            return np.stack(res, axis=1)

        out[est] = _timed(call, repeats)
    return out


def _timed(call, repeats: int) -> dict:
    start = time.perf_counter()
    first = call(0)
    t_first = time.perf_counter() - start
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        call(r + 1)
        times.append(time.perf_counter() - start)
    return {
        "first_s": t_first,
        "median_s": statistics.median(times),
        "var_at_k0": [float(v) for v in first[:, first.shape[1] // 2]],
    }


def _run(python: str, side: str, args: argparse.Namespace) -> dict:
    cmd = [python, __file__, "--worker", side, "--num-samples", str(args.num_samples)]
    cmd += ["--grid", str(args.grid), "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=100_000)
    p.add_argument("--grid", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-python", default=DEFAULT_BASELINE)
    p.add_argument("--worker", choices=("ours", "optax"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        work = _ours if args.worker == "ours" else _optax
        print(json.dumps(work(args.num_samples, args.grid, args.repeats)))
        return 0
    print(f"Figure 2 grid: {args.grid} values of k x {args.num_samples:,} samples, d/dmu and "
          f"d/dsigma; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    ours = _run(sys.executable, "ours", args)
    if not Path(args.baseline_python).is_file():
        print(f"baseline skipped: {args.baseline_python} not found (optax 0.2.6 environment)")
        base = None
    else:
        base = _run(args.baseline_python, "optax", args)
    head = f"{'estimator':24s} {'ours 1st':>9s} {'ours med':>9s}"
    if base:
        head += f" {'optax 1st':>10s} {'optax med':>10s} {'ratio 1st':>10s} {'ratio med':>10s}"
    print(head + "   (seconds for the whole grid; ratio = optax / ours)")
    for est in ESTIMATORS:
        o = ours[est]
        line = f"{est:24s} {o['first_s']:9.2f} {o['median_s']:9.2f}"
        if base:
            b = base[est]
            line += f" {b['first_s']:10.2f} {b['median_s']:10.2f}"
            line += f" {b['first_s'] / o['first_s']:10.1f} {b['median_s'] / o['median_s']:10.1f}"
        print(line)
    tot_o = sum(ours[e]["first_s"] for e in ESTIMATORS)
    print(f"{'total, compile included':24s} {tot_o:9.2f}", end="")
    if base:
        tot_b = sum(base[e]["first_s"] for e in ESTIMATORS)
        print(f" {'':9s} {tot_b:10.2f} {'':10s} {tot_b / tot_o:10.1f}")
    else:
        print()
    print("variance at k ~ 0 (d/dmu, d/dsigma), a sanity check, ours then optax:")
    for est in ESTIMATORS:
        print(
            f"  {est:24s} {ours[est]['var_at_k0']}" + (f" {base[est]['var_at_k0']}" if base else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
