"""experiments._threefry_cpu: the unrolled CPU lowering of threefry2x32 computes the same hash.

Against the published known-answer vectors of Threefry-2x32 with 20 rounds (Salmon et al. 2011,
Random123's kat_vectors), and bit for bit against JAX's rolled CPU lowering on the draws the VAE
makes (uniform bits, Bernoulli binarisation, normals).
"""

import jax
import numpy as np
import pytest
from jax._src.interpreters import mlir
from jax._src.random import threefry2x32 as threefry
from jax.extend.random import threefry_2x32

from experiments._threefry_cpu import unroll_threefry_on_cpu

# (key, counter) -> output, Random123 kat_vectors for threefry2x32_20.
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


def _draws(key):
    k1, k2, k3 = jax.random.split(key, 3)
    p = jax.random.uniform(k1, (32, 784))
    return (
        jax.random.bits(k1, (5, 7)),
        jax.random.bernoulli(k2, p),
        jax.vmap(lambda k: jax.random.normal(k, (20,)))(jax.random.split(k3, 32)),
    )


@pytest.fixture
def rolled_then_unrolled():
    """JAX's rolled CPU lowering first; the unrolled one installed after; left installed."""
    if jax.default_backend() != "cpu":
        pytest.skip("the lowering is registered for the CPU only")
    mlir.register_lowering(
        threefry.threefry2x32_p, threefry._threefry2x32_cpu_lowering_rule, platform="cpu"
    )
    yield
    assert unroll_threefry_on_cpu()


def test_unrolled_lowering_is_the_same_hash(rolled_then_unrolled):
    key = jax.random.key(20261127)
    rolled = jax.jit(lambda k: _draws(k))(key)  # a fresh function: traced under each rule
    assert unroll_threefry_on_cpu()
    unrolled = jax.jit(lambda k: _draws(k))(key)
    for a, b in zip(rolled, unrolled, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    hashed = jax.jit(threefry_2x32)
    for k, x, want in KAT:
        got = hashed(np.array(k, np.uint32), np.array(x, np.uint32))
        np.testing.assert_array_equal(np.asarray(got).ravel(), np.array(want, np.uint32))
