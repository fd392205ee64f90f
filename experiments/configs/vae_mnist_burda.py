"""VAE with Burda et al.'s (2016) architecture: two 200-unit tanh layers, 50 latents, MNIST."""

import ml_collections

from experiments.vae.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.hidden = (200, 200)
    config.latent_dim = 50
    config.activation = "tanh"
    config.batch_size = 100
    config.num_epochs = 100
    return config
