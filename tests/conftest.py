"""Shared test settings: shape bugs raise instead of broadcasting silently.

Tests marked ``slow`` (long statistical sweeps) are skipped unless selected with ``-m slow``.

MNIST: tests that need the real files take the ``mnist_dir`` fixture (``$MNIST_DIR``; skipped
without it, a failure under ``CI=true``); tests that only need files in the MNIST format take
``small_idx_dir`` (see ``tests/_mnist.py``).
"""

from pathlib import Path

import jax
import pytest

from tests import _mnist

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow statistical sweep; run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture
def mnist_dir() -> Path:
    """The folder of the four real MNIST ``.gz`` files (``$MNIST_DIR``)."""
    return _mnist.find_mnist_dir()


@pytest.fixture
def small_idx_dir(tmp_path: Path) -> Path:
    """MNIST-format files of 300 training and 100 test random images (not the real MNIST)."""
    return _mnist.write_small_idx(tmp_path / "small_idx")
