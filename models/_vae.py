r"""A VAE in Flax NNX: MLP encoder to a latent family's parameters, MLP decoder to Bernoulli logits.

Generative model :math:`p(z)` (the latent family's prior), :math:`p(x|z) = \prod_d
\mathrm{Bernoulli}(x_d; \sigma(\mathrm{dec}(z)_d))`; recognition model :math:`q(z|x)`, the
family's distribution with parameters :math:`\mathrm{enc}(x)`. The family is a parameter of
:class:`VAE` (a :class:`LatentFamily`); the default, :class:`GaussianLatent`, is
:math:`p(z) = N(0, I)`, :math:`q(z|x) = N(\mu(x), \mathrm{diag}\,\sigma(x)^2)` with
:math:`(\mu, \log\sigma) = \mathrm{enc}(x)`. Everything below is written for ONE example
``x: [data_dim]`` (vmap it over a batch); no training loop lives here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx

import estimators

Array = jax.Array


def leaky_relu(x: Array) -> Array:
    """LeakyReLU with negative slope 0.3 (the binary-VAE benchmark's nonlinearity)."""
    return jax.nn.leaky_relu(x, 0.3)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
    "softplus": estimators.softplus,
    "gelu": jax.nn.gelu,
    "leaky_relu": leaky_relu,
}


def _activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class LatentFamily(Protocol):
    r"""The latent variable's family: the encoder's head, :math:`q(z|x)`, :math:`p(z)`, the KL.

    ``z`` has shape ``[..., L]`` (``L = latent_dim``, what the decoder reads). An implementation
    is a frozen dataclass (hashable: it is static data of the :class:`VAE` module) with:

    - ``param_shapes(L)``: ``{name: shape}`` of the parameters of :math:`q(z|x)` per example,
      in the order the encoder's head emits them (its width is the sum of their sizes);
    - ``posterior(params)``: :math:`q(z|x)` as an ``estimators`` distribution, from
      ``{name: [..., *shape]}`` (the ``dist_builder`` the estimators are given); its
      ``log_prob`` sums over the event ``[L]``;
    - ``prior(L)``: :math:`p(z)`, an ``estimators`` distribution with event ``[L]``;
      ``prior_log_prob(z)``: :math:`\log p(z)`, ``[..., L] -> [...]``;
    - ``kl(params)``: :math:`KL(q(z|x) \| p(z))` in closed form, ``[...]``: the VAE adds it to
      the Monte Carlo reconstruction term outside the gradient estimator;
    - ``manifold_grid(n)``: ``[n]`` latent values per axis for the 2-D manifold figure, or
      ``None`` where such a grid means nothing.

    A Bernoulli latent (issue 13) is one more such class: ``param_shapes = {"logits": (L,)}``,
    ``posterior = estimators.Bernoulli`` of the logits (a ``Discrete`` distribution: estimators
    that need ``Reparameterizable`` refuse it, so it trains with the score function and its
    baselines, or discrete estimators), ``prior`` Bernoulli(1/2)^L with
    ``prior_log_prob(z) = -L log 2``, ``kl(params) = sum_l [q_l log 2q_l + (1 - q_l)
    log 2(1 - q_l)]`` with ``q = sigmoid(logits)``, and ``manifold_grid`` ``None``. Nothing in
    :class:`VAE` or the functions below changes.
    """

    def param_shapes(self, latent_dim: int) -> Mapping[str, tuple[int, ...]]: ...

    def posterior(self, params: Mapping[str, Array]) -> estimators.Distribution: ...

    def prior(self, latent_dim: int) -> estimators.Distribution: ...

    def prior_log_prob(self, z: Array) -> Array: ...

    def kl(self, params: Mapping[str, Array]) -> Array: ...

    def manifold_grid(self, num: int) -> Array | None: ...


