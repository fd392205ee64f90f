"""REBAR/RELAX toy, t = 0.45: variance per cost of every discrete estimator against theta."""

import ml_collections

from experiments.discrete_toy.config import variance_config


def get_config() -> ml_collections.ConfigDict:
    return variance_config(
        "rebar_toy",
        r"$E_{b \sim \mathrm{Bernoulli}(\theta)}[(b - t)^2]$: variance per cost, every estimator",
        0.45,
    )
