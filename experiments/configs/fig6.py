"""Figure 6: measure-valued variance, coupled (Maxwell-Gaussian) or not, of d/dsigma against k."""

import ml_collections

from experiments.variance.config import base_config, grids


def get_config() -> ml_collections.ConfigDict:
    config = base_config(
        "fig6",
        r"Figure 6: measure-valued estimator of $\partial/\partial\sigma$ with and without "
        "Maxwell–Gaussian coupling",
    )
    config.estimators = ("measure_valued", "measure_valued_uncoupled")
    config.parameters = ("scale",)
    config.costs = ("quadratic", "exp_quadratic")
    config.grid = grids(*config.costs)
    config.mc_every = 4  # Monte Carlo at every 4th k of the grid
    return config
