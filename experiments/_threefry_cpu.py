"""JAX's Threefry-2x32 hash lowered without its loop on the CPU: the same bits, faster.

On the CPU, JAX lowers ``threefry2x32`` (behind every ``jax.random`` draw of the default
``threefry2x32`` key) to a ``while`` loop of 5 trips of 4 rounds, to keep programs small. XLA:CPU
runs each trip as separate kernels with copies of the loop's state between them; a profile of
the VAE's training step (``benchmarks/profile_vae.py --binarization dynamic``) shows the
dynamic binarisation's draw of ``[128, 784]`` uniforms taking about 1.3 ms of a 7.5 ms step
this way. The unrolled lowering, the one JAX itself uses on other backends (emitted as one
out-of-line function), computes the identical hash (same rounds, rotations and key schedule,
in the same order: bit for bit the same draws) in one fused kernel, about 2x faster here.

:func:`unroll_threefry_on_cpu` registers that lowering for the CPU platform. It is global to
the process and affects only programs traced afterwards; the experiment runners call it on
import. ``MCGRAD_ROLLED_THREEFRY=1`` keeps JAX's rolled lowering. It uses JAX internals
(``jax._src``): if they move, it does nothing and returns ``False``.
"""

from __future__ import annotations

import os

ENV = "MCGRAD_ROLLED_THREEFRY"


def unroll_threefry_on_cpu() -> bool:
    """Lower ``threefry2x32`` on the CPU without its rolled loop; returns whether it did."""
    if os.environ.get(ENV) == "1":
        return False
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as threefry

        rule = threefry._threefry2x32_lowering_rule  # the unrolled, out-of-line lowering
        primitive = threefry.threefry2x32_p
    except (ImportError, AttributeError):
        return False
    mlir.register_lowering(primitive, rule, platform="cpu")
    return True
