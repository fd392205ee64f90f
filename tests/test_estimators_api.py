"""Estimator API: surrogate forms, pytree shapes, optax compatibility, bad input.

The surrogate checks are exact (same key -> same samples, equal up to float32 rounding) except
the direct-dependence test, which is statistical (SE-based, Bonferroni over its checks).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from tests import _closed_forms as cf

ESTIMATORS = {"pathwise": estimators.pathwise, "score_function": estimators.score_function}
SURROGATES = {
    "pathwise": estimators.pathwise_surrogate,
    "score_function": estimators.score_function_surrogate,
}
LOC = np.array([0.5, -1.0, 2.0], np.float32)
LOG_SCALE = np.log(np.array([0.7, 1.3, 0.4], np.float32))
PARAMS = {"loc": LOC, "log_scale": LOG_SCALE}


def build_normal(p):
    return estimators.Normal.from_log_scale(p["loc"], p["log_scale"])


def cos_cost(x):
    return jnp.sum(jnp.cos(x)) + 0.3 * jnp.sum(x) ** 2


def _close(a, b, *, rtol=2e-5):
    """Equal up to float32 rounding of differently ordered sums: rtol relative to the largest
    entry of the leaf (values are O(1-100), eps = 6e-8, sums of <= 1000 terms)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.max(np.abs(y)))
    assert jax.tree.structure(a) == jax.tree.structure(b)


# --------------------------------------------------------------------------------------------
# Surrogates.
# --------------------------------------------------------------------------------------------

# grad(surrogate) == the mean of the per-sample estimates on the same key, jit == eager and the
# leaves' shapes are checked for every estimator of the registry on every family it supports in
# tests/test_conformance.py; the tests below cover what that battery does not: the surrogate's
# value, a cost that depends on the parameters directly, other pytrees, the optax names.


def test_surrogate_value_is_the_monte_carlo_mean():
    """Both surrogates' values are (1/N) sum f(x_i) over the estimators' samples, which for a
    Normal are documented as loc + scale * jax.random.normal(key, (N, D))."""
    key, n = jax.random.key(8), 64
    d = build_normal(PARAMS)
    eps = jax.random.normal(key, (n, *d.event_shape))
    xs = d.loc[None] + d.scale[None] * eps
    np.testing.assert_array_equal(xs, estimators.draw_samples(d, key, n))
    expected = float(jnp.mean(jax.vmap(cos_cost)(xs)))
    for sur in SURROGATES.values():
        value = sur(cos_cost, PARAMS, build_normal, key, num_samples=n)
        assert value.shape == ()
        np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_discrete_samples_are_one_batched_draw():
    """draw_samples of a Bernoulli is jax.random.bernoulli(key, p, (N, D)) (the uniforms
    uniform(key, (N, D)) below p), of a Categorical jax.random.categorical(key, logits,
    shape=(N, *batch)); row i is sample_from_noise of row i of sample_noise."""
    from estimators._common import sample_from_noise, sample_noise

    key, n = jax.random.key(12), 500
    bern = estimators.Bernoulli(jnp.array([-4.0, -0.3, 0.0, 1.2, 6.0]))
    xs = estimators.draw_samples(bern, key, n)
    np.testing.assert_array_equal(xs, jax.random.bernoulli(key, bern.probs[None], (n, 5)))
    np.testing.assert_array_equal(xs, bern.sample(key, (n,)))
    u = sample_noise(bern, key, n)
    np.testing.assert_array_equal(u, jax.random.uniform(key, (n, 5)))
    np.testing.assert_array_equal(jax.vmap(lambda r: sample_from_noise(bern, r))(u), xs)
    cat = estimators.Categorical(jnp.log(jnp.array([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]])))
    ys = estimators.draw_samples(cat, key, n)
    np.testing.assert_array_equal(ys, jax.random.categorical(key, cat.logits[None], shape=(n, 2)))
    assert ys.shape == (n, 2) and ys.dtype == jnp.int32


# Direct dependence of the cost on the parameters: f_{w,theta}(x) = w sum_d x_d^2 + log q_theta(x)
# (an entropy term, as in an ELBO). E = w sum(mu^2 + sigma^2) - sum(log sigma) - D/2 log(2 pi e),
# so d/dw = sum(mu^2 + sigma^2), d/dmu = 2 w mu, d/dlog_sigma = 2 w sigma^2 - 1.
DIRECT_NUM_SAMPLES = {"pathwise": 20_000, "score_function": 200_000}


