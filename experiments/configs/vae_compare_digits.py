"""VAE on the 8x8 digits trained with every encoder-gradient estimator; a quick table."""

import ml_collections

from experiments.vae.config import comparison, digits_config


def get_config() -> ml_collections.ConfigDict:
    config = comparison(digits_config())
    config.num_epochs = 150
    config.grad_var_every_epochs = 15
    config.grad_var_checkpoint_epochs = (1, 15)
    return config
