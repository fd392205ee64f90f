"""MNIST for the tests: the real files from ``$MNIST_DIR``, or small IDX files written on the spot.

A test that needs the real MNIST is skipped, with the reason, when ``$MNIST_DIR`` does not hold
it, except under CI (``CI=true``, as ``.ci/run`` sets), where that is a failure: CI must run
them. A test that only needs files in the MNIST format uses :func:`write_small_idx`, so it runs
everywhere (its images are random pixels: read them with ``verify_checksums=false``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")  # fmt: skip


def find_mnist_dir() -> Path:
    """The folder of the four real MNIST ``.gz`` files named by ``$MNIST_DIR``.

    Otherwise ``pytest.skip`` with the reason, or ``pytest.fail`` if ``$CI`` is ``true``.
    """
    folder = os.environ.get("MNIST_DIR")
    missing = [n for n in NAMES if not folder or not (Path(folder) / f"{n}.gz").is_file()]
    if not missing:
        return Path(str(folder))
    where = f"MNIST_DIR={folder} lacks {missing[0]}.gz" if folder else "MNIST_DIR is not set"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the real MNIST is missing ({where}); CI must provide it")
    pytest.skip(f"needs the real MNIST: {where} (set MNIST_DIR to the folder of the .gz files)")


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) as an IDX file: bytes 0, 0, 0x08, ndim; big-endian sizes; the data.

    Gzipped if ``path`` ends in ``.gz``.
    """
    if array.dtype != np.uint8:
        raise TypeError(f"IDX unsigned-byte data must be uint8; got {array.dtype}")
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)


def write_small_idx(folder: Path, *, num_train: int = 300, num_test: int = 100) -> Path:
    """The four MNIST files with random 28x28 images (fixed seed) in ``folder``; returns it.

    The training images are gzipped and the other files not, so both ways are read.
    """
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, (n,), dtype=np.uint8)
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte{'.gz' if prefix == 'train' else ''}", images
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder
