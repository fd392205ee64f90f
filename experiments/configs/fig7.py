"""Figure 7: measure-valued variance, coupled (Weibull-Weibull) or not, of d/dmu against k."""

import ml_collections

from experiments.variance.config import base_config, grids


def get_config() -> ml_collections.ConfigDict:
    config = base_config(
        "fig7",
        r"Figure 7: measure-valued estimator of $\partial/\partial\mu$ with and without "
        "Weibull–Weibull coupling",
    )
    config.estimators = ("measure_valued", "measure_valued_uncoupled")
    config.parameters = ("loc",)
    config.costs = ("quadratic", "exp_quadratic")
    config.grid = grids(*config.costs)
    config.mc_every = 4  # Monte Carlo at every 4th k of the grid
    return config
