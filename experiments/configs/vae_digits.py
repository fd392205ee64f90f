"""VAE on the bundled 8x8 digits (no download), pathwise; trains in about a minute."""

import ml_collections

from experiments._vae_config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.dataset = "digits"
    config.hidden = (128,)
    config.latent_dim = 8
    config.batch_size = 100
    config.num_epochs = 300
    config.eval_every_epochs = 10
    config.grad_var_every_epochs = 50
    config.checkpoint_every_steps = 1000
    config.ll_chunk_size = 1000
    return config
