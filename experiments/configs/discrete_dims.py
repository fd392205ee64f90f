"""REBAR/RELAX toy in D dimensions: variance per cost of coordinate 1's gradient against D."""

import ml_collections

from experiments.discrete_toy.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config(
        "dims",
        "discrete_dims",
        r"$f(b) = \sum_{d \leq D} (b_d - t)^2$: variance per cost of $\partial/\partial\alpha_1$",
        0.45,
    )
    config.dims = (1, 2, 5, 10, 20, 50, 100, 200)
    config.theta = 0.3
    config.num_estimates = 10_000
    config.adapt_steps = 300
    return config
