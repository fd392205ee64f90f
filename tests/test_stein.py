"""Double control variates ("double_cv", Titsias & Shi 2022) and RODEO ("rodeo", Shi et al.
2022) held against mathematics.

* The Gibbs-kernel Stein identity E_q[(A h)(x)] = 0, exactly by enumeration, for random
  vector-valued h (with a companion: the operator without the flip probabilities fails it).
* Both estimators' exact expectation, by enumerating every joint draw of K = 2 and K = 3
  samples of 3 bits, equals the exact gradient for random nonzero control parameters, and
  their control variates (the estimate minus its REINFORCE-LOO part) have mean exactly zero.
* Monte Carlo: with a control trained online (the estimators' own update, the authors'
  learning rate 1e-3, 3000 steps of K = 4 samples), the mean of independent calls matches the
  exact gradient by enumeration (Bonferroni z from the SE over calls, fixed keys) on the toy
  (b - t)^2 (t = 0.45, D = 1) and on a product of 10 coordinates; the same check rejects the
  estimates scaled by 0.9, with analytic power >= 0.99. (The conformance battery adds the
  4-bit family.)
* Variance at equal evaluations of f (K = 4 per estimate, each estimator 1 per sample) against
  "score_function+loo": lower on the 10-bit product and the 4-bit family beyond the SE of the
  difference; the toy's numbers are printed.
"""

from __future__ import annotations

import functools
import itertools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from estimators import EstimateInputs, registry, testing
from estimators.discrete._double_cv import BinarySamples, double_cv_estimator, double_cv_rows
from estimators.discrete._rodeo import (
    _others,
    control_apply,
    control_init,
    flip_neighbours,
    gibbs_stein,
    rodeo_estimator,
    rodeo_init,
    rodeo_rows,
)

K = 4
TRAIN_STEPS = 3000
TRAIN_RATE = 1e-3  # the authors' learning rate of the control (thjashin/rodeo)
NAMES = ("double_cv", "rodeo")
MAKERS = {"double_cv": double_cv_estimator, "rodeo": rodeo_estimator}


def _bern(p):
    return estimators.Bernoulli(p["logits"])


def _outcomes(dim: int) -> np.ndarray:
    return np.array(list(itertools.product([0.0, 1.0], repeat=dim)))


def _enumerated_family(name, logits, cost_np, cost_jnp) -> testing.Family:
    """A Family whose exact gradient w.r.t. the logits is a sum over all 2^D outcomes."""
    logits = np.asarray(logits, np.float64)
    xs = _outcomes(logits.size)
    theta = 1 / (1 + np.exp(-logits))
    probs = np.prod(np.where(xs > 0, theta, 1 - theta), axis=1)
    f = np.array([cost_np(x) for x in xs])
    grad = ((probs * f)[:, None] * (xs - theta)).sum(0)
    return testing.Family(
        name=name,
        params={"logits": jnp.asarray(logits, jnp.float32)},
        dist_builder=_bern,
        cost=cost_jnp,
        expectation=float(probs @ f),
        gradient={"logits": grad},
        variances={},
        description=name,
    )


TOY_T = 0.45
PRODUCT_C = np.linspace(-0.6, 0.9, 10)


@functools.cache
def family(name: str) -> testing.Family:
    if name == "toy":
        return _enumerated_family(
            "toy", [0.0], lambda x: (x[0] - TOY_T) ** 2, lambda b: jnp.sum((b - TOY_T) ** 2)
        )
    if name == "product":
        c = jnp.asarray(PRODUCT_C, jnp.float32)
        return _enumerated_family(
            "product",
            np.linspace(-1.2, 1.0, 10),
            lambda x: np.prod(1 + PRODUCT_C * x),
            lambda b: jnp.prod(1 + c * b),
        )
    return testing.family(name)


def test_toy_family_is_the_closed_form():
    fam = family("toy")
    # d/dl E[(b - t)^2] = sigma'(0) ((1 - t)^2 - t^2) = (1 - 2t) / 4.
    np.testing.assert_allclose(fam.gradient["logits"], [(1 - 2 * TOY_T) / 4], rtol=1e-12)


# --- The Stein identity and exact expectations by enumeration -------------------------------


