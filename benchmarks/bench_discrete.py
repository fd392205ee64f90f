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
chosen per estimator and D (trial calls growing x4, then scaled) so one call of ours takes
~``--target`` seconds with its XLA temporaries under ``--max-bytes``; ours and plain share it.
The floors draw ``--floor-floats`` numbers.

The plain versions take the estimator's state where it has one: REBAR's and RELAX's
eta and temperature, RELAX's default control network (the relaxed cost plus a
coordinatewise tanh MLP), double CV's coefficient, RODEO's network and coefficients, all from
``init()``. ``VARIANTS`` adds, for reference, faster plain formulations of the same rows
(RODEO's linearisation at the flipped neighbours in O(D) instead of O(D^2)), and REBAR's and
RELAX's conditional sample z~ | b in Tucker et al.'s algebraic form, which is not finite where
sigmoid(logits) rounds to 1 and b = 0 (the plain versions, like ours, use the stable softplus
form).

    python benchmarks/bench_discrete.py [--repeats 7] [--dims 10 200 2000] [--target 0.1]
"""

from __future__ import annotations

import argparse
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


# --- The plain versions ----------------------------------------------------------------------
# registry name -> (plain function, state -> its keyword arguments): called inside jit as
# fn(f, logits, key, num_samples, **kwargs(state)), with the estimator's init() state passed in
# as an argument (traced, as during training).


def _no_kwargs(state: Any) -> dict[str, Any]:
    return {}


def _double_cv_kwargs(state: Any) -> dict[str, Any]:
    return {"alpha": state.alpha}


def _rodeo_kwargs(state: Any) -> dict[str, Any]:
    c = state.control
    net = plain.leaky_mlp(c.w_lin, c.w_f, c.bias, c.w_out, c.b_out)
    return {"net": net, "alpha": state.alpha, "beta": state.beta}


def _rebar_kwargs(state: Any) -> dict[str, Any]:
    c = state.control
    return {"eta": c.eta, "temperature": jnp.exp(c.log_temperature)}


def _relax_kwargs(state: Any) -> dict[str, Any]:
    w = state.control.network
    return {
        **_rebar_kwargs(state),
        "net": plain.coordinatewise_mlp(w["w1"], w["b1"], w["w2"], w["b2"]),
    }


PLAIN: dict[str, tuple[Callable[..., jax.Array], Callable[[Any], dict[str, Any]]]] = {
    "score_function": (plain.score_function, _no_kwargs),
    "score_function+loo": (plain.score_function_loo, _no_kwargs),
    "arm": (plain.arm, _no_kwargs),
    "disarm": (plain.disarm, _no_kwargs),
    "arms": (plain.arms, _no_kwargs),
    "arms_systematic": (plain.arms_systematic, _no_kwargs),
    "gumbel_softmax": (plain.gumbel_softmax, _no_kwargs),
    "gumbel_softmax_st": (plain.gumbel_softmax_st, _no_kwargs),
    "straight_through": (plain.straight_through, _no_kwargs),
    "vimco": (plain.vimco, _no_kwargs),
    "double_cv": (plain.double_cv, _double_cv_kwargs),
    "rodeo": (plain.rodeo, _rodeo_kwargs),
    "rebar": (plain.rebar, _rebar_kwargs),
    "relax": (plain.relax, _relax_kwargs),
}


# Faster formulations of the same rows than the straightforward plain version, timed beside
# it for reference: spec -> [(label, function, kwargs)].
ALGEBRAIC = "plain, algebraic z~: NaN when p ~ 1, b = 0"
VARIANTS: dict[str, list[tuple[str, Callable[..., jax.Array], Callable[[Any], dict[str, Any]]]]] = {
    "rodeo": [("plain, O(KD) flips", plain.rodeo_linear_flips, _rodeo_kwargs)],
    # Not a correct alternative: the algebraic z~ | b (fewer transcendentals) is -inf, its
    # gradient NaN, where p + v (1 - p) rounds to 1 with b = 0 (tests/test_bench_discrete.py);
    # timed only to show what the stable form costs.
    "rebar": [(ALGEBRAIC, plain.rebar_algebraic, _rebar_kwargs)],
    "relax": [(ALGEBRAIC, plain.relax_algebraic, _relax_kwargs)],
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
    """``repeats`` rounds that time each (warmed) function once, in turn."""
    for t in timed:
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
    """One estimator at one D and N: ours and (if written) the plain version, same N."""

    def __init__(
        self,
        spec: str,
        cost: Callable[..., Any],
        params: Any,
        num_samples: int,
        state: Any = None,
    ):
        self.spec = spec
        est = estimators.registry.get(spec)
        self.est = est
        self.group = est.min_samples if est.multi_sample else 1
        self.num_samples = max(self.group, num_samples - num_samples % self.group)
        state = est.init() if state is None else state
        n, k = self.num_samples, self.group

        def ours(p: Any, s: Any, key: jax.Array) -> Any:
            return grouped(
                lambda kk, m: est.per_sample(cost, p, build, kk, num_samples=m, state=s), n, k
            )(key)

        self.ours = Timed(ours, (params, state))

        def timed_plain(fn: Callable[..., jax.Array], kwargs: Callable[[Any], Any]) -> Timed:
            def hand(p: Any, s: Any, key: jax.Array) -> Any:
                return grouped(lambda kk, m: fn(cost, p["logits"], kk, m, **kwargs(s)), n, k)(key)

            return Timed(hand, (params, state))

        self.plain = timed_plain(*PLAIN[spec]) if spec in PLAIN else None
        self.variants = {label: timed_plain(fn, kw) for label, fn, kw in VARIANTS.get(spec, [])}

    def timed(self) -> list[Timed]:
        return [self.ours] + ([self.plain] if self.plain else []) + list(self.variants.values())

    def ratio(self) -> float | None:
        return None if self.plain is None else self.plain.median / self.ours.median


def scratch_bytes(t: Timed, key: jax.Array) -> int:
    """Bytes of the compiled call's temporaries and output (XLA's memory analysis; 0 if the
    backend gives none)."""
    analysis = t.fn.lower(*t.args, key).compile().memory_analysis()
    if analysis is None:
        return 0
    return int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


def calibrated(spec: str, dim: int, target: float, max_bytes: float, key: jax.Array) -> Entry:
    """``spec``'s entry at D = ``dim`` with N scaled so one call of ours takes ~``target``
    seconds, its temporaries kept under ``max_bytes``: trial calls at growing N (x4) until
    one takes ``target / 4``, then scaled to ``target``."""
    cost, params = make_problem(dim)
    n = max(16, 2**16 // dim)
    while True:
        trial = Entry(spec, cost, params, n)
        n = trial.num_samples
        trial.ours.warm(key)
        for _ in range(2):
            trial.ours.time(key)
        t = max(min(trial.ours.times), 1e-6)
        room = max_bytes / max(scratch_bytes(trial.ours, key), 1)
        if t >= target / 4 or room < 4:
            return Entry(spec, cost, params, max(n, int(n * min(target / t, room))))
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
    parser.add_argument("--target", type=float, default=0.1, help="seconds per timed call")
    parser.add_argument(
        "--max-bytes", type=float, default=5e8, help="cap on one call's temporaries"
    )
    parser.add_argument("--floor-floats", type=int, default=2**23, help="N * D of the floors")
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
    beaten: list[str] = []
    for dim in args.dims:
        n = args.floor_floats // dim
        cost, params = make_problem(dim)
        floor_fns = floors(dim, n, params)
        for t in floor_fns.values():
            t.warm(key)
        entries = []
        for spec in specs:
            try:
                entry = calibrated(spec, dim, args.target, args.max_bytes, key)
                for t in entry.timed():
                    t.warm(key)
                entries.append(entry)
            except Exception as err:  # an estimator that fails here must not stop the others
                print(f"{dim:>5} {'':>8} {spec:<22} failed: {type(err).__name__}: {err}")
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
            for label, t in e.variants.items():
                ratio = t.median / e.ours.median
                print(
                    f"{'':>5} {'':>8} {'  [' + label + ']':<32} | {'':>9} {'':>9} {'':>6} | "
                    f"{fmt_rate(e.num_samples / t.median):>9} {ratio:>10.2f}"
                )
                if ratio < args.tolerance and label != ALGEBRAIC:  # not a correct alternative
                    beaten.append(f"{e.spec} at D={dim} by {label} ({ratio:.2f})")
        print()
    missing = [s for s in specs if s not in PLAIN]
    print(f"no plain version: {', '.join(missing) or 'none'}")
    print(
        f"ours more than {100 * (1 - args.tolerance):.0f}% slower than plain: "
        f"{', '.join(slower) or 'none'}"
    )
    if beaten:
        print(f"ours slower than a faster plain formulation: {', '.join(beaten)}")
    print(f"loadavg at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
