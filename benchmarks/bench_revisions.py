"""The speed of this checkout against an earlier revision, measured in the same run.

    python benchmarks/bench_revisions.py --before 0efc487 [--rounds 3]

Checks the ``--before`` revision out into a temporary git worktree and times, alternating the
two code bases round by round (so load on a shared machine hits both alike):

- the figure pipeline: ``python -m experiments reproduce`` of Figs 2-7 (compile included),
  wall seconds of the whole command;
- a VAE training step: ``benchmarks/bench_vae.py`` of each revision (its median examples/s
  over its repeats), for each ``--vae-estimators`` name that both revisions know.

Prints each round's figures, then the medians and the ratio after/before (> 1: this
checkout is faster for throughput, slower for seconds). Both revisions run under this
interpreter, so their dependencies must be installed (the project's own: ``pip install -e .``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env.setdefault("MPLBACKEND", "Agg")
    return env


def figure_pipeline(tree: Path, outdir: Path) -> float:
    """Wall seconds of ``reproduce`` (Figs 2-7) with the code of ``tree``."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "experiments", "reproduce", "--outdir", str(outdir)],
        cwd=tree,
        env=_env(tree),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def vae_throughput(tree: Path, estimator: str, steps: int, repeats: int) -> float:
    """Median training examples/s of ``bench_vae.py`` of ``tree`` (its own printout)."""
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_vae.py",
            "--estimator",
            estimator,
            "--steps",
            str(steps),
            "--repeats",
            str(repeats),
            "--matmul-n",
            "256",
        ],
        cwd=tree,
        env=_env(tree),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = re.findall(r"([\d,]+(?:\.\d+)?) (?:training )?examples/s", out)
    if not found:
        raise RuntimeError(f"bench_vae.py of {tree} printed no examples/s:\n{out}")
    return float(found[0].replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vae-estimators", nargs="*", default=["pathwise", "iwae"])
    parser.add_argument("--vae-steps", type=int, default=50)
    parser.add_argument("--vae-repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_revisions_") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            trees = {"before": before, "after": ROOT}
            results: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
            for r in range(args.rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for name in order:
                    tree = trees[name]
                    seconds = figure_pipeline(tree, Path(tmp) / f"{name}_{r}")
                    results[name].setdefault("figures 2-7 (s)", []).append(seconds)
                    for est in args.vae_estimators:
                        rate = vae_throughput(tree, est, args.vae_steps, args.vae_repeats)
                        results[name].setdefault(f"VAE {est} (examples/s)", []).append(rate)
                    row = ", ".join(f"{k} {v[-1]:,.1f}" for k, v in results[name].items())
                    print(f"round {r + 1} {name:>6}: {row}", flush=True)
            print(f"\nmedians over {args.rounds} rounds (before = {args.before}):")
            for metric in results["after"]:
                b = statistics.median(results["before"][metric])
                a = statistics.median(results["after"][metric])
                print(f"  {metric:<32} before {b:>10,.1f}  after {a:>10,.1f}  ratio {a / b:.3f}")
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False
            )


if __name__ == "__main__":
    main()
