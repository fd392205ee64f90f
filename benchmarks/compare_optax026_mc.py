"""Agreement in distribution with optax 0.2.6: mean jacobians of our optax.monte_carlo drop-ins
next to optax's own, each run in its own interpreter.

For every case (measure-valued coupled/uncoupled; control_variates_jacobians with the delta
method for the pathwise, score-function and measure-valued estimators, with and without
estimated coefficients; the moving-average baseline with the score function, first step), both
implementations are called ``--reps`` times with independent keys and ``--num-samples`` samples;
the mean of the per-call means and its standard error over the calls (calls are independent even
where optax's per-sample jacobians are not) give z = (ours - optax) / sqrt(se_ours^2 + se_optax^2)
per gradient coordinate. Also printed: the exact gradient (closed form) for reference.

Same key: where our draws are optax's (score function and pathwise with ``multi_normal``, alone,
with the delta method or the moving-average baseline), the mean jacobian of each call is
compared with optax's for the SAME key; the largest difference over calls and coordinates is
printed relative to the largest |mean| (float32 rounding, ~1e-6, when the draws agree).

    python benchmarks/compare_optax026_mc.py [--baseline-python .venv-optax026/bin/python]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from _optax026 import DEFAULT_BASELINE  # noqa: E402

CASES = [
    "score",
    "pathwise",
    "mv_coupled",
    "mv_uncoupled",
    "delta_pathwise",
    "delta_pathwise_coeffs",
    "delta_score",
    "delta_score_coeffs",
    "delta_mv",
    "delta_mv_coeffs",
    "moving_avg_score",
]
# Cases that draw optax's samples for the same key (not the measure-valued ones).
SAME_KEY = [c for c in CASES if "mv" not in c]


def _worker(kind: str, num_samples: int, reps: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import jax
    import jax.numpy as jnp
    import numpy as np

    if kind == "ours":
        sys.path.insert(0, str(REPO))
        import estimators as mc

        multi_normal = mc.multi_normal
        make_key = jax.random.key
    else:
        from optax import monte_carlo as mc
        from optax._src.utils import multi_normal

        make_key = jax.random.PRNGKey
    k = jnp.asarray([0.8, -0.5, 1.1])
    a = jnp.asarray([0.3, 0.7, 0.5])

    def f(x):
        return jnp.cos(k @ x) + jnp.exp(-(a @ jnp.square(x)))

    params = [jnp.asarray([0.4, -0.7, 1.0]), jnp.asarray([-0.3, 0.1, -0.6])]
    estimators_ = {
        "pathwise": mc.pathwise_jacobians,
        "score": mc.score_function_jacobians,
        "mv": mc.measure_valued_jacobians,
    }

    def case(name, key):
        if name in ("score", "pathwise"):
            return estimators_[name](f, params, multi_normal, key, num_samples)
        if name.startswith("mv_"):
            return mc.measure_valued_jacobians(
                f, params, multi_normal, key, num_samples, name == "mv_coupled"
            )
        if name == "moving_avg_score":
            jac, _ = mc.control_variates_jacobians(
                f,
                mc.moving_avg_baseline,
                mc.score_function_jacobians,
                params,
                multi_normal,
                key,
                num_samples,
                (jnp.zeros(()), 0),
            )
            return jac
        est = estimators_[name.split("_")[1]]
        jac, _ = mc.control_variates_jacobians(
            f,
            mc.control_delta_method,
            est,
            params,
            multi_normal,
            key,
            num_samples,
            None,
            name.endswith("coeffs"),
            20,
        )
        return jac

    out = {}
    for name in CASES:
        fn = jax.jit(lambda key, name=name: [j.mean(0) for j in case(name, key)])
        means = np.stack(
            [np.concatenate([np.asarray(m) for m in fn(make_key(1000 + r))]) for r in range(reps)]
        )
        out[name] = {
            "mean": means.mean(0).tolist(),
            "se": (means.std(0, ddof=1) / math.sqrt(reps)).tolist(),
            "per_call": means.tolist(),
        }
    return out


def _exact() -> list[float]:
    import jax
    import jax.numpy as jnp

    k = jnp.asarray([0.8, -0.5, 1.1])
    a = jnp.asarray([0.3, 0.7, 0.5])

    def expectation(p):
        mu, var = p[0], jnp.exp(2 * p[1])
        cos = jnp.cos(k @ mu) * jnp.exp(-0.5 * (jnp.square(k) @ var))
        bump = jnp.prod(
            (1 + 2 * a * var) ** -0.5 * jnp.exp(-a * jnp.square(mu) / (1 + 2 * a * var))
        )
        return cos + bump

    g = jax.grad(expectation)([jnp.asarray([0.4, -0.7, 1.0]), jnp.asarray([-0.3, 0.1, -0.6])])
    return [float(v) for leaf in g for v in leaf]


def _run(python: str, kind: str, num_samples: int, reps: int, timeout: float) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", kind]
    cmd += ["--num-samples", str(num_samples), "--reps", str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-python", default=DEFAULT_BASELINE)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--worker", choices=["ours", "optax"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.num_samples, args.reps)))
        return
    if not Path(args.baseline_python).exists():
        print(f"baseline python {args.baseline_python} not found: nothing to compare")
        return
    ours = _run(sys.executable, "ours", args.num_samples, args.reps, args.timeout)
    theirs = _run(args.baseline_python, "optax", args.num_samples, args.reps, args.timeout)
    exact = _exact()
    print(
        f"{args.reps} calls x {args.num_samples} samples each; coordinates: d/dloc[0..2], "
        "d/dlog_scale[0..2]"
    )
    print(f"{'exact':<24}" + " ".join(f"{v:>8.4f}" for v in exact))
    worst = 0.0
    for name in CASES:
        o, t = ours[name], theirs[name]
        z = [
            (mo - mt) / math.sqrt(so**2 + st**2) if so + st > 0 else 0.0
            for mo, mt, so, st in zip(o["mean"], t["mean"], o["se"], t["se"], strict=True)
        ]
        worst = max(worst, max(abs(v) for v in z))
        print(f"{name + ' ours':<24}" + " ".join(f"{v:>8.4f}" for v in o["mean"]))
        print(f"{name + ' optax':<24}" + " ".join(f"{v:>8.4f}" for v in t["mean"]))
        print(f"{name + ' z':<24}" + " ".join(f"{v:>8.2f}" for v in z))
    print(f"largest |z| over {len(CASES) * 6} comparisons: {worst:.2f}")
    print("same key (same draws): max |ours - optax| / max |optax| over calls and coordinates")
    for name in SAME_KEY:
        o, t = ours[name]["per_call"], theirs[name]["per_call"]
        pairs = [(a, b) for ro, rt in zip(o, t, strict=True) for a, b in zip(ro, rt, strict=True)]
        diff = max(abs(a - b) for a, b in pairs)
        size = max(abs(b) for rt in t for b in rt)
        print(f"{name:<24}{diff / size:>10.2e}")


if __name__ == "__main__":
    main()
