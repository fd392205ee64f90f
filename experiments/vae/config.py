"""Defaults shared by the VAE configs (`experiments/configs/vae_*.py`); each overrides a few."""

import ml_collections

# The estimators the comparison trains by default: registry specs (`estimators.registry`); any
# other spec or importable path "pkg.mod:attr" goes in --config.estimators as well.
COMPARED = (
    "pathwise",
    "score_function",
    "score_function+moving_average",
    "score_function+loo",
    "score_function+nvil",
    "iwae",
)
# The names the runner used before the registry, still accepted (old configs and workdirs).
RENAMED = {
    "score_function_moving_average": "score_function+moving_average",
    "score_function_loo": "score_function+loo",
    "score_function_nvil": "score_function+nvil",
}


def base_config() -> ml_collections.ConfigDict:
    """The default model (784-400-20 ReLU, pathwise) on dynamically binarised MNIST."""
    config = ml_collections.ConfigDict()
    config.runner = "vae"
    config.seed = 0
    # Seeds seed, seed + 1, ..., trained as ONE program (vmapped; experiments.vae.seeds); 1 = the
    # single run, its outputs in the workdir itself.
    config.num_seeds = 1
    # Data: "digits" (bundled), "mnist", "fashion_mnist". data_dir "" = $MNIST_DIR or the cache.
    config.dataset = "mnist"
    config.data_dir = ""
    config.download = True
    config.verify_checksums = True
    config.binarization = "dynamic"  # or "static" (one fixed draw)
    config.train_examples = 0  # 0 = all
    config.test_examples = 0  # 0 = all
    # Model.
    config.hidden = (400,)
    config.latent_dim = 20
    config.activation = "relu"
    # Estimator of the encoder's gradient: a registry spec (pathwise, score_function,
    # score_function+moving_average, score_function+loo, score_function+nvil, iwae, or any
    # other composition) or an importable path "pkg.mod:attr".
    config.estimator = "pathwise"
    config.num_samples = 5  # K, for estimators that use their samples jointly (loo, iwae)
    config.ma_decay = 0.99  # the moving average's decay (moving_average, nvil)
    config.baseline_hidden = (100,)  # NVIL's b(x), the learned baseline's network
    config.baseline_learning_rate = 1e-3
    # Training.
    config.batch_size = 128
    config.learning_rate = 1e-3
    config.num_epochs = 10
    config.checkpoint_every_steps = 2000
    config.eval_every_epochs = 1
    config.grad_var_every_epochs = 5
    config.grad_var_num_estimates = 100
    config.grad_var_batch_size = 128
    config.train_time_budget_s = 0.0  # > 0: stop at the first epoch end past this many seconds
    config.progress = True
    config.figures = True  # draw the figures at the end (plot(workdir) can always redraw them)
    # Evaluation: importance-sampled log p(x) with k samples, chunked.
    config.ll_num_samples = 5000
    config.ll_chunk_size = 500
    config.ll_test_examples = 0  # 0 = the whole test set
    return config


def digits_config() -> ml_collections.ConfigDict:
    """The base config on scikit-learn's bundled 8x8 digits (no download), with a smaller model."""
    config = base_config()
    config.dataset = "digits"
    config.hidden = (128,)
    config.latent_dim = 8
    config.batch_size = 100
    config.eval_every_epochs = 10
    config.checkpoint_every_steps = 1000
    config.ll_chunk_size = 1000
    return config


def comparison(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` turned into a ``vae.compare`` config that trains every estimator in turn."""
    config.runner = "vae.compare"
    del config["estimator"]
    config.estimators = COMPARED
    # The variance protocol: every estimator at the SAME parameters, the reference estimator's
    # run at the end of these epochs and of the last (an epoch past num_epochs means the last),
    # on the same batch (grad_var_batch_size) with the same grad_var_num_estimates keys.
    config.grad_var_reference = "pathwise"
    config.grad_var_checkpoint_epochs = (1, 3)
    # Stateful baselines (moving average, NVIL) are first warmed up for this many steps at the
    # checkpoint's fixed parameters, on random training batches drawn with the same keys.
    config.grad_var_warmup_steps = 500
    return config
