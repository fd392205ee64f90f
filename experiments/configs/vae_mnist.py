"""VAE 784-400-20/20-400-784 ReLU on dynamically binarised MNIST, pathwise (the default model)."""

import ml_collections

from experiments.vae.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    # The README's target: 30 minutes of training (stops at the first epoch end past it).
    config.num_epochs = 1000
    config.train_time_budget_s = 1800.0
    config.eval_every_epochs = 5
    config.grad_var_every_epochs = 10
    return config
