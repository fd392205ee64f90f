"""Drop-in replacements for ``optax.monte_carlo`` (removed in optax 0.2.7; 0.2.6 has it last).

Same arguments and returns as optax 0.2.6: ``params`` is a sequence of arrays, ``dist_builder``
takes them positionally (``dist_builder(*params)``), and the result is a sequence of the same
type holding one ``[num_samples, *param.shape]`` jacobian per parameter. ``function`` is written
for one sample, as in optax. The random draws differ from optax's (a key per sample here), so
estimates agree in distribution, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._common import Array, check_num_samples, draw
from ._control_variates import delta_method
from ._distributions import Distribution, Normal
from ._measure_valued import measure_valued
from ._pathwise import pathwise
from ._score_function import score_function


def _like(params: Sequence[Array], jac: Sequence[Array]) -> Sequence[Array]:
    """``jac`` as a list if ``params`` is one, else as a tuple (optax returns params' type)."""
    return list(jac) if isinstance(params, list) else tuple(jac)


def _positional(dist_builder: Callable[..., Distribution]) -> Callable[[tuple], Distribution]:
    return lambda p: dist_builder(*p)


def score_function_jacobians(
    function: Callable[[Array], Array],
    params: Sequence[Array],
    dist_builder: Callable[..., Distribution],
    rng: Array,
    num_samples: int,
) -> Sequence[Array]:
    """Score-function jacobians, as ``optax.monte_carlo.score_function_jacobians``.

    Returns:
      A sequence like ``params``; element ``j`` is ``[num_samples, *params[j].shape]``.
    """
    jac = score_function(
        function, tuple(params), _positional(dist_builder), rng, num_samples=num_samples
    )
    return _like(params, jac)


def pathwise_jacobians(
    function: Callable[[Array], Array],
    params: Sequence[Array],
    dist_builder: Callable[..., Distribution],
    rng: Array,
    num_samples: int,
) -> Sequence[Array]:
    """Pathwise jacobians, as ``optax.monte_carlo.pathwise_jacobians``.

    Returns:
      A sequence like ``params``; element ``j`` is ``[num_samples, *params[j].shape]``.
    """
    jac = pathwise(function, tuple(params), _positional(dist_builder), rng, num_samples=num_samples)
    return _like(params, jac)


def measure_valued_jacobians(
    function: Callable[[Array], Array],
    params: Sequence[Array],
    dist_builder: Callable[..., Distribution],
    rng: Array,
    num_samples: int,
    coupling: bool = True,
) -> list[Array]:
    """Measure-valued jacobians, as ``optax.monte_carlo.measure_valued_jacobians``.

    ``dist_builder(*params)`` must return an ``estimators.Normal`` (``multi_normal`` with
    ``params = (loc, log_scale)`` as in optax, or any builder: gradients are pulled back to
    ``params`` by a vjp). Any parameter shape works. Memory is ``O(num_samples * D)`` where
    optax 0.2.6 builds ``num_samples x D x D`` tensors.

    Returns:
      A list; element ``j`` is ``[num_samples, *params[j].shape]``.
    """
    jac = measure_valued(
        function,
        tuple(params),
        _positional(dist_builder),
        rng,
        num_samples=num_samples,
        coupling=coupling,
    )
    return list(jac)


# --- Control variates (optax.monte_carlo.control_variates) ---------------------------------
# A control variate is the triple (value(params, x, state) -> [], expectation(params, state) -> [],
# update_state(params, samples, state) -> state), params being (loc, log_scale) of a diagonal
# Normal as in optax.


class _CompatControlVariate(tuple):
    """The optax triple, marked when it is a baseline (no effect on pathwise/measure-valued)."""

    is_baseline: bool = False


def _triple(value, expectation, update_state, *, is_baseline: bool) -> _CompatControlVariate:
    cv = _CompatControlVariate((value, expectation, update_state))
    cv.is_baseline = is_baseline
    return cv


def _normal(params: Sequence[Array]) -> Normal:
    return Normal.from_log_scale(params[0], params[1])


def control_delta_method(function: Callable[[Array], Array]) -> tuple[Callable, ...]:
    """The delta-method control variate, as ``optax.monte_carlo.control_delta_method``.

    Second-order Taylor expansion of ``function`` around ``params[0]`` (the mean), expectation
    under ``N(params[0], exp(params[1])**2)``. Uses Hessian-vector products, never the full
    Hessian, and works for means of any shape. Stateless (the state is passed through).

    Returns:
      ``(value(params, x, state) -> [], expectation(params, state) -> [],
      update_state(params, samples, state) -> state)``.
    """
    cv = delta_method(function)

    def value(params: Sequence[Array], sample: Array, state: Any = None) -> Array:
        del state
        return cv.value(_normal(params), sample)

    def expectation(params: Sequence[Array], state: Any) -> Array:
        del state
        return cv.expectation(_normal(params))

    def update_state(params: Sequence[Array], samples: Array, state: Any = None) -> Any:
        del params, samples
        return state

    return _triple(value, expectation, update_state, is_baseline=False)


def moving_avg_baseline(
    function: Callable[[Array], Array],
    decay: float = 0.99,
    zero_debias: bool = True,
    use_decay_early_training_heuristic: bool = True,
) -> tuple[Callable, ...]:
    """A moving-average baseline, as ``optax.monte_carlo.moving_avg_baseline``.

    The state is ``(value, step)`` (``None`` is read as ``(0.0, 0)``). As in optax 0.2.6, an
    update with decay ``d`` sets ``value = d * value + (1 - d) * mean f(samples)``, divided by
    ``1 - d**(step + 1)`` when ``zero_debias`` (the divided value is what is stored), with
    ``d = min(decay, (1 + step) / (10 + step))`` under the early-training heuristic; and
    :func:`control_variates_jacobians` updates the state with the current samples BEFORE using
    it, so the baseline is slightly correlated with them (at step 0 with the heuristic the
    expected estimate is ``(1 - 1/num_samples)`` times the gradient). For an unbiased baseline,
    use ``estimators.moving_average_*`` with ``score_function``. Only for score-function
    jacobians: pairing it with the pathwise or measure-valued ones is an error.

    Returns:
      The triple of :func:`control_delta_method`, for this baseline.
    """

    def value(params: Sequence[Array], sample: Array, state: Any = None) -> Array:
        del params, sample
        return state[0]

    def expectation(params: Sequence[Array], state: Any) -> Array:
        del params
        return state[0]

    def update_state(params: Sequence[Array], samples: Array, state: Any = None) -> Any:
        del params
        avg, step = (jnp.zeros(()), 0) if state is None else state
        d: Array | float = decay
        if use_decay_early_training_heuristic:
            d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
        new = d * avg + (1 - d) * jnp.mean(jax.vmap(function)(samples))
        if zero_debias:
            new = new / (1.0 - jnp.power(d, step + 1))
        return jax.lax.stop_gradient(new), step + 1

    return _triple(value, expectation, update_state, is_baseline=True)


def _cv_coefficient(jac_f: Array, jac_cv: Array, eps: float = 1e-3) -> Array:
    """optax's pooled coefficient: sum of covariances / (sum of variances + eps), one per leaf."""
    cf = jac_f - jnp.mean(jac_f, axis=0, keepdims=True)
    ch = jac_cv - jnp.mean(jac_cv, axis=0, keepdims=True)
    cov = jnp.sum(jnp.mean(cf * ch, axis=0))
    return jax.lax.stop_gradient(cov / (jnp.sum(jnp.mean(jnp.square(ch), axis=0)) + eps))


def control_variates_jacobians(
    function: Callable[[Array], Array],
    control_variate_from_function: Callable[[Callable[[Array], Array]], tuple[Callable, ...]],
    grad_estimator: Callable[..., Sequence[Array]],
    params: Sequence[Array],
    dist_builder: Callable[..., Distribution],
    rng: Array,
    num_samples: int,
    control_variate_state: Any = None,
    estimate_cv_coeffs: bool = False,
    estimate_cv_coeffs_num_samples: int = 20,
) -> tuple[list[Array], Any]:
    r"""Jacobians with a control variate, as ``optax.monte_carlo.control_variates_jacobians``.

    Element ``j`` of sample ``i``: :math:`\hat g_i[f] - c_j(\hat g_i[h] + \nabla_{\theta_0}
    h_{\theta_0}(x_i) - \nabla_\theta E_{p_\theta}[h_\theta])`, where ``h``'s parameters are
    held fixed inside the estimator. The middle term (evaluated on the same samples, as in optax)
    removes the expansion point's share from the closed-form expectation's gradient, so the
    estimate is unbiased; unlike optax, it is kept per sample rather than averaged, so the
    mean is the same but the jacobians stay independent across samples and their variance is
    the estimator's. The state is updated once, with the current samples,
    before ``h`` is evaluated. With ``estimate_cv_coeffs``, ``c_j`` is optax's pooled
    coefficient ``sum Cov / (sum Var + 1e-3)`` over parameter ``j``'s elements, from
    ``estimate_cv_coeffs_num_samples`` samples drawn with ``jax.random.split(rng)[0]``;
    otherwise 1.

    Args:
      grad_estimator: ``score_function_jacobians``, ``pathwise_jacobians`` or
        ``measure_valued_jacobians`` of this module (or a function with their signature).

    Returns:
      ``(jacobians, new_state)``: a list whose element ``j`` is
      ``[num_samples, *params[j].shape]``, and the updated control-variate state.
    """
    cv = control_variate_from_function(function)
    cv_value, cv_expectation, cv_update = cv
    if getattr(cv, "is_baseline", False) and grad_estimator in (
        pathwise_jacobians,
        measure_valued_jacobians,
    ):
        raise ValueError(
            "control_variates_jacobians: a baseline such as moving_avg_baseline has no effect on "
            f"{grad_estimator.__name__} (its estimate depends only on differences or "
            "derivatives of f in x); use it with score_function_jacobians"
        )
    params = list(params)
    check_num_samples(num_samples, "control_variates_jacobians")
    if estimate_cv_coeffs:
        coef_rng = jax.random.split(rng)[0]
        n = estimate_cv_coeffs_num_samples
        cv_jac = grad_estimator(
            lambda x: cv_value(params, x, control_variate_state), params, dist_builder, coef_rng, n
        )
        f_jac = grad_estimator(function, params, dist_builder, coef_rng, n)
        coefs: list[Array | float] = [
            _cv_coefficient(f, c) for f, c in zip(f_jac, cv_jac, strict=True)
        ]
    else:
        coefs = [1.0] * len(params)

    f_jac = grad_estimator(function, params, dist_builder, rng, num_samples)
    samples = draw(_positional(dist_builder), params, rng, num_samples)
    state = cv_update(params, samples, control_variate_state)
    fixed = jax.lax.stop_gradient(params)
    cv_jac = grad_estimator(
        lambda x: cv_value(fixed, x, state), params, dist_builder, rng, num_samples
    )
    # Per sample (optax averages it over the samples: same mean, but correlated jacobians).
    point_share = jax.vmap(lambda x: jax.grad(lambda p: cv_value(p, x, state))(params))(
        jax.lax.stop_gradient(samples)
    )
    expectation_grad = jax.grad(lambda p: cv_expectation(p, state))(params)
    jacobians = [
        fj - c * (cj + ps - eg[None])
        for fj, cj, ps, eg, c in zip(
            f_jac, cv_jac, point_share, expectation_grad, coefs, strict=True
        )
    ]
    return jacobians, state
