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


# ------------------------------------------------------------------------------------------
# Any number of samples: chunk keys from any range, launches merged on the host
# ------------------------------------------------------------------------------------------


def test_the_keys_of_any_range_of_chunks_are_those_of_one_split():
    """Under the partitionable threefry, key i of ``split(key, n)`` hashes i alone: a launch
    computes its chunks' keys without the others' (shared rows, and one key per row)."""
    key = jax.random.key(11)
    data = np.asarray(jax.random.key_data(key))
    for rows, split in ((None, jax.random.split(key, 40)), (3, jax.random.split(key, (40, 3)))):
        hi, lo = monte_carlo._counters(25, 15, rows)
        got = jax.random.key_data(jax.jit(monte_carlo._keys_at)(data, hi, lo))
        np.testing.assert_array_equal(got, jax.random.key_data(split[25:40]))
    hi, lo = monte_carlo._counters(2**32 + 5, 2, None)  # past 2**32 chunks: the high word
    np.testing.assert_array_equal(hi, [1, 1])
    np.testing.assert_array_equal(lo, [5, 6])


def test_a_plan_for_a_trillion_samples_lists_no_chunks_and_bounds_each_launch():
    for n in (10**12, 10**12 + 39, 2**31 + 1):
        p = monte_carlo.plan(n, 40, 1)
        assert p.num_samples == n
        assert p.launch * 40 <= monte_carlo.LAUNCH_ELEMENTS and p.size * 40 <= 2**18
        last = p.num_launches - 1
        assert last * p.launch + len(p.chunks(last)) == p.num_chunks
        assert sum(p.chunks(0)) * last + sum(p.chunks(last)) == n
    for n in (1_000, 99_991, 100_000, 123_457):  # the same chunks as chunk_sizes lists
        p = monte_carlo.plan(n, 3, 2, 4)
        assert [p.size] * (p.num_chunks - 1) + [p.last] == monte_carlo.chunk_sizes(n, 3, 2, 4)
        assert p.num_launches == 1


def test_the_step_follows_the_device_memory():
    class Device:
        platform = "gpu"

        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert monte_carlo.step_elements(jax.devices("cpu")[0]) == monte_carlo.STEP_ELEMENTS
    assert monte_carlo.step_elements(Device({"bytes_limit": 80 * 10**9})) == 2**26
    assert monte_carlo.step_elements(Device({"bytes_limit": 2 * 10**9})) == 2**20
    assert monte_carlo.step_elements(Device(None)) == monte_carlo.ACCELERATOR_STEP_ELEMENTS


def _statistics(specs, plan, seed=5):
    weights, _, constants, _ = _grid([0.0])
    return monte_carlo.mc_statistics(
        jax.random.key(seed), weights, np.zeros(1, np.float32), constants,
        {"loc": np.float32(1.0), "scale": np.float32(1.0)}, problem=GAUSSIAN, specs=specs,
        terms=active_terms(["quadratic"]), dim=1, plan=plan,
    )  # fmt: skip


# mu = sigma = 1, f = x^2 (k = 0): closed forms (tests/test_variance_experiments.py).
EXACT = {"pathwise": (4.0, 12.0), "score_function+optimal": (14.0, 64.0)}
STREAMED = {"num_samples": 200_000, "rows": 1, "dim": 1, "step": 2**14}


@pytest.fixture(scope="module")
def streamed() -> dict:
    """2e5 samples in 16 chunks of 12500, in 4 launches of 4 (the row baseline a first pass
    over them), and the same chunks in one launch."""
    plan = monte_carlo.plan(**STREAMED, launch_elements=4)
    assert (plan.num_chunks, plan.num_launches) == (16, 4)
    one = monte_carlo.plan(**STREAMED)
    assert (one.num_chunks, one.num_launches) == (16, 1)
    return {"launches": _statistics(tuple(EXACT), plan), "one": _statistics(tuple(EXACT), one)}


def test_launches_merged_on_the_host_equal_one_launch(streamed):
    """The same keys and per-chunk moments in 4 launches as in one: pathwise's results differ
    by the float64 merge only (rtol 1e-12). With the +optimal row baseline, b is a float64
    average of the per-chunk baselines rounded to float32 in the one case and a float32
    average in the other: a relative change of b of at most 2 * 16 * 2^-24 (16 chunks)
    moves the estimates (f - b) score by far less than the 1e-4 allowed here."""
    launched, one = streamed["launches"], streamed["one"]
    for spec, rtol in (("pathwise", 1e-12), ("score_function+optimal", 1e-4)):
        for p in ("loc", "scale"):
            assert launched[spec][p].running is not None and one[spec][p].first is not None
            for a, b in zip(launched[spec][p].variance(), one[spec][p].variance(), strict=True):
                np.testing.assert_allclose(a, b, rtol=rtol)
            (ga, gsa), (gb, gsb) = launched[spec][p].gradient(), one[spec][p].gradient()
            np.testing.assert_allclose(gsa, gsb, rtol=rtol)
            np.testing.assert_allclose(ga, gb, rtol=0, atol=rtol * float(gsb[0]))


def _within(stats, exact, z) -> list[bool]:
    return [
        abs(stats[s][p].variance()[0][0] - exact[s][i]) <= z * stats[s][p].variance()[1][0]
        for s in exact
        for i, p in enumerate(("loc", "scale"))
    ]


def test_a_streamed_estimate_agrees_with_the_exact_variance_and_rejects_a_wrong_one(streamed):
    """Each of the 4 streamed variances within z standard errors of its closed form
    (Bonferroni, family-wise false alarm 1e-4); the same check rejects every value 30% off
    (5 SE for score_function+optimal's d/dsigma, whose SE is 5% of it; 90 SE for pathwise's
    d/dmu)."""
    from scipy import stats as scipy_stats

    z = scipy_stats.norm.isf(1e-4 / (2 * 4))
    assert all(_within(streamed["launches"], EXACT, z))
    wrong = {s: tuple(1.3 * v for v in vs) for s, vs in EXACT.items()}
    assert not any(_within(streamed["launches"], wrong, z))
