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
    # The estimator makes 4 D evaluations of this O(D) cost per sample: at D = 100 that is
    # 4e9 per 1e5 samples (about 15 s of CPU), so the default stops at 30 to keep all six
    # figures within a minute; --config.dims='(1, 10, 100)' goes further. One compile per D.
    config.dims = (1, 3, 10, 30)
    return config
