"""Fig 8: BLR per-feature variance of the log-scale gradient, score function against pathwise."""

import ml_collections

from experiments.blr.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.figures = ("fig8",)
    config.variants = ("score_function", "pathwise")
    return config
