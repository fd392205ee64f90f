"""The MNIST IDX reader: verified reads, clear errors, a download that never leaves junk behind.

The real MNIST comes from ``$MNIST_DIR`` (the ``mnist_dir`` fixture of ``conftest.py``: skipped
without it, a failure under ``CI=true``); nothing here needs the internet (the download path is
exercised with a fake ``urlopen``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments.vae import data
from tests import _mnist

NAMES = _mnist.NAMES


@pytest.fixture
def copy_dir(mnist_dir: Path, tmp_path: Path) -> Path:
    """A folder with links to the four real files (replace one to corrupt it)."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in NAMES:
        (folder / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    return folder


def test_reads_and_verifies_mnist(mnist_dir):
    arrays = data.load_idx("mnist", mnist_dir, download=False)
    assert arrays["train_images"].shape == (60000, 28, 28)
    assert arrays["test_images"].shape == (10000, 28, 28)
    assert arrays["train_labels"].shape == (60000,)
    assert arrays["test_labels"].dtype == np.uint8
    assert set(np.unique(arrays["test_labels"])) == set(range(10))
    ds = data.load_dataset("mnist", mnist_dir, download=False)
    assert ds.train.shape == (60000, 784) and ds.train.dtype == np.float32
    assert ds.train.min() == 0.0 and ds.train.max() == 1.0


def test_uncompressed_file_is_verified_too(copy_dir):
    name = NAMES[3]
    raw = gzip.decompress((copy_dir / f"{name}.gz").read_bytes())
    (copy_dir / f"{name}.gz").unlink()
    (copy_dir / name).write_bytes(raw)
    arrays = data.load_idx("mnist", copy_dir, download=False)
    assert arrays["test_labels"].shape == (10000,)


def test_corrupt_file_names_file_and_both_hashes(copy_dir):
    name = NAMES[3]
    raw = bytearray(gzip.decompress((copy_dir / f"{name}.gz").read_bytes()))
    raw[100] ^= 0xFF  # one flipped label byte
    (copy_dir / f"{name}.gz").unlink()
    (copy_dir / f"{name}.gz").write_bytes(gzip.compress(bytes(raw)))
    expected = "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
    got = hashlib.sha256(bytes(raw)).hexdigest()
    with pytest.raises(data.DataError) as e:
        data.load_idx("mnist", copy_dir, download=False)
    msg = str(e.value)
    assert "checksum mismatch" in msg and name in msg and expected in msg and got in msg


def test_truncated_gzip_is_a_clear_error(copy_dir):
    name = NAMES[1]
    blob = (copy_dir / f"{name}.gz").read_bytes()
    (copy_dir / f"{name}.gz").unlink()
    (copy_dir / f"{name}.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match="corrupt"):
        data.load_idx("mnist", copy_dir, download=False)


def test_missing_file_names_folder_and_file(copy_dir, monkeypatch):
    (copy_dir / f"{NAMES[2]}.gz").unlink()
    with pytest.raises(data.DataError) as e:
        data.find_files("mnist", copy_dir)
    assert NAMES[2] in str(e.value) and str(copy_dir) in str(e.value)
    monkeypatch.setenv("MNIST_DIR", str(copy_dir))
    with pytest.raises(data.DataError, match=r"\$MNIST_DIR"):
        data.find_files("mnist")


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="unknown dataset 'cifar'"):
        data.load_dataset("cifar")


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.cache_dir("mnist") == tmp_path / "mcgrad" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_dir("mnist") == Path.home() / ".cache" / "mcgrad" / "mnist"


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_verifies_then_renames(mnist_dir, monkeypatch, tmp_path):
    """No MNIST_DIR: files come into the cache through urlopen; a corrupt one is deleted."""
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    served = []

    def good(url, timeout):
        served.append(url)
        return _FakeResponse((mnist_dir / Path(url).name).read_bytes())

    monkeypatch.setattr(data.urllib.request, "urlopen", good)
    paths = data.find_files("mnist")
    assert len(served) == 4 and all(u.startswith(data.MIRRORS["mnist"][0]) for u in served)
    cache = tmp_path / "cache" / "mcgrad" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    assert paths["test_labels"] == cache / f"{NAMES[3]}.gz"
    umask = os.umask(0o022)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in cache.iterdir())

    shutil.rmtree(cache)

    def corrupt(url, timeout):  # every mirror serves a truncated file
        return _FakeResponse((mnist_dir / Path(url).name).read_bytes()[:1000])

    monkeypatch.setattr(data.urllib.request, "urlopen", corrupt)
    with pytest.raises(data.DataError, match="corrupt or partial download deleted"):
        data.find_files("mnist")
    assert list(cache.iterdir()) == []  # no partial file left behind
    with pytest.raises(data.DataError, match="download=False"):
        data.find_files("mnist", download=False)


def test_fashion_needs_the_gz_archive_or_explicit_no_verify(copy_dir, tmp_path):
    """Only the .gz archives' sha256 is known for Fashion-MNIST; MNIST's files fail it."""
    with pytest.raises(data.DataError, match=r"sha256 of the \.gz archive"):
        data.load_idx("fashion_mnist", copy_dir, download=False)
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name in NAMES:
        (raw_dir / name).write_bytes(gzip.decompress((copy_dir / f"{name}.gz").read_bytes()))
    with pytest.raises(data.DataError, match="verify=False"):
        data.load_idx("fashion_mnist", raw_dir, download=False)
    arrays = data.load_idx("fashion_mnist", raw_dir, download=False, verify=False)
    assert arrays["test_images"].shape == (10000, 28, 28)


def test_digits_bundled():
    ds = data.load_digits()
    assert ds.train.shape == (1500, 64) and ds.test.shape == (297, 64)
    assert ds.train.min() == 0.0 and ds.train.max() == 1.0 and ds.image_shape == (8, 8)


def test_parse_idx_rejects_bad_header():
    with pytest.raises(data.DataError, match="magic"):
        data.parse_idx(b"\x01\x02\x08\x01")
    with pytest.raises(data.DataError, match="truncated"):
        data.parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")


def test_small_idx_files_read_unverified_and_refused_verified(small_idx_dir):
    """The test-made IDX files parse to the written shapes; checking them against MNIST fails."""
    arrays = data.load_idx("mnist", small_idx_dir, download=False, verify=False)
    assert arrays["train_images"].shape == (300, 28, 28)
    assert arrays["test_labels"].shape == (100,) and arrays["test_labels"].max() < 10
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.load_idx("mnist", small_idx_dir, download=False)


def test_real_mnist_is_skipped_with_its_reason_or_fails_under_ci(monkeypatch, tmp_path):
    """Without MNIST_DIR a real-MNIST test is skipped naming MNIST_DIR; with CI=true it fails."""
    monkeypatch.delenv("MNIST_DIR", raising=False)
    for ci, outcome in (("", pytest.skip.Exception), ("true", pytest.fail.Exception)):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(outcome, match="MNIST_DIR is not set"):
            _mnist.find_mnist_dir()
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))  # a folder without the files
    with pytest.raises(pytest.fail.Exception, match=f"MNIST_DIR={tmp_path} lacks"):
        _mnist.find_mnist_dir()
