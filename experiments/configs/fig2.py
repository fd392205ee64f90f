"""Figure 2: variance of four estimators of d/dmu, d/dsigma E_N(x;1,1)[(x - k)^2] against k."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.runner = "variance"
    config.name = "fig2"
    config.title = (
        r"Figure 2: single-sample variance, $f(x) = (x - k)^2$, $x \sim N(\mu, \sigma^2)$"
    )
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
    config.costs = ("quadratic",)
    config.grid = ml_collections.ConfigDict(
        {"quadratic": {"start": -3.0, "stop": 3.0, "num": 100, "log": False}}
    )
    config.mc_every = 2  # Monte Carlo at every 2nd k of the grid
    config.num_nodes = 512  # quadrature nodes per integration rule
    config.yscale = "log"
    return config
