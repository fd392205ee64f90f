"""The variance runner's one-program Monte Carlo grid (``experiments.variance.monte_carlo``).

``mc_moments`` runs several estimators on every row of a grid in one jitted program, every
row and estimator drawing from the same keys (common random numbers). Checked against
independent computations on the same key: all estimators in one program give what each gives
alone; a row of the shared-sample grid gives what that row alone gives; a padded and masked
last chunk gives the moments of its unpadded samples; and the per-row keys are still there.
Tolerances: float32 rounding (XLA may fuse the programs differently).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments.variance import monte_carlo
from experiments.variance.costs import COSTS, active_terms
from experiments.variance.problems.gaussian import PROBLEM as GAUSSIAN

SPECS = ("score_function", "score_function+optimal", "pathwise", "measure_valued")
NUM_SAMPLES = 1_200
CHUNKS = (500, 500, 200)  # a short last chunk: padded to 500 and masked
RTOL = 2e-5  # float32 rounding of sums of 10^3 terms


def _grid(ks) -> tuple:
    ks = np.asarray(ks, np.float32)
    n = ks.shape[0]
    weights = np.tile(COSTS["quadratic"].weight_vector(), (n, 1)).astype(np.float32)
    values = {"loc": np.float32(1.0), "scale": np.float32(1.5)}
    return weights, ks, np.zeros(n, np.float32), values


def _moments(specs, ks, *, chunks=CHUNKS, shared_rows=True, seed=3) -> dict:
    return monte_carlo.mc_moments(
        jax.random.key(seed), *_grid(ks), problem=GAUSSIAN, specs=tuple(specs),
        terms=active_terms(["quadratic"]), dim=1, chunks=chunks, shared_rows=shared_rows,
    )  # fmt: skip


def _close(a: dict, b: dict) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=RTOL, atol=1e-5), a, b)


KS = (-2.0, 0.5, 3.0)


@pytest.fixture(scope="module")
def together() -> dict:
    return _moments(SPECS, KS)


def test_all_estimators_in_one_program_equal_each_alone(together):
    for spec in SPECS[1:]:  # score_function+optimal covers score_function's path
        _close(together[spec], _moments((spec,), KS)[spec])


def test_a_row_of_the_shared_grid_equals_that_row_alone(together):
    r = 1
    alone = _moments(SPECS[1:3], KS[r : r + 1])  # the row baseline's samples shared too
    for spec in SPECS[1:3]:
        _close(jax.tree.map(lambda a: a[r : r + 1], together[spec]), alone[spec])


def test_rows_share_their_samples_unless_told_not_to():
    """Pathwise d/dmu of (x - k)^2 is 2 (x - k): its sample variance does not depend on k when
    the rows share samples, and does (to sampling noise) when each row has its own."""
    shared = _moments(("pathwise",), KS)["pathwise"]["loc"]
    own = _moments(("pathwise",), KS, shared_rows=False)["pathwise"]["loc"]
    var_shared = monte_carlo.combine(shared, CHUNKS)[0]
    var_own = monte_carlo.combine(own, CHUNKS)[0]
    np.testing.assert_allclose(var_shared, var_shared[0], rtol=1e-5)
    assert np.ptp(var_own) > 1e-3 * var_own[0]


def test_a_masked_chunk_has_the_moments_of_its_first_count_rows():
    g = jax.random.normal(jax.random.key(0), (50, 3)) * np.float32([[1.0, 2.0, 4.0]]) + 1.0
    masked = monte_carlo._chunk_moments(g, np.int32(37))
    _close(masked, monte_carlo._chunk_moments(g[:37]))


def test_chunks_of_one_size_or_a_shorter_last_one_only():
    with pytest.raises(ValueError, match="chunks"):
        _moments(("pathwise",), KS, chunks=(200, 500, 500))
