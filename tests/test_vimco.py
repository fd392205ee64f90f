"""VIMCO (registry "vimco") against the exact gradient of the K-sample bound, by enumeration.

The estimand is grad E_{q^K}[-log (1/K) sum_k exp(-f(x_k))] (f = -log w). Exact values here come
from jax.grad of the enumerated expectation over all 2^(K D) tuples (autodiff of the
probabilities: a route independent of VIMCO's score form and of estimators.testing's).

* the D = 1 toy of REBAR/RELAX, f(b) = (b - t)^2 (log w = -(b - t)^2), K = 2, and a D = 4
  Bernoulli with a quadratic and a three-way product term that also depends on a parameter phi
  of f (a decoder's weights: the surrogate passes f's direct gradient), K = 3: the mean over
  independent calls within Bonferroni z SEs; the same check rejects a 10% error, with analytic
  power >= 0.99;
* testing.bound_gradient (the battery's exact values) equals this enumeration for the Bernoulli
  family (K = 2, 3), and its Normal quadrature (K = 2) agrees with IWAE's pathwise Monte Carlo
  at K = 2 (an independent estimator) within Bonferroni SEs; testing.check_unbiased holds VIMCO
  with K = 3 to the Categorical's 3-sample bound;
* VIMCO's baseline L_{-k} does not depend on x_k, and adding it leaves the score term's
  expectation unchanged, exactly by enumeration (companion: the baseline L, which depends on
  x_k, changes it);
* in the VAE runner (experiments/vae/train.py, f = -log p(x, z) + log q(z | x): f depends on
  the encoder and decoder weights directly), VIMCO's gradient of every weight of the 1-D-latent
  VAE of tests/test_vae.py is unbiased for the exact K = 2 bound gradient computed there
  (float64 trapezoid rule, differentiated), 20k estimates, Bonferroni z; 10% rejected;
* K = 1 is refused with a clear error.
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
from estimators import registry, testing

ALPHA = testing.ALPHA
FACTOR = 1.1  # the deliberate error the checks must reject
NUM_CALLS = 50_000


def bernoulli(p):
    return estimators.Bernoulli(p["logits"])


def toy_cost(x, phi):
    del phi
    return jnp.sum((x - 0.45) ** 2)


V = jnp.array([1.0, -0.5, 0.7, 1.2])


def cube_cost(x, phi):
    return phi @ x + 0.5 * (V @ x) ** 2 + 2.0 * x[0] * x[1] * x[2]


PROBLEMS = {
    # name: (cost(x, phi), logits, phi, K)
    "toy": (toy_cost, [0.3], [0.0], 2),
    "cube": (cube_cost, [0.4, -0.8, 1.2, 0.0], [0.5, -1.0, 0.8, 0.3], 3),
}


def tuples(dim: int, k: int) -> jax.Array:
    """Every K-tuple of D bits, ``[2^(K D), K, D]``."""
    out = jnp.array(list(itertools.product([0.0, 1.0], repeat=dim * k)))
    return out.reshape(-1, k, dim)


def exact_gradient(cost, params, k):
    """grad (logits, phi) of E[-log mean_k exp(-f(x_k; phi))], summing over every tuple."""
    xs = tuples(params["logits"].shape[0], k)

    def expectation(p):
        lg = p["logits"]
        log_p = jnp.sum(xs * lg[None, None] - jax.nn.softplus(lg)[None, None], axis=(1, 2))
        costs = jax.vmap(jax.vmap(lambda x: cost(x, p["phi"])))(xs)
        bound = jax.nn.logsumexp(-costs, axis=1) - math.log(k)
        return jnp.sum(jnp.exp(log_p) * -bound)

    return {n: np.asarray(g, np.float64) for n, g in jax.grad(expectation)(params).items()}


def z_check(mean, se, exact, num_checks, extra=0.0):
    """Coordinates failing |mean - exact| <= z se + float32 slack (+ ``extra``, an error bound
    of ``exact``); and the analytic power of the same check against ``FACTOR`` times the
    estimate."""
    z = testing.bonferroni_z(num_checks, ALPHA)
    slack = 1e-5 * (np.abs(exact) + np.abs(mean)) + extra
    bad = np.abs(mean - exact) > z * se + slack
    delta = np.abs(FACTOR - 1) * np.abs(exact) / (FACTOR * se)
    normal = statistics.NormalDist()
    power = max(normal.cdf(-z - d) + normal.cdf(d - z) for d in delta.ravel())
    rejects = np.any(np.abs(FACTOR * mean - exact) > z * FACTOR * se + slack)
    return bad, float(power), bool(rejects)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_vimco_matches_the_exact_bound_gradient(name):
    """Rows (the registry's per_sample) for the logits and the surrogate's gradient for the
    logits and phi, each averaged over NUM_CALLS independent calls of K samples: within
    Bonferroni z SEs (3 D coordinates) of the enumeration; the same check rejects 10%."""
    cost, logits, phi, k = PROBLEMS[name]
    params = {"logits": jnp.array(logits), "phi": jnp.array(phi)}
    est = registry.get("vimco")

    def one(key):
        rows = est.per_sample(
            lambda x: cost(x, params["phi"]), params, bernoulli, key, num_samples=k
        )
        grad = jax.grad(
            lambda p: est.surrogate(lambda x: cost(x, p["phi"]), p, bernoulli, key, num_samples=k)
        )(params)
        return rows["logits"].mean(0), grad["logits"], grad["phi"]

    keys = jax.random.split(jax.random.key(12), NUM_CALLS)
    draws = [np.asarray(a, np.float64) for a in jax.jit(jax.vmap(one))(keys)]
    exact = exact_gradient(cost, params, k)
    expected = [exact["logits"], exact["logits"], exact["phi"]]
    mean = np.concatenate([d.mean(0) for d in draws])
    se = np.concatenate([d.std(0, ddof=1) / math.sqrt(NUM_CALLS) for d in draws])
    want = np.concatenate(expected)
    keep = se > 0  # the toy's phi is unused: its gradient is exactly 0 on every call
    assert np.all(np.abs(mean[~keep] - want[~keep]) <= 1e-6)
    bad, power, rejects = z_check(mean[keep], se[keep], want[keep], int(keep.sum()))
    assert not bad.any(), (mean, want, se)
    assert power >= 0.99 and rejects, power


def test_bound_gradients_of_the_battery_are_exact():
    """testing.bound_gradient on the Bernoulli family (K = 2, 3) == jax.grad of the
    enumerated expectation (float32 autodiff: 1e-5 relative)."""
    fam = testing.family("Bernoulli")
    params = {"logits": fam.params["logits"], "phi": jnp.zeros(())}
    for k in (2, 3):
        exact = exact_gradient(lambda x, phi: fam.cost(x), params, k)["logits"]
        np.testing.assert_allclose(testing.bound_gradient(fam, k)["logits"], exact, rtol=1e-5)
    assert testing.bound_gradient("Gamma", 2) is None
    assert [f.name for f in testing.families("vimco")] == ["Normal", "Bernoulli", "Categorical"]


def test_check_unbiased_with_three_samples_on_the_categorical():
    """testing.check_unbiased holds VIMCO with K = 3 to the Categorical family's 3-sample bound
    (729 tuples; the battery uses K = 2), and rejects the estimates scaled by 1.1."""
    r = testing.check_unbiased(
        "vimco", "Categorical", key=jax.random.key(4), num_samples=3, num_calls=100_000
    )
    assert r.num_samples == 3 and r.se_from == "calls" and "3-sample bound" in r.note
    assert r.failures(scale=FACTOR)


def test_normal_bound_quadrature_agrees_with_iwae():
    """The Normal family's K = 2 bound gradient (6-D Gauss-Hermite) against IWAE's pathwise
    estimate at K = 2 (independent code), 200k calls: within Bonferroni z SEs over the 6
    coordinates; the same check rejects 10% (power >= 0.99)."""
    fam = testing.family("Normal")
    rows = testing.estimates("iwae", fam, jax.random.key(3), num_samples=2, num_calls=200_000)
    exact = testing.bound_gradient(fam, 2)
    means = {n: r.mean(1) for n, r in rows.items()}  # [C, 3] per-call means
    mean = np.concatenate([means[n].mean(0) for n in exact])
    se = np.concatenate([means[n].std(0, ddof=1) / math.sqrt(200_000) for n in exact])
    want = np.concatenate([exact[n] for n in exact])
    bad, power, rejects = z_check(mean, se, want, 6)
    assert not bad.any(), (mean, want, se)
    assert power >= 0.99 and rejects, power


def test_vimco_in_the_vae_runner_is_unbiased():
    """Every weight of the tiny VAE (encoder and decoder): the mean of 20k gradients of
    vae_train.example_loss with the registry's "vimco", K = 2, within Bonferroni z SEs (plus
    the quadrature's error bound) of the exact gradient of the negative 2-sample bound
    (tests/test_vae.py's independent float64 quadrature); a 10% error rejected (power >=
    0.99). Weights with no variance (SE 0) must match to float32 rounding."""
    import optax
    from flax import nnx

    from experiments.vae import train as vae_train
    from tests import test_vae

    graphdef, params = test_vae._iw_model()
    k, n = 2, 20_000
    setup = vae_train.Setup(
        "vimco", registry.get("vimco"), k, 1, 1, False, graphdef, optax.sgd(0.0)
    )

    def one(key):
        def loss(p):
            return vae_train.example_loss(setup, nnx.merge(graphdef, p), test_vae.IW_X, key, ())[0]

        return test_vae._flat(jax.grad(loss)(params))

    draws = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(9), n)), np.float64)
    exact, coarse, _ = test_vae.exact_negative_bound_gradients(
        graphdef, params, k, test_vae.IW_STEP[k]
    )
    mean, se = draws.mean(0), draws.std(0, ddof=1) / math.sqrt(n)
    keep = se > 0
    np.testing.assert_allclose(mean[~keep], exact[~keep], atol=1e-6)
    quadrature = np.abs(exact - coarse)[keep]  # <= 1e-8
    bad, power, rejects = z_check(mean[keep], se[keep], exact[keep], int(keep.sum()), quadrature)
    assert not bad.any(), (mean, exact, se)
    assert power >= 0.99 and rejects, power


def _score_term_expectations(baseline_fn, dim=2, k=3):
    """E[sum_k (L - b_k) s(x_k)] with b = baseline_fn(log_w), and E[sum_k L s(x_k)], by
    enumeration of every K-tuple (4^3 = 64)."""
    logits = jnp.array([0.5, -0.7])
    xs = tuples(dim, k)
    lp = logits[None, None]
    p = jnp.exp(jnp.sum(xs * lp - jax.nn.softplus(lp), axis=(1, 2)))
    log_w = -jax.vmap(jax.vmap(lambda x: cube_cost(jnp.pad(x, (0, 2)), jnp.ones(4))))(xs)
    bound = jax.nn.logsumexp(log_w, axis=1) - math.log(k)  # [T]
    b = jax.vmap(baseline_fn)(log_w)  # [T, K]
    scores = xs - jax.nn.sigmoid(lp)  # [T, K, D]
    with_b = jnp.einsum("t,tk,tkd->d", p, bound[:, None] - b, scores)
    without = jnp.einsum("t,t,tkd->d", p, bound, scores)
    size = jnp.einsum("t,tk,tkd->d", p, jnp.abs(b), jnp.abs(scores))
    return np.asarray(with_b), np.asarray(without), np.asarray(size), xs, b


def test_the_baseline_leaves_the_expectation_unchanged():
    """L_{-k} depends on the other samples only (changing x_k leaves it, float32 rounding
    aside), and E[sum_k (L - L_{-k}) s(x_k)] == E[sum_k L s(x_k)] exactly by enumeration (up
    to 1e-6 of sum p |L_{-k}| |s|); companion: the baseline L (which depends on x_k) changes
    the expectation by far more than that tolerance."""
    with_b, without, size, xs, b = _score_term_expectations(estimators.vimco_baselines)
    np.testing.assert_array_less(np.abs(with_b - without), 1e-6 * size)
    # Independence: tuples that differ only in sample k share L_{-k}.
    codes = np.asarray(xs, int).reshape(xs.shape[0], xs.shape[1], -1)
    for k in range(xs.shape[1]):
        others = {}
        for t in range(xs.shape[0]):
            key = tuple(np.delete(codes[t], k, axis=0).ravel())
            others.setdefault(key, []).append(float(b[t, k]))
        assert all(np.ptp(v) <= 1e-6 * max(1.0, np.max(np.abs(v))) for v in others.values())
    bad_with, bad_without, bad_size, _, _ = _score_term_expectations(
        lambda lw: jnp.broadcast_to(jax.nn.logsumexp(lw) - math.log(lw.shape[0]), lw.shape)
    )
    assert np.max(np.abs(bad_with - bad_without) / bad_size) > 1e-2


def test_one_sample_is_refused():
    params, f = {"logits": jnp.zeros(3)}, lambda x: jnp.sum(x)
    est, key = registry.get("vimco"), jax.random.key(0)
    for fn in (est.per_sample, est.surrogate, estimators.vimco, estimators.vimco_surrogate):
        with pytest.raises(ValueError, match="num_samples >= 2"):
            fn(f, params, bernoulli, key, num_samples=1)
    with pytest.raises(ValueError, match="num_samples >= 2"):
        estimators.vimco_baselines(jnp.zeros(1))
    with pytest.raises(ValueError, match="2-sample bound"):
        testing.check_unbiased("vimco", "Gamma", key=key)
