"""The binary-VAE benchmark on dynamically binarised MNIST, sized for a 2-core CPU.

Every estimator of ``experiments.binary_vae.config.ESTIMATORS``, the linear and the nonlinear
model, 5 seeds vmapped, the DisARM setup (Adam 1e-4, batch 50, 200 latents) for 2,000 steps
(2 epochs of the 50,000 training images) instead of the paper's 1e6 (``binary_vae_mnist_paper``),
so that the whole table (15 estimators x 2 models x 5 seeds) fits well within 90 minutes on the
2-core machine (measured: 39 minutes, a third of it RODEO's control network). The validation
and test bounds are the 100-sample bound of the first 1,000 validation and test images. Train
longer with ``--resume --config.num_steps=N``: the finished pairs go on from their checkpoints.
"""

import ml_collections

from experiments.binary_vae.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.num_steps = 2_000
    config.eval_examples = 1_000
    config.grad_var_epochs = (0, 1, -1)
    return config
