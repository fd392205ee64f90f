r"""Double control variates for independent bits (Titsias & Shi, AISTATS 2022).

For a :class:`estimators.Binary` distribution :math:`q` (independent bits
:math:`b_d = 1[u_d < \theta_d]`, :math:`\theta = \sigma(\ell)`, ``dist.probs``), ``K >= 2``
samples :math:`x_1..x_K \sim q`, costs :math:`f_k = f(x_k)` and the gradients
:math:`g_k = \nabla f(x_k)` of ``f`` at the samples (``f`` extended to :math:`\mathbb{R}^D`,
differentiated at the discrete points), the score is :math:`s(x) = \nabla_\ell \log q(x) =
x - \theta`. The estimator of :math:`\nabla_\ell E_q[f]` implemented here is

.. math::

   \hat g = \frac1K\sum_{k=1}^K \Big[\big(\tilde f_k - \tfrac{1}{K-1}\textstyle\sum_{j\ne k}
   \tilde f_j\big)\, s(x_k) - \alpha\, \bar g_{-k} \odot \theta(1-\theta)\Big],
   \qquad \tilde f_k = f_k + \alpha\, \bar g_{-k}^\top (x_k - \theta),

with :math:`\bar g_{-k} = \frac1{K-1}\sum_{j\ne k} g_j`. The first (main) control variate is
the leave-one-out baseline of REINFORCE-LOO (Kool et al. 2019); the second ("double") one is
the first-order Taylor expansion of ``f`` about the mean, :math:`f(x) \approx f(\theta) +
\nabla f^\top (x-\theta)`, with the unknown :math:`\nabla f(\theta)` replaced by the
leave-one-out average :math:`\bar g_{-k}` of the other samples' gradients; its expectation
:math:`E[(\bar g_{-k}^\top s(x_k)) s(x_k) | x_{-k}] = \bar g_{-k}\odot\theta(1-\theta)`
(the Bernoulli's diagonal covariance) is subtracted in closed form. Each row (the bracket for
one ``k``) is unbiased: :math:`\bar g_{-k}` does not depend on :math:`x_k`, and a baseline
term :math:`\tilde f_j` (``j != k``) depends on :math:`x_k` only through
:math:`\bar g_{-j}`, multiplied by :math:`x_j - \theta`, of mean zero given the other samples.
The rows are not independent (``multi_sample``).

The paper builds this estimator in its Sections 3-4 (the double control variate for the
leave-one-out estimator by a Taylor expansion); we could read only its abstract here, so the
formula above was checked against the authors' public code (``thjashin/rodeo``,
``networks.py``, ``grad_type == "double_cv"``, general ``K``), which we read and did not copy,
and it is held to the exact gradient by enumeration in ``tests/test_stein.py``. As in that
code, the coefficient :math:`\alpha` (``0`` at first: the estimator starts as REINFORCE-LOO)
is learned online by Adam on the gradient of the squared estimate,
:math:`\partial/\partial\alpha\ \mathrm{mean}_d \hat g_d^2` (for any :math:`\alpha` the
estimate is unbiased, so this is the gradient of its variance): :func:`double_cv_update`.

Cost: one evaluation of ``f`` and of its gradient at each sample (one forward and one
backward pass of ``f``; no extra evaluation at other points), so ``cost_evaluations = 1`` as
for the relaxations; ``f`` must be differentiable in ``b`` on :math:`\mathbb{R}^D`.
Gradients are formed w.r.t. ``dist.logits`` and pulled back to ``params`` through
``dist_builder`` (:func:`estimators.pull_back`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._capabilities import Binary
from .._common import Array, CostFn, DistBuilder, PyTree, build_and_check, draw_samples, pull_back
from .._interface import (
    EstimateBatch,
    EstimateInputs,
    GradientEstimator,
    gradient_estimator,
    sum_over_examples,
)
from ._adam import AdamState, adam_init, adam_step

DEFAULT_LEARNING_RATE = 1e-2


Adam = AdamState  # the control's optimiser state


class BinarySamples(NamedTuple):
    """What the Stein-type estimators need of ``K`` samples of independent bits, flattened.

    ``xs [K, D]`` the samples, ``probs [D]`` :math:`\\theta`, ``fs [K]`` the costs, ``gs
    [K, D]`` the gradients of ``f`` at the samples (all stopped)."""

    xs: Array
    probs: Array
    fs: Array
    gs: Array


def binary_setup(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    num_samples: int,
    who: str,
) -> BinarySamples:
    """Check the arguments, draw ``num_samples >= 2`` samples with ``key``
    (:func:`estimators.draw_samples`) and evaluate ``f`` and its gradient at each."""
    dist = build_and_check(function, params, dist_builder, num_samples, who)
    if not isinstance(dist, Binary):
        raise ValueError(f"{who}: needs a Binary distribution; {type(dist).__name__} is not")
    if num_samples < 2:
        raise ValueError(f"{who}: needs num_samples >= 2 (leave-one-out); got {num_samples}")
    dist = jax.lax.stop_gradient(dist)
    xs = draw_samples(dist, key, num_samples)  # [K, *event]
    fs, gs = jax.vmap(jax.value_and_grad(lambda x: jnp.asarray(function(x), xs.dtype)))(xs)
    flat = (num_samples, -1)
    probs = jnp.reshape(dist.probs, -1)  # type: ignore[attr-defined]
    return BinarySamples(
        xs.reshape(flat),
        probs,
        jax.lax.stop_gradient(fs),
        jax.lax.stop_gradient(gs).reshape(flat),
    )


def loo_mean(values: Array) -> Array:
    """``out[k] = mean_{j != k} values[j]`` along axis 0 (``K >= 2``)."""
    k = values.shape[0]
    return (jnp.sum(values, axis=0, keepdims=True) - values) / (k - 1)


def double_cv_rows(samples: BinarySamples, alpha: Array) -> Array:
    r"""``[K, D]``: the rows of :math:`\hat g` (the bracket of the module's formula, one per
    sample) w.r.t. the flattened logits; their mean is the estimate."""
    xs, probs, fs, gs = samples
    score = xs - probs[None]
    g_loo = loo_mean(gs)  # [K, D]
    corrected = fs + alpha * jnp.sum(g_loo * score, axis=-1)  # [K]
    learning = corrected - loo_mean(corrected)
    return learning[:, None] * score - alpha * g_loo * (probs * (1 - probs))[None]


class DoubleCVState(NamedTuple):
    """The learned coefficient ``alpha []`` of the second control variate and its Adam
    moments."""

    alpha: Array
    adam: Adam


def double_cv_init(alpha: float = 0.0) -> DoubleCVState:
    """``alpha`` (``0``: the authors' start, REINFORCE-LOO) and zero moments."""
    a = jnp.asarray(alpha, jnp.float32)
    return DoubleCVState(a, adam_init(a))


def _logit_grads_to_params(
    dist_builder: DistBuilder, params: PyTree, rows: Array, event_shape: tuple[int, ...]
) -> PyTree:
    grads = rows.reshape(rows.shape[0], *event_shape)
    return pull_back(dist_builder, params, lambda d: d.logits, grads)  # type: ignore[attr-defined]


def _state_or_init(state: Any, init: Callable[[], Any]) -> Any:
    return state if jax.tree.leaves(state) else init()


def double_cv(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    *,
    num_samples: int,
    state: DoubleCVState | tuple[()] = (),
) -> PyTree:
    r"""Per-sample double-control-variate estimates (Titsias & Shi 2022) for independent bits.

    Row ``k`` is the bracket of the module's formula pulled back to ``params``; the rows'
    mean estimates :math:`\nabla_\theta E_{q_\theta}[f(b)]` without bias for every
    ``alpha``; the rows are not independent.

    Args:
      function: cost ``f(b) -> []`` for one sample (float 0/1 of the event shape),
        differentiable in ``b``.
      params: any pytree of float arrays.
      dist_builder: ``params -> distribution`` with independent bits (``estimators.Binary``).
      key: PRNG key of the samples (``estimators.draw_samples``).
      num_samples: ``K >= 2`` (static).
      state: a :class:`DoubleCVState` (``()``: :func:`double_cv_init`, ``alpha = 0``).

    Returns:
      A pytree like ``params``; each leaf ``[num_samples, *leaf.shape]``.

    Example (with ``alpha = 0`` it is REINFORCE-LOO; with any ``alpha`` its mean is the
    gradient, here :math:`\partial_\ell E[b_1 + 2 b_2] = (1, 2)/4` at ``logits = 0``):
      >>> import jax, jax.numpy as jnp, estimators
      >>> from estimators.discrete._double_cv import double_cv, double_cv_init
      >>> f = lambda b: b[0] + 2 * b[1] + b[0] * b[1]
      >>> bern = lambda p: estimators.Bernoulli(p["logits"])
      >>> g = double_cv(f, {"logits": jnp.zeros(2)}, bern, jax.random.key(0),
      ...               num_samples=20000, state=double_cv_init(0.7))
      >>> g["logits"].shape, jnp.round(g["logits"].mean(0), 1)
      ((20000, 2), Array([0.4, 0.6], dtype=float32))
    """
    st = _state_or_init(state, double_cv_init)
    samples = binary_setup(function, params, dist_builder, key, num_samples, "double_cv")
    rows = double_cv_rows(samples, jax.lax.stop_gradient(st.alpha))
    event_shape = tuple(jnp.shape(dist_builder(params).logits))  # type: ignore[attr-defined]
    return _logit_grads_to_params(dist_builder, params, rows, event_shape)


def squared_estimate(rows: Array) -> Array:
    """``mean_d (mean_k rows[k, d])^2``: the loss whose gradient w.r.t. the control's
    parameters is that of the estimate's variance (the estimate's mean does not depend on
    them)."""
    return jnp.mean(jnp.mean(rows, axis=0) ** 2)


def double_cv_update(
    state: DoubleCVState | tuple[()],
    costs: Array,
    context: Any = None,
    inputs: EstimateInputs | EstimateBatch | None = None,
    *,
    learning_rate: float = DEFAULT_LEARNING_RATE,
) -> DoubleCVState:
    """One Adam step of ``alpha`` down the gradient of the squared estimate made from
    ``inputs`` (the same key: the same samples; for an :class:`estimators.EstimateBatch`, of
    the examples' summed squared estimates). ``costs`` are not needed (``f`` is evaluated
    again, with its gradient)."""
    del costs, context
    if inputs is None:
        raise ValueError(
            "double_cv: update trains alpha from the estimate's EstimateInputs; pass inputs="
        )
    st = _state_or_init(state, double_cv_init)

    def squared(one: EstimateInputs, alpha: Array) -> Array:
        samples = binary_setup(
            one.function, one.params, one.dist_builder, one.key, one.num_samples, "double_cv"
        )
        return squared_estimate(double_cv_rows(samples, alpha))

    grad = jax.grad(lambda a: sum_over_examples(inputs, lambda one: squared(one, a)))(st.alpha)
    alpha, adam = adam_step(st.alpha, grad, st.adam, learning_rate)
    return DoubleCVState(alpha, adam)


def double_cv_estimator(
    learning_rate: float = DEFAULT_LEARNING_RATE,
) -> GradientEstimator:
    """The registry's ``"double_cv"``: :func:`double_cv` with its learned ``alpha``."""

    def update(state: Any, costs: Array, context: Any = None, inputs: Any = None) -> DoubleCVState:
        return double_cv_update(state, costs, context, inputs, learning_rate=learning_rate)

    return gradient_estimator(
        "double_cv",
        double_cv,
        init=double_cv_init,
        update=update,
        requires=(Binary,),
        multi_sample=True,
        min_samples=2,
        adaptive=True,
        label="double control variates",
        reference="Titsias & Shi 2022",
    )


def _factory(*, control_learning_rate: float = DEFAULT_LEARNING_RATE, **_: Any) -> Any:
    return double_cv_estimator(control_learning_rate)


BASES: dict[str, Callable[..., Any]] = {"double_cv": _factory}
