"""Figure 3: variance of four estimators for f = exp(-k x^2) and f = cos(k x) against k."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.runner = "variance"
    config.name = "fig3"
    config.title = r"Figure 3: single-sample variance, $x \sim N(\mu, \sigma^2)$"
    config.seed = 0
    config.loc = 1.0
    config.scale = 1.0
    config.num_samples = 100_000
    config.estimators = (
        "score_function",
        "score_function_optimal_baseline",
        "pathwise",
        "measure_valued_coupled",
    )
    config.parameters = ("loc", "scale")
    config.costs = ("exp_quadratic", "cosine")
    config.grid = ml_collections.ConfigDict(
        {
            "exp_quadratic": {"start": 0.1, "stop": 10.0, "num": 100, "log": True},
            "cosine": {"start": 0.5, "stop": 5.0, "num": 100, "log": True},
        }
    )
    config.mc_every = 4  # Monte Carlo at every 4th k of the grid
    config.num_nodes = 512  # quadrature nodes per integration rule
    config.yscale = "log"
    return config
