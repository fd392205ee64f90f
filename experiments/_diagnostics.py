"""Messages shared by the runners when a computation goes wrong."""

# What a NaN or inf in training can mean, for the runners' divergence errors. Under jit an
# invalid distribution parameter cannot raise, so estimators' distributions turn every value and
# gradient NaN instead (estimators/_distributions.py): the runner's NaN check is where it shows.
NAN_CAUSES = (
    "either the optimisation diverged (lower the learning rate, use more samples or a "
    "lower-variance estimator), or a distribution parameter became invalid (a scale, "
    "concentration or rate <= 0 or NaN, e.g. exp(log_scale) overflowing or underflowing): under "
    "jit that makes every estimate NaN instead of raising; rerun the step under "
    "jax.disable_jit() to get the error naming the parameter"
)
