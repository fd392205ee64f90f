"""Per-sample gradient throughput of the discrete estimators, against drawing the noise alone
and against a plain hand-written JAX version of each (benchmarks/_plain_discrete.py).

A D-dimensional Bernoulli(sigmoid(logits)) with parameters {"logits": [D]} and the cost
f(b) = sum_d w_d cos(b_d) + (a.b)^2 / D, defined on all of [0, 1]^D so the relaxations and
REBAR/RELAX apply. The estimators are every registered name whose estimator supports
estimators.Bernoulli (found at run time) plus "score_function+loo", each called through
``estimators.registry.get(name).per_sample`` with its ``init()`` state. A multi-sample
estimator (its rows used jointly) is called on groups of its ``min_samples`` (K) samples,
``jax.vmap``-ed over N / K independent keys; so is its plain version.

Floors, the cost no estimator can beat:

* ``bernoulli (floor)``: ``jax.random.bernoulli(key, p, (N, D))``, one batched draw;
* ``uniform``: ``jax.random.uniform(key, (N, D))``, the noise of ARM, DisARM, REBAR, ...;
* ``bernoulli N keys``: ``jax.random.split(key, N)`` and one draw of D bits per key under
  ``vmap`` (how ``estimators.draw_samples`` draws from a distribution without batched noise).

Columns: throughput in samples per second (rows of ``per_sample``) and in evaluations of f (or
of its gradient) per second (samples x ``cost_evaluations(D)``); ``/floor`` is the estimator's
throughput over the floor's (1.0 = as fast as drawing the bits); ``plain`` the hand-written
version's throughput and ``ours/plain`` ours over it (>= 1.0: ours at least as fast). Every
function takes (params, state, key) as arguments (nothing folded in as a constant), is jitted
once and warmed up; then all functions of one D are timed in interleaved rounds (``--repeats``
of them, ``block_until_ready``) and the median of each is reported. A pair whose ratio falls
below ``--tolerance`` is timed again on its own, interleaved, with twice the rounds. N is
chosen per D so one call of the score function takes ~``--target`` seconds.

    python benchmarks/bench_discrete.py [--repeats 7] [--dims 10 200 2000] [--target 0.1]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

# Run from a checkout without installing: the repository root holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _plain_discrete as plain  # noqa: E402

import estimators  # noqa: E402

EXTRA_SPECS = ("score_function+loo",)


def make_problem(dim: int) -> tuple[Callable[[jax.Array], jax.Array], dict[str, jax.Array]]:
    """The cost f(b) = sum_d w_d cos(b_d) + (a.b)^2 / D and the parameters {"logits": [D]}."""
    kw, ka, kl = jax.random.split(jax.random.key(dim), 3)
    w = jax.random.normal(kw, (dim,))
    a = jax.random.normal(ka, (dim,))

    def cost(b: jax.Array) -> jax.Array:
        return jnp.sum(w * jnp.cos(b)) + jnp.square(jnp.dot(a, b)) / dim

    return cost, {"logits": 0.5 * jax.random.normal(kl, (dim,))}


def build(p: dict[str, jax.Array]) -> estimators.Bernoulli:
    return estimators.Bernoulli(p["logits"])


def discrete_specs() -> list[str]:
    """Every registered base whose estimator supports a Bernoulli, then EXTRA_SPECS."""
    probe = estimators.Bernoulli(jnp.zeros(2))
    specs = []
    for name in estimators.registry.names():
        if name.startswith("+"):
            continue
        try:
            est = estimators.registry.get(name)
        except (TypeError, ValueError) as e:  # a base that needs options it was not given
            print(f"# {name}: not built with the default options ({e})")
            continue
        if est.supports(probe):
            specs.append(name)
    return specs + [s for s in EXTRA_SPECS if s not in specs]


# --- The plain versions: registry name -> plain function for the estimator's state ---------
# Each maps (estimator, its init() state) to plain_fn(f, logits, key, num_samples) -> [n, D].
PlainFactory = Callable[[estimators.GradientEstimator, Any], Callable[..., jax.Array]]


def _fixed(fn: Callable[..., jax.Array]) -> PlainFactory:
    return lambda est, state: fn


PLAIN: dict[str, PlainFactory] = {
    "score_function": _fixed(plain.score_function),
    "score_function+loo": _fixed(plain.score_function_loo),
    "arm": _fixed(plain.arm),
    "disarm": _fixed(plain.disarm),
    "gumbel_softmax": _fixed(plain.gumbel_softmax),
    "gumbel_softmax_st": _fixed(plain.gumbel_softmax_st),
    "straight_through": _fixed(plain.straight_through),
    "vimco": _fixed(plain.vimco),
}


# --- Timing ---------------------------------------------------------------------------------


class Timed:
    """A jitted ``fn(*args, key)`` and its per-call times."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]):
        self.fn = jax.jit(fn)
        self.args = args
        self.times: list[float] = []

    def warm(self, key: jax.Array) -> None:
        jax.block_until_ready(self.fn(*self.args, key))  # compile
        jax.block_until_ready(self.fn(*self.args, key))  # warm up

    def time(self, key: jax.Array) -> None:
        jax.block_until_ready(key)
        t0 = time.perf_counter()
        jax.block_until_ready(self.fn(*self.args, key))
        self.times.append(time.perf_counter() - t0)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def interleaved(timed: list[Timed], key: jax.Array, repeats: int) -> None:
    """Warm every function, then ``repeats`` rounds that time each once, in turn."""
    for t in timed:
        t.warm(key)
        t.times = []
    for i in range(repeats):
        k = jax.random.fold_in(key, i)
        for t in timed:
            t.time(k)


