"""Flax NNX modules and model log-densities (no training loops). Imports ``estimators`` only."""

from . import binary_vae as binary_vae
from . import logistic_regression as logistic_regression
from ._vae import MLP as MLP
from ._vae import VAE as VAE
from ._vae import GaussianLatent as GaussianLatent
from ._vae import LatentFamily as LatentFamily
from ._vae import bernoulli_log_likelihood as bernoulli_log_likelihood
from ._vae import elbo as elbo
from ._vae import iwae_bound as iwae_bound
from ._vae import kl_standard_normal as kl_standard_normal
from ._vae import log_likelihood as log_likelihood
from ._vae import log_weight as log_weight
from ._vae import posterior as posterior
from ._vae import standard_normal_log_prob as standard_normal_log_prob
