"""Figure 5: coupled measure-valued variance against D, N(10, s^2 I_D), f = sum x_d, sum x_d^4."""

import ml_collections

from experiments.variance.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config(
        "fig5",
        r"Figure 5: coupled measure-valued variance against dimension, "
        r"$x \sim N(10 \cdot 1, \sigma^2 I_D)$",
    )
    config.loc = 10.0
    config.estimators = ("measure_valued",)
    config.parameters = ("loc", "scale")
    config.costs = ("linear", "quartic")
    # The estimator makes 4 D evaluations of the cost per sample, each with one coordinate
    # replaced: the runner updates the separable cost's sum in O(1) from D = 16
    # (`monte_carlo.COORDINATE_COSTS_FROM_DIM`), so D = 100 takes about 1.3 s of 2-core CPU
    # for 1e5 samples (7.6 s evaluating each in O(D)); --config.dims='(1, 10, 100)' goes
    # further. One compile per D.
    config.dims = (1, 3, 10, 30)
    return config
