"""Shared test settings: shape bugs raise instead of broadcasting silently.

Tests marked ``slow`` (long statistical sweeps) are skipped unless selected with ``-m slow``.
"""

import jax
import pytest

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
