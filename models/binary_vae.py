r"""The binary-latent VAE of the discrete-estimator benchmark, in Flax NNX (no training loop).

The model of Dong, Mnih & Tucker (2020, DisARM; the setup of their public code) and of the
REBAR/RELAX/ARM papers before it: ``L`` Bernoulli latents :math:`b \in \{0,1\}^L`,

- prior :math:`p(b) = \prod_l \mathrm{Bernoulli}(b_l; \sigma(\pi_l))` with learned logits
  :math:`\pi` (initialised at 0);
- decoder :math:`p(x|b) = \prod_d \mathrm{Bernoulli}(x_d; \sigma(\mathrm{dec}(b)_d))`, its
  output bias initialised at the logit of the training images' mean (clipped to
  ``[1e-3, 1 - 1e-3]``), so the untrained model already predicts the mean image;
- encoder :math:`q(b|x) = \prod_l \mathrm{Bernoulli}(b_l; \sigma(\mathrm{enc}(x - \bar x)_l))`,
  fed the centred image (:math:`\bar x`, the training mean, a fixed non-trained variable).

``linear``: ``hidden = ()`` (encoder one ``Dense(L)``, decoder one ``Dense(D)``); ``nonlinear``:
``hidden = (200, 200)`` with LeakyReLU(0.3) between layers and linear last layers (encoder
``D-200-200-L``, decoder ``L-200-200-D``). Everything below is for ONE example ``x: [D]``
(vmap over a batch); the objective's integrand is

.. math:: f(b) = \log p(x|b) + \log p(b) - \log q(b|x), \qquad
          \mathrm{ELBO}(x) = E_{q(b|x)}[f(b)],

the full single-sample integrand with no analytic KL (as the DisARM setup trains it), and the
``K``-sample importance-weighted bound :math:`E[\log \frac1K \sum_k e^{f(b_k)}]` (Burda et al.
2016) evaluates the models (:func:`iwae_bound`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

import estimators

from ._vae import MLP, bernoulli_log_likelihood

Array = jax.Array

ARCHITECTURES: dict[str, tuple[int, ...]] = {"linear": (), "nonlinear": (200, 200)}
MEAN_CLIP = 1e-3


class FixedArray(nnx.Variable):
    """A non-trained array of the model (the training mean the encoder subtracts)."""


class BinaryVAE(nnx.Module):
    """Encoder ``D -> hidden... -> L`` logits of ``q(b|x)``, decoder ``L -> hidden[::-1]... -> D``
    logits of ``p(x|b)``, learned prior logits ``[L]``.

    Args:
      data_mean: ``[D]`` mean training image in ``[0, 1]``: the encoder's centring and the
        decoder's initial output bias (its logit, clipped to ``[1e-3, 1 - 1e-3]``).
      latent_dim: ``L``.
      hidden: sizes of the deterministic hidden layers of the encoder (the decoder mirrors
        them); ``()`` is the linear model.
      activation: between hidden layers (``"leaky_relu"``: LeakyReLU with slope 0.3).
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(
        self,
        data_mean: Array,
        latent_dim: int,
        hidden: Sequence[int] = (),
        activation: str = "leaky_relu",
        *,
        rngs: nnx.Rngs,
    ):
        data_mean = jnp.asarray(data_mean, jnp.float32)
        if data_mean.ndim != 1 or latent_dim < 1:
            raise ValueError(
                f"BinaryVAE needs data_mean [D] and latent_dim >= 1; got shape "
                f"{data_mean.shape} and {latent_dim}"
            )
        hidden = tuple(hidden)
        data_dim = int(data_mean.shape[0])
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.encoder = MLP((data_dim, *hidden, latent_dim), activation, rngs=rngs)
        self.decoder = MLP((latent_dim, *hidden[::-1], data_dim), activation, rngs=rngs)
        mean = jnp.clip(data_mean, MEAN_CLIP, 1.0 - MEAN_CLIP)
        self.decoder.layers[-1].bias[...] = jnp.log(mean) - jnp.log1p(-mean)
        self.prior_logits = nnx.Param(jnp.zeros((latent_dim,), jnp.float32))
        self.data_mean = FixedArray(data_mean)

    def encoder_logits(self, x: Array) -> Array:
        """Logits ``[..., L]`` of ``q(b|x)`` for ``x: [..., D]`` (the centred image encoded)."""
        return self.encoder(x - jnp.broadcast_to(self.data_mean[...], jnp.shape(x)))

    def decode(self, b: Array) -> Array:
        """Bernoulli logits ``[..., D]`` of ``p(x|b)`` for ``b: [..., L]`` (any values in
        ``[0, 1]``: the relaxed estimators evaluate the decoder between the corners)."""
        return self.decoder(b)

    def log_prior(self, b: Array) -> Array:
        """:math:`\\log p(b)`: ``[..., L] -> [...]`` (also at relaxed ``b`` in ``[0, 1]^L``)."""
        return estimators.Bernoulli(self.prior_logits[...]).log_prob(b)


def posterior(enc: dict[str, Array]) -> estimators.Bernoulli:
    """``q(b|x)`` from ``{"logits": [..., L]}`` (the ``dist_builder`` the estimators get)."""
    return estimators.Bernoulli(enc["logits"])


def elbo_integrand(model: BinaryVAE, x: Array, logits: Array, b: Array) -> Array:
    """:math:`f(b) = \\log p(x|b) + \\log p(b) - \\log q(b|x)` for ONE example: ``x: [D]``, the
    encoder's ``logits: [L]`` of ``q(b|x)``, ``b: [L]`` -> ``[]``. Its mean under ``q`` is the
    ELBO; it is defined (and differentiable) for ``b`` in ``[0, 1]^L`` too."""
    log_q = estimators.Bernoulli(logits).log_prob(b)
    return bernoulli_log_likelihood(model.decode(b), x) + model.log_prior(b) - log_q


def iwae_bound(model: BinaryVAE, x: Array, key: Array, *, num_samples: int) -> Array:
    """One Monte Carlo draw of the ``K``-sample bound :math:`\\log \\frac1K \\sum_k
    e^{f(b_k)}`, :math:`b_k \\sim q(b|x)` i.i.d.: ``x: [D] -> []`` (``K = 1``: the ELBO's
    single-sample estimate). Its expectation is below :math:`\\log p(x)` and rises to it with
    ``K`` (Burda et al. 2016)."""
    logits = model.encoder_logits(x)
    b = posterior({"logits": logits}).sample(key, (num_samples,))
    f = jax.vmap(lambda s: elbo_integrand(model, x, logits, s))(b)
    return jax.scipy.special.logsumexp(f) - math.log(num_samples)
