"""Time per unit of work against the number of devices, one subprocess per device count.

    python benchmarks/bench_scaling.py --runner variance [--devices 1 2 4 8] [--repeats 5]
    python benchmarks/bench_scaling.py --runner variance --estimate 1e9 [--devices 1]

Each device count runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count``
on a CPU; on an accelerator host the real devices, ``mesh.devices`` picking how many), which
builds the runner's mesh (``experiments._mesh.make_mesh``) and times the runner's unit of work
in its steady state: one warm-up call (the compile), then the median of ``--repeats`` calls.
The table gives each count's time and its ratio to the first count's.

On a CPU, forced host devices are slices of the same cores: 8 "devices" on a 2-core machine
share 2 cores, so past the core count no speedup is expected (one CPU device runs these
programs mostly on one core, so up to the core count some is); the table then shows what the
partitioning costs (padding, gathers, smaller per-device loops). Speedups need real devices.

Runners (``--runner``; one function each in :data:`RUNNERS`, returning the lines to print, so
another runner adds its own):

* ``variance``: Fig 2's Monte Carlo grid (``experiments/configs/fig2.py``: 4 estimators at 50
  values of k, 1e5 samples each, ``experiments.variance._run_mc``). ``--estimate N`` instead
  runs the runner's command line once for N samples of the pathwise and score-function
  estimates at one point (k = 0 of Fig 2's cost: f(x) = x^2, x ~ N(1, 1)) and reports the wall
  time, the peak resident memory of that process, and each estimate against its closed form
  with its standard error.
* ``vae``: the VAE's data-parallel training step (``experiments/configs/vae_mnist.py``: 784-400-20
  ReLU, batch 128, pathwise; ``--vae-estimator`` another) on synthetic grey images (a step's
  cost does not depend on the pixel values): an epoch of 20 steps in one call
  (``experiments.vae.train.make_train_epoch`` on the mesh, the batch split over the devices),
  the time per step, and the bytes of the gradient all-reduce per step read off the compiled
  program (4 bytes per parameter, plus a few scalars).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NOTE_CPU = (
    "note: forced host devices are slices of this machine's {cores} CPU core(s): one CPU device "
    "runs these programs mostly on one core, so up to {cores} devices can gain from the idle "
    "cores; past that no speedup is expected on a CPU, and the ratio shows the cost of "
    "partitioning (padding, gathers, shorter loops). Other load on the machine shows too."
)


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if env.get("JAX_PLATFORMS", "cpu") == "cpu" and devices > 1:
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    return env


def _run_child(code: str, devices: int, *args: str) -> dict:
    """Run ``code`` (which prints one ``RESULT<json>`` line) in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", code, str(devices), *args],
        cwd=REPO, env=_env(devices), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"{devices} device(s): exit {proc.returncode}\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


_VARIANCE_GRID = r"""
import json, statistics, sys, time
import jax
import experiments
from experiments import _mesh, variance

devices, repeats = int(sys.argv[1]), int(sys.argv[2])
config = experiments.load_config("fig2")
experiments.apply_overrides(config, ["progress=false", f"mesh.devices={devices}"])
mesh = _mesh.make_mesh(config)
(dim, rows), = variance._mc_tasks(config)
start = time.perf_counter()
variance._run_mc(config, dim, rows, mesh)  # results are numpy: the call has finished
first = time.perf_counter() - start
times = []
for _ in range(repeats):
    start = time.perf_counter()
    variance._run_mc(config, dim, rows, mesh)
    times.append(time.perf_counter() - start)
print("RESULT" + json.dumps({
    "devices": int(mesh.devices.size), "kind": jax.devices()[0].device_kind,
    "rows": len(rows), "first": first, "median": statistics.median(times), "times": times,
}))
"""


def variance(args: argparse.Namespace) -> list[str]:
    """Fig 2's Monte Carlo grid per device count, or one ``--estimate`` run."""
    if args.estimate:
        return [variance_estimate(int(float(args.estimate)), args.devices[0])]
    lines = [
        f"variance runner: Fig 2's Monte Carlo grid (4 estimators, 50 values of k, 1e5 samples "
        f"each), steady state: median of {args.repeats} calls after one warm-up call",
        f"{'devices':>8} {'first call s':>13} {'median s':>9} {'vs 1st':>7}  device",
    ]
    base = None
    for n in args.devices:
        r = _run_child(_VARIANCE_GRID, n, str(args.repeats))
        base = base or r["median"]
        lines.append(
            f"{r['devices']:>8} {r['first']:>13.2f} {r['median']:>9.3f} "
            f"{base / r['median']:>6.2f}x  {r['kind']}"
        )
    return lines


