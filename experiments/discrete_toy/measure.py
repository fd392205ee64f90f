r"""Monte Carlo side of the toy: any registered estimator's estimates of
:math:`\partial E f / \partial\alpha_1` on :math:`f(b) = \sum_d (b_d - t)^2`,
:math:`b_d \sim \mathrm{Bernoulli}(\sigma(\alpha))`, a whole grid per compile.

An *estimate* is one call's mean over its rows. A single-sample estimator (``multi_sample``
false: its rows are independent) gives ``num_estimates`` estimates from one call of
``num_estimates`` rows, each costing ``cost_evaluations(D)`` evaluations of ``f``; a
multi-sample one (REINFORCE-LOO, VIMCO-style, ARMS: rows used jointly) gives them from
``num_estimates`` independent calls of ``K`` rows each, each costing ``K cost_evaluations(D)``.
The figures show ``variance x evaluations``: what the variance would be per unit of cost if
the budget were spent on averaging independent estimates, the same for all.

A stateful estimator (an adaptive one, REBAR and RELAX, trains its state to lower its own
variance; a moving-average baseline tracks the cost) gets ``adapt_steps`` calls of ``update``
at each grid point before it is measured, each with the :class:`estimators.EstimateInputs` of
a fresh ``K``-row estimate, and is then measured in that fixed state.
"""

from __future__ import annotations

import functools
import zlib
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import estimators
from estimators import registry

# About this many per-row elements (rows x D x grid points) per vectorised step.
STEP_ELEMENTS = 2**18


@functools.lru_cache(maxsize=128)
def estimator(spec: str, temperature: float) -> estimators.GradientEstimator:
    """``estimators.registry.get(spec, temperature=temperature)``, once per spec."""
    return registry.get(spec, temperature=temperature)


def stream(spec: str) -> int:
    """The number folded into the seed for ``spec``: fixed per spec, whatever else runs."""
    return zlib.crc32(spec.encode()) % 2**30


def bernoulli(params: dict[str, jax.Array]) -> estimators.Bernoulli:
    return estimators.Bernoulli(params["logits"])


def toy_cost(t: jax.Array):
    """:math:`f(b) = \\sum_d (b_d - t)^2` for one sample ``b: [D]``."""
    return lambda b: jnp.sum(jnp.square(b - t))


def samples_per_estimate(est: estimators.GradientEstimator, num_samples: int) -> int:
    """``K``: ``max(num_samples, min_samples)`` rows for a multi-sample estimator, else 1."""
    return max(num_samples, est.min_samples) if est.multi_sample else 1


def evaluations(est: estimators.GradientEstimator, num_samples: int, dim: int) -> int:
    """Evaluations of ``f`` one estimate costs: ``K * cost_evaluations(D)``."""
    return samples_per_estimate(est, num_samples) * int(est.cost_evaluations(dim))


def adapt(
    est: estimators.GradientEstimator,
    cost: Any,
    params: dict[str, jax.Array],
    key: jax.Array,
    *,
    num_samples: int,
    steps: int,
) -> Any:
    """``est.init()`` then ``steps`` calls of ``update`` on fresh estimates' inputs (traced)."""
    state = est.init()
    if steps == 0 or not jax.tree.leaves(state):
        return state

    def step(state: Any, k: jax.Array) -> tuple[Any, None]:
        xs = estimators.draw_samples(bernoulli(params), k, num_samples)
        inputs = estimators.EstimateInputs(cost, params, bernoulli, k, num_samples)
        return est.update(state, jax.vmap(cost)(xs), inputs=inputs), None

    state, _ = jax.lax.scan(step, state, jax.random.split(key, steps))
    return state


