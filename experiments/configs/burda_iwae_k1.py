"""Burda et al. (2016), Table 1, one stochastic layer: the IWAE at k = 1 (3,280 epochs)."""

import ml_collections

from experiments.vae.config import burda_config


def get_config() -> ml_collections.ConfigDict:
    return burda_config("iwae", 1)
