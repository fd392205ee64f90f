"""Benchmark: estimators.measure_valued against optax 0.2.6's measure_valued_jacobians.

For each dimension D, both estimators compute coupled measure-valued jacobians of
f(x) = sum(cos(x)) under N(0, I) (params (loc, log_scale), as in optax), jitted; after one
warm-up (compile) call, ``--repeats`` timed calls give the median time, reported per sample.
Each case runs in its own subprocess, so its peak memory is that process's peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: Python + JAX runtime + the computation).
Ours also reports XLA's compiled temporaries + output (``memory_analysis()``).

optax 0.2.6 is run with a separate interpreter (``--baseline-python``, default
``.venv-optax026/bin/python``, made by ``benchmarks/setup_optax026.sh``; skipped with a message
if absent). It materialises
``num_samples x D x D`` tensors, so its sample count is cut to fit ``--baseline-max-gb``
(estimate: 4 such float32 tensors) and a case is skipped if even one sample does not fit; a case
that exceeds ``--timeout`` seconds is reported as not finished.

    python benchmarks/bench_measure_valued.py [--dims 10,1000,10000] [--repeats 5]
    python benchmarks/bench_measure_valued.py --profile 1   # where the time goes at D = 1

A second table (``--plain-dims``, default ``1,10,100``; empty to skip) times ours against
:func:`plain_measure_valued`, a minimal hand-written JAX version of the same estimator (one
batched draw of the noise, every perturbed sample ``[N, 4, D, D]`` materialised, ``jax.vmap``
of the cost), on the same cost, parameters and sample count, in one subprocess per D:
alternating rounds, medians, the ratio ours / plain (< 1: ours faster). The two draw their noise
differently (ours: one key per sample, the estimator's documented streams), so their estimates
agree in distribution, not bitwise (tests/test_mv_measure_valued.py holds both to the exact
gradient).
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

# Samples per call: the work is 4 * N * D^2 evaluations of cos, so N shrinks with D.
DEFAULT_SAMPLES = {10: 1000, 1000: 100, 10000: 10}
# Samples per call of the table against plain JAX: 4 * N * D^2 = 4e5, 4e6, 4e7 perturbed
# elements (ours vectorises the first two whole and loops over sample chunks in the third).
PLAIN_SAMPLES = {1: 100_000, 10: 10_000, 100: 1_000}


def plain_measure_valued(f, loc, log_scale, key, num_samples: int):
    """Coupled measure-valued jacobians of ``E_{N(loc, exp(log_scale)^2)}[f(x)]``, by hand.

    ``f: [D] -> []``, ``loc, log_scale: [D]``. Returns ``(d/d loc, d/d log_scale)``, each
    ``[num_samples, D]``: per coordinate ``d``, ``(f(x^+) - f(x^-)) / (sigma sqrt(2 pi))`` with
    ``x^\u00b1_d = mu \u00b1 sigma W`` (W ~ Weibull(sqrt 2, 2)) for the mean, and
    ``(f(x^+) - f(x^-)) / sigma`` with ``x^+_d = mu + sigma M`` (M double-sided Maxwell),
    ``x^-_d = mu + sigma M U`` (U ~ U(0, 1)) for the scale, times ``sigma`` for ``log_scale``;
    the other coordinates are those of ``x ~ N(mu, sigma^2)`` (Mohamed et al. 2020, table 1).
    Imports nothing from ``estimators``.
    """
    import math

    import jax
    import jax.numpy as jnp

    dim = loc.shape[0]
    loc, scale = loc[None], jnp.exp(log_scale)[None]  # [1, D]: explicit ranks
    k_x, k_u, k_z = jax.random.split(key, 3)
    x = loc + scale * jax.random.normal(k_x, (num_samples, dim))
    u = jax.random.uniform(k_u, (num_samples, 3, dim))
    z = jax.random.normal(k_z, (num_samples, 3, dim))
    weibull = jnp.sqrt(-2.0 * jnp.log1p(-u[:, 0]))
    maxwell = jnp.where(u[:, 1] < 0.5, -1.0, 1.0) * jnp.sqrt(jnp.sum(jnp.square(z), axis=1))
    values = jnp.stack(
        [loc + scale * weibull, loc - scale * weibull, loc + scale * maxwell,
         loc + scale * maxwell * u[:, 2]], axis=1,
    )  # fmt: skip  # [N, 4, D]
    # perturbed[n, p, d] = x[n] with coordinate d replaced by values[n, p, d]: [N, 4, D, D]
    eye = jnp.eye(dim, dtype=bool)[None, None]
    perturbed = jnp.where(eye, values[..., None], x[:, None, None, :])
    costs = jax.vmap(jax.vmap(jax.vmap(f)))(perturbed)  # [N, 4, D]
    g_loc = (costs[:, 0] - costs[:, 1]) / (scale * math.sqrt(2 * math.pi))
    g_log_scale = costs[:, 2] - costs[:, 3]  # (f+ - f-) / sigma, times sigma
    return g_loc, g_log_scale


def _plain_worker(dim: int, num_samples: int, repeats: int) -> dict:
    """Ours and the plain version at one D, interleaved, in this process."""
    import warnings

    warnings.filterwarnings("ignore")
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(REPO))
    import estimators

    def f(x):
        return jnp.sum(jnp.cos(x))

    loc, log_scale = jnp.zeros(dim), jnp.zeros(dim)

    @jax.jit
    def ours(key):
        g = estimators.measure_valued(
            f, (loc, log_scale), lambda p: estimators.multi_normal(*p), key,
            num_samples=num_samples,
        )  # fmt: skip
        return g[0], g[1]

    plain = jax.jit(lambda key: plain_measure_valued(f, loc, log_scale, key, num_samples))
    fns = {"ours": ours, "plain": plain}
    first, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(0)))
        first[name] = time.perf_counter() - start
    for i in range(repeats):
        for name, fn in fns.items():  # alternating rounds
            key = jax.random.key(i + 1)
            start = time.perf_counter()
            jax.block_until_ready(fn(key))
            times[name].append(time.perf_counter() - start)
    return {
        "first_s": first,
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "load": os.getloadavg()[0],
    }


def _plain_table(dims: list[int], repeats: int, timeout: float) -> None:
    print()
    print("ours against a plain hand-written JAX measure-valued estimator (same f, params, N);")
    print("one subprocess per D, alternating rounds, median per call; ratio = ours / plain")
    print(
        f"{'D':>5} {'N':>8} {'ours ms':>9} {'plain ms':>9} {'ratio':>6} "
        f"{'ours 1st s':>11} {'plain 1st s':>12} {'load':>5}"
    )
    for dim in dims:
        n = PLAIN_SAMPLES.get(dim, max(1, 4 * 10**7 // (4 * dim * dim)))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-worker", "--dim", str(dim),
               "--num-samples", str(n), "--repeats", str(repeats)]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            print(f"{dim:>5} {n:>8} did not finish in {timeout:.0f} s")
            continue
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{dim:>5} {n:>8} failed (exit {proc.returncode}): {tail[:120]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        med, first = r["median_s"], r["first_s"]
        print(
            f"{dim:>5} {n:>8} {med['ours'] * 1e3:>9.2f} {med['plain'] * 1e3:>9.2f} "
            f"{med['ours'] / med['plain']:>6.2f} {first['ours']:>11.2f} {first['plain']:>12.2f} "
            f"{r['load']:>5.2f}"
        )


def _worker(kind: str, dim: int, num_samples: int, repeats: int) -> dict:
    """Runs inside the subprocess; returns times and memory as a dict."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    import jax
    import jax.numpy as jnp

    def f(x):
        return jnp.sum(jnp.cos(x))

    params = [jnp.zeros(dim), jnp.zeros(dim)]
    extra = {}
    if kind == "ours":
        sys.path.insert(0, str(REPO))
        import estimators

        def run(key):
            return estimators.measure_valued_jacobians(
                f, params, estimators.multi_normal, key, num_samples
            )

        key0 = jax.random.key(0)
        lowered = jax.jit(run).lower(key0).compile()
        mem = lowered.memory_analysis()
        extra["xla_temp_plus_output_mb"] = (
            mem.temp_size_in_bytes + mem.output_size_in_bytes
        ) / 2**20
        keys = [jax.random.key(i) for i in range(repeats + 1)]
    else:
        from optax import monte_carlo
        from optax._src import utils

        def run(key):
            return monte_carlo.measure_valued_jacobians(
                f, params, utils.multi_normal, key, num_samples, True
            )

        keys = [jax.random.PRNGKey(i) for i in range(repeats + 1)]
    fn = jax.jit(run)
    start = time.perf_counter()
    jax.block_until_ready(fn(keys[0]))
    first = time.perf_counter() - start
    times = []
    for k in keys[1:]:
        start = time.perf_counter()
        jax.block_until_ready(fn(k))
        times.append(time.perf_counter() - start)
    return {
        "times": times,
        "first_call_s": first,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **extra,
    }


