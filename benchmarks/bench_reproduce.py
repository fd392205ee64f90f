"""Wall time of ``python -m experiments reproduce`` (Figures 2-7), cold and warm.

Each round runs the command three times in fresh subprocesses, in this order:

* ``cold``: with the persistent compilation cache in a new, empty temporary folder
  (``--compilation-cache DIR``): every program is compiled and written there;
* ``warm``: the same command again with the same folder: every program is loaded;
* ``off``: with ``--no-compilation-cache``: compiled afresh, nothing written (``cold - off``
  is the cost of writing the cache).

Wall time is the whole subprocess (Python start, imports, every figure's exact curves, Monte
Carlo and drawing, writing). Each reading is printed with the machine's load average; then
the median of each kind over ``--rounds`` rounds and whether it meets the targets of issue 14
(cold <= 30 s, warm <= 10 s on the 2-core CPU). ``$MCGRAD_COMPILATION_CACHE`` and
``$JAX_COMPILATION_CACHE_DIR`` are removed from the children's environment so only the flags
decide.

    python benchmarks/bench_reproduce.py [--rounds 2] [--configs fig2 ...]

Without ``--configs`` the command names none: it runs its default set (Figures 2-7, in the
order ``experiments._cli.DEFAULT_REPRODUCE``), exactly as the README's command does.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"cold": 30.0, "warm": 10.0}  # seconds, issue 14 item 3 (2-core CPU)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def reproduce(configs: list[str], outdir: Path, cache: list[str], env: dict[str, str]) -> float:
    """Seconds of wall time of one ``python -m experiments reproduce`` subprocess."""
    command = [sys.executable, "-m", "experiments", "reproduce", *configs]
    command += ["--outdir", str(outdir), "--overwrite", "--config.progress=false", *cache]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of cold, warm, off (default 2)")
    p.add_argument("--configs", nargs="+", default=[], help="default: the command's own set")
    p.add_argument(
        "--kinds",
        nargs="+",
        choices=("cold", "warm", "off"),
        default=["cold", "warm", "off"],
        help="which runs each round makes (warm needs cold before it)",
    )
    args = p.parse_args()
    if "warm" in args.kinds and "cold" not in args.kinds:
        p.error("--kinds warm needs cold (the cold run fills the cache the warm run reads)")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MCGRAD_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")
    }
    print(
        f"python -m experiments reproduce {' '.join(args.configs) or '(its default set)'}: "
        f"{args.rounds} round(s); "
        f"{platform.node()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    times: dict[str, list[float]] = {kind: [] for kind in args.kinds}
    with tempfile.TemporaryDirectory(prefix="bench-reproduce-") as tmp:
        out = Path(tmp) / "out"
        for r in range(args.rounds):
            cache = Path(tmp) / f"cache{r}"  # fresh and empty: cold
            runs = (
                ("cold", ["--compilation-cache", str(cache)]),
                ("warm", ["--compilation-cache", str(cache)]),
                ("off", ["--no-compilation-cache"]),
            )
            for kind, flags in runs:
                if kind not in args.kinds:
                    continue
                before = load()
                seconds = reproduce(args.configs, out, flags, env)
                times[kind].append(seconds)
                print(
                    f"round {r + 1} {kind:4s} {seconds:6.1f} s   load before {before}, "
                    f"after {load()}",
                    flush=True,
                )
            if not cache.exists():
                continue
            size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
            print(f"round {r + 1} cache: {len(list(cache.iterdir()))} files, {size / 1e6:.1f} MB")
    print(f"\nmedians over {args.rounds} round(s), load now {load()}:")
    for kind, values in times.items():
        median = statistics.median(values)
        target = TARGETS.get(kind)
        verdict = "" if target is None else f"  target <= {target:g} s: "
        verdict += "" if target is None else ("PASS" if median <= target else "FAIL")
        print(f"  {kind:4s} {median:6.1f} s{verdict}")
    if "warm" in times:
        cold, warm = statistics.median(times["cold"]), statistics.median(times["warm"])
        print(f"  warm / cold = {warm / cold:.2f}")


if __name__ == "__main__":
    main()