@dataclasses.dataclass(frozen=True)
class GaussianLatent:
    r"""Diagonal Gaussian latent: :math:`q(z|x) = N(\mu, \mathrm{diag}\,\sigma^2)`,
    :math:`p(z) = N(0, I)`; the encoder emits ``{"loc": [..., L], "log_scale": [..., L]}``.

    The default :class:`LatentFamily` of :class:`VAE` (Kingma & Welling 2014).
    """

    def param_shapes(self, latent_dim: int) -> dict[str, tuple[int, ...]]:
        r"""``{"loc": (L,), "log_scale": (L,)}``: :math:`\mu` and :math:`\log\sigma`."""
        return {"loc": (latent_dim,), "log_scale": (latent_dim,)}

    def posterior(self, params: Mapping[str, Array]) -> estimators.Normal:
        r""":math:`N(\mu, \sigma^2)` with loc and scale ``[..., L]``."""
        return estimators.Normal.from_log_scale(params["loc"], params["log_scale"])

    def prior(self, latent_dim: int) -> estimators.Normal:
        """:math:`N(0, I_L)`."""
        return estimators.Normal(jnp.zeros(latent_dim), jnp.ones(latent_dim))

    def prior_log_prob(self, z: Array) -> Array:
        """``log N(z; 0, I)``: ``[..., L] -> [...]``."""
        return standard_normal_log_prob(z)

    def kl(self, params: Mapping[str, Array]) -> Array:
        """:func:`kl_standard_normal`: ``[...]``."""
        return kl_standard_normal(params)

    def manifold_grid(self, num: int) -> Array:
        """``[num]`` standard normal quantiles from 5 % to 95 %."""
        return jax.scipy.stats.norm.ppf(jnp.linspace(0.05, 0.95, num))


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
    """Encoder ``data_dim -> hidden... -> head``, decoder ``latent_dim -> hidden[::-1]... -> D``.

    The head's width is the total size of ``latent.param_shapes(latent_dim)`` (``2 L`` for the
    Gaussian).

    Args:
      data_dim: number of binary pixels ``D``.
      hidden: sizes of the deterministic hidden layers of the encoder (the decoder mirrors them).
      latent_dim: ``L``.
      activation: one of :data:`ACTIVATIONS`.
      latent: the :class:`LatentFamily` of ``z``; ``None`` is :class:`GaussianLatent`.
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(
        self,
        data_dim: int,
        hidden: Sequence[int],
        latent_dim: int,
        activation: str = "relu",
        latent: LatentFamily | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        hidden = tuple(hidden)
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.latent = GaussianLatent() if latent is None else latent
        shapes = dict(self.latent.param_shapes(latent_dim))
        if not shapes or any(min(s, default=1) < 1 for s in shapes.values()):
            raise ValueError(f"latent family {self.latent!r}: bad param_shapes {shapes}")
        self._param_shapes = tuple(shapes.items())
        head = sum(math.prod(s) for s in shapes.values())
        self.encoder = MLP((data_dim, *hidden, head), activation, rngs=rngs)
        self.decoder = MLP((latent_dim, *hidden[::-1], data_dim), activation, rngs=rngs)

    def encode(self, x: Array) -> estimators.Distribution:
        """``q(z|x)`` for ``x: [..., D]``: the latent family's distribution, event ``[..., L]``."""
        return self.latent.posterior(self.encoder_params(x))

    def encoder_params(self, x: Array) -> dict[str, Array]:
        """The parameters of ``q(z|x)``, ``{name: [..., *shape]}`` of the family's
        ``param_shapes`` (Gaussian: ``{"loc": [..., L], "log_scale": [..., L]}``): the
        encoder's head cut in their order."""
        out = self.encoder(x)
        params, start = {}, 0
        for name, shape in self._param_shapes:
            size = math.prod(shape)
            params[name] = out[..., start : start + size].reshape(*out.shape[:-1], *shape)
            start += size
        return params

    def decode(self, z: Array) -> Array:
        """Bernoulli logits ``[..., D]`` of ``p(x|z)`` for ``z: [..., L]``."""
        return self.decoder(z)


def posterior(params: dict[str, Array]) -> estimators.Normal:
    """The Gaussian ``q(z|x)`` from :meth:`VAE.encoder_params` of a VAE with the default
    :class:`GaussianLatent` (for any family: ``model.latent.posterior``)."""
    return GaussianLatent().posterior(params)


def bernoulli_log_likelihood(logits: Array, x: Array) -> Array:
    """``log p(x|z) = sum_d x_d l_d - softplus(l_d)``: ``logits, x: [D] -> []``."""
    return jnp.sum(x * logits - estimators.softplus(logits), axis=-1)


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
        + model.latent.prior_log_prob(z)
        - model.latent.posterior(params).log_prob(z)
    )


def _draw(q: estimators.Distribution, key: Array, n: int) -> Array:
    """``[n, L]`` samples, the ones the estimators draw with this key."""
    return estimators.draw_samples(q, key, n)


def elbo(model: VAE, x: Array, key: Array) -> Array:
    r"""Single-sample ELBO :math:`\log p(x|z) - KL(q(z|x)\|p(z))`, ``z ~ q``, with the latent
    family's closed-form KL.

    ``x: [D]`` -> ``[]``; an unbiased estimate of the ELBO of ``x``.
    """
    params = model.encoder_params(x)
    z = model.latent.posterior(params).sample(key)
    return bernoulli_log_likelihood(model.decode(z), x) - model.latent.kl(params)


def iwae_bound(model: VAE, x: Array, key: Array, *, num_samples: int) -> Array:
    r"""Importance-weighted bound :math:`\log \frac1K \sum_k p(x, z_k)/q(z_k|x)`, ``z_k ~ q``.

    ``x: [D]`` -> ``[]``; an unbiased estimate of :math:`L_K` (Burda et al. 2016), which
    increases with ``K = num_samples`` towards :math:`\log p(x)`.
    """
    params = model.encoder_params(x)
    zs = _draw(model.latent.posterior(params), key, num_samples)
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
    q = model.latent.posterior(params)

    def chunk(k: Array) -> Array:
        zs = _draw(q, k, chunk_size)
        logw = jax.vmap(lambda z: log_weight(model, x, params, z))(zs)
        return jax.nn.logsumexp(logw)

    per_chunk = jax.lax.map(chunk, jax.random.split(key, num_samples // chunk_size))
    return jax.nn.logsumexp(per_chunk) - math.log(num_samples)
