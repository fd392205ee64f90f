"""Shared test settings: shape bugs raise instead of broadcasting silently.

Tests marked ``slow`` (long statistical sweeps) are skipped unless selected with ``-m slow``.

MNIST: tests that need the real files take the ``mnist_dir`` fixture (``$MNIST_DIR``; skipped
without it, a failure under ``CI=true``); tests that only need files in the MNIST format take
``small_idx_dir`` (see ``tests/_mnist.py``).
"""

import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

from tests import _mnist

# The suite compiles hundreds of small programs and runs each once or a few times: LLVM at
# optimisation level 1 instead of XLA's default 2 compiles them faster (the whole suite, 2
# workers: 700 s against 826 s; tests/test_binary_vae.py alone 103 s of CPU against 135 s), the
# choice the variance runner makes for its own programs on the CPU
# (experiments.variance.monte_carlo.CPU_COMPILER_OPTIONS). The level changes code generation,
# not float semantics (no fast math either way), so results move by float32 rounding where
# operations are contracted or ordered differently (hence jit-vs-eager bounds in ulps of the
# compared values' scale). Set before any backend starts, so this process and the subprocesses
# the tests start (they inherit XLA_FLAGS) compile alike; a user's own choice of the level is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1"
    ).strip()

jax.config.update("jax_numpy_rank_promotion", "raise")
# The tests compare float32 arithmetic with closed forms and with itself (jit == eager): on a
# GPU, JAX's default lets float32 matmuls run in TF32 (10-bit mantissa), which moved jit-vs-eager
# draws by up to 6e-3 relative on an H100. Full float32 there, in this process and in the
# `python -m experiments` subprocesses the tests start; a no-op on the CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
jax.config.update("jax_default_matmul_precision", os.environ["JAX_DEFAULT_MATMUL_PRECISION"])

_COMPILATION_CACHE: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """One persistent XLA compilation cache for the session, shared with its subprocesses.

    Many tests compile the same programs (tiny VAE and BLR runs, in-process and in
    ``python -m experiments`` children); on 2 CPU cores compiling is most of their time. The
    cache lives in a fresh temporary folder, removed at the end, so no run sees another's.
    """
    global _COMPILATION_CACHE
    _COMPILATION_CACHE = Path(tempfile.mkdtemp(prefix="mcgrad-test-jax-cache-"))
    settings = {
        "jax_compilation_cache_dir": str(_COMPILATION_CACHE),
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the default addopts): one worker per usable CPU core, at most 4.

    Most of a test's time is XLA compiling, which is single-threaded: two workers on two cores
    take about 0.6 of the serial time. More than 4 would mostly add memory (each worker holds
    its own JAX runtime and compiled programs).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _COMPILATION_CACHE is not None:
        shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)


# The longest files of the default run (a minute or more each on 2 cores), scheduled first so
# that parallel workers (a file whole per worker) do not end with one of them running alone.
LONG_FILES = (
    "test_conformance.py",
    "test_vae_train.py",
    "test_binary_vae.py",
    "test_optax_compat_mc.py",
    "test_vae_seeds.py",
    "test_vae.py",
    "test_cv_control_variates.py",
    "test_estimators_statistics.py",
    "test_cli.py",
    "test_variance_experiments.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
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