def _stein_mean(theta: jax.Array, table: jax.Array, weighted: bool = True) -> jax.Array:
    """E_q[(A h)(x)] over all x in {0,1}^D, h given as a table [2^D, out]."""
    dim = theta.shape[0]
    xs = jnp.asarray(_outcomes(dim), jnp.float32)
    powers = 2 ** jnp.arange(dim - 1, -1, -1)

    def h(y):
        return table[jnp.sum(y * powers).astype(jnp.int32)]

    def one(x):
        nbrs, flips = flip_neighbours(x, theta)
        w = flips if weighted else jnp.ones_like(flips)
        p = jnp.prod(jnp.where(x > 0, theta, 1 - theta))
        return p * gibbs_stein(h(x), jax.vmap(h)(nbrs), w)

    return jnp.sum(jax.vmap(one)(xs), axis=0)


_stein_mean = jax.jit(_stein_mean, static_argnums=2)


def test_gibbs_stein_identity_exactly():
    """E_q[(A h)(x)] = 0 for random theta and random h: {0,1}^4 -> R^3; the operator with
    the flip probabilities left out has a mean of the size of h (the check can fail)."""
    k1, k2 = jax.random.split(jax.random.key(11))
    theta = jax.random.uniform(k1, (4,), minval=0.05, maxval=0.95)
    table = jax.random.normal(k2, (16, 3))
    scale = float(jnp.max(jnp.abs(table)))
    assert float(jnp.max(jnp.abs(_stein_mean(theta, table)))) < 1e-6 * scale
    assert float(jnp.max(jnp.abs(_stein_mean(theta, table, weighted=False)))) > 1e-2 * scale


def _dense_rodeo_rows(samples, control, alpha, beta):
    """RODEO's rows as the module's formula reads: the network at every flipped neighbour
    x_k^(d) ([K, D, D] points) and gibbs_stein applied to h^0 and to H = h^1 (y - theta)."""
    xs, probs, fs, gs = samples
    score = xs - probs[None]
    nbrs, flips = jax.vmap(flip_neighbours, in_axes=(0, None))(xs, probs)  # [K, D, D], [K, D]
    points = jnp.concatenate([xs[:, None, :], nbrs], axis=1)  # [K, D+1, D]
    others = _others(xs.shape[0])
    g_o, f_o = gs[others], fs[others]
    anchor = jnp.sum(g_o * xs[others], axis=-1)
    lin = jnp.einsum("kpd,kjd->kpj", points, g_o) - anchor[:, None, :]  # [K, D+1, K-1]
    h = jnp.mean(control_apply(control, f_o[:, None, :], lin), axis=2)  # [K, D+1, 2]
    h_x, h_n = h[:, 0], h[:, 1:]
    a_h0 = jax.vmap(gibbs_stein)(h_x[:, 0], h_n[..., 0], flips)
    big_h_n = h_n[..., 1:2] * (nbrs - probs[None, None])  # [K, D(flip), D]
    a_big_h = jax.vmap(gibbs_stein)(h_x[:, 1:2] * score, big_h_n, flips)
    corrected = fs + alpha * a_h0
    baseline = (jnp.sum(corrected) - corrected) / (xs.shape[0] - 1)
    return (fs - baseline)[:, None] * score + beta * a_big_h


@pytest.mark.parametrize(("num_samples", "dim"), [(2, 1), (3, 7), (5, 40)])
def test_rodeo_rows_equal_the_dense_neighbour_formula(num_samples, dim):
    """rodeo_rows (O(K^2 D H), the linearisation moved by g_jd (1 - 2 x_d)) equals the formula
    at the D flipped neighbours (O(K^2 D^2)) on random samples, probabilities (some near 0 and
    1), costs, gradients and a random control with large weights, nonzero alpha and beta: to
    float32 rounding relative to the rows' size; a wrong sign on the flip term is rejected."""
    ks = jax.random.split(jax.random.key(num_samples * 100 + dim), 6)
    xs = (jax.random.uniform(ks[0], (num_samples, dim)) < 0.5).astype(jnp.float32)
    probs = jax.nn.sigmoid(4.0 * jax.random.normal(ks[1], (dim,)))
    fs = 3.0 * jax.random.normal(ks[2], (num_samples,))
    gs = 2.0 * jax.random.normal(ks[3], (num_samples, dim))
    control = jax.tree.map(lambda w: 3.0 * w + 0.1, control_init(ks[4], hidden=16))
    samples = BinarySamples(xs, probs, fs, gs)
    alpha, beta = jnp.float32(0.9), jnp.float32(-1.7)
    fast = np.asarray(jax.jit(rodeo_rows)(samples, control, alpha, beta), np.float64)
    dense = np.asarray(jax.jit(_dense_rodeo_rows)(samples, control, alpha, beta), np.float64)
    scale = float(np.max(np.abs(dense)))
    assert scale > 0.1
    np.testing.assert_allclose(fast, dense, rtol=0, atol=2e-5 * scale)
    wrong = _dense_rodeo_rows(samples, control, alpha, -beta)  # the control variate's sign
    assert float(jnp.max(jnp.abs(wrong - dense))) > 1e-2 * scale


