"""Figure 6: measure-valued variance, coupled (Maxwell-Gaussian) or not, of d/dsigma against k."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.runner = "variance"
    config.name = "fig6"
    config.title = (
        r"Figure 6: measure-valued estimator of $\partial/\partial\sigma$ with and without "
        "Maxwell–Gaussian coupling"
    )
    config.seed = 0
    config.loc = 1.0
    config.scale = 1.0
    config.num_samples = 100_000
    config.estimators = ("measure_valued_coupled", "measure_valued_uncoupled")
    config.parameters = ("scale",)
    config.costs = ("quadratic", "exp_quadratic")
    config.grid = ml_collections.ConfigDict(
        {
            "quadratic": {"start": -3.0, "stop": 3.0, "num": 100, "log": False},
            "exp_quadratic": {"start": 0.1, "stop": 10.0, "num": 100, "log": True},
        }
    )
    config.mc_every = 4  # Monte Carlo at every 4th k of the grid
    config.num_nodes = 512  # quadrature nodes per integration rule
    config.yscale = "log"
    return config
