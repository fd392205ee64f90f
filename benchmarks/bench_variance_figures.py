"""Speed of the variance figures' Monte Carlo side: ours, a minimal plain-JAX version, optax 0.2.6.

The work is Figure 2's: the single-sample variance (and its standard error) of the estimates
of d/dmu and d/dsigma of E_{N(x; 1, 1)}[(x - k)^2] at every k of a grid (default 100 points
of linspace(-3, 3)), from ``--num-samples`` samples per point, for the score-function,
pathwise and coupled measure-valued estimators.

- ours: ``experiments.variance.monte_carlo.mc_moments`` as ``python -m experiments run fig2``
  calls it: all three estimators in ONE jitted program (the grid vmapped, samples in chunks,
  rows and estimators sharing their samples), and, for the steady state per estimator, the
  same with one estimator;
- plain JAX: per estimator, a minimal hand-written jitted function of the same computation
  (the samples drawn once and shared by the rows, the grid vmapped, the variance and its
  standard error per row; no chunking, no generic estimator), in the same process as ours,
  measured in alternating rounds with it;
- RNG floor: a jitted function that only draws the random numbers the plain version draws;
- optax: optax 0.2.6's ``optax.monte_carlo.*_jacobians`` with ``multi_normal``, jitted once
  with ``k`` as an argument and called in a Python loop over the grid (what a user of it
  would write), in its own interpreter (``--baseline-python``, skipped if absent).

Printed: the first call (compile included) and the median of ``--repeats`` further calls of
the whole grid in seconds, the ratios against the targets of issue 14 with pass/fail, and
the samples per second (grid points x samples / s) against the RNG floor's draws.

    python benchmarks/bench_variance_figures.py [--num-samples 100000] [--grid 100]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from _optax026 import DEFAULT_BASELINE  # noqa: E402

ESTIMATORS = ("score_function", "pathwise", "measure_valued")  # estimators.registry names
TARGETS = {  # issue 14: (what, ratio at least)
    "total_vs_optax": 2.5,  # compile included, all three estimators, optax / ours
    "steady_vs_optax": 2.5,  # each estimator, optax / ours
    "steady_vs_plain": 0.8,  # each estimator, plain / ours
}


def plain_functions(num_samples: int) -> dict:
    """Per estimator ``(estimate, floor)``: jitted ``(key, ks [R]) -> (var [R, 2], se [R, 2])``
    by hand for ``f = (x - k)^2`` under ``N(1, 1)`` (d/dmu, d/dsigma), the samples shared by
    the rows; and ``key -> draws``, the same random numbers and nothing else."""
    import jax
    import jax.numpy as jnp

    n, loc, scale = num_samples, 1.0, 1.0

    def stats(g):  # g [2, N] -> var [2], se [2]
        dev2 = jnp.square(g - jnp.mean(g, axis=1, keepdims=True))
        return jnp.mean(dev2, axis=1) * (n / (n - 1)), jnp.sqrt(jnp.var(dev2, axis=1) / n)

    def score_function(key, ks):
        eps = jax.random.normal(key, (n,))
        x = loc + scale * eps
        score = jnp.stack([eps / scale, (jnp.square(eps) - 1) / scale])  # [2, N]
        return jax.vmap(lambda k: stats(jnp.square(x - k)[None] * score))(ks)

    def pathwise(key, ks):
        eps = jax.random.normal(key, (n,))
        x = loc + scale * eps
        return jax.vmap(lambda k: stats(2 * (x - k)[None] * jnp.stack([jnp.ones(n), eps])))(ks)

    def mv_draws(key):
        k_u, k_z = jax.random.split(key)
        return jax.random.uniform(k_u, (3, n)), jax.random.normal(k_z, (3, n))

    def measure_valued(key, ks):  # coupled (Mohamed et al. 2020, table 1), D = 1
        u, z = mv_draws(key)
        weibull = jnp.sqrt(-2.0 * jnp.log1p(-u[0]))
        maxwell = jnp.where(u[1] < 0.5, -1.0, 1.0) * jnp.sqrt(jnp.sum(jnp.square(z), axis=0))
        values = loc + scale * jnp.stack([weibull, -weibull, maxwell, maxwell * u[2]])  # [4, N]

        def row(k):
            c = jnp.square(values - k)
            g_loc = (c[0] - c[1]) / (scale * math.sqrt(2 * math.pi))
            return stats(jnp.stack([g_loc, (c[2] - c[3]) / scale]))

        return jax.vmap(row)(ks)

    normals = jax.jit(lambda key: jax.random.normal(key, (n,)))
    return {
        "score_function": (jax.jit(score_function), normals),
        "pathwise": (jax.jit(pathwise), normals),
        "measure_valued": (jax.jit(measure_valued), jax.jit(mv_draws)),
    }


def _ours_and_plain(num_samples: int, grid: int, repeats: int) -> dict:
    """Ours (one program, then per estimator) and plain JAX, alternating, in this process."""
    sys.path.insert(0, str(REPO))
    import jax
    import numpy as np

    from experiments.variance import monte_carlo
    from experiments.variance.costs import COSTS, active_terms
    from experiments.variance.problems.gaussian import PROBLEM as GAUSSIAN

    jax.block_until_ready(jax.jit(lambda x: x + 1)(np.float32(0)))  # backend start, for neither
    ks = np.linspace(-3, 3, grid).astype(np.float32)
    weights = np.tile(COSTS["quadratic"].weight_vector(), (grid, 1)).astype(np.float32)
    constants = np.zeros(grid, np.float32)
    values = {"loc": np.float32(1), "scale": np.float32(1)}
    evaluations = max(monte_carlo.estimator(e).cost_evaluations(1) for e in ESTIMATORS)
    chunks = tuple(monte_carlo.chunk_sizes(num_samples, grid, 1, evaluations))

    def ours(specs):
        def call(seed: int) -> np.ndarray:
            m = monte_carlo.mc_moments(
                jax.random.key(seed), weights, ks, constants, values, problem=GAUSSIAN,
                specs=specs, terms=active_terms(["quadratic"]), dim=1, chunks=chunks,
            )  # fmt: skip
            return np.stack(
                [[monte_carlo.combine(m[e][p], chunks)[0] for p in ("loc", "scale")] for e in specs]
            )  # [E, 2, R]

        return call

    plain = plain_functions(num_samples)

    def plain_call(specs):
        def call(seed: int) -> np.ndarray:
            key = jax.random.key(seed)
            return np.stack([np.asarray(plain[e][0](key, ks)[0]).T for e in specs])  # [E, 2, R]

        return call

    def floor_call(est):
        return lambda seed: jax.block_until_ready(plain[est][1](jax.random.key(seed)))

    sides = {("ours", "all"): ours(ESTIMATORS), ("plain", "all"): plain_call(ESTIMATORS)}
    for e in ESTIMATORS:
        sides[("ours", e)] = ours((e,))
        sides[("plain", e)] = plain_call((e,))
        sides[("floor", e)] = floor_call(e)
    first, times, check = {}, {k: [] for k in sides}, {}
    for k, call in sides.items():  # first calls: ours all, plain all, then the rest
        start = time.perf_counter()
        out = call(0)
        first[k] = time.perf_counter() - start
        if k[0] != "floor":
            check[k] = np.asarray(out)[:, :, grid // 2].tolist()
    for r in range(repeats):  # alternating rounds
        for k, call in sides.items():
            start = time.perf_counter()
            call(r + 1)
            times[k].append(time.perf_counter() - start)
    return {
        "|".join(k): {"first_s": first[k], "median_s": statistics.median(times[k])}
        | ({"var_at_k0": check[k]} if k in check else {})
        for k in sides
    }


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


def _verdict(name: str, ratio: float) -> str:
    verdict = "pass" if ratio >= TARGETS[name] else "FAIL"
    return f"{ratio:6.2f}x (target >= {TARGETS[name]}x: {verdict})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=100_000)
    p.add_argument("--grid", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--baseline-python", default=DEFAULT_BASELINE)
    p.add_argument("--worker", choices=("ours", "optax"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        work = _ours_and_plain if args.worker == "ours" else _optax
        print(json.dumps(work(args.num_samples, args.grid, args.repeats)))
        return 0
    load = [f"{x:.2f}" for x in os.getloadavg()]
    print(f"Figure 2 grid: {args.grid} values of k x {args.num_samples:,} samples, d/dmu and "
          f"d/dsigma; load average {' '.join(load)} on {os.cpu_count()} CPUs")  # fmt: skip
    res = _run(sys.executable, "ours", args)
    if not Path(args.baseline_python).is_file():
        print(f"optax skipped: {args.baseline_python} not found (optax 0.2.6 environment)")
        base = None
    else:
        base = _run(args.baseline_python, "optax", args)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("seconds for the whole grid (first call includes compiling; steady: median of "
          f"{args.repeats} calls; ours and plain JAX alternating in one process)")  # fmt: skip
    head = f"{'':26s} {'ours':>14s} {'plain JAX':>14s} {'optax loop':>14s} {'RNG floor':>10s}"
    print(head)
    print(f"{'':26s}" + f" {'1st':>6s} {'steady':>7s}" * 3 + f" {'steady':>10s}")

    def cell(d: dict | None) -> str:
        return f"{d['first_s']:6.2f} {d['median_s']:7.3f}" if d else f"{'-':>6s} {'-':>7s}"

    for e in ESTIMATORS:
        plain = {"first_s": math.nan, "median_s": res["plain|" + e]["median_s"]}
        floor = res["floor|" + e]["median_s"]
        print(f"{e:26s} {cell(res['ours|' + e])} {cell(plain)} "
              f"{cell(base[e] if base else None)} {floor:10.3f}")  # fmt: skip
    tot_b = (
        {k: sum(base[e][k] for e in ESTIMATORS) for k in ("first_s", "median_s")} if base else None
    )
    print(f"{'all three, one program':26s} {cell(res['ours|all'])} {cell(res['plain|all'])} "
          f"{cell(tot_b)}   (plain: three jitted functions; optax: the three summed)")  # fmt: skip
    print("ratios (x = the other side's seconds / ours):")
    if base:
        first_all = res["ours|all"]["first_s"]
        print(f"  all three, compile included, optax / ours: "
              f"{_verdict('total_vs_optax', tot_b['first_s'] / first_all)}")  # fmt: skip
    for e in ESTIMATORS:
        o = res["ours|" + e]["median_s"]
        line = f"  {e:15s} steady, plain / ours: "
        line += _verdict("steady_vs_plain", res["plain|" + e]["median_s"] / o)
        if base:
            line += "; optax / ours: " + _verdict("steady_vs_optax", base[e]["median_s"] / o)
        print(line)
    print(f"  all three steady, plain / ours: "
          f"{res['plain|all']['median_s'] / res['ours|all']['median_s']:.2f}x")  # fmt: skip
    print("samples per second, steady (grid points x samples / s; RNG floor: its draws / s):")
    n = args.grid * args.num_samples
    for e in ESTIMATORS:
        floor = args.num_samples / res["floor|" + e]["median_s"]
        print(f"  {e:15s} ours {n / res['ours|' + e]['median_s']:.3g}/s, plain "
              f"{n / res['plain|' + e]['median_s']:.3g}/s, RNG floor {floor:.3g} draws/s "
              f"(ours spends {res['floor|' + e]['median_s'] / res['ours|' + e]['median_s']:.0%} "
              "of its time's worth on drawing)")  # fmt: skip
    print("variance at k ~ 0 (d/dmu, d/dsigma), a sanity check: ours, plain, optax")
    for i, e in enumerate(ESTIMATORS):
        vals = [res["ours|all"]["var_at_k0"][i], res["plain|all"]["var_at_k0"][i]]
        vals += [base[e]["var_at_k0"]] if base else []
        print(f"  {e:15s} " + "  ".join(f"[{a:.3f}, {b:.3f}]" for a, b in vals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
