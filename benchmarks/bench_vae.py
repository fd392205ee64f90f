"""Training throughput of the default VAE against this machine's fp32 matrix-multiply roofline.

    python benchmarks/bench_vae.py [--batch-size 128] [--steps 50] [--repeats 5]
                                   [--breakdown] [--workdir runs/vae_mnist]
    python benchmarks/bench_vae.py --compare [--repeats 15] [--torch-python PATH]

Measures, in the same run:
  * the roofline: GFLOP/s of a large jitted ``jnp.dot`` (fp32, n x n), median of repeats;
  * the VAE: examples/s of a jitted, scanned slice of an epoch (``--steps`` Adam steps with
    dynamic binarisation, pathwise estimator, 784-400-20/20-400-784 ReLU), median of repeats;
  * the model's FLOPs per example: 2 x (multiply-adds of every dense layer) forward, times 3
    for forward + backward; the ratio achieved / roofline (target >= 0.7);
  * with ``--breakdown``, where the step's time goes: the same program without dynamic
    binarisation, with SGD instead of Adam, and with neither, and the model's four matmuls
    alone (forward and backward, an SGD update; no biases, sampling, likelihood or KL), each
    with its ms per step and its model-FLOPs ratio to the roofline; and a baseline, the same
    training step written directly in JAX without this project's code, with the speed of
    ours relative to it.
With ``--compare`` it measures instead ours against the step a user writes elsewhere, same model,
batch, Adam and static binary data, alternating rounds in this run: a plain ``nnx.jit`` Flax
step called from Python per batch, and PyTorch eager (``benchmarks/_torch_vae.py`` in
``.venv-torch``, made by ``bash benchmarks/setup_torch.sh``), both with as many threads as
cores; ours with static and with dynamic binarisation (the config's default).
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
import estimators  # noqa: E402  (first: its XLA:CPU workaround must precede any computation)

# PyTorch lives in its own virtual environment (the project must not depend on it), made by
# ``bash benchmarks/setup_torch.sh``; --torch-python names another interpreter.
DEFAULT_TORCH = str(Path(__file__).resolve().parents[1] / ".venv-torch" / "bin" / "python")
MATMULS = "the four matmuls alone (fwd + bwd + SGD)"
PLAIN = "baseline: the step in plain JAX"


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


def make_training(
    batch_size: int,
    steps: int,
    estimator: str,
    *,
    dynamic: bool = True,
    sgd: bool = False,
    train: jax.Array | None = None,
    with_hlo: bool = False,
):
    """A compiled, warmed-up call of ``steps`` scanned training steps of the default model.

    ``dynamic=False`` trains on the batch as given (no binarisation inside the step) and
    ``sgd=True`` replaces Adam by plain SGD: the ablations of ``--breakdown``. ``train``
    ``[steps * batch_size, 784]``: the images (default :func:`_data`). ``with_hlo=True``
    returns ``(call, compiled HLO text)``.
    """
    import optax

    from experiments.vae import train as vae_train
    from experiments.vae.config import base_config

    config: ml_collections.ConfigDict = base_config()
    config.estimator = estimator
    pieces, state = vae_train.init_state(config, 784, jax.random.key(0))
    if sgd:
        pieces["optimizer"] = optax.sgd(config.learning_rate)
        state["opt"] = pieces["optimizer"].init(state["params"])
    setup = vae_train.Setup(
        estimator=estimator,
        num_samples=vae_train.num_samples(config, pieces["est"]),
        batch_size=batch_size,
        num_batches=steps,
        dynamic=dynamic,
        **pieces,
    )
    train = _data(steps * batch_size) if train is None else train
    epoch = vae_train.make_train_epoch(setup)
    key = jax.random.key(1)

    def call():
        epoch(state, train, key)[1].block_until_ready()

    call()
    if with_hlo:
        return call, epoch.lower(state, train, key).compile().as_text()
    return call


def make_plain_step(batch_size: int, steps: int):
    """The same training, written directly in JAX without this project's code: a baseline.

    The default model as four weight/bias pairs, one ``jax.random.normal`` draw for the whole
    batch, the Bernoulli log-likelihood via ``softplus``, the analytic KL, dynamic binarisation
    and optax's Adam, ``steps`` steps in one ``lax.scan`` over consecutive batches.
    """
    import optax

    keys = jax.random.split(jax.random.key(0), 4)
    shapes = {"e0": (784, 400), "e1": (400, 40), "d0": (20, 400), "d1": (400, 784)}
    params = {
        name: {"w": jax.random.normal(k, shape) / shape[0] ** 0.5, "b": jnp.zeros(shape[1])}
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }
    adam = optax.adam(1e-3)
    train = _data(steps * batch_size)

    def loss(p, x, key):
        h = jax.nn.relu(x @ p["e0"]["w"] + p["e0"]["b"])
        out = h @ p["e1"]["w"] + p["e1"]["b"]
        loc, log_scale = out[:, :20], out[:, 20:]
        z = loc + jnp.exp(log_scale) * jax.random.normal(key, loc.shape)
        logits = jax.nn.relu(z @ p["d0"]["w"] + p["d0"]["b"]) @ p["d1"]["w"] + p["d1"]["b"]
        log_lik = jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)
        kl = 0.5 * jnp.sum(loc**2 + jnp.exp(2 * log_scale) - 1 - 2 * log_scale, axis=-1)
        return jnp.mean(kl - log_lik)

    @jax.jit
    def epoch(params, opt, key):
        def body(carry, inp):
            p, opt = carry
            i, k = inp
            k_bin, k_z = jax.random.split(k)
            x = jax.lax.dynamic_slice_in_dim(train, i * batch_size, batch_size)
            x = jax.random.bernoulli(k_bin, x).astype(x.dtype)
            value, grads = jax.value_and_grad(loss)(p, x, k_z)
            updates, opt = adam.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), value

        inputs = (jnp.arange(steps), jax.random.split(key, steps))
        return jax.lax.scan(body, (params, opt), inputs)[1]

    opt = adam.init(params)

    def call():
        epoch(params, opt, jax.random.key(1)).block_until_ready()

    call()
    return call


def make_flax_step(
    batch_size: int,
    steps: int,
    train: jax.Array,
    with_hlo: bool = False,
    softplus=jax.nn.softplus,
):
    """The training step a Flax user writes: a baseline for ``--compare``.

    The default model as an ``nnx.Module`` of four ``nnx.Linear`` layers, ``nnx.Optimizer``
    with optax's Adam (1e-3), and a ``@nnx.jit`` step ``(model, optimizer, x, key) -> loss``
    (one ``jax.random.normal`` draw for the batch, ``log p(x|z)`` via ``softplus``, the analytic
    KL), called once per batch from Python on the STATICALLY binarised ``train`` ``[steps *
    batch_size, 784]`` (its consecutive batches, already on the device, with keys split
    beforehand). Returns a warmed-up call of ``steps`` steps (``with_hlo=True``: and the
    step's compiled HLO text). ``softplus``: ``jax.nn.softplus`` as a user writes it, or
    ``estimators.softplus`` (ours) to separate what the likelihood's form gains from the rest.
    """
    import optax
    from flax import nnx

    class FlaxVAE(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.e0, self.e1 = nnx.Linear(784, 400, rngs=rngs), nnx.Linear(400, 40, rngs=rngs)
            self.d0, self.d1 = nnx.Linear(20, 400, rngs=rngs), nnx.Linear(400, 784, rngs=rngs)

        def __call__(self, x, key):
            out = self.e1(jax.nn.relu(self.e0(x)))
            loc, log_scale = out[:, :20], out[:, 20:]
            z = loc + jnp.exp(log_scale) * jax.random.normal(key, loc.shape)
            logits = self.d1(jax.nn.relu(self.d0(z)))
            log_lik = jnp.sum(x * logits - softplus(logits), axis=-1)
            kl = 0.5 * jnp.sum(loc**2 + jnp.exp(2 * log_scale) - 1 - 2 * log_scale, axis=-1)
            return jnp.mean(kl - log_lik)

    model = FlaxVAE(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, key):
        loss, grads = nnx.value_and_grad(lambda m: m(x, key))(model)
        optimizer.update(model, grads)
        return loss

    batches = [train[i * batch_size : (i + 1) * batch_size] for i in range(steps)]
    keys = list(jax.random.split(jax.random.key(1), steps))

    def call():
        for x, key in zip(batches, keys, strict=True):
            loss = step(model, optimizer, x, key)
        loss.block_until_ready()

    call()
    if with_hlo:
        return call, step.lower(model, optimizer, batches[0], keys[0]).compile().as_text()
    return call


class TorchSteps:
    """The PyTorch eager step (``benchmarks/_torch_vae.py``) in a subprocess of ``python``;
    calling it runs ``steps`` steps there and returns the seconds they took (measured in the
    subprocess, so the pipe is not timed)."""

    def __init__(
        self,
        python: str,
        train: jax.Array,
        batch_size: int,
        steps: int,
        threads: int,
        device: str = "cpu",
    ):
        import subprocess
        import tempfile

        import numpy as np

        self._tmp = tempfile.TemporaryDirectory()
        data = Path(self._tmp.name) / "train.npy"
        np.save(data, np.asarray(train, np.float32))
        script = Path(__file__).resolve().parent / "_torch_vae.py"
        self.proc = subprocess.Popen(
            [python, str(script), str(data), str(batch_size), str(threads), device],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.steps = steps
        assert self.proc.stdout is not None
        self.version = self.proc.stdout.readline().strip()
        if not self.version:
            raise RuntimeError(f"{python} {script} did not start")
        self()  # warm-up round

    def __call__(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{self.steps}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self._tmp.cleanup()


def compare(args) -> None:
    """``--compare``: examples/s of ours (static and dynamic binarisation), the jitted Flax step
    and PyTorch eager, alternating rounds in this run; medians and per-round ratios."""
    import numpy as np

    n = args.steps * args.batch_size
    grey = _data(n)
    binary = jax.random.bernoulli(jax.random.key(3), grey).astype(jnp.float32)  # static draw
    threads = os.cpu_count() or 1
    calls: dict[str, object] = {
        "ours, static binarisation": make_training(
            args.batch_size, args.steps, "pathwise", dynamic=False, train=binary
        ),
        "ours, dynamic binarisation": make_training(
            args.batch_size, args.steps, "pathwise", dynamic=True, train=grey
        ),
        "Flax nnx.jit step, static": make_flax_step(args.batch_size, args.steps, binary),
        # The same Flax step with our softplus: what ours gains beyond the likelihood's form.
        "Flax, estimators.softplus": make_flax_step(
            args.batch_size, args.steps, binary, softplus=estimators.softplus
        ),
    }
    torch_steps = None
    python = args.torch_python or DEFAULT_TORCH
    if Path(python).exists():
        # PyTorch on the device JAX runs on: CUDA when JAX's backend is a GPU.
        device = "cuda" if jax.default_backend() == "gpu" else "cpu"
        torch_steps = TorchSteps(python, binary, args.batch_size, args.steps, threads, device)
        print(f"PyTorch eager: {torch_steps.version} ({python})")
    else:
        print(f"PyTorch eager: skipped, no {python} (bash benchmarks/setup_torch.sh)")
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    if torch_steps is not None:
        seconds["PyTorch eager, static"] = []
    loads = []
    for _ in range(args.repeats):
        for name, fn in calls.items():
            seconds[name].append(_seconds(fn))
        if torch_steps is not None:
            seconds["PyTorch eager, static"].append(torch_steps())
        loads.append(os.getloadavg()[0])
    if torch_steps is not None:
        torch_steps.close()
    med = statistics.median
    ours = np.asarray(seconds["ours, static binarisation"])
    print(
        f"batch {args.batch_size}, {args.steps} steps per round, {args.repeats} alternating "
        f"rounds, {threads} threads each; load (1 min) {min(loads):.2f}-{max(loads):.2f}"
    )
    print(f"  {'':28s} {'examples/s':>11s}  {'ms/step':>7s}  ours static's speed / its (rounds)")
    for name, s in seconds.items():
        ratio = np.asarray(s) / ours
        print(
            f"  {name:28s} {n / med(s):11,.0f}  {med(s) / args.steps * 1e3:7.3f}  "
            f"{np.median(ratio):.2f}x (min {ratio.min():.2f}, max {ratio.max():.2f})"
        )


def make_breakdown(batch_size: int, steps: int) -> dict[str, object]:
    """Compiled, warmed-up calls of ``steps`` scanned steps of ablations of the training step.

    The step without dynamic binarisation, with SGD instead of Adam, with neither, and the
    model's four matmuls alone (forward and backward through the weights, ReLU between, a
    linear loss, an SGD update; no biases, sampling, likelihood or KL): what the dense layers
    of this model can reach at this batch size. Last, the baseline of :func:`make_plain_step`.
    """
    from experiments.vae import train as vae_train
    from experiments.vae.config import base_config

    _, state = vae_train.init_state(base_config(), 784, jax.random.key(0))
    kernels = [
        state["params"][part]["layers"][i]["kernel"][...]
        for part in ("encoder", "decoder")
        for i in (0, 1)
    ]
    x = _data(batch_size)

    def linear_loss(ws, x):  # the VAE's four matmuls; the code's first half as the latent
        h = jax.nn.relu(x @ ws[0])
        z = (h @ ws[1])[:, :20]
        return jnp.sum(x * (jax.nn.relu(z @ ws[2]) @ ws[3]))

    @jax.jit
    def matmuls_only(ws, x):
        def body(ws, _):
            g = jax.grad(linear_loss)(ws, x)
            return [w - 1e-6 * gw for w, gw in zip(ws, g, strict=True)], None

        return jax.lax.scan(body, ws, None, length=steps)[0]

    calls = {
        "step without dynamic binarisation": make_training(
            batch_size, steps, "pathwise", dynamic=False
        ),
        "step with SGD instead of Adam": make_training(batch_size, steps, "pathwise", sgd=True),
        "step with neither": make_training(batch_size, steps, "pathwise", dynamic=False, sgd=True),
        MATMULS: lambda: jax.block_until_ready(matmuls_only(kernels, x)),
        PLAIN: make_plain_step(batch_size, steps),
    }
    calls[MATMULS]()
    return calls


def model_flops_per_example(sizes_enc: list[int], sizes_dec: list[int]) -> tuple[float, float]:
    """(forward, training) flops per example: 2 x multiply-adds, training = 3 x forward."""
    macs = sum(a * b for a, b in zip(sizes_enc[:-1], sizes_enc[1:], strict=True))
    macs += sum(a * b for a, b in zip(sizes_dec[:-1], sizes_dec[1:], strict=True))
    return 2.0 * macs, 6.0 * macs


def _data(n: int) -> jax.Array:
    """The first n MNIST training images if ``$MNIST_DIR`` has them, else uniform pixels."""
    if os.environ.get("MNIST_DIR"):
        from experiments.vae import data

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
    p.add_argument(
        "--compare",
        action="store_true",
        help="ours against a jitted Flax step and PyTorch eager (alternating rounds) only",
    )
    p.add_argument("--torch-python", default=None, help="interpreter with torch (.venv-torch)")
    args = p.parse_args()
    if args.compare:
        print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, load {os.getloadavg()}")
        compare(args)
        return
    if args.breakdown and args.estimator != "pathwise":
        p.error("--breakdown compares pathwise steps; leave --estimator at pathwise")

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
    piece_ratios: dict[str, list[float]] = {name: [] for name in pieces}
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
            seconds = _seconds(fn)
            piece_ms[name].append(seconds / args.steps * 1e3)
            flops = args.steps * args.batch_size * train_flops
            piece_ratios[name].append(flops / seconds / 1e9 / roof_now)
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
        print(f"  {'whole training step':40s} {med(step_ms):6.3f}  ratio {med(ratios):.2f}")
        for name, ms in piece_ms.items():
            print(f"  {name:40s} {med(ms):6.3f}  ratio {med(piece_ratios[name]):.2f}")
        speed = [b / s for b, s in zip(piece_ms[PLAIN], step_ms, strict=True)]
        print(
            f"  this project's step vs the plain-JAX baseline: {med(speed):.2f}x its speed "
            "(median of per-repeat ratios)"
        )
    print(f"one epoch of 60 000 images: {60000 / ex_s:.2f} s; load after: {os.getloadavg()}")
    if args.workdir is not None:
        _target(args.workdir)


if __name__ == "__main__":
    main()
