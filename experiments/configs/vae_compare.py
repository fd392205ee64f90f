"""VAE on MNIST trained with every encoder-gradient estimator (same budget); writes a table."""

import ml_collections

from experiments._vae_config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.runner = "vae_compare"
    del config["estimator"]
    config.estimators = (
        "pathwise",
        "score_function",
        "score_function_moving_average",
        "score_function_loo",
        "score_function_nvil",
        "iwae",
    )
    config.num_epochs = 10
    config.eval_every_epochs = 1
    config.grad_var_every_epochs = 2
    config.ll_test_examples = 1000
    return config
