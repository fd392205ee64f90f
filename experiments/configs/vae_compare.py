"""VAE on MNIST trained with every encoder-gradient estimator (same budget); writes a table."""

import ml_collections

from experiments.vae.config import base_config, comparison


def get_config() -> ml_collections.ConfigDict:
    config = comparison(base_config())
    config.num_epochs = 10
    config.eval_every_epochs = 1
    config.grad_var_every_epochs = 2
    config.grad_var_num_estimates = 200
    config.grad_var_checkpoint_epochs = (1, 3)
    config.ll_test_examples = 1000
    return config
