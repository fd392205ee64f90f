"""ARM, DisARM and ARMS (estimators/discrete/_arm.py) against mathematics.

* Unbiased against the exact gradient by enumeration (2^D outcomes) on costs with structure:
  D = 10 with a product of coordinates and a quadratic, and the toy (b - t)^2 (t = 0.45,
  0.499, D = 1); Bonferroni z over every coordinate checked, fixed keys, and the same check
  rejects the estimates scaled by 1.1 (analytic power >= 0.9 stated and asserted).
* Exact single-sample variances of ARM and DisARM by a tensor quadrature over u with splits at
  sigma(+-phi) (two Gauss-Legendre nodes per piece: exact, the integrand is constant (DisARM)
  or linear (ARM) in each u_d on each piece), held against the Monte Carlo variance within
  Bonferroni SEs (and a 10% error rejected); DisARM's variance <= ARM's exactly on the toy over
  a grid of theta and on the 4-bit family; each DisARM row equals E[ARM row | b, b~],
  computed independently from the same u.
* ARMS (both copulas): its mean and variance exactly, by enumerating the joint law of the K
  samples' bits (inclusion-exclusion for the Dirichlet copula, a uniform subset of a random
  size for the systematic one; that law checked against the sampler's frequencies): unbiased,
  equal to DisARM for K = 2, and its variance at K = 4 against K/2 DisARM pairs, two ARM pairs
  and REINFORCE-LOO at equal evaluations of f.
* Edge cases (sigma(phi) = 1/2, |phi| = 30), pull-back through any dist_builder, the
  surrogate, and bad input.
"""

from __future__ import annotations

import itertools
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from estimators import testing
from estimators.discrete import _arm
from estimators.testing import ALPHA, bonferroni_z

SINGLE = ("arm", "disarm")
JOINT = ("arms", "arms_systematic")
COPULA = {"arms": "dirichlet", "arms_systematic": "systematic"}
K = 4


def bern(p):
    return estimators.Bernoulli(p["logits"])


