"""Data sets for the VAE: MNIST and Fashion-MNIST from the standard IDX files, and the 8x8 digits.

MNIST files are found, in this order, in ``data_dir`` (the config's), the folder named by the
``MNIST_DIR`` environment variable (``FASHION_MNIST_DIR`` for Fashion-MNIST), or the user cache
(``$XDG_CACHE_HOME/mcgrad/<dataset>``, by default ``~/.cache/mcgrad/<dataset>``). Only the cache
is ever downloaded into, and only when a file is absent from every place: the download goes to
a temporary file, is verified, and only then renamed into place, so a partial or corrupt
download never stays behind.

Every MNIST file is checked against the sha256 of its *uncompressed* bytes (the values public
MNIST loaders pin), whether it is stored gzipped or not. For Fashion-MNIST only the sha256 of
the published ``.gz`` archives is known here (the values that tensorflow-datasets and other
public loaders pin, which agree; this machine has no copy to check them against, and no
sha256 of the uncompressed bytes is pinned anywhere we could find), so Fashion-MNIST files must
be the ``.gz`` archives, or checking must be switched off explicitly with ``verify=False``.

scikit-learn's bundled 8x8 digits need no download. Images are returned as float32 in [0, 1],
flattened: ``[num_examples, height * width]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

DATASETS = ("digits", "mnist", "fashion_mnist")


class DataError(ValueError):
    """A data set that cannot be found, downloaded or verified."""


@dataclasses.dataclass(frozen=True)
class _IdxFile:
    name: str  # uncompressed file name
    sha256_raw: str | None  # sha256 of the uncompressed bytes
    sha256_gz: str | None = None  # sha256 of the published .gz archive


_FILES = {
    "mnist": {
        "train_images": _IdxFile(
            "train-images-idx3-ubyte",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        "train_labels": _IdxFile(
            "train-labels-idx1-ubyte",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        "test_images": _IdxFile(
            "t10k-images-idx3-ubyte",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        "test_labels": _IdxFile(
            "t10k-labels-idx1-ubyte",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    },
    "fashion_mnist": {
        "train_images": _IdxFile(
            "train-images-idx3-ubyte",
            None,
            "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        ),
        "train_labels": _IdxFile(
            "train-labels-idx1-ubyte",
            None,
            "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        ),
        "test_images": _IdxFile(
            "t10k-images-idx3-ubyte",
            None,
            "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        ),
        "test_labels": _IdxFile(
            "t10k-labels-idx1-ubyte",
            None,
            "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
        ),
    },
}

MIRRORS = {
    "mnist": (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

_ENV = {"mnist": "MNIST_DIR", "fashion_mnist": "FASHION_MNIST_DIR"}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test images, float32 in [0, 1], flattened.

    Attributes:
      name: data set name.
      train: ``[num_train, height * width]``.
      test: ``[num_test, height * width]``.
      image_shape: ``(height, width)``.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    image_shape: tuple[int, int]


def _check_dataset(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def cache_dir(dataset: str = "mnist") -> Path:
    """``$XDG_CACHE_HOME/mcgrad/<dataset>``, by default ``~/.cache/mcgrad/<dataset>``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mcgrad" / dataset


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _candidates(folder: Path, spec: _IdxFile) -> list[Path]:
    return [p for p in (folder / f"{spec.name}.gz", folder / spec.name) if p.is_file()]


