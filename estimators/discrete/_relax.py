r"""REBAR (Tucker et al., NeurIPS 2017) and RELAX (Grathwohl et al., ICLR 2018) for independent
bits (``estimators.Binary``: :math:`b_d \sim \mathrm{Bernoulli}(\sigma(\ell_d))`).

Both estimate :math:`\nabla_\ell E_{p(b;\ell)}[f(b)]` from one continuous relaxation of the
draw. With uniform noise :math:`u, v \sim U(0,1)^D` and :math:`p = \sigma(\ell)`:

- :math:`z = \ell - \mathrm{logit}(u)` (logistic with location :math:`\ell`), and
  :math:`b = H(z) = 1[z > 0] = 1[u < p]`, the bits ``estimators.draw_samples`` draws with the
  same key (the score function's, so RELAX with a zero control *is* REINFORCE, row for row);
- :math:`\tilde z \sim p(z \mid b)` by Tucker et al.'s conditional reparameterisation:
  :math:`u` redrawn from :math:`v` on the side of :math:`p` that ``b`` fixes,
  :math:`\tilde u = b\,v\,p + (1 - b)(p + v(1 - p))`, :math:`\tilde z = \ell -
  \mathrm{logit}(\tilde u)`, written stably as :math:`\tilde z = \mathrm{softplus}(
  \mathrm{softplus}(\ell) - \mathrm{logit}(v))` for ``b = 1`` and :math:`-\mathrm{softplus}(
  \mathrm{logit}(v) + \mathrm{softplus}(-\ell))` for ``b = 0``; it is differentiated in
  :math:`\ell` with ``b`` held fixed.

For a control :math:`c(z)`, one sample's estimate is RELAX's (Grathwohl et al. 2018; REBAR's,
Tucker et al. 2017, for the first control below)

.. math:: \hat g = [f(b) - c(\tilde z)]\,\nabla_\ell \log p(b) + \nabla_\ell c(z)
          - \nabla_\ell c(\tilde z), \qquad \nabla_\ell \log p(b) = b - p.

It is unbiased for every control: :math:`E[\nabla_\ell c(z)] = \nabla_\ell E[c(z)] =
E_b[\nabla_\ell E[c(\tilde z) | b]] + E[c(\tilde z)\nabla_\ell \log p(b)]`, so the control's
three terms have mean zero. The controls:

- ``"rebar"``: :math:`c(z) = \eta\, f(\sigma(z / \lambda))`, the relaxed cost (Concrete
  relaxation at temperature :math:`\lambda`) scaled by :math:`\eta`;
- ``"relax"``: :math:`c(z) = \eta\, f(\sigma(z / \lambda)) + r_\rho(z)`, the relaxed cost plus
  a network (the paper's "relaxed cost plus a neural network" control for discrete models). By
  default :math:`r_\rho(z) = \sum_d m_\rho(z_d)`, one small MLP ``1 -> 32 -> 1`` (tanh, its
  output averaged over the hidden units: :func:`mlp_apply`) applied to each coordinate and
  summed, so it works for any ``D`` without knowing it at ``init``; its
  output layer starts at zero (RELAX starts as REBAR), its hidden layer from a fixed key. A
  user network is ``relax_control=(apply, params)``, ``apply(params, z: [*event]) -> []``.

:math:`\eta` (starts at 1) and :math:`\log\lambda` (starts at ``log(temperature)``) and
:math:`\rho` are the estimator's state. ``update`` takes the :class:`EstimateInputs` of the
estimate just made and does one Adam step on the gradient, with respect to the control's
parameters, of the squared estimate :math:`\sum_{\text{leaves}} \|\frac1N\sum_i \hat g_i\|^2`
(second-order autodiff through the estimate), on the same key as the estimate
(``inputs.key``: the very noise of the estimate just made). Because :math:`E[\hat g]` does not
depend on the control, this is an unbiased estimate of the gradient of the estimator's variance
(up to the factor ``1/N``), as both papers train their control's parameters; it never
touches the gradient being estimated. (Equation numbers are not given: only the papers'
abstracts could be read here; the formulas were derived and are checked in
tests/test_relax.py.)

Cost per sample: 3 evaluations of ``f``: :math:`f(b)`, and :math:`f` with its gradient at the
two relaxed points :math:`\sigma(z/\lambda)` and :math:`\sigma(\tilde z/\lambda)` (``f`` must
be defined and differentiable on :math:`[0, 1]^D`); ``update`` repeats them once more, with
second derivatives of ``f``. Gradients with respect to ``dist.logits`` are pulled back to
``params`` through ``dist_builder`` (:func:`estimators.pull_back`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._capabilities import Binary
from .._common import Array, CostFn, DistBuilder, PyTree, build_and_check, pull_back
from .._interface import (
    EstimateBatch,
    EstimateInputs,
    GradientEstimator,
    gradient_estimator,
    sum_over_examples,
)
from ._adam import AdamState, adam_init, adam_step

DEFAULT_TEMPERATURE = 0.5
DEFAULT_LEARNING_RATE = 1e-2
HIDDEN = 32
# ``apply(params, z: [*event]) -> []``: the learned part r_rho of RELAX's control.
ControlApply = Callable[[PyTree, Array], Array]


class ControlParams(NamedTuple):
    """The learned parameters of the control :math:`c(z) = \\eta f(\\sigma(z/\\lambda)) +
    r_\\rho(z)`: ``eta`` ``[]``, ``log_temperature`` ``[]`` (:math:`\\log\\lambda`), and
    ``network`` (:math:`\\rho`; ``()`` for REBAR)."""

    eta: Array
    log_temperature: Array
    network: PyTree


class RelaxState(NamedTuple):
    """REBAR/RELAX state: the control's parameters and their optimiser's state."""

    control: ControlParams
    adam: AdamState


# --- The default network r_rho: a coordinatewise MLP, summed ----------------------------------


def mlp_init(hidden: int = HIDDEN, key: Array | None = None) -> dict[str, Array]:
    """Parameters of :func:`mlp_apply`: ``w1, b1 [hidden]`` (``w1 ~ N(0, 1)``, ``b1 ~ N(0,
    1)``, from ``key``, default ``jax.random.key(0)``), ``w2 [hidden]`` and ``b2 []`` zero (the
    network starts as the zero function)."""
    k1, k2 = jax.random.split(jax.random.key(0) if key is None else key)
    return {
        "w1": jax.random.normal(k1, (hidden,)),
        "b1": jax.random.normal(k2, (hidden,)),
        "w2": jnp.zeros((hidden,)),
        "b2": jnp.zeros(()),
    }


def mlp_apply(params: dict[str, Array], z: Array) -> Array:
    r""":math:`r(z) = \sum_d \big(\frac1H w_2^\top \tanh(w_1 z_d + b_1) + b_2\big)` for ``z
    [*event]``: ``[]``. The output is averaged over the ``H`` hidden units, so that one Adam
    step (each weight moves by about the learning rate) changes :math:`r` by about the
    learning rate, not ``H`` times it: with a plain sum the learned variance oscillated on the
    toy instead of falling."""
    hidden = jnp.tanh(jnp.reshape(z, (-1, 1)) * params["w1"][None] + params["b1"][None])  # [D, H]
    return jnp.sum(hidden @ params["w2"] / params["w2"].shape[0] + params["b2"])


# --- The estimator ----------------------------------------------------------------------------


def _logit(x: Array) -> Array:
    return jnp.log(x) - jnp.log1p(-x)


def relaxed_noise(logits: Array, key: Array, num_samples: int) -> tuple[Array, Array, Array]:
    r"""``(b, u, v)``, each ``[num_samples, *logits.shape]``: ``u = jax.random.uniform(key,
    (num_samples, *logits.shape))``, the uniforms ``estimators.draw_samples`` compares with
    ``p`` (so ``b = 1[u < p]`` are its bits with this key), ``v`` the same from
    ``jax.random.fold_in(key, 1)``, and ``b`` as a float 0/1 array."""
    dtype = jnp.result_type(logits)
    shape = (num_samples, *jnp.shape(logits))
    u = jax.random.uniform(key, shape, dtype)
    v = jax.random.uniform(jax.random.fold_in(key, 1), shape, dtype)
    b = (u < jax.nn.sigmoid(logits)[None]).astype(dtype)
    return b, u, v


def relaxed_z(logits: Array, u: Array) -> Array:
    r""":math:`z = \ell - \mathrm{logit}(u)`; :math:`H(z) = 1[u < \sigma(\ell)]`."""
    u = jnp.maximum(u, jnp.finfo(u.dtype).tiny)  # u = 0 (probability 2^-23): z finite
    return logits - _logit(u)


def conditional_z(logits: Array, b: Array, v: Array) -> Array:
    r""":math:`\tilde z \sim p(z \mid b)` from ``v``: :math:`\mathrm{softplus}(\mathrm{softplus}
    (\ell) - \mathrm{logit}(v))` where ``b = 1`` (so :math:`\tilde z > 0`),
    :math:`-\mathrm{softplus}(\mathrm{logit}(v) + \mathrm{softplus}(-\ell))` where ``b = 0``.
    The outer softplus's argument is chosen by ``b`` first, so it runs once per coordinate;
    :math:`\mathrm{softplus}(\pm\ell)` does not depend on the sample (formed once under
    ``vmap``). The same operations per branch as computing both and selecting, so the same
    values and derivatives, bit for bit (``tests/test_relax.py``)."""
    lv = _logit(jnp.maximum(v, jnp.finfo(v.dtype).tiny))
    one = b > 0
    magnitude = jax.nn.softplus(
        jnp.where(one, jax.nn.softplus(logits) - lv, lv + jax.nn.softplus(-logits))
    )
    return jnp.where(one, magnitude, -magnitude)


ControlFn = Callable[[ControlParams, Array, CostFn], Array]


def _control_fn(apply: ControlApply | None) -> ControlFn:
    """``c(params, z, f) = eta f(sigmoid(z / lambda)) [+ apply(params.network, z)]``."""

    def control(cp: ControlParams, z: Array, function: CostFn) -> Array:
        relaxed = jax.nn.sigmoid(z / jnp.exp(cp.log_temperature))
        value = cp.eta * jnp.asarray(function(relaxed), z.dtype)
        if apply is not None:
            value = value + jnp.asarray(apply(cp.network, z), z.dtype)
        return value

    return control


def _logit_rows(
    function: CostFn, logits: Array, key: Array, num_samples: int, control: ControlFn, cp: Any
) -> Array:
    """``[num_samples, *logits.shape]``: one estimate w.r.t. the logits per sample, the noise
    of all samples drawn at once (:func:`relaxed_noise`; the bits are ``draw_samples``')."""

    def row(b: Array, u: Array, v: Array) -> Array:
        fb = jnp.asarray(function(b), logits.dtype)
        grad_c = jax.grad(lambda lg: control(cp, relaxed_z(lg, u), function))(logits)
        c_tilde, grad_c_tilde = jax.value_and_grad(
            lambda lg: control(cp, conditional_z(lg, b, v), function)
        )(logits)
        return (fb - c_tilde) * (b - jax.nn.sigmoid(logits)) + grad_c - grad_c_tilde

    return jax.vmap(row)(*relaxed_noise(logits, key, num_samples))


def _estimate(
    function: CostFn,
    params: PyTree,
    dist_builder: DistBuilder,
    key: Array,
    num_samples: int,
    control: ControlFn,
    cp: ControlParams,
    who: str,
) -> PyTree:
    dist = build_and_check(function, params, dist_builder, num_samples, who)
    if not isinstance(dist, Binary):
        raise ValueError(
            f"{who}: needs a Binary distribution (independent bits with logits, such as "
            f"estimators.Bernoulli); {type(dist).__name__} is not Binary"
        )
    logits = dist.logits  # type: ignore[attr-defined]
    rows = _logit_rows(function, logits, key, num_samples, control, cp)
    return pull_back(dist_builder, params, lambda d: d.logits, rows)  # type: ignore[attr-defined]


def squared_estimate(
    control: ControlFn, cp: ControlParams, inputs: EstimateInputs, who: str = "relax"
) -> Array:
    r""":math:`\sum_{\text{leaves}} \|\frac1N\sum_i \hat g_i\|^2` of the estimate ``inputs``
    describes, as a function of the control's parameters ``cp`` (what ``update`` descends)."""
    rows = _estimate(
        inputs.function,
        inputs.params,
        inputs.dist_builder,
        inputs.key,
        inputs.num_samples,
        control,
        cp,
        who,
    )
    means = jax.tree.leaves(jax.tree.map(lambda g: jnp.mean(g, axis=0), rows))
    return sum((jnp.sum(jnp.square(m)) for m in means), start=jnp.zeros(()))


def _control_estimator(
    name: str,
    apply: ControlApply | None,
    network: PyTree,
    temperature: float,
    learning_rate: float,
    label: str,
    reference: str,
) -> GradientEstimator:
    if not (isinstance(temperature, int | float) and temperature > 0):
        raise ValueError(f"{name}: temperature must be a number > 0; got {temperature!r}")
    if not (isinstance(learning_rate, int | float) and learning_rate > 0):
        raise ValueError(
            f"{name}: control_learning_rate must be a number > 0; got {learning_rate!r}"
        )
    control = _control_fn(apply)

    def init() -> RelaxState:
        cp = ControlParams(
            eta=jnp.ones(()),
            log_temperature=jnp.asarray(math.log(temperature), jnp.float32),
            network=network,
        )
        return RelaxState(cp, adam_init(cp))

    def per_sample(
        function: CostFn,
        params: PyTree,
        dist_builder: DistBuilder,
        key: Array,
        *,
        num_samples: int,
        state: RelaxState | tuple[()] = (),
        context: Any = None,
    ) -> PyTree:
        del context  # the control sees z only
        st = state if jax.tree.leaves(state) else init()
        cp = st.control  # type: ignore[union-attr]
        return _estimate(function, params, dist_builder, key, num_samples, control, cp, name)

    def update(
        state: RelaxState,
        costs: Array,
        context: Any = None,
        inputs: EstimateInputs | EstimateBatch | None = None,
    ) -> RelaxState:
        del costs, context
        if inputs is None:
            raise ValueError(
                f"{name}: update trains the control on the gradient of the squared estimate, so "
                "it needs the estimate's inputs: update(state, costs, inputs=estimators."
                "EstimateInputs(function, params, dist_builder, key, num_samples))"
            )
        grads = jax.grad(
            lambda cp: sum_over_examples(
                inputs, lambda one: squared_estimate(control, cp, one, name)
            )
        )(state.control)
        new, adam = adam_step(state.control, grads, state.adam, learning_rate)
        return RelaxState(new, adam)

    return gradient_estimator(
        name,
        per_sample,
        init=init,
        update=update,
        requires=(Binary,),
        adaptive=True,
        cost_evaluations=lambda dim: 3,
        label=label,
        reference=reference,
    )


def rebar_estimator(
    *, temperature: float = DEFAULT_TEMPERATURE, learning_rate: float = DEFAULT_LEARNING_RATE
) -> GradientEstimator:
    r"""REBAR (Tucker et al. 2017) for a ``Binary`` distribution, as a :class:`GradientEstimator`.

    The control is the relaxed cost :math:`c(z) = \eta f(\sigma(z/\lambda))`; :math:`\eta`
    (from 1) and :math:`\log\lambda` (from ``log(temperature)``) are learned by ``update``
    (Adam at ``learning_rate`` on the gradient of the squared estimate; see the module).
    ``per_sample`` returns a pytree like ``params``, leaves ``[num_samples, *leaf.shape]``,
    whose mean estimates :math:`\nabla_\theta E_{p(b;\theta)}[f(b)]` without bias for any
    state; ``f`` must be differentiable on :math:`[0,1]^D`. 3 evaluations of ``f`` per sample.

    Example (``E[(b - 0.45)^2]`` at ``p = 0.5``: the gradient w.r.t. the logit is
    ``0.1 * p (1 - p) = 0.025``):
      >>> import jax, jax.numpy as jnp, estimators
      >>> est = estimators.rebar_estimator()
      >>> f = lambda b: jnp.sum((b - 0.45) ** 2)
      >>> build, params = (lambda p: estimators.Bernoulli(p)), jnp.zeros(1)
      >>> state = est.init()
      >>> g = est.per_sample(f, params, build, jax.random.key(0), num_samples=4000, state=state)
      >>> g.shape, bool(abs(g.mean() - 0.025) < 5 * g.std() / jnp.sqrt(4000))
      ((4000, 1), True)
      >>> inputs = estimators.EstimateInputs(f, params, build, jax.random.key(0), 4000)
      >>> state = est.update(state, None, inputs=inputs)  # one Adam step on eta, log lambda
      >>> int(state.adam.step)
      1
    """
    return _control_estimator(
        "rebar", None, (), temperature, learning_rate, "REBAR", "Tucker et al. 2017"
    )


def relax_estimator(
    control: tuple[ControlApply, PyTree] | None = None,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
) -> GradientEstimator:
    r"""RELAX (Grathwohl et al. 2018) for a ``Binary`` distribution, as a
    :class:`GradientEstimator`.

    The control is :math:`c(z) = \eta f(\sigma(z/\lambda)) + r_\rho(z)` with ``control = (apply,
    params)`` giving :math:`r_\rho(z) =` ``apply(params, z)`` for ``z [*event]`` (a scalar), or
    by default a coordinatewise MLP summed over coordinates (:func:`mlp_apply`, zero at first).
    :math:`\eta, \log\lambda, \rho` are learned by ``update`` (Adam at ``learning_rate`` on
    the gradient of the squared estimate). Otherwise as :func:`rebar_estimator`.

    Example (with a zero control it is REINFORCE on the same key):
      >>> import jax, jax.numpy as jnp, estimators
      >>> est = estimators.relax_estimator((lambda p, z: 0.0 * jnp.sum(z), ()))
      >>> state = est.init()
      >>> state = state._replace(control=state.control._replace(eta=jnp.zeros(())))
      >>> f, build = (lambda b: jnp.sum(b)), (lambda p: estimators.Bernoulli(p))
      >>> key, params = jax.random.key(1), jnp.array([0.3, -1.0])
      >>> g = est.per_sample(f, params, build, key, num_samples=8, state=state)
      >>> sf = estimators.score_function(f, params, build, key, num_samples=8)
      >>> bool(jnp.allclose(g, sf, atol=1e-6))
      True
    """
    apply: ControlApply
    if control is None:
        apply, network = mlp_apply, mlp_init()
    else:
        try:
            apply, network = control
        except (TypeError, ValueError):
            raise ValueError(
                "relax: relax_control must be (apply, params) with apply(params, z) -> []; got "
                f"{control!r}"
            ) from None
        if not callable(apply):
            raise ValueError("relax: relax_control must be (apply, params); apply is not callable")
    return _control_estimator(
        "relax", apply, network, temperature, learning_rate, "RELAX", "Grathwohl et al. 2018"
    )


def _rebar_factory(
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    control_learning_rate: float = DEFAULT_LEARNING_RATE,
    **_: Any,
) -> GradientEstimator:
    return rebar_estimator(temperature=temperature, learning_rate=control_learning_rate)


def _relax_factory(
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    control_learning_rate: float = DEFAULT_LEARNING_RATE,
    relax_control: tuple[ControlApply, PyTree] | None = None,
    **_: Any,
) -> GradientEstimator:
    return relax_estimator(
        relax_control, temperature=temperature, learning_rate=control_learning_rate
    )


# Registry options: temperature (the initial lambda), control_learning_rate (Adam's), and for
# RELAX relax_control=(apply, params).
BASES: dict[str, Callable[..., Any]] = {"rebar": _rebar_factory, "relax": _relax_factory}
