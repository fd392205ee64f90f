"""Fig 13: BLR gradient variance over training of the estimators without control variates."""

import ml_collections

from experiments.blr.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.figures = ("fig13",)
    config.variants = ("score_function", "pathwise", "measure_valued")
    return config
