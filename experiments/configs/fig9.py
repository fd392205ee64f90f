"""Fig 9: BLR ELBO, accuracy and gradient variance over training, all six estimator variants."""

import ml_collections

from experiments.blr.config import base_config


def get_config() -> ml_collections.ConfigDict:
    return base_config()
