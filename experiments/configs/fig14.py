"""Fig 14: BLR estimators compared at equal cost: log-likelihood evaluations per step matched.

The measure-valued estimator evaluates the cost 4 D = 124 times per sample, the others once: at
a budget of 124 evaluations per step it gets N = 1 sample and every other variant N = 124.
"""

import ml_collections

from experiments.blr.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.figures = ("fig14",)
    # Equal cost instead of equal N (a key of this config only; the runner reads it as 0 when
    # absent): each variant gets N = cost_budget / cost_evaluations(D) samples, so every variant
    # evaluates the (minibatch) log-likelihood cost_budget times per step. It must be a multiple
    # of every variant's cost_evaluations(D). 124 = 4 D, one measure-valued sample (D = 31).
    config.cost_budget = 124
    # A fixed coefficient: "optimal" would spend cv_coefficient_samples more evaluations per
    # step on the delta-method variants, which the budget does not count.
    config.cv_coefficient = "1.0"
    return config
