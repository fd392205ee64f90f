"""Where the default VAE's training step spends its time: a ``jax.profiler`` trace and a table.

    python benchmarks/profile_vae.py [--binarization static|dynamic] [--steps 50]
                                     [--rounds 3] [--trace-dir /tmp/vae_trace] [--top 25]
                                     [--flax]

Compiles the epoch program of ``experiments.vae.train`` (pathwise, batch 128, the default
784-400-20 ReLU model; ``--steps`` Adam steps in one ``lax.scan``), runs it ``--rounds`` times
under ``jax.profiler.trace`` (the trace, for TensorBoard's profile plugin or Perfetto, under
``--trace-dir``), and prints the XLA ops of the step by total time: ms per training step, share
of the step's op time, what each op is (HLO opcode, shape, and the JAX operation it came from,
from the compiled HLO's metadata), and the shares of the matmuls and of the random draws. A
``while`` op's time is its own; its body's ops are listed with their calls per step (5: the
rolled threefry rounds of JAX's CPU lowering of every ``jax.random`` draw). On 2
cores the ops of a step partly overlap and the profiler adds its own cost: read shares, not
absolute times, and time the step with ``bench_vae.py``. ``--flax`` profiles the plain ``nnx.jit``
step of ``bench_vae.py --compare`` instead (one dispatch per step).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bench_vae import _data, make_flax_step, make_training  # noqa: E402  (imports estimators)


def _hlo_index(hlo: str) -> dict[str, str]:
    """``{op name: "opcode shape  <- jax op"}`` from a compiled module's HLO text."""
    index = {}
    pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w[\w\-]*)\(")
    for line in hlo.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        src = re.search(r'op_name="([^"]+)"', line)
        where = src.group(1).replace("jit(epoch)/while/body/", "", 1) if src else ""
        kind = re.search(r'"kind":"(\w+)"', line)
        opcode = f"{opcode}:{kind.group(1)}" if kind else opcode
        index[name] = f"{opcode} {shape[:28]}  <- {where[-70:]}"
    return index


def summarise(trace_dir: Path, steps: int, hlo: str, top: int) -> None:
    """Print the ops of the newest trace under ``trace_dir`` by total time per step."""
    path = sorted(trace_dir.glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)[-1]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    index = _hlo_index(hlo)
    total: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and name in index:
            total[name] += e.get("dur", 0)
            count[name] += 1
    op_time = sum(total.values())
    print(f"trace: {path}")
    print(
        f"XLA ops: {op_time / steps / 1e3:.3f} ms per step in all ({len(total)} distinct ops; "
        "their sum: on 2 cores ops may overlap)"
    )
    groups = {
        "matmuls (dot, ynn_fusion)": lambda name, what: what.startswith(("dot ", "fusion:__ynn")),
        # The draws' ops; unrolled, the Bernoulli draw is one fusion with its comparison.
        "random draws (threefry, uniform, normal, bernoulli)": lambda name, what: (
            any(w in what for w in ("_uniform", "_normal", "_bernoulli", "threefry"))
            or name.startswith("compare_convert_fusion")
        ),
    }
    for label, member in groups.items():
        us = sum(t for name, t in total.items() if member(name, index[name]))
        print(f"  {label}: {us / steps / 1e3:.3f} ms per step, {us / op_time:.1%}")
    print(f"  {'ms/step':>7s} {'share':>6s} {'calls/step':>10s}  op: what")
    for name, us in total.most_common(top):
        print(
            f"  {us / steps / 1e3:7.3f} {us / op_time:6.1%} {count[name] / steps:10.1f}  "
            f"{name}: {index[name]}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binarization", choices=("static", "dynamic"), default="static")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--trace-dir", type=Path, default=Path("/tmp/vae_trace"))
    p.add_argument("--flax", action="store_true", help="profile the plain nnx.jit step")
    args = p.parse_args()
    n = args.steps * args.batch_size
    grey = _data(n)
    if args.flax:
        binary = jax.random.bernoulli(jax.random.key(3), grey).astype(jnp.float32)
        call, hlo = make_flax_step(args.batch_size, args.steps, binary, with_hlo=True)
    else:
        dynamic = args.binarization == "dynamic"
        binary = jax.random.bernoulli(jax.random.key(3), grey).astype(jnp.float32)
        data = grey if dynamic else binary
        call, hlo = make_training(
            args.batch_size, args.steps, "pathwise", dynamic=dynamic, train=data, with_hlo=True
        )
    t = time.perf_counter()
    with jax.profiler.trace(str(args.trace_dir), create_perfetto_trace=True):
        for _ in range(args.rounds):
            call()
    print(
        f"{'flax nnx.jit step' if args.flax else 'ours, ' + args.binarization} binarisation: "
        f"{args.rounds} rounds of {args.steps} steps in {time.perf_counter() - t:.2f} s "
        "under the profiler"
    )
    summarise(args.trace_dir, args.rounds * args.steps, hlo, args.top)


if __name__ == "__main__":
    main()
