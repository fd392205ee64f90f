"""The binary-VAE benchmark on dynamically binarised Fashion-MNIST (its IDX files downloaded
and verified like MNIST's, or read from ``$FASHION_MNIST_DIR``), sized like ``binary_vae_mnist``
for a 2-core CPU; ``--config.num_steps=1000000 --config.eval_examples=0`` is the paper's length."""

import ml_collections

from experiments.binary_vae.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.dataset = "fashion_mnist"
    config.num_steps = 2_000
    config.eval_examples = 1_000
    return config
