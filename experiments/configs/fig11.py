"""Fig 11: BLR final ELBO against the number of samples N, all six estimator variants."""

import ml_collections

from experiments.blr.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.figures = ("fig11",)
    config.eval_every = 5000  # only the final evaluation
    config.variance_samples = 0  # no variance evaluation
    # The estimators are compared at a fixed number of samples: no extra samples for "optimal".
    config.cv_coefficient = "1.0"
    config.sweep = "num_samples"
    config.sweep_values = (1, 5, 10, 50, 100)
    return config
