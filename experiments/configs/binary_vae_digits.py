"""The binary-VAE benchmark at a tiny size on the bundled 8x8 digits (no download): every
estimator, both models, 3 seeds, a few epochs. For tests, CI and a first look."""

import ml_collections

from experiments.binary_vae.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.dataset = "digits"
    config.validation_examples = 300
    config.latent_dim = 16
    config.num_seeds = 3
    config.num_steps = 300  # 24 steps per epoch of the 1200 training images
    config.learning_rate = 1e-3
    config.eval_num_samples = 20
    config.train_elbo_examples = 0
    config.grad_var_num_estimates = 20
    config.grad_var_warmup_steps = 20
    return config
