"""Demo: pathwise vs score-function gradient variance of E[sum(x^2)] under a diagonal Gaussian."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.runner = "demo"
    config.seed = 0
    config.estimators = ("pathwise", "score_function")  # registry specs or "pkg.mod:attr"
    config.dims = (1, 10, 100)
    config.loc = 1.0
    config.scale = 1.0
    config.num_samples = 100_000
    return config
