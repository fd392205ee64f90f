"""VAE on the 8x8 digits trained with every encoder-gradient estimator; a quick table."""

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
    config.dataset = "digits"
    config.hidden = (128,)
    config.latent_dim = 8
    config.batch_size = 100
    config.num_epochs = 150
    config.eval_every_epochs = 10
    config.grad_var_every_epochs = 15
    config.checkpoint_every_steps = 1000
    config.ll_chunk_size = 1000
    return config
