"""Fig 10: Fig 9 at N = 5 samples per gradient estimate, all six estimator variants."""

import ml_collections

from experiments.blr.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.figures = ("fig10",)
    config.num_samples = 5
    return config
