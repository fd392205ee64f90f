"""Figure 2: variance of four estimators of d/dmu, d/dsigma E_N(x;1,1)[(x - k)^2] against k."""

import ml_collections

from experiments.variance.config import base_config, grids


def get_config() -> ml_collections.ConfigDict:
    config = base_config(
        "fig2", r"Figure 2: single-sample variance, $f(x) = (x - k)^2$, $x \sim N(\mu, \sigma^2)$"
    )
    config.estimators = (
        "score_function",
        "score_function+optimal",
        "pathwise",
        "measure_valued",
    )
    config.parameters = ("loc", "scale")
    config.costs = ("quadratic",)
    config.grid = grids(*config.costs)
    config.mc_every = 2  # Monte Carlo at every 2nd k of the grid
    return config
