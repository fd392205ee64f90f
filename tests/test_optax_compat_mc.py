"""The optax.monte_carlo drop-ins (measure-valued, control variates) against closed forms.

optax 0.2.6 cannot be imported here (it is not a dependency), so agreement in distribution is
checked through the mathematics optax's functions implement: unbiasedness against closed-form
gradients for every grad_estimator x (estimate_cv_coeffs on/off), the delta method's closed-form
expectation, and optax's moving-average state arithmetic (including that the baseline is updated
with the current samples before use, which makes the first step's expected estimate exactly
(1 - 1/N) times the gradient). One Bonferroni-corrected z per test (false alarm 1e-4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import estimators
from tests._closed_forms import bonferroni_z, mean_se

K = jnp.asarray([[0.8, -0.5], [1.1, 0.3]], jnp.float32)
A = jnp.asarray([[0.3, 0.7], [0.5, 0.2]], jnp.float32)
# Matrix-shaped parameters: optax 0.2.6 handled vectors only.
PARAMS = [
    jnp.asarray([[0.4, -0.7], [1.0, 0.2]], jnp.float32),
    jnp.asarray([[-0.3, 0.1], [-0.6, 0.0]], jnp.float32),
]


def cost(x):
    return jnp.cos(jnp.sum(K * x)) + jnp.exp(-jnp.sum(A * jnp.square(x)))


def expectation(params):
    mu, var = params[0], jnp.exp(2 * params[1])
    cos = jnp.cos(jnp.sum(K * mu)) * jnp.exp(-0.5 * jnp.sum(jnp.square(K) * var))
    bump = jnp.prod((1 + 2 * A * var) ** -0.5 * jnp.exp(-A * jnp.square(mu) / (1 + 2 * A * var)))
    return cos + bump


def test_optax_measure_valued_jacobians_is_measure_valued():
    jac = estimators.measure_valued_jacobians(
        cost, PARAMS, estimators.multi_normal, jax.random.key(0), 8, coupling=False
    )
    ref = estimators.measure_valued(
        cost,
        tuple(PARAMS),
        lambda p: estimators.multi_normal(*p),
        jax.random.key(0),
        num_samples=8,
        coupling=False,
    )
    assert isinstance(jac, list) and len(jac) == 2
    for a, b in zip(jac, ref, strict=True):
        assert a.shape == (8, 2, 2)
        np.testing.assert_array_equal(a, b)
    gamma = lambda a, b: estimators.Gamma(jnp.exp(a), jnp.exp(b))  # noqa: E731
    with pytest.raises(ValueError, match="Normal"):
        estimators.measure_valued_jacobians(cost, PARAMS, gamma, jax.random.key(0), 4)


def test_optax_control_delta_method_closed_form():
    q = jnp.asarray([[2.0, 0.5, 0.0, 0.1]] * 4, jnp.float32)
    q = (q + q.T) / 2 + jnp.eye(4)
    c = jnp.asarray([0.3, -0.2, 0.5, 1.0], jnp.float32)
    f = lambda x: (x.reshape(-1) - c) @ q @ (x.reshape(-1) - c)  # noqa: E731
    value, expected, update = estimators.control_delta_method(f)
    mu = jnp.asarray([[0.1, 0.2], [-0.4, 0.8]], jnp.float32)
    log_scale = jnp.asarray([[0.0, -0.5], [0.3, -1.0]], jnp.float32)
    var = jnp.exp(2 * log_scale).reshape(-1)
    m = mu.reshape(-1) - c
    np.testing.assert_allclose(
        expected([mu, log_scale], None), m @ q @ m + jnp.diagonal(q) @ var, rtol=1e-5
    )
    x = jnp.asarray([[1.0, -2.0], [0.5, 0.0]], jnp.float32)
    np.testing.assert_allclose(value([mu, log_scale], x, None), f(x), rtol=1e-5)  # exact
    assert update([mu, log_scale], x[None], "state") == "state"


@pytest.mark.parametrize("estimate_cv_coeffs", [False, True])
def test_optax_control_variates_jacobians_unbiased(estimate_cv_coeffs):
    n = 3000

    def run(key):
        out = {}
        for est in (
            estimators.pathwise_jacobians,
            estimators.score_function_jacobians,
            estimators.measure_valued_jacobians,
        ):
            jac, state = estimators.control_variates_jacobians(
                cost,
                estimators.control_delta_method,
                est,
                PARAMS,
                estimators.multi_normal,
                key,
                n,
                None,
                estimate_cv_coeffs,
                20,
            )
            assert state is None
            out[est.__name__] = jac
        return out

    results = jax.jit(run)(jax.random.key(21))
    exact = jax.grad(expectation)(PARAMS)
    z = bonferroni_z(len(results) * 2 * 4)
    for name, jac in results.items():
        assert isinstance(jac, list)
        for j, g in zip(jac, exact, strict=True):
            assert j.shape == (n, 2, 2)
            m, se = mean_se(j)
            assert np.all(np.abs(m - g) <= z * se), (name, m, g, se)


def test_optax_moving_avg_baseline_state_arithmetic():
    f = lambda x: jnp.sum(x)  # noqa: E731
    value, expected, update = estimators.moving_avg_baseline(f, decay=0.99)
    s1 = update(None, jnp.asarray([[1.0], [3.0]]), (jnp.zeros(()), 0))
    np.testing.assert_allclose(s1[0], 2.0, rtol=1e-6)  # d = 0.1, debiased by 1 - 0.1
    assert s1[1] == 1
    s2 = update(None, jnp.asarray([[5.0], [7.0]]), s1)
    d = 2 / 11  # min(0.99, (1 + 1) / (10 + 1))
    np.testing.assert_allclose(s2[0], (d * 2.0 + (1 - d) * 6.0) / (1 - d**2), rtol=1e-6)
    assert value(None, jnp.ones(1), s2) == s2[0] == expected(None, s2)
    plain = estimators.moving_avg_baseline(
        f, decay=0.5, zero_debias=False, use_decay_early_training_heuristic=False
    )[2]
    np.testing.assert_allclose(plain(None, jnp.asarray([[4.0]]), (jnp.asarray(2.0), 3))[0], 3.0)


def test_optax_moving_avg_baseline_first_step_scales_gradient():
    """Step 0 with the heuristic: b = mean of the current costs, so E = (1 - 1/N) grad."""
    f = lambda x: jnp.sum(jnp.square(x))  # noqa: E731
    params = [jnp.asarray([1.0, -0.5]), jnp.asarray([0.0, 0.2])]
    n, reps = 4, 4000

    def one(key):
        jac, state = estimators.control_variates_jacobians(
            f,
            estimators.moving_avg_baseline,
            estimators.score_function_jacobians,
            params,
            estimators.multi_normal,
            key,
            n,
        )
        return [j.mean(0) for j in jac], state[1]

    means, steps = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(22), reps))
    assert np.all(np.asarray(steps) == 1)
    exact = jax.grad(lambda p: jnp.sum(jnp.square(p[0]) + jnp.exp(2 * p[1])))(params)
    z = bonferroni_z(2 * 2 * 2)
    detected = False
    for m_reps, g in zip(means, exact, strict=True):
        m, se = mean_se(m_reps)
        assert np.all(np.abs(m - (1 - 1 / n) * g) <= z * se), (m, g, se)
        detected |= bool(np.any(np.abs(m - g) > z * se))
    assert detected  # the check can tell (1 - 1/N) g from g


def test_optax_moving_avg_baseline_rejects_pathwise_and_measure_valued():
    for est in (estimators.pathwise_jacobians, estimators.measure_valued_jacobians):
        with pytest.raises(ValueError, match=f"no effect on {est.__name__}"):
            estimators.control_variates_jacobians(
                cost,
                estimators.moving_avg_baseline,
                est,
                PARAMS,
                estimators.multi_normal,
                jax.random.key(0),
                4,
            )