def direct_exact(w, params):
    mu, sigma = params["loc"], np.exp(params["log_scale"])
    return {
        "w": np.sum(mu**2 + sigma**2),
        "theta": {"loc": 2 * w * mu, "log_scale": 2 * w * sigma**2 - 1},
    }


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_surrogate_with_direct_parameter_dependence(estimator):
    sur = SURROGATES[estimator]
    w = np.float32(0.7)
    n = DIRECT_NUM_SAMPLES[estimator]

    def loss(wt, k):
        w_, theta = wt["w"], wt["theta"]

        def cost(x):
            return w_ * jnp.sum(jnp.square(x)) + build_normal(theta).log_prob(x)

        return sur(cost, theta, build_normal, k, num_samples=1)

    per_sample = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(
        {"w": w, "theta": PARAMS}, jax.random.split(jax.random.key(21), n)
    )
    exact = direct_exact(float(w), {k: v.astype(np.float64) for k, v in PARAMS.items()})
    checks = cf.Checks()
    for path, leaf in jax.tree_util.tree_leaves_with_path(per_sample):
        ex = exact
        for p in path:
            ex = ex[p.key]
        checks.add_mean(f"{estimator} direct d/d{jax.tree_util.keystr(path)}", leaf, ex)
    checks.assert_ok()
    # Without the direct term's gradient (stop_gradient on theta inside the cost) the estimate
    # of d/dlog_scale is off by -1 per coordinate: the same checks must fail.
    wrong = cf.Checks()
    ls = per_sample["theta"]["log_scale"]
    wrong.add_mean("missing direct term", ls, exact["theta"]["log_scale"] - 1.0)
    assert wrong.failures(checks.z())


# --------------------------------------------------------------------------------------------
# Pytree structure and shapes.
# --------------------------------------------------------------------------------------------


class LocScale(NamedTuple):
    loc: jax.Array
    log_scale: jax.Array


PYTREE_CASES = {
    "dict": (PARAMS, build_normal),
    "nested": (
        {"mean": {"a": LOC[:2], "b": LOC[2:]}, "log_scale": LOG_SCALE},
        lambda p: estimators.Normal.from_log_scale(
            jnp.concatenate([p["mean"]["a"], p["mean"]["b"]]), p["log_scale"]
        ),
    ),
    "tuple": (
        (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)),
        lambda p: estimators.Normal.from_log_scale(*p),
    ),
    "namedtuple": (
        LocScale(LOC, LOG_SCALE),
        lambda p: estimators.Normal.from_log_scale(p.loc, p.log_scale),
    ),
    "single array": (
        np.array([0.2, -0.3], np.float32),
        lambda logits: estimators.Bernoulli(logits),
    ),
}


@pytest.mark.parametrize("case", list(PYTREE_CASES))
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_pytree_structure_and_shapes(estimator, case):
    params, build = PYTREE_CASES[case]
    if estimator == "pathwise" and case == "single array":
        params, build = params, lambda loc: estimators.Normal(loc, jnp.ones_like(loc))

    def cost(x):
        return jnp.sum(jnp.square(x))

    n = 7
    key = jax.random.key(0)
    jac = jax.eval_shape(
        lambda k: ESTIMATORS[estimator](cost, params, build, k, num_samples=n), key
    )
    assert jax.tree.structure(jac) == jax.tree.structure(params)
    for j, p in zip(jax.tree.leaves(jac), jax.tree.leaves(params), strict=True):
        assert j.shape == (n, *p.shape)
        assert j.dtype == jnp.float32
    grad = jax.eval_shape(
        jax.grad(lambda p, k: SURROGATES[estimator](cost, p, build, k, num_samples=n)),
        params,
        key,
    )
    assert jax.tree.structure(grad) == jax.tree.structure(params)
    assert [g.shape for g in jax.tree.leaves(grad)] == [p.shape for p in jax.tree.leaves(params)]


def test_pytree_values_nested_equals_flat():
    """The nested parameterisation gives the same numbers as the flat one (same samples)."""
    params, build = PYTREE_CASES["nested"]
    key = jax.random.key(4)
    nested = estimators.pathwise(cos_cost, params, build, key, num_samples=8)
    flat = estimators.pathwise(cos_cost, PARAMS, build_normal, key, num_samples=8)
    _close(jnp.concatenate([nested["mean"]["a"], nested["mean"]["b"]], 1), flat["loc"])
    _close(nested["log_scale"], flat["log_scale"])


# --------------------------------------------------------------------------------------------
# optax.monte_carlo compatibility.
# --------------------------------------------------------------------------------------------