def _smooth_cost(b):
    v = jnp.array([0.7, -1.0, 0.4])
    return jnp.sum(jnp.array([1.0, -2.0, 0.5]) * b) + 0.5 * (b @ v) ** 2 + jnp.cos(2 * b @ v)


def _random_controls():
    control = control_init(jax.random.key(5), hidden=16)
    control = jax.tree.map(lambda w: 3.0 * w + 0.1, control)  # large, nonzero biases too
    return {
        "double_cv": lambda s: double_cv_rows(s, jnp.float32(-0.8)),
        "rodeo": lambda s: rodeo_rows(s, control, jnp.float32(0.9), jnp.float32(-1.7)),
        "loo": lambda s: double_cv_rows(s, jnp.float32(0.0)),
    }


@functools.partial(jax.jit, static_argnums=0)
def _joint_means(num_samples: int):
    """Exact means over all joint draws: the gradient, each estimator's mean row and per-row
    means, and the rows of one draw (for the non-triviality check)."""
    dim = 3
    theta = jnp.array([0.3, 0.55, 0.8])
    single = jnp.asarray(_outcomes(dim), jnp.float32)  # [8, 3]
    joint = jnp.asarray(list(itertools.product(range(2**dim), repeat=num_samples)))
    xs = single[joint]  # [8^K, K, 3]
    p = jnp.prod(jnp.where(xs > 0, theta[None, None], 1 - theta[None, None]), axis=(1, 2))
    fs, gs = jax.vmap(jax.vmap(jax.value_and_grad(_smooth_cost)))(xs)
    f1 = jax.vmap(_smooth_cost)(single)
    p1 = jnp.prod(jnp.where(single > 0, theta[None], 1 - theta[None]), axis=1)
    exact = jnp.sum((p1 * f1)[:, None] * (single - theta[None]), axis=0)
    out = {}
    for name, rows_fn in _random_controls().items():
        r = jax.vmap(lambda x, f, g, fn=rows_fn: fn(BinarySamples(x, theta, f, g)))(xs, fs, gs)
        out[name] = (jnp.einsum("n,nkd->kd", p, r), r[7])
    return exact, out


@pytest.mark.parametrize("num_samples", [2, 3])
def test_exact_expectation_over_joint_draws(num_samples):
    """Every joint draw of K samples of 3 bits, weighted by its probability: each row of each
    estimator has the exact gradient as its mean, and its control variates (its rows minus
    REINFORCE-LOO's) have mean zero, for random nonzero control parameters."""
    exact, out = _joint_means(num_samples)
    exact = np.asarray(exact, np.float64)
    loo_rows, loo_draw = (np.asarray(a, np.float64) for a in out["loo"])
    for name in NAMES:
        per_row, draw = (np.asarray(a, np.float64) for a in out[name])
        np.testing.assert_allclose(per_row, np.broadcast_to(exact, per_row.shape), atol=2e-5)
        np.testing.assert_allclose(per_row - loo_rows, 0.0, atol=2e-5)
        # not trivially REINFORCE-LOO: the control variates change the rows of a draw
        assert np.max(np.abs(draw - loo_draw)) > 1e-2


# --- Monte Carlo, with trained controls -----------------------------------------------------


@functools.cache
def trained_state(name: str, fam_name: str):
    """The estimator's own update, TRAIN_STEPS times on fresh keys (one jitted scan)."""
    est, fam = MAKERS[name](TRAIN_RATE), family(fam_name)

    def step(state, key):
        inputs = EstimateInputs(fam.cost, fam.params, fam.dist_builder, key, K)
        return est.update(state, jnp.zeros(K), inputs=inputs), None

    keys = jax.random.split(jax.random.key(7), TRAIN_STEPS)
    state, _ = jax.jit(lambda s, ks: jax.lax.scan(step, s, ks))(est.init(), keys)
    return state


TOY_DOUBLE_CV_ALPHA = -0.012  # the least-variance alpha on the toy (K = 4, enumeration)
CALLS = {"toy": 4000, "product": 8000, "Bernoulli": 8000}


