"""The estimator registry, the GradientEstimator interface and the stateful baselines.

Statistical properties of every registered estimator are held in tests/test_conformance.py;
here: composition, the exact identities each piece must satisfy on the same key, state updates
against hand computations, and the errors.
"""

from __future__ import annotations

import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators

KEY = jax.random.key(7)
PARAMS = {"loc": jnp.array([0.3, -1.2, 0.5]), "scale": jnp.array([0.8, 1.5, 0.4])}


def normal(p):
    return estimators.Normal(p["loc"], p["scale"])


def cost(x):
    return jnp.sum(jnp.sin(x) + 0.5 * x**2)


def test_composed_specs_name_label_and_pieces():
    est = estimators.registry.get("score_function+loo")
    assert (est.name, est.label) == ("score_function+loo", "score function + leave-one-out")
    assert est.min_samples == 2 and est.multi_sample
    est = estimators.registry.get("pathwise+delta", cv_coefficient=0.5)
    assert est.label == "pathwise + delta method"
    assert estimators.FactorizedMoments in est.requires
    assert estimators.Reparameterizable in est.requires
    assert estimators.registry.get("iwae").objective == "log_mean_exp"
    assert "+nvil" in estimators.registry.names()


@pytest.mark.parametrize(
    ("spec", "function"),
    [
        ("pathwise", estimators.pathwise),
        ("score_function", estimators.score_function),
        ("measure_valued", estimators.measure_valued),
    ],
)
def test_registry_estimators_equal_the_functional_api(spec, function):
    """Same key, same samples: the registry's estimator is the function of today, exactly."""
    est = estimators.registry.get(spec)
    got = est.per_sample(cost, PARAMS, normal, KEY, num_samples=64)
    want = function(cost, PARAMS, normal, KEY, num_samples=64)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_baselined_score_function_equals_the_function_with_that_baseline():
    est = estimators.registry.get("score_function+loo")
    got = est(cost, PARAMS, normal, KEY, num_samples=16)
    want = estimators.score_function(
        cost, PARAMS, normal, KEY, num_samples=16, baseline=estimators.leave_one_out_baseline
    )
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_delta_composition_equals_with_control_variate():
    est = estimators.registry.get("score_function+delta", cv_coefficient=0.7)
    got = est(cost, PARAMS, normal, KEY, num_samples=32)
    want = estimators.with_control_variate(
        estimators.score_function,
        cost,
        estimators.delta_method(cost),
        PARAMS,
        normal,
        KEY,
        num_samples=32,
        coefficient=0.7,
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)


def test_derived_surrogate_gradient_is_the_estimate_plus_the_direct_dependence():
    """``surrogate_from_per_sample``: d/dparams = mean per-sample; d/dw = mean of df_w/dw."""
    per_sample = estimators.measure_valued
    surrogate = estimators.surrogate_from_per_sample(
        lambda *a, state=(), context=None, **k: per_sample(*a, **k)
    )
    w = jnp.asarray(1.7)

    def loss(p, w):
        return surrogate(lambda x: w * cost(x), p, normal, KEY, num_samples=32)

    value, (g_params, g_w) = jax.value_and_grad(loss, argnums=(0, 1))(PARAMS, w)
    xs = estimators.draw_samples(normal(PARAMS), KEY, 32)
    want_params = jax.tree.map(
        lambda g: jnp.mean(g, 0),
        per_sample(lambda x: w * cost(x), PARAMS, normal, KEY, num_samples=32),
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), g_params, want_params)
    np.testing.assert_allclose(g_w, jnp.mean(jax.vmap(cost)(xs)), rtol=1e-5)
    np.testing.assert_allclose(value, w * jnp.mean(jax.vmap(cost)(xs)), rtol=1e-5)


