"""Training throughput of the default VAE against this machine's fp32 matrix-multiply roofline.

    python benchmarks/bench_vae.py [--batch-size 128] [--steps 50] [--repeats 5]
                                   [--workdir runs/vae_mnist]

Measures, in the same run:
  * the roofline: GFLOP/s of a large jitted ``jnp.dot`` (fp32, n x n), median of repeats;
  * the VAE: examples/s of a jitted, scanned slice of an epoch (``--steps`` Adam steps with
    dynamic binarisation, pathwise estimator, 784-400-20/20-400-784 ReLU), median of repeats;
  * the model's FLOPs per example: 2 x (multiply-adds of every dense layer) forward, times 3
    for forward + backward; the ratio achieved / roofline (target >= 0.7);
  * with ``--breakdown``, where the step's time goes, each piece as its own scanned program of
    the same length: the dense layers alone (forward, backward to the weights, an SGD update:
    the ceiling for this model's shapes at this batch size), the SGD update alone (to subtract
    it), the Adam update of the model's parameters alone, and the dynamic binarisation of a
    batch alone (ms per step).
With ``--workdir`` of a finished ``vae_mnist`` run it also prints the log-likelihood target
(better than -92 nats within 30 minutes of training).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


DENSE = "dense layers only (fwd + bwd + SGD)"


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_matmuls(sizes: list[int]) -> dict[int, object]:
    """Per size n, a compiled, warmed-up ``[n, n] @ [n, n]`` fp32 matmul (2 n^3 flops)."""
    dot = jax.jit(jnp.dot)
    out = {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        out[n] = lambda a=a, b=b: dot(a, b).block_until_ready()
        out[n]()
    return out


def make_training(batch_size: int, steps: int, estimator: str):
    """A compiled, warmed-up call of ``steps`` scanned training steps of the default model."""
    from experiments import _vae_train
    from experiments._vae_config import base_config

    config: ml_collections.ConfigDict = base_config()
    config.estimator = estimator
    pieces, state = _vae_train.init_state(config, 784, jax.random.key(0))
    setup = _vae_train.Setup(
        estimator=estimator,
        num_samples=config.num_samples if estimator in _vae_train.MULTI_SAMPLE else 1,
        batch_size=batch_size,
        num_batches=steps,
        dynamic=True,
        ma_decay=config.ma_decay,
        **pieces,
    )
    train = _data(steps * batch_size)
    epoch = _vae_train.make_train_epoch(setup)
    key = jax.random.key(1)

    def call():
        epoch(state, train, key)[1].block_until_ready()

    call()
    return call


def make_breakdown(batch_size: int, steps: int) -> dict[str, object]:
    """Compiled, warmed-up calls of ``steps`` scanned steps of each piece of a training step."""
    import optax

    from experiments import _vae_train
    from experiments._vae_config import base_config

    _, state = _vae_train.init_state(base_config(), 784, jax.random.key(0))
    params = state["params"]
    kernels = [
        params[part]["layers"][i]["kernel"][...] for part in ("encoder", "decoder") for i in (0, 1)
    ]
    x = _data(batch_size)

    def dense_loss(ws, x):  # the VAE's four matmuls, ReLU between, mean of the code as latent
        h = jax.nn.relu(x @ ws[0])
        z = (h @ ws[1])[:, :20]
        logits = jax.nn.relu(z @ ws[2]) @ ws[3]
        return jnp.sum(x * logits - jax.nn.softplus(logits))

    @jax.jit
    def dense_only(ws, x):
        def body(ws, _):
            g = jax.grad(dense_loss)(ws, x)
            return [w - 1e-6 * gw for w, gw in zip(ws, g, strict=True)], None

        return jax.lax.scan(body, ws, None, length=steps)[0]

    adam = optax.adam(1e-3)
    grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)

    @jax.jit
    def adam_only(params, grads):
        def body(carry, _):
            p, opt = carry
            updates, opt = adam.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), None

        return jax.lax.scan(body, (params, adam.init(params)), None, length=steps)[0][0]

    @jax.jit
    def sgd_only(params, grads):  # the update inside the dense-layers program, to subtract it
        def body(p, _):
            return jax.tree.map(lambda a, g: a - 1e-6 * g, p, grads), None

        return jax.lax.scan(body, params, None, length=steps)[0]

    @jax.jit
    def binarise_only(key, x):
        def body(total, k):
            return total + jnp.sum(jax.random.bernoulli(k, x).astype(x.dtype)), None

        return jax.lax.scan(body, 0.0, jax.random.split(key, steps))[0]

    key = jax.random.key(3)
    calls = {
        DENSE: lambda: jax.block_until_ready(dense_only(kernels, x)),
        "SGD update only": lambda: jax.block_until_ready(sgd_only(params, grads)),
        "Adam update only": lambda: jax.block_until_ready(adam_only(params, grads)),
        "dynamic binarisation only": lambda: binarise_only(key, x).block_until_ready(),
    }
    for call in calls.values():
        call()
    return calls


def model_flops_per_example(sizes_enc: list[int], sizes_dec: list[int]) -> tuple[float, float]:
    """(forward, training) flops per example: 2 x multiply-adds, training = 3 x forward."""
    macs = sum(a * b for a, b in zip(sizes_enc[:-1], sizes_enc[1:], strict=True))
    macs += sum(a * b for a, b in zip(sizes_dec[:-1], sizes_dec[1:], strict=True))
    return 2.0 * macs, 6.0 * macs


def _data(n: int) -> jax.Array:
    """The first n MNIST training images if ``$MNIST_DIR`` has them, else uniform pixels."""
    if os.environ.get("MNIST_DIR"):
        from experiments import data

        return jnp.asarray(data.load_dataset("mnist", download=False).train[:n])
    return jax.random.uniform(jax.random.key(2), (n, 784))


def _target(workdir: Path) -> None:
    results = json.loads((workdir / "results.json").read_text())
    ll, se = results["test_log_likelihood"], results["test_log_likelihood_se"]
    minutes = results["train_loop_time_s"] / 60
    ok = ll > -92 and minutes <= 30.5
    print(
        f"target: test log p(x) (k={results['ll_num_samples']}, {results['ll_test_examples']} "
        f"test images) = {ll:.2f} ± {se:.2f} nats after {results['epochs']} epochs, "
        f"{minutes:.1f} min of training; better than -92 within 30 min: {'yes' if ok else 'NO'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--matmul-n", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--estimator", default="pathwise")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--breakdown", action="store_true", help="time the pieces of a step too")
    args = p.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, load {os.getloadavg()}")
    fwd, train_flops = model_flops_per_example([784, 400, 40], [20, 400, 784])
    matmuls = make_matmuls(args.matmul_n)
    training = make_training(args.batch_size, args.steps, args.estimator)
    pieces = make_breakdown(args.batch_size, args.steps) if args.breakdown else {}
    # Interleaved: each repeat times every matmul size and the training slice back to back, so
    # both sides of each ratio see the same load on a shared machine.
    gflops = {n: [] for n in matmuls}
    model_gflops, ratios, step_ms = [], [], []
    piece_ms: dict[str, list[float]] = {name: [] for name in pieces}
    dense_ratios = []
    for _ in range(args.repeats):
        for n, fn in matmuls.items():
            gflops[n].append(2 * n**3 / _seconds(fn) / 1e9)
        roof_now = max(g[-1] for g in gflops.values())
        seconds = _seconds(training)
        step_ms.append(seconds / args.steps * 1e3)
        ex_s = args.steps * args.batch_size / seconds
        model_gflops.append(ex_s * train_flops / 1e9)
        ratios.append(model_gflops[-1] / roof_now)
        for name, fn in pieces.items():
            piece_ms[name].append(_seconds(fn) / args.steps * 1e3)
        if pieces:
            dense_s = piece_ms[DENSE][-1] / 1e3
            dense_ratios.append(args.batch_size * train_flops / dense_s / 1e9 / roof_now)
    med = statistics.median
    for n, g in gflops.items():
        print(f"fp32 matmul {n:5d}^3: {med(g):7.1f} GFLOP/s (median of {args.repeats})")
    roof = max(med(g) for g in gflops.values())
    ex_s = med(model_gflops) * 1e9 / train_flops
    print(f"roofline (best size, median): {roof:.1f} GFLOP/s")
    print(
        f"model: 784-400-20/20-400-784 relu, {fwd / 1e6:.2f} MFLOP forward, "
        f"{train_flops / 1e6:.2f} MFLOP per training example (3 x forward)"
    )
    print(
        f"training ({args.estimator}, batch {args.batch_size}, {args.steps} scanned steps): "
        f"{ex_s:,.0f} examples/s = {med(model_gflops):.1f} GFLOP/s (median of {args.repeats})"
    )
    print(
        f"ratio achieved / roofline: {med(ratios):.2f} (median of per-repeat ratios; "
        f"min {min(ratios):.2f}, max {max(ratios):.2f}; target >= 0.7)"
    )
    if pieces:
        print(f"breakdown, ms per step of batch {args.batch_size} (median of {args.repeats}):")
        print(f"  {'whole training step':38s} {med(step_ms):6.3f}")
        for name, ms in piece_ms.items():
            print(f"  {name:38s} {med(ms):6.3f}")
        print(
            f"  the dense layers alone reach {med(dense_ratios):.2f} of the roofline "
            "(the ceiling for these shapes at this batch size)"
        )
        print(
            f"  the whole step runs at {med(piece_ms[DENSE]) / med(step_ms):.2f} of the speed of "
            "the dense layers alone"
        )
    print(f"one epoch of 60 000 images: {60000 / ex_s:.2f} s; load after: {os.getloadavg()}")
    if args.workdir is not None:
        _target(args.workdir)


if __name__ == "__main__":
    main()
