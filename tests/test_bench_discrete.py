"""The plain hand-written estimators of benchmarks/bench_discrete.py are the library's.

bench_discrete.py times each registry estimator against a hand-written version
(benchmarks/_plain_discrete.py); the comparison means something only if the two compute the
same estimator. Where the two draw their noise the same way (the bits of
``jax.random.bernoulli(key, p, (N, D))``, which ``estimators.draw_samples`` draws as
``uniform(key, (N, D)) < p``; ARM's uniforms; REBAR's and RELAX's two uniforms; ...), the plain
rows equal the library's on the same key (float32 rounding). Where a pair draws differently
(none at present), their means agree within the standard error of the difference. REBAR's and
RELAX's plain conditional sample z~ | b is the stable softplus form, finite at extreme logits,
where the algebraic form timed beside it is not. Every plain version of an
unbiased estimator is also held to the exact gradient by enumeration (2^D outcomes, or 2^(DK)
for a K-sample objective). Bonferroni-corrected z bounds, fixed keys; not timed.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from estimators.discrete._relax import conditional_z
from estimators.testing import ALPHA, bonferroni_z

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _plain_discrete as plain  # noqa: E402
import bench_discrete as bench  # noqa: E402

DIM = 3
# Enough rows for each enumeration check to reject a 10% error with power >= 0.9 (asserted).
NUM_SAMPLES = {"score_function": 30_000, "relax": 40_000, "double_cv": 24_000}
DEFAULT_NUM_SAMPLES = 12_000
# Pairs whose noise is drawn the same way: rows equal on the same key.
SAME_NOISE = {
    "score_function",
    "score_function+loo",
    "straight_through",
    "vimco",
    "double_cv",
    "rodeo",
    "arm",
    "disarm",
    "arms",
    "arms_systematic",
    "gumbel_softmax",
    "gumbel_softmax_st",
    "rebar",
    "relax",
}
NAMES = sorted(bench.PLAIN)
Z = bonferroni_z(2 * len(NAMES) * DIM, ALPHA)


def _registered(name: str) -> estimators.GradientEstimator:
    try:
        return estimators.registry.get(name)
    except ValueError:
        pytest.skip(f"{name!r} is not registered (yet)")


def _switched_on(state):
    """The estimator's ``init()`` state with its control variates switched on (they start at
    zero), so the comparison covers them: double CV's and RODEO's coefficients, REBAR's and
    RELAX's scale and temperature, RELAX's network output layer."""
    fields = getattr(state, "_fields", ())
    for name, value in (("alpha", 0.7), ("beta", -0.4)):
        if name in fields:
            state = state._replace(**{name: jnp.float32(value)})
    if "control" in fields and "eta" in getattr(state.control, "_fields", ()):
        control = state.control._replace(eta=jnp.float32(0.8), log_temperature=jnp.log(0.3))
        if isinstance(control.network, dict) and "w2" in control.network:
            w2 = 0.1 * jnp.cos(jnp.arange(control.network["w2"].shape[0], dtype=jnp.float32))
            control = control._replace(network={**control.network, "w2": w2})
        state = state._replace(control=control)
    return state


@functools.cache
def _computed(name: str):
    """(ours, plain) for the bench's cost at D = DIM, key 7, with the control variates
    switched on: ``[G, K, D]`` each (K = group size); computed once for both tests."""
    cost, params = bench.make_problem(DIM)
    est = estimators.registry.get(name)
    n = NUM_SAMPLES.get(name, DEFAULT_NUM_SAMPLES)
    entry = bench.Entry(name, cost, params, n, state=_switched_on(est.init()))
    key = jax.random.key(7)
    ours = entry.ours.fn(*entry.ours.args, key)["logits"]
    theirs = entry.plain.fn(*entry.plain.args, key)
    shape = (-1, entry.group, DIM)
    return cost, params, np.asarray(ours).reshape(shape), np.asarray(theirs).reshape(shape)


def _rows(name: str):
    est = _registered(name)
    return (est, *_computed(name))


def _exact_gradient(cost, logits: jax.Array, group: int, objective: str) -> np.ndarray:
    """The exact gradient of E[f] (or of E[-log mean_k exp(-f(b_k))] over ``group`` samples)
    by enumerating every outcome."""
    dim = logits.shape[0]
    outcomes = jnp.array(list(itertools.product([0.0, 1.0], repeat=dim * group)))
    outcomes = outcomes.reshape(-1, group, dim)
    costs = jax.vmap(jax.vmap(cost))(outcomes)
    if objective == "mean":
        values = jnp.mean(costs, axis=1)
    else:
        values = -(jax.nn.logsumexp(-costs, axis=1) - jnp.log(group))

    def expectation(lg: jax.Array) -> jax.Array:
        log_p = jnp.sum(outcomes * lg[None, None] - jax.nn.softplus(lg)[None, None], axis=(1, 2))
        return jnp.sum(jnp.exp(log_p) * values)

    return np.asarray(jax.grad(expectation)(logits))


def _mean_and_se(rows: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over independent groups (the rows of a group are summed)."""
    groups = np.asarray(rows, np.float64).mean(axis=1)
    return groups.mean(0), groups.std(0, ddof=1) / np.sqrt(groups.shape[0])