def test_iwae_identities():
    """Rows average to the surrogate's gradient; with K = 1 the bound is E f (pathwise)."""
    est = estimators.registry.get("iwae")
    rows = est.per_sample(cost, PARAMS, normal, KEY, num_samples=5)
    grad = jax.grad(lambda p: est.surrogate(cost, p, normal, KEY, num_samples=5))(PARAMS)
    jax.tree.map(
        lambda r, g: np.testing.assert_allclose(jnp.mean(r, 0), g, rtol=1e-5, atol=1e-6),
        rows,
        grad,
    )
    xs = estimators.draw_samples(normal(PARAMS), KEY, 5)
    want = -(jax.nn.logsumexp(-jax.vmap(cost)(xs)) - jnp.log(5.0))
    np.testing.assert_allclose(est.surrogate(cost, PARAMS, normal, KEY, num_samples=5), want)
    one = est.per_sample(cost, PARAMS, normal, KEY, num_samples=1)
    path = estimators.pathwise(cost, PARAMS, normal, KEY, num_samples=1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), one, path)


def test_moving_average_state_goes_through_init_and_update():
    est = estimators.registry.get("score_function+moving_average", moving_average_decay=0.9)
    state = est.init()
    costs = estimators.registry.sample_costs(cost, PARAMS, normal, KEY, num_samples=8)
    new = est.update(state, costs)
    want = estimators.moving_average_update(state, costs, decay=0.9)
    jax.tree.map(np.testing.assert_allclose, new, want)
    # The estimate uses the OLD state's baseline: the first update's zero-debiased mean cost.
    got = est(cost, PARAMS, normal, jax.random.key(1), num_samples=8, state=new)
    b = estimators.moving_average_baseline(new)
    want_g = estimators.score_function(
        cost, PARAMS, normal, jax.random.key(1), num_samples=8, baseline=b
    )
    jax.tree.map(np.testing.assert_array_equal, got, want_g)
    np.testing.assert_allclose(b, jnp.mean(costs), rtol=1e-6)


class _SGD:
    """A duck-typed optax-like optimiser: updates = -lr * grads."""

    def __init__(self, lr):
        self.lr = lr

    def init(self, params):
        return ()

    def update(self, grads, state, params=None):
        return jax.tree.map(lambda g: -self.lr * g, grads), state


def test_nvil_update_is_one_regression_step_then_the_average():
    """Linear network b(c) = w.c: the step is w + lr * 2/B sum_b (f_b - m - w.c_b) c_b."""
    w0 = jnp.array([0.2, -0.1, 0.4])
    baseline = estimators.nvil_baseline(lambda w, c: jnp.dot(w, c), w0, _SGD(0.05), decay=0.9)
    state = baseline.init()
    state = state._replace(average=estimators.moving_average_update(state.average, jnp.ones(4)))
    contexts = jax.random.normal(jax.random.key(3), (6, 3))
    costs = jax.random.normal(jax.random.key(4), (6,)) + 2.0
    new = baseline.update(state, costs, contexts)
    m = estimators.moving_average_baseline(state.average)
    residual = costs - m - contexts @ w0
    want_w = w0 + 0.05 * 2.0 / 6 * (residual @ contexts)
    np.testing.assert_allclose(new.params, want_w, rtol=1e-5)
    jax.tree.map(
        np.testing.assert_allclose,
        new.average,
        estimators.moving_average_update(state.average, costs, decay=0.9),
    )
    inputs = estimators.BaselineInputs(cost, PARAMS, normal, KEY, 1, contexts[0])
    np.testing.assert_allclose(baseline.value(new, inputs), m_new(new) + contexts[0] @ new.params)


def m_new(state):
    return estimators.moving_average_baseline(state.average)


def test_nvil_through_the_registry_needs_its_network_and_a_context():
    with pytest.raises(ValueError, match="needs its network"):
        estimators.registry.get("score_function+nvil")
    est = estimators.registry.get(
        "score_function+nvil", nvil=(lambda w, c: jnp.dot(w, c), jnp.zeros(3), _SGD(0.1))
    )
    with pytest.raises(ValueError, match="needs the context"):
        est.surrogate(cost, PARAMS, normal, KEY, num_samples=1, state=est.init())
    value = est.surrogate(
        cost, PARAMS, normal, KEY, num_samples=1, state=est.init(), context=jnp.ones(3)
    )
    assert value.shape == ()