# --- One row per estimator ------------------------------------------------------------------


def grouped(
    per_sample: Callable[..., Any], num_samples: int, group: int
) -> Callable[[jax.Array], Any]:
    """``per_sample(key, n)`` on ``num_samples`` samples: one call, or ``num_samples // group``
    independent groups of ``group`` under ``vmap``."""
    if group == 1:
        return lambda key: per_sample(key, num_samples)
    return lambda key: jax.vmap(lambda k: per_sample(k, group))(
        jax.random.split(key, num_samples // group)
    )


class Entry:
    """One estimator at one D: ours and (if written) the plain version, timed together."""

    def __init__(self, spec: str, cost: Callable[..., Any], params: Any, num_samples: int):
        self.spec = spec
        est = estimators.registry.get(spec)
        self.est = est
        self.group = est.min_samples if est.multi_sample else 1
        self.num_samples = num_samples - num_samples % self.group
        state = est.init()
        n, k = self.num_samples, self.group

        def ours(p: Any, s: Any, key: jax.Array) -> Any:
            return grouped(
                lambda kk, m: est.per_sample(cost, p, build, kk, num_samples=m, state=s), n, k
            )(key)

        self.ours = Timed(ours, (params, state))
        self.plain: Timed | None = None
        factory = PLAIN.get(spec)
        if factory is not None:
            fn = factory(est, state)

            def hand(p: Any, s: Any, key: jax.Array) -> Any:
                del s
                return grouped(lambda kk, m: fn(cost, p["logits"], kk, m), n, k)(key)

            self.plain = Timed(hand, (params, ()))

    def timed(self) -> list[Timed]:
        return [self.ours] + ([self.plain] if self.plain else [])

    def ratio(self) -> float | None:
        return None if self.plain is None else self.plain.median / self.ours.median


def choose_num_samples(dim: int, target: float, max_floats: int) -> int:
    """Scale N until the score function takes ~``target`` seconds (capped by memory)."""
    cost, params = make_problem(dim)
    n = max(4, 2**14 // dim)
    key = jax.random.key(0)
    while True:
        t = Entry("score_function", cost, params, n).ours
        t.warm(key)
        t.time(key)
        if t.times[0] >= target / 4 or 2 * n * dim > max_floats:
            scale = min(target / max(t.times[0], 1e-9), max_floats / (n * dim))
            return max(4, 4 * int(n * max(scale, 1.0) / 4))
        n *= 4


def floors(dim: int, num_samples: int, params: Any) -> dict[str, Timed]:
    n = num_samples

    def bits(p: Any, s: Any, key: jax.Array) -> jax.Array:
        return jax.random.bernoulli(key, jax.nn.sigmoid(p["logits"]), (n, dim))

    def uniform(p: Any, s: Any, key: jax.Array) -> jax.Array:
        return jax.random.uniform(key, (n, dim))

    def bits_n_keys(p: Any, s: Any, key: jax.Array) -> jax.Array:
        probs = jax.nn.sigmoid(p["logits"])
        return jax.vmap(lambda k: jax.random.bernoulli(k, probs))(jax.random.split(key, n))

    return {
        "bernoulli (floor)": Timed(bits, (params, ())),
        "uniform": Timed(uniform, (params, ())),
        "bernoulli N keys": Timed(bits_n_keys, (params, ())),
    }


def fmt_rate(x: float) -> str:
    return f"{x:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 200, 2000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--target", type=float, default=0.1, help="seconds per score-fn call")
    parser.add_argument("--max-floats", type=int, default=2**24, help="cap on N * D")
    parser.add_argument(
        "--tolerance", type=float, default=0.9, help="re-time a pair whose ours/plain is below"
    )
    parser.add_argument("--only", nargs="+", default=None, help="these specs only")
    args = parser.parse_args()

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, loadavg {os.getloadavg()}")
    print(
        "cost: sum_d w_d cos(b_d) + (a.b)^2 / D; params {logits: [D]}; "
        f"median of {args.repeats} interleaved rounds\n"
    )
    specs = args.only or discrete_specs()
    header = (
        f"{'D':>5} {'N':>8} {'estimator':<22} {'K':>3} {'evals':>5} | {'samples/s':>9} "
        f"{'evals/s':>9} {'/floor':>6} | {'plain':>9} {'ours/plain':>10}"
    )
    print("throughput: samples (rows of per_sample) per second and evaluations of f per second")
    print(header)
    print("-" * len(header))
    key = jax.random.key(1)
    slower: list[str] = []
    for dim in args.dims:
        n = choose_num_samples(dim, args.target, args.max_floats)
        n -= n % math.lcm(*range(1, 5))
        cost, params = make_problem(dim)
        floor_fns = floors(dim, n, params)
        entries = []
        for spec in specs:
            try:
                entries.append(Entry(spec, cost, params, n))
            except (TypeError, ValueError) as e:
                print(f"{dim:>5} {n:>8} {spec:<22} not run: {e}")
        for e in list(entries):
            try:
                for t in e.timed():
                    t.warm(key)
            except Exception as err:  # an estimator that fails here must not stop the others
                print(f"{dim:>5} {n:>8} {e.spec:<22} failed: {type(err).__name__}: {err}")
                entries.remove(e)
        timed = list(floor_fns.values()) + [t for e in entries for t in e.timed()]
        interleaved(timed, key, args.repeats)
        floor_rate = n / floor_fns["bernoulli (floor)"].median
        for name, t in floor_fns.items():
            rate = n / t.median
            print(
                f"{dim:>5} {n:>8} {name:<22} {'':>3} {'':>5} | {fmt_rate(rate):>9} "
                f"{'':>9} {rate / floor_rate:>6.2f} |"
            )
        for e in entries:
            retimed = ""
            ratio = e.ratio()
            if ratio is not None and ratio < args.tolerance:
                interleaved(e.timed(), jax.random.fold_in(key, 99), 2 * args.repeats)
                ratio = e.ratio()
                retimed = " (re-timed)"
            rate = e.num_samples / e.ours.median
            evals = e.est.cost_evaluations(dim)
            plain_cols = (
                f"{'no plain version':>20}"
                if e.plain is None or ratio is None
                else f"{fmt_rate(e.num_samples / e.plain.median):>9} {ratio:>10.2f}"
            )
            print(
                f"{dim:>5} {e.num_samples:>8} {e.spec:<22} {e.group:>3} {evals:>5} | "
                f"{fmt_rate(rate):>9} {fmt_rate(rate * evals):>9} {rate / floor_rate:>6.2f} | "
                f"{plain_cols}{retimed}",
                flush=True,
            )
            if ratio is not None and ratio < args.tolerance:
                slower.append(f"{e.spec} at D={dim} ({ratio:.2f})")
        print()
    missing = [s for s in specs if s not in PLAIN]
    print(f"no plain version: {', '.join(missing) or 'none'}")
    print(
        f"ours more than {100 * (1 - args.tolerance):.0f}% slower than plain: "
        f"{', '.join(slower) or 'none'}"
    )
    print(f"loadavg at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