def _read_verified(path: Path, spec: _IdxFile, *, verify: bool, gz: bool | None = None) -> bytes:
    """The uncompressed bytes of ``path``, checked against the known sha256.

    ``gz`` says whether the file is gzipped; by default, whether its name ends in ``.gz``.
    """
    raw_file = path.read_bytes()
    gz = path.suffix == ".gz" if gz is None else gz
    if verify and gz and spec.sha256_raw is None:
        if spec.sha256_gz is None:  # pragma: no cover - every file has one of the two
            raise DataError(f"{path}: no checksum known; pass verify=False to read it unchecked")
        got = _sha256(raw_file)
        if got != spec.sha256_gz:
            raise DataError(
                f"checksum mismatch for {path}: sha256 of the .gz archive is {got}, "
                f"expected {spec.sha256_gz}; the file is corrupt or not the published one"
            )
    try:
        data = gzip.decompress(raw_file) if gz else raw_file
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a valid gzip file ({e}); the file is corrupt") from None
    if verify and spec.sha256_raw is not None:
        got = _sha256(data)
        if got != spec.sha256_raw:
            raise DataError(
                f"checksum mismatch for {path}: sha256 of the uncompressed bytes is {got}, "
                f"expected {spec.sha256_raw}; the file is corrupt or not the standard one"
            )
    if verify and not gz and spec.sha256_raw is None:
        raise DataError(
            f"{path}: only the sha256 of the published .gz archive is known for this data set, "
            "so an uncompressed copy cannot be verified; use the .gz file, or pass verify=False "
            "(config verify_checksums=False) to read it unchecked"
        )
    return data


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (unsigned-byte data): returns a uint8 array of the stored shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DataError(f"{source}: IDX data type {data[2]:#x} unsupported (only unsigned byte)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape)) if shape else 1
    if len(data) != header + size:
        raise DataError(
            f"{source}: IDX header announces {size} bytes of data but the file has "
            f"{len(data) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _download(dataset: str, spec: _IdxFile, folder: Path) -> Path:
    """Download ``<name>.gz`` into ``folder``: temp file, verify, then rename. Returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{spec.name}.gz"
    errors = []
    for mirror in MIRRORS[dataset]:
        url = f"{mirror}{spec.name}.gz"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}.gz.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                umask = os.umask(0o022)
                os.umask(umask)
                os.fchmod(out.fileno(), 0o666 & ~umask)  # mkstemp makes it 0600
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
            _read_verified(tmp, spec, verify=True, gz=True)
            os.replace(tmp, target)
            return target
        except DataError as e:
            errors.append(f"{url}: corrupt or partial download deleted ({e})")
        except OSError as e:
            errors.append(f"{url}: {e}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    raise DataError(f"could not download {spec.name}.gz into {folder}:\n  " + "\n  ".join(errors))


def find_files(
    dataset: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
) -> dict[str, Path]:
    """Paths of the four IDX files (``train_images``, ``train_labels``, ``test_images``, ...).

    Looks in ``data_dir``, then ``$MNIST_DIR`` (``$FASHION_MNIST_DIR``), then the user cache,
    downloading missing files into the cache if ``download``. An explicit ``data_dir`` or
    environment folder that lacks a file is an error naming the folder and the file.
    """
    _check_dataset(dataset)
    if dataset == "digits":
        raise DataError("the digits data set is bundled with scikit-learn and has no files")
    specs = _FILES[dataset]
    env = _ENV[dataset]
    if data_dir:
        folder, where, may_download = Path(data_dir), f"data_dir={data_dir}", False
    elif os.environ.get(env):
        folder, where, may_download = Path(os.environ[env]), f"${env}={os.environ[env]}", False
    else:
        folder, where, may_download = cache_dir(dataset), "the cache", download
    paths = {}
    for key, spec in specs.items():
        found = _candidates(folder, spec)
        if found:
            paths[key] = found[0]
        elif may_download:
            paths[key] = _download(dataset, spec, folder)
        else:
            hint = "" if where != "the cache" else " (download=False)"
            raise DataError(
                f"{dataset}: {spec.name}[.gz] not found in {folder} ({where}){hint}; put the "
                f"four IDX files there, or point data_dir or ${env} at the folder holding them"
            )
    return paths


def load_idx(
    dataset: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify: bool = True,
) -> dict[str, np.ndarray]:
    """The four verified IDX arrays: images ``[n, 28, 28]`` and labels ``[n]``, uint8."""
    paths = find_files(dataset, data_dir, download=download)
    stamp = tuple(
        (k, str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for k, p in paths.items()
    )
    return dict(_load_idx_cached(dataset, stamp, verify))


@functools.lru_cache(maxsize=2)
def _load_idx_cached(
    dataset: str, stamp: tuple, verify: bool
) -> tuple[tuple[str, np.ndarray], ...]:
    """Read and verify once per (files, modification times): runs in one process share it."""
    specs = _FILES[dataset]
    out = []
    for key, path, _, _ in stamp:
        array = parse_idx(_read_verified(Path(path), specs[key], verify=verify), source=path)
        array.flags.writeable = False
        out.append((key, array))
    return tuple(out)


def load_digits(*, num_test: int = 297) -> Dataset:
    """scikit-learn's 1797 8x8 digits scaled to [0, 1]; the last ``num_test`` are the test set."""
    from sklearn.datasets import load_digits as sk_load_digits

    x = (sk_load_digits().data / 16.0).astype(np.float32)
    return Dataset("digits", x[:-num_test], x[-num_test:], (8, 8))


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    verify: bool = True,
) -> Dataset:
    """``digits``, ``mnist`` or ``fashion_mnist`` as float32 in [0, 1], flattened."""
    _check_dataset(name)
    if name == "digits":
        return load_digits()
    arrays = load_idx(name, data_dir, download=download, verify=verify)
    train, test = arrays["train_images"], arrays["test_images"]
    shape = tuple(train.shape[1:])
    return Dataset(
        name,
        (train.reshape(len(train), -1) / 255.0).astype(np.float32),
        (test.reshape(len(test), -1) / 255.0).astype(np.float32),
        shape,
    )


def binarize(key, x):
    """One Bernoulli draw per pixel with the pixel's intensity as probability (same shape).

    Dynamic binarisation calls this with a fresh key for every batch; static binarisation once.
    """
    import jax

    return jax.random.bernoulli(key, x).astype(x.dtype)
