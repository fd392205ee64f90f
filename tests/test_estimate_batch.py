"""``estimators.EstimateBatch``: one ``update`` of an adaptive estimator for a batch of
independent per-example estimates (a VAE's), trained on the sum of their squared estimates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators

ADAPTIVE = ("rebar", "relax", "double_cv", "rodeo")
D = 4


def _builder(p):
    return estimators.Bernoulli(p["logits"])


def _cost(b, context):
    # One example's cost: a quadratic in its bits with the example's own target ``context``.
    return jnp.sum((b - context) ** 2) + b[0] * b[-1]


def _batch(num_examples: int, num_samples: int) -> estimators.EstimateBatch:
    logits = jax.random.normal(jax.random.key(1), (num_examples, D))
    contexts = jax.random.uniform(jax.random.key(2), (num_examples, D))
    keys = jax.random.split(jax.random.key(3), num_examples)
    return estimators.EstimateBatch(
        _cost, {"logits": logits}, _builder, keys, num_samples, contexts
    )


def _example(batch: estimators.EstimateBatch, i: int) -> estimators.EstimateInputs:
    context = batch.contexts[i]
    return estimators.EstimateInputs(
        lambda b: _cost(b, context),
        {"logits": batch.params["logits"][i]},
        _builder,
        batch.keys[i],
        batch.num_samples,
        context,
    )


def test_sum_over_examples_is_the_sum_of_the_examples_values():
    batch = _batch(3, 2)

    def value(inputs: estimators.EstimateInputs) -> jax.Array:
        # Any function of one estimate's inputs: here its cost at the mean, times a key-draw.
        p = _builder(inputs.params).probs
        return inputs.function(p) * jax.random.uniform(inputs.key)

    total = estimators.sum_over_examples(batch, value)
    expected = sum(value(_example(batch, i)) for i in range(3))
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    # A single estimate passes straight through.
    single = _example(batch, 1)
    assert float(estimators.sum_over_examples(single, value)) == pytest.approx(float(value(single)))


@pytest.mark.parametrize(
    "name",
    [
        "relax",
        pytest.param("double_cv", marks=pytest.mark.slow),
        pytest.param("rebar", marks=pytest.mark.slow),
        pytest.param("rodeo", marks=pytest.mark.slow),
    ],
)
def test_update_on_a_batch_of_one_is_the_update_on_its_estimate(name):
    """The same Adam step whether the one estimate comes alone or as a batch of one."""
    est = estimators.registry.get(name)
    k = max(est.min_samples, 2) if est.multi_sample else 1
    batch = _batch(1, k)
    state = est.init()
    from_batch = est.update(state, None, inputs=batch)
    from_one = est.update(state, None, inputs=_example(batch, 0))
    for a, b in zip(jax.tree.leaves(from_batch), jax.tree.leaves(from_one), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "name",
    [
        "relax",
        pytest.param("rebar", marks=pytest.mark.slow),
        "double_cv",
        pytest.param("rodeo", marks=pytest.mark.slow),
    ],
)
def test_update_on_a_batch_follows_the_summed_squared_estimates(name):
    """With plain gradient steps in place of Adam's, the first Adam step's direction is the
    sign of the gradient: the batch's step moves every trained leaf the way the SUM of the
    examples' gradients points (checked on the leaves where the examples disagree too)."""
    est = estimators.registry.get(name)
    k = max(est.min_samples, 2) if est.multi_sample else 1
    batch = _batch(3, k)
    state = est.init()
    new = est.update(state, None, inputs=batch)
    singles = [est.update(state, None, inputs=_example(batch, i)) for i in range(3)]
    moved = jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), state, new)
    # Adam's first step is lr * g / (|g| + eps) coordinatewise: its sign is the summed
    # gradient's. Each single step's sign is its own gradient's; where all three agree, the
    # batch's step must agree with them.
    single_moves = [
        jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), state, s) for s in singles
    ]
    checked = 0
    for m, *ss in zip(
        jax.tree.leaves(moved), *[jax.tree.leaves(s) for s in single_moves], strict=True
    ):
        signs = np.sign(np.stack(ss))
        agree = (signs == signs[0]).all(axis=0) & (signs[0] != 0)
        assert np.all(np.sign(m)[agree] == signs[0][agree])
        checked += int(agree.sum())
    assert checked > 0
