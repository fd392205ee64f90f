"""RELAX's Figure 1 beside ours: theta by Adam on E[(b - 0.499)^2] for every discrete estimator."""

import ml_collections

from experiments.discrete_toy.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config(
        "trajectories",
        "relax_fig1",
        r"$\min_\theta E_{b \sim \mathrm{Bernoulli}(\theta)}[(b - 0.499)^2]$, every estimator",
        0.499,
    )
    config.steps = 10_000  # as the t = 0.499 figure of the authors (toy_losses_10000_0_499)
    config.num_seeds = 5
    config.learning_rate = 0.01  # Adam on the logit, as the authors' rebar_toy.py
    config.theta0 = 0.5  # logit 0
    config.record_every = 50
    config.variance_estimates = 500
    return config