def variance_estimate(num_samples: int, devices: int) -> str:
    """The runner's command line for ``num_samples`` samples at one point; wall time, peak RSS
    (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of that process alone: the only child), and the
    estimates against the closed forms."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "experiments", "run", "fig2", "--workdir", str(workdir),
            f"--config.num_samples={num_samples}",
            "--config.estimators=('pathwise', 'score_function')",
            "--config.grid.quadratic.start=0.0", "--config.grid.quadratic.stop=1.0",
            "--config.grid.quadratic.num=2", "--config.mc_every=2", "--config.progress=false",
            f"--config.mesh.devices={devices}", "--no-compilation-cache",
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=_env(devices), check=True, capture_output=True)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        points = json.loads((workdir / "results.json").read_text())["points"]
    out = [
        f"variance runner, {num_samples:.3g} samples at k = 0 (f = x^2, x ~ N(1, 1)), "
        f"{devices} device(s): wall {wall:.1f} s, peak RSS {peak_mb:.0f} MB",
        "  command: " + shlex.join(["python", *cmd[1:6], "DIR", *cmd[7:]]),
    ]
    for p in points:
        z = (p["mc_variance"] - p["exact_variance"]) / p["mc_se"]
        out.append(
            f"  {p['estimator']:>15} d/d{p['parameter']:<5} exact {p['exact_variance']:.6f}  "
            f"MC {p['mc_variance']:.6f} +- {p['mc_se']:.2g} (SE)  ({z:+.2f} SE)"
        )
    return "\n".join(out)


_VAE_STEPS = r"""
import json, re, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
import experiments
from experiments import _mesh, vae
from experiments.vae import train

devices, repeats, estimator = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
config = experiments.load_config("vae_mnist")
experiments.apply_overrides(config, [f"estimator={estimator}", f"mesh.devices={devices}"])
mesh, steps = vae.make_mesh(config), 20
setup, state = vae.init_run(config, 784, steps)
placed = train.epoch_shardings(mesh)
rng = np.random.default_rng(0)
images = rng.uniform(size=(steps * config.batch_size, 784)).astype(np.float32)
state, x = jax.device_put(state, placed[0]), jax.device_put(images, placed[1])
key = jax.device_put(train.epoch_keys(0, 0), placed[2])
start = time.perf_counter()
epoch = train.make_train_epoch(setup, mesh).lower(state, x, key).compile()
compile_s = time.perf_counter() - start
reduced = 0
for line in epoch.as_text().splitlines():
    if " all-reduce(" in line or " all-reduce-start(" in line:
        for dims in re.findall(r"[fsu]32\[([0-9,]*)\]", line.split(" all-reduce")[0]):
            reduced += 4 * int(np.prod([int(d) for d in dims.split(",") if d]))
jax.block_until_ready(epoch(state, x, key))
times = []
for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(epoch(state, x, key))
    times.append((time.perf_counter() - start) / steps)
print("RESULT" + json.dumps({
    "devices": int(mesh.devices.size), "kind": jax.devices()[0].device_kind,
    "compile": compile_s, "median": statistics.median(times), "times": times,
    "all_reduce_bytes": reduced,
    "params": int(sum(p.size for p in jax.tree.leaves(state["params"]))),
}))
"""


def vae_steps(args: argparse.Namespace) -> list[str]:
    """The VAE's data-parallel training step per device count, and its all-reduce."""
    lines = [
        f"vae runner: vae_mnist (784-400-20 ReLU, batch 128, {args.vae_estimator}), time per "
        f"step in an epoch of 20 steps, steady state: median of {args.repeats} epochs after one "
        "warm-up",
        f"{'devices':>8} {'compile s':>10} {'ms/step':>8} {'vs 1st':>7} {'all-reduce B/step':>18}"
        "  device",
    ]
    base = None
    for n in args.devices:
        r = _run_child(_VAE_STEPS, n, str(args.repeats), args.vae_estimator)
        base = base or r["median"]
        lines.append(
            f"{r['devices']:>8} {r['compile']:>10.2f} {1e3 * r['median']:>8.2f} "
            f"{base / r['median']:>6.2f}x {r['all_reduce_bytes']:>18,}  {r['kind']}"
        )
    lines.append(f"the model has {r['params']:,} parameters: {4 * r['params']:,} bytes of gradient")
    return lines


RUNNERS: dict[str, Callable[[argparse.Namespace], list[str]]] = {
    "variance": variance,
    "vae": vae_steps,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runner", choices=sorted(RUNNERS), default="variance")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--estimate", help="variance: one run of this many samples (1e9)")
    parser.add_argument("--vae-estimator", default="pathwise", help="vae: the estimator")
    args = parser.parse_args()
    for line in RUNNERS[args.runner](args):
        print(line, flush=True)
    if not args.estimate and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
        print(NOTE_CPU.format(cores=os.cpu_count()))


if __name__ == "__main__":
    main()
