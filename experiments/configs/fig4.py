"""Figure 4: score-function variance against dimension D, N(0.5, s^2 I_D), f = 100 and sum x_d."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.runner = "variance"
    config.name = "fig4"
    config.title = (
        r"Figure 4: score-function variance against dimension, "
        r"$x \sim N(0.5 \cdot 1, \sigma^2 I_D)$"
    )
    config.seed = 0
    config.loc = 0.5
    config.scale = 1.0
    config.num_samples = 100_000
    config.estimators = ("score_function",)
    config.parameters = ("loc", "scale")
    config.costs = ("constant", "linear")
    config.dims = (1, 10, 100, 1000)  # one compile per D; the exact curve is dense
    config.num_nodes = 512  # quadrature nodes per integration rule
    config.yscale = "log"
    return config
