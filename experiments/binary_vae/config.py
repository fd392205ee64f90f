"""Defaults of the binary-VAE benchmark (``experiments/configs/binary_vae_*.py`` override a few).

The DisARM setup (Dong, Mnih & Tucker 2020, their public code): 200 Bernoulli latents,
dynamically binarised MNIST (train: the first 50,000 training images, validation: the last
10,000, test: the test set), the linear and the nonlinear model (:mod:`models.binary_vae`),
Adam(1e-4) on the encoder and decoder, SGD(1e-2) on the prior's logits, batch 50.
"""

import ml_collections

# Every discrete estimator of the registry at matched budgets of cost evaluations per example
# ("spec@K": K samples per example; the table prints K * cost_evaluations):
#   1 evaluation: REINFORCE with the optimal per-coordinate baseline;
#   2 evaluations: REINFORCE-LOO with 2 samples, ARM, DisARM;
#   3 evaluations: REBAR, RELAX, RODEO with 3, double control variates with 3, REINFORCE-LOO
#   with 3;
#   4 (multi-sample): ARMS (the multi-sample DisARM) with its two copulas, and VIMCO (which
#   trains the 4-sample bound);
#   1 (biased relaxations): Concrete at temperature 0.5, its straight-through form,
#   straight-through.
ESTIMATORS = (
    "disarm",
    "arm",
    "score_function+loo@2",
    "rebar",
    "relax",
    "rodeo@3",
    "double_cv@3",
    "score_function+loo@3",
    "score_function+optimal",
    "arms@4",
    "arms_systematic@4",
    "vimco@4",
    "gumbel_softmax",
    "gumbel_softmax_st",
    "straight_through",
)


def base_config() -> ml_collections.ConfigDict:
    """The paper's setup and length (1e6 steps: a GPU config)."""
    config = ml_collections.ConfigDict()
    config.runner = "binary_vae"
    config.seed = 0  # seed s of num_seeds is seed + s
    config.num_seeds = 5  # trained together, vmapped in one program
    # Data: "mnist", "fashion_mnist" (IDX files, downloaded like the VAE's) or "digits".
    config.dataset = "mnist"
    config.data_dir = ""
    config.download = True
    config.verify_checksums = True
    config.validation_examples = 10_000  # the LAST training images; the rest train
    config.train_examples = 0  # 0 = all the others
    # Models: "linear" and/or "nonlinear" (models.binary_vae.ARCHITECTURES).
    config.models = ("linear", "nonlinear")
    config.latent_dim = 200
    # Estimators: registry specs or importable paths "pkg.mod:attr", each "spec" or "spec@K".
    config.estimators = ESTIMATORS
    # Training.
    config.batch_size = 50
    config.learning_rate = 1e-4  # Adam, encoder and decoder
    config.prior_learning_rate = 1e-2  # SGD, the prior's logits
    config.num_steps = 1_000_000
    # Evaluation at the end: one draw of the eval_num_samples-sample bound of each of the first
    # eval_examples validation and test images (0 = all), binarised once with a fixed key.
    config.eval_num_samples = 100
    config.eval_examples = 0
    # Every epoch: the 1-sample ELBO of the first train_elbo_examples training images (0 = all,
    # binarised once) and the encoder-gradient variance at each run's own parameters.
    config.train_elbo_examples = 10_000
    config.grad_var_run_estimates = 20
    # The shared-parameter protocol: every estimator's encoder-gradient variance at the
    # parameters of grad_var_reference's first seed after these epochs (0 = the initial
    # parameters, -1 = the last epoch), on the same batch and keys, adaptive controls first
    # warmed up for grad_var_warmup_steps steps at those parameters.
    config.grad_var_reference = "disarm"
    config.grad_var_epochs = (0, 1, -1)
    config.grad_var_num_estimates = 100
    config.grad_var_batch_size = 50
    config.grad_var_warmup_steps = 100
    config.progress = True
    config.figures = True
    return config