COMPAT = {
    "score_function": (estimators.score_function_jacobians, estimators.score_function),
    "pathwise": (estimators.pathwise_jacobians, estimators.pathwise),
}


@pytest.mark.parametrize("container", [list, tuple])
@pytest.mark.parametrize("estimator", list(COMPAT))
def test_optax_compat(estimator, container):
    compat, native = COMPAT[estimator]
    params = container([jnp.asarray(LOC), jnp.asarray(LOG_SCALE)])
    key, n = jax.random.key(9), 32
    jac = compat(cos_cost, params, estimators.multi_normal, key, n)
    assert type(jac) is container
    assert [j.shape for j in jac] == [(n, 3), (n, 3)]
    # The same estimator on the same samples as the native call with tuple parameters.
    ref = native(cos_cost, tuple(params), lambda p: estimators.multi_normal(*p), key, num_samples=n)
    _close(tuple(jac), ref, rtol=1e-6)


def test_multi_normal_is_the_log_scale_normal():
    d = estimators.multi_normal(jnp.asarray(LOC), jnp.asarray(LOG_SCALE))
    assert isinstance(d, estimators.Normal)
    np.testing.assert_allclose(d.scale, np.exp(LOG_SCALE), rtol=1e-6)
    np.testing.assert_array_equal(d.loc, LOC)


# --------------------------------------------------------------------------------------------
# Bad input: clear errors naming the problem, raised at trace time (also under jit).
# --------------------------------------------------------------------------------------------


def _call(which, function, params, build, num_samples):
    key = jax.random.key(0)
    if which in ESTIMATORS:
        return ESTIMATORS[which](function, params, build, key, num_samples=num_samples)
    if which in ("pathwise_surrogate", "score_function_surrogate"):
        fn = SURROGATES[which.removesuffix("_surrogate")]
        return fn(function, params, build, key, num_samples=num_samples)
    compat = {
        "pathwise_jacobians": estimators.pathwise_jacobians,
        "score_function_jacobians": estimators.score_function_jacobians,
    }[which]
    return compat(
        function,
        list(params.values()),
        lambda *p: build(dict(zip(params, p, strict=True))),
        key,
        num_samples,
    )


ALL_ENTRY_POINTS = [
    "pathwise",
    "score_function",
    "pathwise_surrogate",
    "score_function_surrogate",
    "pathwise_jacobians",
    "score_function_jacobians",
]
SCALAR_COST = cos_cost


@pytest.mark.parametrize("which", ALL_ENTRY_POINTS)
def test_bad_input_errors(which):
    def raises(exc, match, **kw):
        args = {"function": SCALAR_COST, "params": PARAMS, "build": build_normal, "num_samples": 4}
        args.update(kw)
        with pytest.raises(exc, match=match):
            _call(which, **args)
        # Static problems are caught at trace time, also under jit.
        with pytest.raises(exc, match=match):
            jax.jit(
                lambda p: _call(which, args["function"], p, args["build"], args["num_samples"])
            )(args["params"])

    raises(ValueError, "num_samples must be >= 1", num_samples=0)
    raises(ValueError, "num_samples must be >= 1", num_samples=-3)
    raises(TypeError, "num_samples must be a Python int", num_samples=4.0)
    raises(TypeError, "num_samples must be a Python int", num_samples=True)
    raises(ValueError, "must return a scalar", function=lambda x: x)
    raises(ValueError, "must return a scalar", function=lambda x: jnp.sum(x, keepdims=True))
    raises(
        ValueError,
        "shapes must match",
        params={"loc": LOC, "log_scale": LOG_SCALE[:2]},
    )
    raises(
        TypeError,
        "must be floating point",
        params={"loc": np.array([1, 2, 3]), "log_scale": LOG_SCALE},
    )
    raises(TypeError, "must return a distribution", build=lambda p: p["loc"])
    if which.startswith("pathwise"):
        raises(
            ValueError,
            "needs a reparameterisable distribution; Bernoulli",
            build=lambda p: estimators.Bernoulli(p["loc"]),
        )


@pytest.mark.parametrize("which", ALL_ENTRY_POINTS)
def test_numpy_integer_num_samples(which):
    """A NumPy integer is as good as a Python int for num_samples."""
    out = _call(which, SCALAR_COST, PARAMS, build_normal, np.int64(4))
    ref = _call(which, SCALAR_COST, PARAMS, build_normal, 4)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)


