r"""A VAE in Flax NNX: MLP encoder to a diagonal Gaussian, MLP decoder to Bernoulli logits.

Generative model :math:`p(z) = N(0, I)`, :math:`p(x|z) = \prod_d \mathrm{Bernoulli}(x_d;
\sigma(\mathrm{dec}(z)_d))`; recognition model :math:`q(z|x) = N(\mu(x), \mathrm{diag}\,
\sigma(x)^2)` with :math:`(\mu, \log\sigma) = \mathrm{enc}(x)`. Everything below is written for
ONE example ``x: [data_dim]`` (vmap it over a batch); no training loop lives here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

import estimators

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
}


def _activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nnx.Module):
    """``sizes[0] -> sizes[1] -> ... -> sizes[-1]``; the activation between layers, not after."""

    def __init__(self, sizes: Sequence[int], activation: str, *, rngs: nnx.Rngs):
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"MLP sizes must be >= 2 positive ints; got {list(sizes)}")
        self.activation = activation
        self._act = _activation(activation)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self, x: Array) -> Array:
        """``x: [..., sizes[0]] -> [..., sizes[-1]]``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self._act(x)
        return x


class VAE(nnx.Module):
    """Encoder ``data_dim -> hidden... -> 2 * latent_dim``, decoder ``latent -> hidden[::-1]...``.

    Args:
      data_dim: number of binary pixels ``D``.
      hidden: sizes of the deterministic hidden layers of the encoder (the decoder mirrors them).
      latent_dim: ``L``.
      activation: one of :data:`ACTIVATIONS`.
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(
        self,
        data_dim: int,
        hidden: Sequence[int],
        latent_dim: int,
        activation: str = "relu",
        *,
        rngs: nnx.Rngs,
    ):
        hidden = tuple(hidden)
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.encoder = MLP((data_dim, *hidden, 2 * latent_dim), activation, rngs=rngs)
        self.decoder = MLP((latent_dim, *hidden[::-1], data_dim), activation, rngs=rngs)

    def encode(self, x: Array) -> estimators.Normal:
        """``q(z|x)`` for ``x: [..., D]``: a Normal with loc and scale ``[..., L]``."""
        out = self.encoder(x)
        loc, log_scale = out[..., : self.latent_dim], out[..., self.latent_dim :]
        return estimators.Normal.from_log_scale(loc, log_scale)

    def encoder_params(self, x: Array) -> dict[str, Array]:
        """``{"loc": [..., L], "log_scale": [..., L]}``: the parameters of ``q(z|x)``."""
        out = self.encoder(x)
        return {"loc": out[..., : self.latent_dim], "log_scale": out[..., self.latent_dim :]}

    def decode(self, z: Array) -> Array:
        """Bernoulli logits ``[..., D]`` of ``p(x|z)`` for ``z: [..., L]``."""
        return self.decoder(z)


def posterior(params: dict[str, Array]) -> estimators.Normal:
    """``q(z|x)`` from :meth:`VAE.encoder_params` (the ``dist_builder`` of the estimators)."""
    return estimators.Normal.from_log_scale(params["loc"], params["log_scale"])


def bernoulli_log_likelihood(logits: Array, x: Array) -> Array:
    """``log p(x|z) = sum_d x_d l_d - softplus(l_d)``: ``logits, x: [D] -> []``."""
    return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)


def standard_normal_log_prob(z: Array) -> Array:
    """``log N(z; 0, I)``: ``[..., L] -> [...]``."""
    return jnp.sum(-0.5 * jnp.square(z) - 0.5 * math.log(2 * math.pi), axis=-1)


def kl_standard_normal(params: dict[str, Array]) -> Array:
    r"""Analytic :math:`KL(N(\mu, \sigma^2) \| N(0, I)) = \frac12 \sum (\mu^2 + \sigma^2 - 1 -
    2\log\sigma)`: ``{"loc": [..., L], "log_scale": [..., L]} -> [...]``."""
    loc, log_scale = params["loc"], params["log_scale"]
    return 0.5 * jnp.sum(jnp.square(loc) + jnp.exp(2 * log_scale) - 1.0 - 2 * log_scale, axis=-1)


def log_weight(model: VAE, x: Array, params: dict[str, Array], z: Array) -> Array:
    """``log p(x, z) - log q(z|x)`` for ``x: [D]``, ``z: [L]``: ``[]``."""
    return (
        bernoulli_log_likelihood(model.decode(z), x)
        + standard_normal_log_prob(z)
        - posterior(params).log_prob(z)
    )


def _draw(q: estimators.Normal, key: Array, n: int) -> Array:
    """``[n, L]`` samples, the ones the estimators draw with this key."""
    return estimators.draw_samples(q, key, n)


def elbo(model: VAE, x: Array, key: Array) -> Array:
    r"""Single-sample ELBO with analytic KL, :math:`\log p(x|z) - KL(q(z|x)\|p(z))`, ``z ~ q``.

    ``x: [D]`` -> ``[]``; an unbiased estimate of the ELBO of ``x``.
    """
    params = model.encoder_params(x)
    z = posterior(params).sample(key)
    return bernoulli_log_likelihood(model.decode(z), x) - kl_standard_normal(params)


def iwae_bound(model: VAE, x: Array, key: Array, *, num_samples: int) -> Array:
    r"""Importance-weighted bound :math:`\log \frac1K \sum_k p(x, z_k)/q(z_k|x)`, ``z_k ~ q``.

    ``x: [D]`` -> ``[]``; an unbiased estimate of :math:`L_K` (Burda et al. 2016), which
    increases with ``K = num_samples`` towards :math:`\log p(x)`.
    """
    params = model.encoder_params(x)
    zs = _draw(posterior(params), key, num_samples)
    logw = jax.vmap(lambda z: log_weight(model, x, params, z))(zs)
    return jax.nn.logsumexp(logw) - math.log(num_samples)


def log_likelihood(
    model: VAE, x: Array, key: Array, *, num_samples: int, chunk_size: int = 500
) -> Array:
    r"""Importance-sampled :math:`\log p(x) \approx \log \frac1k \sum_i p(x, z_i)/q(z_i|x)`.

    The ``k = num_samples`` samples are drawn ``chunk_size`` at a time under ``lax.map``, so
    memory is ``O(chunk_size * D)`` whatever ``k``; the chunks' log-sum-exps are combined
    exactly. ``x: [D]`` -> ``[]`` (a lower bound in expectation, the IWAE bound with ``k``).
    """
    if num_samples % chunk_size:
        raise ValueError(
            f"log_likelihood: num_samples={num_samples} must be a multiple of "
            f"chunk_size={chunk_size}"
        )
    params = model.encoder_params(x)
    q = posterior(params)

    def chunk(k: Array) -> Array:
        zs = _draw(q, k, chunk_size)
        logw = jax.vmap(lambda z: log_weight(model, x, params, z))(zs)
        return jax.nn.logsumexp(logw)

    per_chunk = jax.lax.map(chunk, jax.random.split(key, num_samples // chunk_size))
    return jax.nn.logsumexp(per_chunk) - math.log(num_samples)
