"""VAE on the bundled 8x8 digits (no download), pathwise; trains in about a minute."""

import ml_collections

from experiments.vae.config import digits_config


def get_config() -> ml_collections.ConfigDict:
    config = digits_config()
    config.num_epochs = 300
    config.grad_var_every_epochs = 50
    return config