def chunk_size(num_estimates: int, points: int, rows: int) -> int:
    """A divisor of ``num_estimates`` near ``STEP_ELEMENTS / (points * rows)``."""
    target = max(1, STEP_ELEMENTS // max(1, points * rows))
    if num_estimates <= target:
        return num_estimates
    for size in range(target, 0, -1):
        if num_estimates % size == 0:
            return size
    return 1


def one_estimate_fn(est: estimators.GradientEstimator, k: int):
    """``(cost, params, key, state) -> [n]`` coordinate-1 estimates, ``n`` given by the key
    array: one call of ``n`` rows (single-sample) or ``n`` calls of ``k`` rows averaged."""

    def estimates(cost, params, keys: jax.Array, state: Any) -> jax.Array:
        if est.multi_sample:

            def one(kk: jax.Array) -> jax.Array:
                g = est.per_sample(cost, params, bernoulli, kk, num_samples=k, state=state)
                return jnp.mean(g["logits"][:, 0])

            return jax.vmap(one)(keys)
        g = est.per_sample(cost, params, bernoulli, keys[0], num_samples=keys.shape[0], state=state)
        return g["logits"][:, 0]

    return estimates


@partial(
    jax.jit,
    static_argnames=("spec", "temperature", "dim", "num_samples", "num_estimates", "adapt_steps"),
)
def mc_estimates(
    key: jax.Array,
    logits: jax.Array,
    t: jax.Array,
    *,
    spec: str,
    temperature: float,
    dim: int,
    num_samples: int,
    num_estimates: int,
    adapt_steps: int,
) -> jax.Array:
    """``[G, num_estimates]`` independent estimates of :math:`\\partial/\\partial\\alpha_1` at
    each logit of ``logits: [G]`` (all ``D`` coordinates at that logit), the estimator in the
    state that ``adapt_steps`` updates give (:func:`adapt`)."""
    est = estimator(spec, temperature)
    k = samples_per_estimate(est, num_samples)
    cost = toy_cost(t)
    chunk = chunk_size(num_estimates, logits.shape[0], k * dim)
    estimates = one_estimate_fn(est, k)

    def point(key: jax.Array, logit: jax.Array) -> jax.Array:
        params = {"logits": jnp.full((dim,), logit)}
        k_adapt, k_est = jax.random.split(key)
        state = adapt(est, cost, params, k_adapt, num_samples=k, steps=adapt_steps)
        keys = jax.random.split(k_est, (num_estimates // chunk, chunk))
        if keys.shape[0] == 1:
            return estimates(cost, params, keys[0], state)
        return jax.lax.map(lambda ks: estimates(cost, params, ks, state), keys).reshape(-1)

    return jax.vmap(point)(jax.random.split(key, logits.shape[0]), logits)


def summarize(g: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of ``g: [G, N]`` (float64): mean and its SE, variance (``1/(N-1)``) and its SE
    :math:`\\sqrt{(m_4 - m_2^2)/N}`."""
    g = np.asarray(g, np.float64)
    n = g.shape[1]
    mean = g.mean(axis=1)
    dev = g - mean[:, None]
    m2 = np.mean(dev**2, axis=1)
    m4 = np.mean(dev**4, axis=1)
    variance = m2 * n / (n - 1)
    return {
        "mean": mean,
        "mean_se": np.sqrt(variance / n),
        "variance": variance,
        "variance_se": np.sqrt(np.maximum(m4 - m2**2, 0.0) / n),
    }


def measure(
    spec: str,
    theta: np.ndarray,
    t: float,
    *,
    seed: int,
    dim: int = 1,
    num_samples: int = 4,
    num_estimates: int,
    adapt_steps: int = 0,
    temperature: float = 0.5,
) -> dict[str, np.ndarray]:
    """:func:`summarize` of :func:`mc_estimates` at ``theta: [G]``; keys fixed per (spec, D)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream(spec)), dim)
    theta = np.asarray(theta, np.float64)
    logits = np.log(theta) - np.log1p(-theta)
    g = mc_estimates(
        key,
        jnp.asarray(logits, jnp.float32),
        jnp.float32(t),
        spec=spec,
        temperature=float(temperature),
        dim=int(dim),
        num_samples=int(num_samples),
        num_estimates=int(num_estimates),
        adapt_steps=int(adapt_steps),
    )
    return summarize(np.asarray(g))