def test_user_estimators_by_importable_path(tmp_path, monkeypatch):
    (tmp_path / "my_estimators.py").write_text(
        textwrap.dedent(
            """
            import estimators

            def plain(function, params, dist_builder, key, *, num_samples):
                return estimators.pathwise(function, params, dist_builder, key,
                                           num_samples=num_samples)

            declared = estimators.gradient_estimator(
                "declared", plain, requires=(estimators.Reparameterizable,))

            def factory(cv_coefficient=1.0):
                return declared._replace(label=f"declared c={cv_coefficient}")

            not_an_estimator = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_estimators", raising=False)
    want = estimators.pathwise(cost, PARAMS, normal, KEY, num_samples=8)
    for spec in ("my_estimators:plain", "my_estimators:declared", "my_estimators:factory"):
        est = estimators.registry.get(spec, cv_coefficient=0.5)
        assert est.name == spec
        jax.tree.map(
            np.testing.assert_array_equal, est(cost, PARAMS, normal, KEY, num_samples=8), want
        )
    assert estimators.registry.get("my_estimators:factory", cv_coefficient=0.5).label.endswith(
        "0.5"
    )
    composed = estimators.registry.get("my_estimators:declared+delta")
    assert composed.label == "declared + delta method"
    with pytest.raises(TypeError, match="not an estimator"):
        estimators.registry.get("my_estimators:not_an_estimator")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        estimators.registry.get("my_estimators:missing")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        estimators.registry.get("no_such_module_xyz:f")


def test_register_a_base_composes_with_modifiers():
    est = estimators.gradient_estimator(
        "sf_copy", estimators.score_function, requires=(estimators.HasScore,)
    )
    estimators.registry.register("sf_copy_for_test", est, overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        estimators.registry.register("sf_copy_for_test", est)
    got = estimators.registry.get("sf_copy_for_test+delta")
    assert got.name == "sf_copy_for_test+delta"


@pytest.mark.parametrize(
    ("spec", "options", "error", "match"),
    [
        ("pathwse", {}, ValueError, "did you mean 'pathwise'"),
        ("pathwise+deltaa", {}, ValueError, "unknown modifier 'deltaa'"),
        ("pathwise+loo", {}, ValueError, "changes only estimators that take a baseline"),
        ("measure_valued+moving_average", {}, ValueError, "does not"),
        ("", {}, ValueError, "non-empty"),
        ("pathwise", {"cv_coeficient": 1.0}, TypeError, "unknown estimator option"),
        ("score_function+moving_average", {"moving_average_decay": 1.5}, ValueError, "decay"),
    ],
)
def test_bad_specs_and_options_are_named(spec, options, error, match):
    with pytest.raises(error, match=match):
        estimators.registry.get(spec, **options)


def test_capabilities_and_sample_counts_are_checked_eagerly_and_under_jit():
    bern = lambda p: estimators.Bernoulli(logits=p["logits"])  # noqa: E731
    p = {"logits": jnp.zeros(3)}
    est = estimators.registry.get("pathwise")
    with pytest.raises(ValueError, match="Reparameterizable; Bernoulli is not"):
        est(lambda x: jnp.sum(x), p, bern, KEY, num_samples=4)
    with pytest.raises(ValueError, match="Reparameterizable; Bernoulli is not"):
        jax.jit(lambda k: est(lambda x: jnp.sum(x), p, bern, k, num_samples=4))(KEY)
    loo = estimators.registry.get("score_function+loo")
    with pytest.raises(ValueError, match="num_samples >= 2"):
        loo(cost, PARAMS, normal, KEY, num_samples=1)


def test_per_parameter_baseline_has_a_surrogate_with_the_same_gradient():
    """One scalar objective cannot weight each parameter's score differently, but the derived
    (linear) surrogate can: its gradient is the mean of the per-sample estimates."""
    est = estimators.registry.get("score_function+optimal")
    rows = est(cost, PARAMS, normal, KEY, num_samples=16)
    grad = jax.grad(lambda p: est.surrogate(cost, p, normal, KEY, num_samples=16))(PARAMS)
    jax.tree.map(
        lambda r, g: np.testing.assert_allclose(jnp.mean(r, 0), g, rtol=1e-5, atol=1e-6),
        rows,
        grad,
    )


def test_gradient_estimator_rejects_bad_declarations():
    with pytest.raises(ValueError, match="objective"):
        estimators.gradient_estimator("x", estimators.pathwise, objective="max")
    with pytest.raises(ValueError, match="min_samples"):
        estimators.gradient_estimator("x", estimators.pathwise, min_samples=0)
    with pytest.raises(TypeError, match="capability classes"):
        estimators.gradient_estimator("x", estimators.pathwise, requires=("Normal",))
    with pytest.raises(ValueError, match="declared biased"):
        estimators.gradient_estimator("x", estimators.pathwise, unbiased=False)
    with pytest.raises(ValueError, match="bias is only for unbiased=False"):
        estimators.gradient_estimator("x", estimators.pathwise, bias="something")


def test_update_receives_the_estimate_inputs_when_it_takes_them():
    """``update`` gets ``context``/``inputs`` only if it takes them; one that takes neither
    is called with the costs alone."""
    seen = []

    def update_all(state, costs, context=None, inputs=None):
        seen.append((context, inputs))
        return state + 1

    def update_costs_only(state, costs):
        return state + jnp.sum(costs)

    inputs = estimators.EstimateInputs(cost, PARAMS, normal, KEY, 3)
    full = estimators.gradient_estimator(
        "x", estimators.pathwise, init=lambda: 0, update=update_all
    )
    assert full.update(0, jnp.ones(3), context="ctx", inputs=inputs) == 1
    assert seen == [("ctx", inputs)]
    plain = estimators.gradient_estimator(
        "y", estimators.pathwise, init=lambda: 0.0, update=update_costs_only
    )
    assert float(plain.update(0.0, jnp.ones(3), context="ctx", inputs=inputs)) == 3.0
    assert estimators.BaselineInputs is estimators.EstimateInputs


def test_describe_states_each_declaration_in_words():
    """The table rows come from the estimators' own declarations."""
    rows = {s: estimators.registry.describe(s) for s in ("pathwise", "measure_valued", "iwae")}
    assert rows["pathwise"].unbiased == "yes" and rows["pathwise"].evaluations == "1"
    assert rows["measure_valued"].evaluations == "4 D"  # cost_evaluations(dim) = 4 dim
    assert rows["measure_valued"].distributions == ("Normal",)
    assert rows["iwae"].objective == "log_mean_exp" and "jointly" in rows["iwae"].samples
    assert "Burda" in rows["iwae"].reference
    loo = estimators.registry.describe("score_function+loo")
    assert loo.reference == "Williams 1992; Kool et al. 2019" and loo.samples == "K >= 2, jointly"
    biased = estimators.gradient_estimator(
        "b", estimators.pathwise, unbiased=False, bias="half the gradient"
    )
    estimators.registry.register("half_biased_example", biased, overwrite=True)
    try:
        table = estimators.registry.markdown_table(["half_biased_example", "pathwise"])
    finally:
        estimators._registry._BASES.pop("half_biased_example")
    assert "| no (below) |" in table
    assert "`half_biased_example` is biased: half the gradient" in table
    assert table.count("\n|") == 3  # header rule and two rows


def test_the_optimal_baseline_charges_its_independent_samples():
    """score_function+optimal evaluates f at as many independent samples again (its baseline's):
    2 evaluations per sample; with a fixed number of baseline samples the per-sample count
    cannot state them (documented), so only the estimator's own one is charged."""
    assert estimators.registry.get("score_function+optimal").cost_evaluations(3) == 2
    fixed = estimators.registry.get("score_function+optimal", optimal_baseline_samples=50)
    assert fixed.cost_evaluations(3) == 1
    assert estimators.registry.get("score_function+loo").cost_evaluations(3) == 1
