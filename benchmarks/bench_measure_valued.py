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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="10,1000,10000")
    parser.add_argument("--num-samples", type=int, default=None, help="default: per D")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-python", default=DEFAULT_BASELINE)
    parser.add_argument("--baseline-max-gb", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--worker", choices=["ours", "optax"], help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args.worker, args.dim, args.num_samples, args.repeats)))
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


if __name__ == "__main__":
    main()