@functools.cache
def rows(name: str, fam_name: str) -> dict[str, np.ndarray]:
    """[C, K, *leaf] estimates from independent calls (keys split from a fixed key)."""
    fam = family(fam_name)
    if name == "score_function+loo":
        est, state = registry.get(name), ()
    else:
        est, state = MAKERS[name](TRAIN_RATE), trained_state(name, fam_name)
    return testing.estimates(
        est, fam, jax.random.key(2024), num_samples=K, num_calls=CALLS[fam_name], state=state
    )


@pytest.mark.parametrize("fam_name", ["toy", "product"])
@pytest.mark.parametrize("name", NAMES)
def test_unbiased_with_trained_control(name, fam_name):
    est, fam = registry.get(name), family(fam_name)
    assert est.multi_sample and est.adaptive and est.unbiased
    state = trained_state(name, fam_name)
    moved = [float(state.alpha)] + ([float(state.beta)] if name == "rodeo" else [])
    if (name, fam_name) == ("double_cv", "toy"):
        # On the toy the variance of double CV's K = 4 estimate, by enumerating the 16 joint
        # draws, is least at alpha = -0.012 (1.042e-4 at LOO's alpha = 0, 1.029e-4 there):
        # alpha must have moved from 0 to within half that distance of it.
        assert abs(moved[0] - TOY_DOUBLE_CV_ALPHA) < 0.5 * abs(TOY_DOUBLE_CV_ALPHA), moved
    else:
        assert max(abs(m) for m in moved) > 1e-2  # the control was trained away from LOO
    report = testing.report_from_estimates(est, fam, rows(name, fam_name))
    assert report.se_from == "calls"
    assert report.ok, str(report)
    # companion: 10% too small is rejected, and the check has the power to do so
    assert report.failures(scale=0.9)
    exact, se = fam.gradient["logits"], report.se["logits"]
    distance = float(np.max(0.1 * np.abs(exact) / se))
    assert statistics.NormalDist().cdf(distance - report.z) >= 0.99


def _call_variance(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample variance (K x the variance of one call's mean) and its SE, per coordinate."""
    means = r.mean(axis=1)  # [C, D]
    n = means.shape[0]
    d = means - means.mean(0)
    var = np.sum(d**2, 0) / (n - 1)
    se = np.sqrt(np.maximum(np.mean(d**4, 0) - var**2 * (n - 3) / (n - 1), 0.0) / n)
    return K * var, K * se


@pytest.mark.parametrize("fam_name", ["toy", "product", "Bernoulli"])
def test_variance_against_reinforce_loo(fam_name, capsys):
    """Equal evaluations of f (K = 4; 1 per sample for each): the trained estimators'
    variance, summed over coordinates, is below REINFORCE-LOO's beyond z SEs of the
    difference on the product and the 4-bit family; on the toy the numbers are printed
    (the trained RODEO is below, double CV equal within the SE: see the report)."""
    base = _call_variance(rows("score_function+loo", fam_name)["logits"])
    z = testing.bonferroni_z(2)
    lines = [f"{fam_name}: score_function+loo {base[0].sum():.4g} +- {base[1].sum():.2g}"]
    for name in NAMES:
        var, se = _call_variance(rows(name, fam_name)["logits"])
        lines.append(f"  {name} {var.sum():.4g} +- {se.sum():.2g}")
        if fam_name != "toy":
            assert base[0].sum() - var.sum() > z * (base[1].sum() + se.sum()), lines
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_registry_declarations():
    for name in NAMES:
        est = registry.get(name)
        assert est.requires == (estimators.Binary,)
        assert est.min_samples == 2 and est.cost_evaluations(10) == 1
        with pytest.raises(ValueError, match="inputs"):
            est.update(est.init(), jnp.zeros(K))


def test_initial_state_is_reinforce_loo():
    """alpha = beta = 0 at first: the estimators' rows equal REINFORCE-LOO's on the same key."""
    fam = family("Bernoulli")
    keys = jax.random.split(jax.random.key(3), 50)

    def logits_rows(est, state):
        def one(key):
            return est.per_sample(
                fam.cost, fam.params, fam.dist_builder, key, num_samples=K, state=state
            )["logits"]

        return jax.jit(jax.vmap(one))(keys)

    loo = logits_rows(registry.get("score_function+loo"), ())
    for name in NAMES:
        est = registry.get(name)
        np.testing.assert_allclose(logits_rows(est, est.init()), loo, rtol=1e-5, atol=1e-6)
    assert rodeo_init().alpha == 0
