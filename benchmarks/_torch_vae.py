"""The default VAE's training step in PyTorch eager: the baseline of ``bench_vae.py --compare``.

Runs in its own interpreter (the project must not depend on PyTorch), made by
``bash benchmarks/setup_torch.sh`` at ``<repo>/.venv-torch``:

    .venv-torch/bin/python benchmarks/_torch_vae.py DATA.npy BATCH_SIZE THREADS [DEVICE]

``DATA.npy`` holds the binary training images ``[N, 784]`` (float32), the batches are its
consecutive ``BATCH_SIZE`` rows in order. The model is the project's default: 784-400-40
encoder (ReLU; the head's halves are ``mu`` and ``log sigma`` of ``q(z|x)``), 20-400-784
decoder to Bernoulli logits, one pathwise sample ``z = mu + sigma * eps`` per example, the loss
the batch mean of ``KL(q || N(0, I)) - log p(x|z)`` with ``log p(x|z) = sum x l -
softplus(l)`` (``binary_cross_entropy_with_logits``), Adam with learning rate 1e-3 (PyTorch's
default implementation for the device's tensors). ``DEVICE`` is ``cpu`` (default) or ``cuda``
(the batches then live on the GPU, as JAX's do). A line ``N`` on stdin runs ``N`` steps and
answers the seconds they took (wall clock, the device synchronised once at the end, as JAX's
``block_until_ready``; no per-step host read of the loss); an empty line ends it.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 40))
        self.decoder = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, log_scale = self.encoder(x).chunk(2, dim=-1)
        z = loc + torch.exp(log_scale) * torch.randn_like(loc)
        logits = self.decoder(z)
        nll = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
        kl = 0.5 * (loc.square() + torch.exp(2 * log_scale) - 1 - 2 * log_scale)
        return (nll.sum(-1) + kl.sum(-1)).mean()


def main() -> None:
    data_path, batch_size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    device = torch.device(sys.argv[4] if len(sys.argv) > 4 else "cpu")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    train = torch.from_numpy(np.load(data_path).astype(np.float32)).to(device)
    batches = list(train.split(batch_size))
    model = VAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x)
        loss.backward()
        opt.step()
        return loss.detach()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for x in batches[:5]:  # warm-up
        step(x)
    sync()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads", flush=True)
    i = 0
    for line in sys.stdin:
        if not line.strip():
            break
        n = int(line)
        t = time.perf_counter()
        for _ in range(n):
            loss = step(batches[i % len(batches)])
            i += 1
        sync()
        seconds = time.perf_counter() - t
        if not np.isfinite(float(loss)):
            raise FloatingPointError(f"PyTorch VAE loss {loss}")
        print(f"{seconds!r}", flush=True)


if __name__ == "__main__":
    main()
