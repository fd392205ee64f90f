"""Adam (Kingma & Ba 2015, Algorithm 1) in pure JAX, for the estimators that train their own
control variates to lower variance (REBAR, RELAX, double control variates, RODEO): estimators/
imports only JAX, so not optax."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._common import Array, PyTree


class AdamState(NamedTuple):
    """Adam's moments (pytrees like the parameters) and its step count ``[]`` int32."""

    step: Array
    mu: PyTree
    nu: PyTree


def adam_init(params: PyTree) -> AdamState:
    """Adam's state for ``params``: zero moments, zero steps."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AdamState(jnp.zeros((), jnp.int32), zeros, zeros)


def adam_step(
    params: PyTree,
    grads: PyTree,
    state: AdamState,
    learning_rate: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[PyTree, AdamState]:
    """One step of Adam (Kingma & Ba 2015, Algorithm 1) descending ``grads``."""
    count = state.step + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda n, g: b2 * n + (1 - b2) * jnp.square(g), state.nu, grads)
    t = count.astype(jnp.float32)

    def step(p: Array, m: Array, n: Array) -> Array:
        m_hat, n_hat = m / (1 - b1**t), n / (1 - b2**t)
        return p - learning_rate * m_hat / (jnp.sqrt(n_hat) + eps)

    new = jax.tree.map(step, params, mu, nu)
    return new, AdamState(count, mu, nu)
