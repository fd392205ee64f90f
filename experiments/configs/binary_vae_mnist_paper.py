"""The binary-VAE benchmark at the DisARM paper's length: 1e6 steps of batch 50 on dynamically
binarised MNIST, every estimator, both models, 5 seeds, the full validation and test sets.
A GPU config: on the 2-core CPU it would take weeks (see the README for the measured step
times)."""

import ml_collections

from experiments.binary_vae.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.num_steps = 1_000_000
    config.train_elbo_examples = 0
    config.grad_var_epochs = (0, 1, 10, 100, -1)
    return config