def _run_case(python: str, kind: str, dim: int, num_samples: int, repeats: int, timeout: float):
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--dim",
        str(dim),
        "--num-samples",
        str(num_samples),
        "--repeats",
        str(repeats),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
        )
    except subprocess.TimeoutExpired:
        return {"status": f"did not finish in {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"failed (exit {proc.returncode}): {tail[:120]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["status"] = "ok"
    result["per_sample_ms"] = statistics.median(result["times"]) / num_samples * 1e3
    return result


def _profile(dim: int, num_samples: int, repeats: int) -> None:
    """Where the time goes, ours against the plain version at one D (printed).

    For each: trace, lowering and XLA compile times; XLA's cost analysis (flops,
    transcendentals, bytes accessed); the compiled HLO's while loops (each named by the JAX
    function it came from: a loop left by ``lax.map`` would show here, threefry's rounds loops
    always do) and fusion count; then the median time of the whole estimate against that of its
    random draws alone (alternating rounds), which splits the time into drawing and evaluating.
    """
    import re
    import warnings

    warnings.filterwarnings("ignore")
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(REPO))
    import estimators
    from estimators._measure_valued import _TAG_AUXILIARY

    def f(x):
        return jnp.sum(jnp.cos(x))

    loc, log_scale = jnp.zeros(dim), jnp.zeros(dim)
    n = num_samples

    def ours(key):
        build = lambda p: estimators.multi_normal(*p)  # noqa: E731
        return estimators.measure_valued(f, (loc, log_scale), build, key, num_samples=n)

    def ours_draws(key):  # the estimator's draws only: its documented streams
        d = estimators.multi_normal(loc, log_scale)
        aux = jax.random.split(jax.random.fold_in(key, _TAG_AUXILIARY), n)
        terms = jax.vmap(lambda k: d.weak_derivative(k, True))(aux)
        parts = [v for t in terms.values() for v in (t.positive, t.negative)]
        # x only where it is used: at D = 1 every coordinate is replaced and XLA drops it
        return (estimators.draw_samples(d, key, n) if dim > 1 else None), parts

    def plain(key):
        return plain_measure_valued(f, loc, log_scale, key, n)

    def plain_draws(key):
        k_x, k_u, k_z = jax.random.split(key, 3)
        x = jax.random.normal(k_x, (n, dim)) if dim > 1 else None
        return x, jax.random.uniform(k_u, (n, 3, dim)), jax.random.normal(k_z, (n, 3, dim))

    key = jax.random.key(0)
    print(f"profile at D = {dim}, N = {n} (one call; load {os.getloadavg()[0]:.2f})")
    fns = {}
    for name, fn in (("ours", ours), ("plain", plain)):
        start = time.perf_counter()
        traced = jax.jit(fn).trace(key)
        t_trace = time.perf_counter() - start
        lowered = traced.lower()
        t_lower = time.perf_counter() - start - t_trace
        compiled = lowered.compile()
        t_compile = time.perf_counter() - start - t_trace - t_lower
        cost = compiled.cost_analysis()
        hlo = compiled.as_text()
        loops = [  # the innermost jitted JAX function each loop came from
            (re.findall(r"jit\((\w+)\)", m.group(1)) or ["?"])[-1] if m else "?"
            for line in hlo.splitlines()
            if " while(" in line
            for m in [re.search(r'op_name="([^"]+)"', line)]
        ]
        print(
            f"  {name:>5}: trace {t_trace:.3f} s, lower {t_lower:.3f} s, XLA compile "
            f"{t_compile:.3f} s; flops {cost['flops']:.3g}, transcendentals "
            f"{cost['transcendentals']:.3g}, bytes {cost['bytes accessed']:.3g}; "
            f"{hlo.count(' fusion(')} fusions, {len(loops)} while loops: {', '.join(loops)}"
        )
        fns[name] = compiled
    for name, fn in (("ours draws", ours_draws), ("plain draws", plain_draws)):
        fns[name] = jax.jit(fn).lower(key).compile()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            k = jax.random.key(i + 1)
            start = time.perf_counter()
            jax.block_until_ready(fn(k))
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for side in ("ours", "plain"):
        print(
            f"  {side:>5}: {med[side]:.2f} ms per call, of which the random draws alone "
            f"{med[side + ' draws']:.2f} ms"
        )
    print(f"  ratio ours / plain {med['ours'] / med['plain']:.2f}; load {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="10,1000,10000")
    parser.add_argument("--num-samples", type=int, default=None, help="default: per D")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-python", default=DEFAULT_BASELINE)
    parser.add_argument("--baseline-max-gb", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--plain-dims", default="1,10,100", help="'' to skip the plain table")
    parser.add_argument("--plain-repeats", type=int, default=15)
    parser.add_argument("--worker", choices=["ours", "optax"], help=argparse.SUPPRESS)
    parser.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile", type=int, metavar="D", help="only print where the time goes at this D"
    )
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args.worker, args.dim, args.num_samples, args.repeats)))
        return
    if args.profile:
        n = args.num_samples or PLAIN_SAMPLES.get(args.profile, 1000)
        _profile(args.profile, n, args.plain_repeats)
        return
    if args.plain_worker:
        print(json.dumps(_plain_worker(args.dim, args.num_samples, args.repeats)))
        return

    dims = [int(d) for d in args.dims.split(",")]
    have_baseline = Path(args.baseline_python).exists()
    if not have_baseline:
        print(f"baseline python {args.baseline_python} not found: optax 0.2.6 skipped")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; repeats {args.repeats}; ")
    print("time = median per-call wall time / num_samples; memory = peak RSS of the subprocess")
    header = (
        f"{'D':>6} {'N ours':>7} {'ours ms/sample':>15} {'ours RSS MB':>12} {'XLA MB':>8} "
        f"{'N optax':>8} {'optax ms/sample':>16} {'optax RSS MB':>13} {'time ratio':>11} "
        f"{'RSS ratio':>10}"
    )
    print(header)
    for dim in dims:
        n = args.num_samples or DEFAULT_SAMPLES.get(dim, max(1, 10**7 // dim**2))
        ours = _run_case(sys.executable, "ours", dim, n, args.repeats, args.timeout)
        opt = {"status": "skipped (no baseline python)"}
        n_opt = 0
        if have_baseline:
            per_sample_gb = 4 * dim * dim * 4 / 2**30
            n_opt = min(n, int(args.baseline_max_gb // per_sample_gb))
            if n_opt < 1:
                opt = {"status": f"skipped: one sample needs ~{per_sample_gb:.1f} GB (N x D x D)"}
            else:
                opt = _run_case(
                    args.baseline_python, "optax", dim, n_opt, args.repeats, args.timeout
                )

        def cell(r, key, width, fmt="{:.3f}"):
            return f"{fmt.format(r[key]) if r.get('status') == 'ok' else '-':>{width}}"

        ratio_t = ratio_m = "-"
        if ours.get("status") == "ok" and opt.get("status") == "ok":
            ratio_t = f"{opt['per_sample_ms'] / ours['per_sample_ms']:.1f}x"
            ratio_m = f"{opt['maxrss_mb'] / ours['maxrss_mb']:.1f}x"
        print(
            f"{dim:>6} {n:>7} {cell(ours, 'per_sample_ms', 15)} "
            f"{cell(ours, 'maxrss_mb', 12, '{:.0f}')} "
            f"{cell(ours, 'xla_temp_plus_output_mb', 8, '{:.0f}')} {n_opt or '-':>8} "
            f"{cell(opt, 'per_sample_ms', 16)} {cell(opt, 'maxrss_mb', 13, '{:.0f}')} "
            f"{ratio_t:>11} {ratio_m:>10}"
        )
        for name, r in (("ours", ours), ("optax 0.2.6", opt)):
            if r.get("status") != "ok":
                print(f"       {name} at D={dim}: {r['status']}")
    print("ratio = optax 0.2.6 / ours (> 1: ours faster / smaller)")
    if args.plain_dims:
        plain_dims = [int(d) for d in args.plain_dims.split(",")]
        _plain_table(plain_dims, args.plain_repeats, args.timeout)


if __name__ == "__main__":
    main()
