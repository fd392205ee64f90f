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
    # "constant", or "burda": Burda et al.'s (2016) stages, 3^i epochs at learning_rate *
    # 10^(-i/7) for i = 0, 1, ... (the last stage's rate holds past its end).
    config.lr_schedule = "constant"
    config.adam_eps = 1e-8  # Adam's epsilon (Burda et al.: 1e-4)
    # True: an estimator of one sample (pathwise, score function) averages num_samples
    # independent estimates per example (Burda et al.'s "VAE, k samples"); False: one sample.
    config.average_samples = False
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


BURDA_STAGES = 8
"""Burda et al.'s schedule has stages i = 0, ..., 7: 3^i epochs each, 3,280 epochs in all."""


def burda_config(objective: str, k: int) -> ml_collections.ConfigDict:
    """Burda et al. (2016), Table 1, one stochastic layer: ``objective`` ``"vae"`` (the ELBO,
    ``k`` pathwise samples averaged per example) or ``"iwae"`` (the ``k``-sample importance
    weighted bound) on dynamically binarised MNIST (all 60,000 training images, batch 20); the
    784-200-200-50 tanh encoder and its mirror decoder; Adam (beta 0.9, 0.999, eps 1e-4) over
    the 3,280 epochs of their schedule; test log p(x) with k = 5000 samples on all 10,000 test
    images. Their test NLLs: VAE 86.76 / 86.47 / 86.35, IWAE 86.76 / 85.54 / 84.78 at k = 1 / 5
    / 50. Differences: the initialisation is Flax's (LeCun normal) rather than Glorot's, and the
    VAE's KL term is in closed form (the same objective; they sampled it)."""
    if objective not in ("vae", "iwae"):
        raise ValueError(f"objective must be 'vae' or 'iwae'; got {objective!r}")
    config = base_config()
    config.hidden = (200, 200)
    config.latent_dim = 50
    config.activation = "tanh"
    config.estimator = "pathwise" if objective == "vae" else "iwae"
    config.num_samples = k
    config.average_samples = objective == "vae"
    config.batch_size = 20
    config.learning_rate = 1e-3
    config.lr_schedule = "burda"
    config.adam_eps = 1e-4
    config.num_epochs = sum(3**i for i in range(BURDA_STAGES))
    config.checkpoint_every_steps = 30000  # every 10 epochs of 3,000 steps
    config.eval_every_epochs = 10
    config.grad_var_every_epochs = 100
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
