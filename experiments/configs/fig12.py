"""Fig 12: BLR final ELBO against the minibatch size, all six estimator variants."""

import ml_collections

from experiments.blr.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.figures = ("fig12",)
    config.eval_every = 5000  # only the final evaluation
    config.variance_samples = 0  # no variance evaluation
    # The estimators are compared at a fixed number of samples: no extra samples for "optimal".
    config.cv_coefficient = "1.0"
    config.sweep = "batch_size"
    config.sweep_values = (8, 16, 32, 64, 128, 256)
    return config
