"""Fig 11: BLR final ELBO against the number of samples N, all six estimator variants."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.runner = "blr"
    config.figures = ("fig11",)
    config.variants = (
        "score_function",
        "score_function_moving_average",
        "score_function_delta",
        "pathwise",
        "pathwise_delta",
        "measure_valued",
    )
    config.num_seeds = 5
    config.seed = 0
    config.steps = 5000
    config.learning_rate = 1e-3  # plain SGD, cosine decay to 0 over `steps`
    config.batch_size = 32
    config.num_samples = 50  # N, samples per gradient estimate
    config.eval_every = 5000  # only the final evaluation
    config.eval_samples = 1000  # posterior samples for the ELBO and accuracy (full data)
    config.variance_samples = 0  # no variance evaluation
    # The measure-valued estimator costs 4 D = 124 log-likelihood evaluations per sample.
    config.measure_valued_variance_samples = 100
    config.moving_average_decay = 0.99
    config.cv_coefficient = 1.0  # delta-method control variate coefficient
    config.allow_divergence = True  # record diverged seeds as NaN instead of failing
    config.sweep = "num_samples"
    config.sweep_values = (1, 5, 10, 50, 100)
    return config