def test_score_function_accepts_discrete_distributions():
    """The counterpart of the pathwise error: the score function runs on a Bernoulli."""
    jac = estimators.score_function(
        lambda x: jnp.sum(x),
        {"logits": LOC},
        lambda p: estimators.Bernoulli(p["logits"]),
        jax.random.key(0),
        num_samples=3,
    )
    assert jac["logits"].shape == (3, 3)


# --------------------------------------------------------------------------------------------
# Float32 Beta samples that would round to 1.0 (b < 1) are kept in the open interval.
# --------------------------------------------------------------------------------------------


def test_beta_score_function_near_one():
    """Finite and unbiased: d/da E[x] = b / (a + b)^2, d/db E[x] = -a / (a + b)^2, two checks
    with the Bonferroni z (fixed key). The same checks reject the score of the unnormalised
    density (the gradient of log B(a, b) dropped, biased by E[x] grad log B), built from the
    same samples: bias / SE = 183 (a) and 96 (b) with this key (z = 4.06), power 1.0 by
    P(|N(0,1) + bias/SE| > z).
    """
    params = {"a": jnp.full(1, 2.0), "b": jnp.full(1, 0.5)}
    build = lambda p: estimators.Beta(p["a"], p["b"])  # noqa: E731
    key, n = jax.random.key(0), 10_000
    jac = jax.jit(
        lambda k: estimators.score_function(lambda x: jnp.sum(x), params, build, k, num_samples=n)
    )(key)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(jac))
    a, b = 2.0, 0.5
    exact = {"a": b / (a + b) ** 2, "b": -a / (a + b) ** 2}

    def checks(per_sample) -> cf.Checks:
        out = cf.Checks()
        for name, value in exact.items():
            out.add_mean(f"Beta(2, 0.5) score function d/d{name}", per_sample[name][:, 0], value)
        return out

    checks(jac).assert_ok()
    # log p = (a-1) log x + (b-1) log(1-x) - log B(a, b); dropping log B adds f(x) grad log B.
    xs = cf.as64(estimators.draw_samples(build(params), key, n))[:, 0]
    grad_log_b = jax.grad(lambda q: jnp.sum(jax.scipy.special.betaln(q["a"], q["b"])))(params)
    biased = {k: cf.as64(v) + xs[:, None] * cf.as64(grad_log_b[k]) for k, v in jac.items()}
    assert checks(biased).failures()


@pytest.mark.parametrize("num_samples", [1, 3])
def test_vmap_samples_is_vmap_with_a_plain_call_for_one_sample(num_samples):
    """``_common.vmap_samples`` (how the estimators map a cost over their samples) gives
    ``jax.vmap``'s values, for a pytree of outputs, keys among the arguments, under jit and
    grad, up to float32 rounding: XLA may order a 4-term sum or the 5-term dot differently
    with and without the batch axis; with these keys every term is below 4 in magnitude
    (tanh times a normal draw; the gradients below 1), so differences stay within
    (5 + 4) eps32 * 4 = 4.3e-6 (measured: 9e-8); a wrong sample or key moves them by O(1).
    With one sample it calls the function without the sample axis, which shows in the jaxpr:
    no dot_general of the matmul cost keeps a size-1 axis."""
    from estimators._common import vmap_samples

    w = jax.random.normal(jax.random.key(0), (5, 4))

    def f(x, key):
        h = jnp.tanh(x @ w)
        return {"sum": jnp.sum(h * jax.random.normal(key, h.shape)), "h": h}

    xs = jax.random.normal(jax.random.key(1), (num_samples, 5))
    keys = jax.random.split(jax.random.key(2), num_samples)
    want = jax.vmap(f)(xs, keys)
    for got in (vmap_samples(f)(xs, keys), jax.jit(vmap_samples(f))(xs, keys)):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=0, atol=4.3e-6)

    def loss(v, fn):
        return jnp.mean(fn(lambda x, k: f(x * v, k)["sum"])(xs, keys))

    np.testing.assert_allclose(
        jax.grad(loss)(1.5, vmap_samples), jax.grad(loss)(1.5, jax.vmap), rtol=0, atol=4.3e-6
    )
    if num_samples == 1:  # and jax.vmap's own jaxpr does keep it: the check can fail

        def dot_shapes(mapper):
            jaxpr = jax.make_jaxpr(lambda x: mapper(lambda y: f(y, keys[0])["h"])(x))(xs)
            dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
            return [v.aval.shape for e in dots for v in e.invars]

        assert dot_shapes(vmap_samples) and all(1 not in s for s in dot_shapes(vmap_samples))
        assert any(1 in s for s in dot_shapes(jax.vmap))