@pytest.mark.parametrize("name", NAMES)
def test_plain_is_the_library_estimator(name):
    est, cost, params, ours, theirs = _rows(name)
    assert ours.shape == theirs.shape
    if name in SAME_NOISE:
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
        return
    m_ours, se_ours = _mean_and_se(ours)
    m_plain, se_plain = _mean_and_se(theirs)
    assert np.all(np.abs(m_ours - m_plain) <= Z * np.hypot(se_ours, se_plain)), (
        m_ours,
        m_plain,
        se_ours,
        se_plain,
    )


@pytest.mark.parametrize("name", NAMES)
def test_plain_unbiased_ones_match_enumeration(name):
    est = _registered(name)
    if not est.unbiased:
        pytest.skip(f"{name!r} is biased: held to the library's rows instead")
    _, cost, params, _, theirs = _rows(name)
    exact = _exact_gradient(cost, params["logits"], theirs.shape[1], est.objective)
    mean, se = _mean_and_se(theirs)
    assert np.all(np.abs(mean - exact) <= Z * se), (mean, exact, se)
    # The same check rejects a 10% error: in the coordinate where it is largest in SEs, with
    # probability >= 0.9 (normal approximation).
    shift = float(np.max(np.abs(0.1 * exact) / se))
    assert 0.5 * math.erfc((Z - shift) / math.sqrt(2)) >= 0.9, shift


@pytest.mark.parametrize("spec", sorted(bench.VARIANTS))
def test_faster_plain_formulations_give_the_same_rows(spec):
    """Each variant timed beside a plain version computes its rows (same key, K = 3)."""
    est = _registered(spec)
    state = _switched_on(est.init())
    plain_fn, plain_kwargs = bench.PLAIN[spec]
    cost, params = bench.make_problem(7)
    key = jax.random.key(3)
    expected = plain_fn(cost, params["logits"], key, 3, **plain_kwargs(state))
    for _, fn, kwargs in bench.VARIANTS[spec]:
        got = fn(cost, params["logits"], key, 3, **kwargs(state))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["rebar", "relax"])
def test_plain_conditional_sample_is_stable(name):
    """REBAR's and RELAX's plain rows equal the library's on the same key at extreme logits too
    (the bits drawn there are b = 1 at +30 and b = 0 at -30), and are finite. The algebraic
    z~ | b of the variant timed beside them (u~ = v p or p + v (1 - p)) is not: given b = 0
    where p rounds to 1 it is -inf with a NaN gradient, and its row is NaN at a draw jax does
    make: u = 1 - 2^-23 (its largest uniform) at logit 16, where p = 1 - 2^-23 too (so b = 0),
    and v = 0.9 (p + v (1 - p) rounds to 1). The stable form there equals the library's."""
    est = _registered(name)
    state = _switched_on(est.init())
    plain_fn, plain_kwargs = bench.PLAIN[name]
    logits = jnp.array([30.0, -30.0, 20.0, -20.0, 16.0, 0.5])
    cost, _ = bench.make_problem(logits.shape[0])
    key = jax.random.key(11)
    ours = est.per_sample(cost, {"logits": logits}, bench.build, key, num_samples=256, state=state)
    theirs = plain_fn(cost, logits, key, 256, **plain_kwargs(state))
    assert np.all(np.isfinite(theirs))
    np.testing.assert_allclose(theirs, ours["logits"], rtol=1e-4, atol=1e-5)

    # z~ | b given b = 0 at logits where p rounds to 1: stable = library's, algebraic -inf.
    big = jnp.array([17.0, 20.0, 30.0])
    zero, v = jnp.zeros(3), jnp.full(3, 0.5)
    stable = plain._conditional_z(big, zero, v)
    np.testing.assert_allclose(stable, conditional_z(big, zero, v), rtol=1e-6)
    assert np.all(np.isfinite(stable)) and np.all(stable < 0)
    assert np.all(np.isneginf(plain._conditional_z_algebraic(big, zero, v)))
    relaxed_sum = lambda c: lambda lg: jnp.sum(jax.nn.sigmoid(c(lg, zero, v) / 0.5))  # noqa: E731
    assert np.all(np.isfinite(jax.grad(relaxed_sum(plain._conditional_z))(big)))
    assert np.all(np.isnan(jax.grad(relaxed_sum(plain._conditional_z_algebraic))(big)))

    # One row at a draw jax makes, coordinate 0 in the failing case.
    lg = jnp.array([16.0, 0.3, -1.0])
    u_max = jnp.float32(1 - 2**-23)
    assert float(jax.nn.sigmoid(lg[0])) == float(u_max)  # b_0 = 1[u_0 < p_0] = 0
    u, v = jnp.array([u_max, 0.2, 0.7]), jnp.array([0.9, 0.5, 0.5])
    kwargs = plain_kwargs(state)
    eta, temperature, net = kwargs["eta"], kwargs["temperature"], kwargs.get("net")
    f, _ = bench.make_problem(3)

    def control(z):
        relaxed = eta * f(jax.nn.sigmoid(z / temperature))
        return relaxed if net is None else relaxed + net(z)

    good = plain._control_estimate(f, control, lg, u, v, plain._conditional_z)
    bad = plain._control_estimate(f, control, lg, u, v, plain._conditional_z_algebraic)
    assert np.all(np.isfinite(good)) and np.isnan(bad[0])