def sig(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


# --- Exact answers --------------------------------------------------------------------------


def exact_gradient(f, logits) -> np.ndarray:
    """d/dlogits E f by enumerating the 2^D outcomes (float64)."""
    logits = np.asarray(logits, np.float64)
    theta = sig(logits)
    grad = np.zeros_like(logits)
    for bits in itertools.product([0.0, 1.0], repeat=logits.size):
        b = np.array(bits)
        p = np.prod(np.where(b > 0, theta, 1 - theta))
        grad += p * f(b) * (b - theta)
    return grad


# Costs (numpy, for the exact side; jax versions below).
C10 = np.linspace(0.6, 1.4, 10)
Q10 = np.random.default_rng(0).normal(size=(10, 10)) / 3
L10 = np.linspace(-1.5, 1.2, 10)


def product_cost(b, xp=np):
    return 3.0 * xp.prod(1.0 - 0.5 * b * xp.asarray(C10))


def quadratic_cost(b, xp=np):
    return b @ xp.asarray(Q10) @ b + xp.asarray(L10) @ b


def toy(t):
    def cost(b, xp=np):
        return xp.sum((b - t) ** 2, axis=-1)

    return cost


CASES = {
    "product_D10": (product_cost, np.linspace(-2.0, 1.5, 10)),
    "quadratic_D10": (quadratic_cost, np.linspace(1.0, -1.0, 10)),
    "toy_t0.45": (toy(0.45), np.array([math.log(0.3 / 0.7)])),
    "toy_t0.499": (toy(0.499), np.array([math.log(0.3 / 0.7)])),
}
NAMES = SINGLE + JOINT
Z_UNBIASED = bonferroni_z(len(NAMES) * sum(lg.size for _, lg in CASES.values()), ALPHA)


def rows_of(name, cost, logits, key, n):
    """``[groups, D]`` independent estimates (single-sample: rows; joint: per-call means of
    K samples)."""
    est = estimators.registry.get(name)
    params = {"logits": jnp.asarray(logits, jnp.float32)}
    f = lambda b: cost(b, jnp)  # noqa: E731
    if not est.multi_sample:
        g = est.per_sample(f, params, bern, key, num_samples=n)["logits"]
        return np.asarray(g, np.float64)
    one = lambda k: est.per_sample(f, params, bern, k, num_samples=K)["logits"].mean(0)  # noqa: E731
    g = jax.jit(jax.vmap(one))(jax.random.split(key, n // K))
    return np.asarray(g, np.float64)


# The D=10 cases of the joint (multi-sample) estimators are the heaviest (200k rows in calls of
# K); they run with -m slow, and the battery checks the same estimators on its 4-bit family.
UNBIASED_CASES = [
    pytest.param(
        name,
        case,
        id=f"{name}-{case}",
        marks=pytest.mark.slow if name in JOINT and CASES[case][1].size > 1 else (),
    )
    for name in NAMES
    for case in CASES
]


@pytest.mark.parametrize(("name", "case"), UNBIASED_CASES)
def test_unbiased_on_structured_costs(name, case):
    cost, logits = CASES[case]
    exact = exact_gradient(cost, logits)
    g = rows_of(name, cost, logits, jax.random.key(11), 200_000 if logits.size > 1 else 40_000)
    mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(g.shape[0])
    assert np.all(np.abs(mean - exact) <= Z_UNBIASED * se + 1e-5 * np.abs(exact)), (
        mean,
        exact,
        se,
    )
    # Companion: the estimates scaled by 1.1 are rejected by the same bound; the power in
    # the coordinate where the error is largest in SEs is >= 0.9 (normal approximation).
    shift = float(np.max(np.abs(0.1 * exact) / (1.1 * se)))
    print(f"{name} {case}: power shift {shift:.1f} SE (z = {Z_UNBIASED:.2f})")
    assert statistics.NormalDist().cdf(shift - Z_UNBIASED) >= 0.9, shift
    assert np.any(np.abs(1.1 * mean - exact) > Z_UNBIASED * 1.1 * se)


# --- ARM and DisARM: exact variances by quadrature over u --------------------------------


def u_rule(theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] split at min/max(theta, 1 - theta): two Gauss-Legendre
    nodes per piece (exact for polynomials of degree <= 3 on each piece)."""
    t, w = np.polynomial.legendre.leggauss(2)
    cuts = sorted({0.0, min(theta, 1 - theta), max(theta, 1 - theta), 1.0})
    nodes, weights = [], []
    for a, b in itertools.pairwise(cuts):
        nodes += list(a + (b - a) * (t + 1) / 2)
        weights += list((b - a) * w / 2)
    return np.array(nodes), np.array(weights)


def arm_row(f, logits, u):
    return (f((u > sig(-logits)) * 1.0) - f((u < sig(logits)) * 1.0)) * (u - 0.5)


def disarm_row(f, logits, u):
    b, bt = (u < sig(logits)) * 1.0, (1 - u < sig(logits)) * 1.0
    return 0.5 * (f(b) - f(bt)) * (1 - 2 * bt) * (b != bt) * sig(np.abs(logits))


def exact_moments(row, f, logits) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``row(f, logits, u)``, u ~ U(0,1)^D, by the tensor rule."""
    logits = np.asarray(logits, np.float64)
    rules = [u_rule(float(t)) for t in sig(logits)]
    mean = np.zeros(logits.size)
    second = np.zeros(logits.size)
    for point in itertools.product(*[range(len(r[0])) for r in rules]):
        u = np.array([rules[d][0][i] for d, i in enumerate(point)])
        w = np.prod([rules[d][1][i] for d, i in enumerate(point)])
        g = row(f, logits, u)
        mean += w * g
        second += w * g * g
    return mean, second - mean**2


def family_cost_np():
    """The 4-bit family's cost as a table of its 16 values (float64 from the float32 cost),
    vectorised over leading axes of ``b [..., 4]``, and the family."""
    fam = testing.family("Bernoulli")
    outcomes = np.array(list(itertools.product([0.0, 1.0], repeat=4)))
    table = np.asarray(jax.vmap(fam.cost)(jnp.asarray(outcomes, jnp.float32)), np.float64)
    powers = 2 ** np.arange(3, -1, -1)

    def f(b):
        return table[np.asarray(np.rint(b @ powers), int)]

    return f, fam


def interacting(b, xp=np):
    return 2 * b[..., 0] * b[..., 1] - b[..., 0] + 0.3 * b[..., 1]


TOY_THETAS = np.linspace(0.02, 0.98, 25)


def test_quadrature_is_exact_for_the_mean():
    """Guard on the rule: both rows' quadrature means are the enumerated gradient."""
    f, fam = family_cost_np()
    logits = np.asarray(fam.params["logits"], np.float64)
    for row in (arm_row, disarm_row):
        mean, _ = exact_moments(row, f, logits)
        np.testing.assert_allclose(mean, fam.gradient["logits"], rtol=1e-5, atol=1e-6)


def test_disarm_variance_never_exceeds_arm():
    """Exactly (quadrature): on the toy at t = 0.45 and 0.499 over a grid of theta, on the
    4-bit family, and on D = 2 with an interacting cost."""
    checks = []
    for t in (0.45, 0.499):
        for theta in TOY_THETAS:
            lg = np.array([math.log(theta / (1 - theta))])
            checks.append((toy(t), lg))
    f, fam = family_cost_np()
    checks.append((f, np.asarray(fam.params["logits"], np.float64)))
    checks.append((interacting, np.array([0.4, -1.1])))
    for cost, lg in checks:
        _, v_arm = exact_moments(arm_row, cost, lg)
        _, v_dis = exact_moments(disarm_row, cost, lg)
        assert np.all(v_dis <= v_arm * (1 + 1e-12) + 1e-15), (lg, v_dis, v_arm)
    # DisARM on the toy in closed form: (1/2)(1 - 2t) sigma(|phi|) where the pair differs
    # (probability 2m, m = min(theta, 1 - theta)), else 0.
    for theta in TOY_THETAS:
        lg = np.array([math.log(theta / (1 - theta))])
        _, v = exact_moments(disarm_row, toy(0.45), lg)
        m = min(theta, 1 - theta)
        closed = 0.01 * (1 - m) ** 2 * 2 * m / 4 - (0.1 * theta * (1 - theta)) ** 2
        np.testing.assert_allclose(v, [closed], rtol=1e-9, atol=1e-15)


VARIANCE_CASES = {
    "toy_t0.45": (toy(0.45), np.array([math.log(0.3 / 0.7)])),
    "D2": (interacting, np.array([0.4, -1.1])),
    "family": (None, None),
}
Z_VARIANCE = bonferroni_z(len(SINGLE) * (1 + 2 + 4), ALPHA)


@pytest.mark.parametrize("case", list(VARIANCE_CASES))
@pytest.mark.parametrize("name", SINGLE)
def test_single_sample_variance_against_quadrature(name, case):
    cost, lg = VARIANCE_CASES[case]
    if cost is None:
        f, fam = family_cost_np()
        lg = np.asarray(fam.params["logits"], np.float64)
        jcost = lambda b, xp=jnp: fam.cost(b)  # noqa: E731
    else:
        f, jcost = cost, cost
    _, exact = exact_moments(arm_row if name == "arm" else disarm_row, f, lg)
    g = rows_of(name, jcost, lg, jax.random.key(5), 150_000)
    n = g.shape[0]
    centred = g - g.mean(0)
    var = centred.var(0, ddof=1)
    se = np.sqrt(np.maximum((centred**4).mean(0) - var**2, 0.0) / n)
    assert np.all(np.abs(var - exact) <= Z_VARIANCE * se), (var, exact, se)
    distance = float(np.max(0.1 * exact / se))
    print(f"{name} {case}: variance power distance {distance:.1f} SE (z = {Z_VARIANCE:.2f})")
    assert statistics.NormalDist().cdf(distance - Z_VARIANCE) >= 0.9, distance
    assert np.any(np.abs(var - 1.1 * exact) > Z_VARIANCE * se)


def test_disarm_rows_are_the_conditional_expectation_of_arm():
    """On the same key (the same u), each DisARM row == E[ARM row | b, b~]: given the pair,
    u_d is uniform on the interval {u: 1[u < theta] = b_d, 1[1 - u < theta] = b~_d}, so the
    expectation replaces u_d - 1/2 by the interval's midpoint - 1/2."""
    f, fam = family_cost_np()
    key, n = jax.random.key(3), 64
    params = fam.params
    lg = np.asarray(params["logits"], np.float64)
    dis = np.asarray(estimators.disarm(fam.cost, params, bern, key, num_samples=n)["logits"])
    arm = np.asarray(estimators.arm(fam.cost, params, bern, key, num_samples=n)["logits"])
    u = np.asarray(jax.random.uniform(key, (n, lg.size)), np.float64)
    theta = sig(lg)
    for i in range(n):
        b, bt = (u[i] < theta) * 1.0, (1 - u[i] < theta) * 1.0
        lo = np.maximum(np.where(b > 0, 0.0, theta), np.where(bt > 0, 1 - theta, 0.0))
        hi = np.minimum(np.where(b > 0, theta, 1.0), np.where(bt > 0, 1.0, 1 - theta))
        assert np.all(lo <= u[i]) and np.all(u[i] <= hi)
        # ARM's first point 1[u > sigma(-phi)] is b~, its second b.
        conditional = (f(bt) - f(b)) * ((lo + hi) / 2 - 0.5)
        np.testing.assert_allclose(dis[i], conditional, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(arm[i], (f(bt) - f(b)) * (u[i] - 0.5), rtol=1e-5, atol=1e-6)


# --- ARMS: the joint law of the K samples, exactly --------------------------------------------


def column_law(theta: float, k: int, copula: str) -> tuple[dict[tuple[int, ...], float], float]:
    """P(the K bits of one coordinate = pattern) and 1/(1 - rho), from the copula's
    definition (independent of the library's code)."""
    m = min(theta, 1 - theta)
    law = {}
    if copula == "dirichlet":  # rare where w_k > s; P(w_k > s for k in A) = (1 - |A| s)_+^(K-1)
        s = 1 - m ** (1 / (k - 1))
        r11 = max(0.0, 1 - 2 * s) ** (k - 1)
    else:  # the number of rare samples is a or a+1 (prob r); a uniform subset of that size
        a = math.floor(k * m)
        r = k * m - a
        r11 = (a * (a - 1) + 2 * a * r) / (k * (k - 1))
    for pattern in itertools.product([0, 1], repeat=k):
        rare = [p if theta < 0.5 else 1 - p for p in pattern]
        size = sum(rare)
        if copula == "dirichlet":
            prob = sum(
                math.comb(k - size, j) * (-1) ** j * max(0.0, 1 - (size + j) * s) ** (k - 1)
                for j in range(k - size + 1)
            )
        else:
            p_size = (1 - r) * (size == a) + r * (size == a + 1)
            prob = p_size / math.comb(k, size)
        law[pattern] = prob
    return law, m * (1 - m) / (m - r11)


def _moments(f, theta, bits, probs, scale, k):
    """Mean and variance of the ARMS/LOO call mean over outcomes ``bits [P, K, D]`` with
    probabilities ``probs [P]``."""
    fs = f(bits)  # [P, K]
    learning = fs - (fs.sum(1, keepdims=True) - fs) / (k - 1)
    g = np.mean(learning[..., None] * (bits - theta), axis=1) * scale  # [P, D]
    mean = probs @ g
    return mean, probs @ g**2 - mean**2


def joint_moments(f, logits, k, copula):
    """Exact mean and variance of one ARMS call (the mean of its K rows), enumerating the
    product over coordinates of each coordinate's law of K bits."""
    theta = sig(logits)
    laws = [column_law(float(t), k, copula) for t in theta]
    scale = np.array([s for _, s in laws])
    patterns = [np.array(list(law)) for law, _ in laws]  # [2^K, K] per coordinate
    probs = [np.array(list(law.values())) for law, _ in laws]
    idx = np.array(list(itertools.product(*[range(len(p)) for p in probs])))  # [P, D]
    bits = np.stack([patterns[d][idx[:, d]] for d in range(len(theta))], axis=-1)
    p = np.prod([probs[d][idx[:, d]] for d in range(len(theta))], axis=0)
    return _moments(f, theta, bits.astype(np.float64), p, scale, k)


def loo_moments(f, logits, k):
    """Exact mean and variance of REINFORCE-LOO with K independent samples."""
    theta = sig(logits)
    bits = np.array(list(itertools.product([0.0, 1.0], repeat=k * len(theta))))
    bits = bits.reshape(-1, k, len(theta))
    p = np.prod(np.where(bits > 0, theta, 1 - theta), axis=(1, 2))
    return _moments(f, theta, bits, p, 1.0, k)


@pytest.mark.parametrize("copula", ["dirichlet", "systematic"])
def test_copula_law_matches_the_sampler(copula):
    """The enumerated law of one coordinate's K bits (marginals theta) == the frequencies of
    the library's sampler, within Bonferroni binomial SEs; its scale too."""
    logits = jnp.asarray([-1.7, -0.2, 0.0, 0.9, 2.6], jnp.float32)
    bits_fn = _arm.arms_bits if copula == "dirichlet" else _arm.systematic_bits
    n = 100_000
    bits, scale = jax.jit(jax.vmap(lambda key: bits_fn(logits, key, K)))(
        jax.random.split(jax.random.key(2), n)
    )
    bits = np.asarray(bits)  # [n, K, D]
    codes = (bits * (2 ** np.arange(K))[None, :, None]).sum(1).astype(int)  # [n, D]
    z = bonferroni_z(logits.size * 2**K, ALPHA)
    for d, lg in enumerate(np.asarray(logits, np.float64)):
        law, s = column_law(float(sig(lg)), K, copula)
        np.testing.assert_allclose(float(scale[0, d]), s, rtol=2e-5)
        assert abs(sum(law.values()) - 1) < 1e-12
        marg = sum(p * pat[0] for pat, p in law.items())
        assert abs(marg - sig(lg)) < 1e-12
        for pattern, p in law.items():
            code = int(sum(b << i for i, b in enumerate(pattern)))
            freq = float(np.mean(codes[:, d] == code))
            assert abs(freq - p) <= z * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9, (
                lg,
                pattern,
                freq,
                p,
            )


def test_arms_exact_unbiased_and_k2_is_disarm():
    """By enumeration: ARMS's mean is the gradient (both copulas, K = 2, 3, 4) on the 4-bit
    family; at K = 2 both copulas give DisARM's exact variance."""
    f, fam = family_cost_np()
    lg = np.asarray(fam.params["logits"], np.float64)
    for copula in ("dirichlet", "systematic"):
        for k in (2, 3, 4):
            mean, _ = joint_moments(f, lg, k, copula)
            np.testing.assert_allclose(mean, exact_gradient(f, lg), rtol=1e-9, atol=1e-12)
        _, v2 = joint_moments(f, lg, 2, copula)
        _, v_dis = exact_moments(disarm_row, f, lg)
        np.testing.assert_allclose(v2, v_dis, rtol=1e-9)


def test_arms_k2_rows_are_disarm_rows():
    """With K = 2 the Dirichlet copula is the antithetic pair (w_2 = 1 - w_1): one call's
    mean equals DisARM's row at u = w_1 (the rare value where w > 1 - m)."""
    f, fam = family_cost_np()
    lg = np.asarray(fam.params["logits"], np.float64)
    keys = jax.random.split(jax.random.key(100), 16)
    calls = jax.jit(
        jax.vmap(lambda k: estimators.arms(fam.cost, fam.params, bern, k, num_samples=2)["logits"])
    )(keys)
    e = np.asarray(jax.vmap(lambda k: jax.random.exponential(k, (2, lg.size)))(keys))
    for g, ei in zip(np.asarray(calls), e.astype(np.float64), strict=True):
        w1 = ei[0] / ei.sum(0)
        # rare (1 for theta < 1/2) where w1 > 1 - m, i.e. b = 1[u < theta] with u = 1 - w1 for
        # theta < 1/2 and u = w1 for theta >= 1/2; DisARM is symmetric in the pair.
        u = np.where(lg < 0, 1 - w1, w1)
        np.testing.assert_allclose(g.mean(0), disarm_row(f, lg, u), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", JOINT)
def test_arms_call_variance_against_enumeration(name):
    """The variance of one call's mean (K = 4), measured over independent calls, == the
    enumerated one (Bonferroni over coordinates; a 10% error rejected)."""
    f, fam = family_cost_np()
    lg = np.asarray(fam.params["logits"], np.float64)
    _, exact = joint_moments(f, lg, K, COPULA[name])
    g = rows_of(name, lambda b, xp=jnp: fam.cost(b), lg, jax.random.key(9), 4 * 100_000)
    n = g.shape[0]
    centred = g - g.mean(0)
    var = centred.var(0, ddof=1)
    se = np.sqrt(((centred**4).mean(0) - var**2) / n)
    z = bonferroni_z(2 * lg.size, ALPHA)
    assert np.all(np.abs(var - exact) <= z * se), (var, exact, se)
    distance = float(np.max(0.1 * exact / se))
    print(f"{name}: call variance power distance {distance:.1f} SE (z = {z:.2f})")
    assert statistics.NormalDist().cdf(distance - z) >= 0.9
    assert np.any(np.abs(var - 1.1 * exact) > z * se)


def equal_cost_variances(f, lg) -> dict[str, np.ndarray]:
    """Exact variance of the gradient estimate from 4 evaluations of f."""
    _, v_arm = exact_moments(arm_row, f, lg)
    _, v_dis = exact_moments(disarm_row, f, lg)
    return {
        "arm (2 pairs)": v_arm / 2,
        "disarm (2 pairs)": v_dis / 2,
        "arms dirichlet K=4": joint_moments(f, lg, K, "dirichlet")[1],
        "arms systematic K=4": joint_moments(f, lg, K, "systematic")[1],
        "score_function+loo K=4": loo_moments(f, lg, K)[1],
    }


def test_multi_sample_variance_at_equal_evaluations():
    """Exactly, at 4 evaluations of f: ARMS with the systematic copula never exceeds two
    independent DisARM pairs (the 4-bit family, the toy over theta); the Dirichlet copula
    beats them on the family's three coordinates with sigma(phi) != 1/2 (at 1/2 a DisARM pair
    is perfectly antithetic and two pairs are hard to beat) and on the toy away from 1/2."""
    f, fam = family_cost_np()
    lg = np.asarray(fam.params["logits"], np.float64)
    v = equal_cost_variances(f, lg)
    assert np.all(v["arms systematic K=4"] <= v["disarm (2 pairs)"])
    assert np.all(v["disarm (2 pairs)"] <= v["arm (2 pairs)"])
    off_half = lg != 0
    assert np.all(v["arms dirichlet K=4"][off_half] < v["disarm (2 pairs)"][off_half])
    for t in (0.45, 0.499):
        for theta in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
            lt = np.array([math.log(theta / (1 - theta))])
            vt = equal_cost_variances(toy(t), lt)
            assert vt["arms systematic K=4"][0] <= vt["disarm (2 pairs)"][0] * (1 + 1e-9) + 1e-18
            if theta != 0.5:
                assert vt["arms dirichlet K=4"][0] < vt["disarm (2 pairs)"][0]


# --- Edge cases, pull-back, surrogate, bad input -----------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_edge_logits(name):
    """sigma(phi) = 1/2 exactly and |phi| = 30 (probabilities 1e-13 from 0 and 1): finite
    rows; at |phi| = 30 the bits are almost surely fixed and every estimate is ~0, like the
    gradient (~1e-13); at phi = 0 unbiased for a cost of one bit (exact rows for DisARM and
    ARMS: theta(1-theta) f'(b) = 0.25 * 3)."""
    est = estimators.registry.get(name)
    n = 8 if est.multi_sample else 4096
    cases = [[0.0, 0.0], [30.0, -30.0], [-30.0, 0.0]]
    many = jax.jit(
        jax.vmap(
            lambda lg: est.per_sample(
                lambda b: 3 * b[0] + b[1], {"logits": lg}, bern, jax.random.key(1), num_samples=n
            )["logits"]
        )
    )(jnp.asarray(cases, jnp.float32))
    for lg, g in zip(cases, np.asarray(many), strict=True):
        # ARM's row at a fixed bit is (f(b~) - f(b))(u_d - 1/2): zero only when every bit is
        # fixed (the other coordinate can make the pair differ).
        fixed = all(abs(x) == 30 for x in lg) or name != "arm"
        assert np.all(np.isfinite(g))
        for d in range(2):
            if abs(lg[d]) == 30 and fixed:
                assert np.all(np.abs(g[:, d]) < 1e-6)
    params = {"logits": jnp.zeros(1)}
    g = np.asarray(
        est.per_sample(lambda b: 3 * b[0], params, bern, jax.random.key(4), num_samples=n)["logits"]
    )
    if name == "arm":  # (f(b~) - f(b))(u - 1/2), b~ = 1 - b: 3 |u - 1/2|, mean 3/4
        np.testing.assert_allclose(
            g[:, 0],
            3 * np.abs(np.asarray(jax.random.uniform(jax.random.key(4), (n, 1)))[:, 0] - 0.5),
            rtol=1e-5,
        )
    elif name in ("disarm", "arms_systematic"):  # exactly one / two of four bits set: exact
        np.testing.assert_allclose(g.mean(0), [0.75], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_pull_back_and_surrogate(name):
    """A non-trivial dist_builder (logits = scale * direction, 2-D event): the per-sample
    gradients are the chain rule of the logits' ones; jax.grad of the surrogate == the mean
    of per_sample, and its gradient w.r.t. a weight f closes over is the mean of f's
    gradients at the evaluated points."""
    est = estimators.registry.get(name)
    params = {"scale": jnp.asarray(1.3), "direction": jnp.asarray([[0.5, -0.4], [0.2, 1.1]])}

    def build(p):
        return estimators.Bernoulli(p["scale"] * p["direction"])

    def cost(w):
        return lambda b: jnp.sum(w * b) + jnp.prod(1.0 + b)

    w = jnp.asarray([[1.0, -2.0], [0.5, 0.3]])
    key, n = jax.random.key(6), 8

    @jax.jit
    def run(params, w):
        g = est.per_sample(cost(w), params, build, key, num_samples=n)
        logit_params = {"logits": params["scale"] * params["direction"]}
        g_logits = est.per_sample(cost(w), logit_params, bern, key, num_samples=n)["logits"]
        grads = jax.grad(
            lambda p, ww: est.surrogate(cost(ww), p, build, key, num_samples=n), argnums=(0, 1)
        )(params, w)
        return g, g_logits, grads

    g, g_logits, grads = run(params, w)
    np.testing.assert_allclose(g["direction"], params["scale"] * g_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        g["scale"],
        jnp.sum(g_logits * params["direction"][None], axis=(1, 2)),
        rtol=1e-5,
        atol=1e-6,
    )
    for k in params:
        np.testing.assert_allclose(grads[0][k], g[k].mean(0), rtol=1e-5, atol=1e-6)
    # d/dw of sum(w * b) is b: the surrogate's gradient in w is the mean of the bits at the
    # points the estimate evaluated f at (both points of each pair; the K joint samples).
    logits = params["scale"] * params["direction"]
    theta = sig(logits)
    if name in SINGLE:
        u = np.asarray(jax.random.uniform(key, (n, 2, 2)), np.float64)
        points = np.concatenate([u < theta, 1 - u < theta]) * 1.0
    else:
        bits = _arm.arms_bits if name == "arms" else _arm.systematic_bits
        points = np.asarray(bits(logits, key, n)[0])
    np.testing.assert_allclose(grads[1], points.mean(0), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name):
    est = estimators.registry.get(name)
    normal = lambda p: estimators.Normal(p["loc"], jnp.ones(2))  # noqa: E731
    with pytest.raises(ValueError, match="Binary"):
        est.per_sample(
            lambda x: jnp.sum(x), {"loc": jnp.zeros(2)}, normal, jax.random.key(0), num_samples=4
        )
    with pytest.raises(ValueError, match="num_samples"):
        est.per_sample(
            lambda b: jnp.sum(b),
            {"logits": jnp.zeros(2)},
            bern,
            jax.random.key(0),
            num_samples=est.min_samples - 1,
        )
    if name == "arms":
        with pytest.raises(ValueError, match="copula"):
            estimators.arms(
                lambda b: jnp.sum(b),
                {"logits": jnp.zeros(2)},
                bern,
                jax.random.key(0),
                num_samples=4,
                copula="gaussian",
            )
