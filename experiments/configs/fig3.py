"""Figure 3: variance of four estimators for f = exp(-k x^2) and f = cos(k x) against k."""

import ml_collections

from experiments.variance.config import base_config, grids


def get_config() -> ml_collections.ConfigDict:
    config = base_config("fig3", r"Figure 3: single-sample variance, $x \sim N(\mu, \sigma^2)$")
    config.estimators = (
        "score_function",
        "score_function+optimal",
        "pathwise",
        "measure_valued",
    )
    config.parameters = ("loc", "scale")
    config.costs = ("exp_quadratic", "cosine")
    config.grid = grids(*config.costs)
    config.mc_every = 4  # Monte Carlo at every 4th k of the grid
    return config
