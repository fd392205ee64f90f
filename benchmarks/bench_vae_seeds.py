"""Seeds in one program: S VAE seeds trained as ONE vmapped program against S sequential runs.

    MNIST_DIR=/work/shared/data/mnist python benchmarks/bench_vae_seeds.py
        [--config vae_mnist] [--seeds 5] [--epochs 1] [--train-examples 12800] [--rounds 3]
        [--set key=value ...]

Measures, in the same run and in interleaved rounds (each round every mode once; medians),
the wall time of training ``--seeds`` seeds of the config for ``--epochs`` epochs, COMPILES
INCLUDED (each mode builds its programs afresh every round; the persistent compilation cache
is off):

  * ``sequential``: what running the seeds one after another costs: for each seed, its initial
    state (``vae.init_run``), a fresh ``train.make_train_epoch`` (traced and compiled), its
    epochs;
  * ``sequential, one compile``: the same, but the first seed's compiled epoch reused by the
    others (a user's loop in one process, the better sequential baseline);
  * ``one program``: the seeds' initial states (``seeds.init_seeds``: one vmapped program),
    ONE ``train.make_seeds_epoch`` (the epoch's ``lax.scan`` vmapped over the seeds; what
    ``num_seeds = S`` runs), its epochs.

Prints each mode's median seconds (and the compile's share), the aggregate examples/s, and the
ratios sequential / one program (> 1: the one program is faster; the issue's target on the
2-core CPU is >= 1, no loss, compiles included). Training only: the evaluation of each seed
(test ELBO, log-likelihood) is the same work in every mode. Report the load average printed
with the figures: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from experiments import _config as cfg  # noqa: E402
from experiments import vae  # noqa: E402
from experiments.vae import seeds as vae_seeds  # noqa: E402
from experiments.vae import train  # noqa: E402


def _block(tree) -> None:
    jax.block_until_ready(tree)


def sequential(config, seeds, train_np, epochs: int, reuse: bool) -> tuple[float, float]:
    """Seconds of the seeds trained one after another, and of their compiles."""
    t0 = time.perf_counter()
    compile_s, compiled = 0.0, None
    train_x = jnp.asarray(train_np)
    nb = len(train_np) // config.batch_size
    for s in seeds:
        setup, state = vae.init_run(vae_seeds.seed_config(config, s), train_np.shape[1], nb)
        if compiled is None or not reuse:
            tc = time.perf_counter()
            lowered = train.make_train_epoch(setup).lower(state, train_x, train.epoch_keys(s, 0))
            compiled = lowered.compile()
            compile_s += time.perf_counter() - tc
        for e in range(epochs):
            state, losses = compiled(state, train_x, train.epoch_keys(s, e))
        _block((state, losses))
    return time.perf_counter() - t0, compile_s


def one_program(config, seeds, train_np, epochs: int) -> tuple[float, float]:
    """Seconds of the seeds trained as one vmapped program, and of its compile."""
    t0 = time.perf_counter()
    train_x = jnp.asarray(train_np)
    nb = len(train_np) // config.batch_size
    multi = vae_seeds.seed_config(config, seeds[0])
    multi.num_seeds = len(seeds)
    setup, states = vae_seeds.init_seeds(multi, train_np.shape[1], nb)

    def keys(e):
        return jnp.stack([train.epoch_keys(s, e) for s in seeds])

    tc = time.perf_counter()
    compiled = train.make_seeds_epoch(setup).lower(states, train_x, keys(0)).compile()
    compile_s = time.perf_counter() - tc
    for e in range(epochs):
        states, losses = compiled(states, train_x, keys(e))
    _block((states, losses))
    return time.perf_counter() - t0, compile_s


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="vae_mnist")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-examples", type=int, default=12800)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_compilation_cache", False)  # every compile is paid
    config = cfg.load_config(args.config)
    cfg.apply_overrides(config, [f"train_examples={args.train_examples}", *args.set])
    vae.validate(config)
    _, train_np, _ = vae.load_data(config)
    seeds = [int(config.seed) + s for s in range(args.seeds)]
    steps = (len(train_np) // config.batch_size) * args.epochs
    examples = len(seeds) * steps * config.batch_size
    print(
        f"{args.config} ({config.dataset}, hidden {tuple(config.hidden)}, latent "
        f"{config.latent_dim}, batch {config.batch_size}, {config.estimator}): {len(seeds)} seeds "
        f"x {steps} steps; {jax.devices()[0].device_kind}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    modes = {
        "sequential": lambda: sequential(config, seeds, train_np, args.epochs, reuse=False),
        "sequential, one compile": lambda: sequential(
            config, seeds, train_np, args.epochs, reuse=True
        ),
        "one program": lambda: one_program(config, seeds, train_np, args.epochs),
    }
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for name, fn in modes.items():
            times[name].append(fn())
            total, comp = times[name][-1]
            print(f"  round {r + 1} {name}: {total:.2f} s (compile {comp:.2f} s)", flush=True)
    med = {m: statistics.median(t for t, _ in v) for m, v in times.items()}
    for m, v in times.items():
        comp = statistics.median(c for _, c in v)
        print(
            f"{m:>24}: {med[m]:.2f} s median, compile {comp:.2f} s, "
            f"{examples / med[m]:,.0f} examples/s aggregate"
        )
    prog = med["one program"]
    print(
        f"ratio sequential / one program: {med['sequential'] / prog:.2f} (compiles per seed), "
        f"{med['sequential, one compile'] / prog:.2f} (one compile reused); target >= 1"
    )
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
