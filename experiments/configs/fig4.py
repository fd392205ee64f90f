"""Figure 4: score-function variance against dimension D, N(0.5, s^2 I_D), f = 100 and sum x_d."""

import ml_collections

from experiments.variance.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config(
        "fig4",
        r"Figure 4: score-function variance against dimension, "
        r"$x \sim N(0.5 \cdot 1, \sigma^2 I_D)$",
    )
    config.loc = 0.5
    config.estimators = ("score_function",)
    config.parameters = ("loc", "scale")
    config.costs = ("constant", "linear")
    config.dims = (1, 10, 100, 1000)  # one compile per D; the exact curve is dense
    return config
