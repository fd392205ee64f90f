r"""Hand-written JAX versions of the discrete estimators, the yardstick of bench_discrete.py.

Each is written from its paper's formula the way a researcher writes it in a notebook: one
batched draw of the noise, ``jax.vmap`` of the cost over the rows, ``jax.grad`` where a cost is
differentiated. They import nothing from ``estimators``. All estimate

.. math:: \nabla_\ell\, E_{b \sim \mathrm{Bernoulli}(\sigma(\ell))}[f(b)]

(or, for VIMCO, :math:`\nabla_\ell E[-\log\frac1K\sum_k e^{-f(b_k)}]`) with respect to the
logits :math:`\ell \in R^D`, and return one gradient per row, ``[num_samples, D]``, whose mean
is the estimate. ``f`` takes one sample ``[D]`` (a float 0/1 vector, or a point of
:math:`[0,1]^D` for the relaxations) and returns a scalar.

The noise is ``u = jax.random.uniform(key, (num_samples, D))`` and
:math:`b = 1[u < \sigma(\ell)]` wherever a method is written with uniform noise. REBAR and
RELAX draw a second uniform ``v`` from ``jax.random.split(key)``'s second key.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Cost = Callable[[Array], Array]


def score_function(f: Cost, logits: Array, key: Array, num_samples: int) -> Array:
    r"""REINFORCE (Williams 1992): :math:`f(b)\,(b - \sigma(\ell))`."""
    p = jax.nn.sigmoid(logits)
    b = jax.random.bernoulli(key, p[None], (num_samples, p.shape[0])).astype(p.dtype)
    return jax.vmap(f)(b)[:, None] * (b - p[None])


def score_function_loo(f: Cost, logits: Array, key: Array, num_samples: int) -> Array:
    r"""REINFORCE leave-one-out (Kool et al. 2019): :math:`(f(b_k) - \frac1{K-1}\sum_{j\ne k}
    f(b_j))(b_k - \sigma(\ell))` over the ``K = num_samples`` samples."""
    p = jax.nn.sigmoid(logits)
    b = jax.random.bernoulli(key, p[None], (num_samples, p.shape[0])).astype(p.dtype)
    fb = jax.vmap(f)(b)
    baseline = (jnp.sum(fb) - fb) / (num_samples - 1)
    return (fb - baseline)[:, None] * (b - p[None])


def arm(f: Cost, logits: Array, key: Array, num_samples: int) -> Array:
    r"""ARM (Yin & Zhou 2019, Theorem 1): :math:`(f(1[u > \sigma(-\ell)]) - f(1[u <
    \sigma(\ell)]))(u - \tfrac12)`."""
    u = jax.random.uniform(key, (num_samples, logits.shape[0]))
    b1 = (u > jax.nn.sigmoid(-logits)[None]).astype(u.dtype)
    b2 = (u < jax.nn.sigmoid(logits)[None]).astype(u.dtype)
    return (jax.vmap(f)(b1) - jax.vmap(f)(b2))[:, None] * (u - 0.5)


def disarm(f: Cost, logits: Array, key: Array, num_samples: int) -> Array:
    r"""DisARM (Dong, Mnih & Tucker 2020, eq. 6): the antithetic pair :math:`b = 1[u <
    \sigma(\ell)]`, :math:`\tilde b = 1[1 - u < \sigma(\ell)]`, and
    :math:`\tfrac12 (f(b) - f(\tilde b))\,(-1)^{\tilde b}\,1[b \ne \tilde b]\,\sigma(|\ell|)`."""
    u = jax.random.uniform(key, (num_samples, logits.shape[0]))
    p = jax.nn.sigmoid(logits)
    b = (u < p[None]).astype(u.dtype)
    bt = (1.0 - u < p[None]).astype(u.dtype)
    sign = 1.0 - 2.0 * bt
    weight = sign * (b != bt) * jax.nn.sigmoid(jnp.abs(logits))[None]
    return 0.5 * (jax.vmap(f)(b) - jax.vmap(f)(bt))[:, None] * weight


def _logistic(u: Array) -> Array:
    return jnp.log(u) - jnp.log1p(-u)


def gumbel_softmax(
    f: Cost, logits: Array, key: Array, num_samples: int, temperature: float = 0.5
) -> Array:
    r"""Binary Concrete (Maddison et al. 2017; Jang et al. 2017): the pathwise gradient of
    :math:`f(\sigma((\ell + L)/\tau))`, :math:`L` logistic noise."""
    noise = jax.random.logistic(key, (num_samples, logits.shape[0]))

    def relaxed_cost(lg: Array, n: Array) -> Array:
        return f(jax.nn.sigmoid((lg + n) / temperature))

    return jax.vmap(jax.grad(relaxed_cost), in_axes=(None, 0))(logits, noise)


def gumbel_softmax_st(
    f: Cost, logits: Array, key: Array, num_samples: int, temperature: float = 0.5
) -> Array:
    r"""Straight-through Gumbel-softmax (Jang et al. 2017): ``f`` at the hard sample
    :math:`b = 1[\ell + L > 0]`, its gradient passed through the relaxed one."""
    noise = jax.random.logistic(key, (num_samples, logits.shape[0]))

    def st_cost(lg: Array, n: Array) -> Array:
        z = jax.nn.sigmoid((lg + n) / temperature)
        hard = (lg + n > 0).astype(z.dtype)
        return f(z + jax.lax.stop_gradient(hard - z))

    return jax.vmap(jax.grad(st_cost), in_axes=(None, 0))(logits, noise)


def straight_through(f: Cost, logits: Array, key: Array, num_samples: int) -> Array:
    r"""Straight-through (Bengio et al. 2013): ``f`` at :math:`b = 1[u < \sigma(\ell)]`, its
    gradient through :math:`\sigma(\ell)`: :math:`\nabla_b f(b)\,\sigma(\ell)(1-\sigma(\ell))`."""
    u = jax.random.uniform(key, (num_samples, logits.shape[0]))

    def st_cost(lg: Array, ui: Array) -> Array:
        p = jax.nn.sigmoid(lg)
        b = (ui < p).astype(p.dtype)
        return f(p + jax.lax.stop_gradient(b - p))

    return jax.vmap(jax.grad(st_cost), in_axes=(None, 0))(logits, u)


def _rebar_noise(logits: Array, key: Array, num_samples: int) -> tuple[Array, Array]:
    ku, kv = jax.random.split(key)
    shape = (num_samples, logits.shape[0])
    return jax.random.uniform(ku, shape), jax.random.uniform(kv, shape)


def _relaxed_pair(lg: Array, u: Array, v: Array) -> tuple[Array, Array, Array]:
    r"""``b = H(z)``, ``z = \ell + logit(u)``, and ``\tilde z ~ p(z | b)`` reparameterised by
    ``v`` (Tucker et al. 2017, App. C): ``u`` conditioned on the side of :math:`1 - \sigma(\ell)`
    that ``b`` fixes."""
    p = jax.nn.sigmoid(lg)
    z = lg + _logistic(u)
    b = (z > 0).astype(u.dtype)
    u_given_b = jnp.where(b > 0, (1.0 - p) + v * p, v * (1.0 - p))
    return b, z, lg + _logistic(u_given_b)


def _control_estimate(
    f: Cost, control: Callable[[Array], Array], lg: Array, u: Array, v: Array
) -> Array:
    r"""One row of :math:`[f(b) - c(\tilde z)]\,\nabla\log p(b) + \nabla c(z) - \nabla c(\tilde
    z)` (REBAR, RELAX), the gradients of ``c`` through ``z(\ell)`` and ``\tilde z(\ell)``."""
    b, _, _ = _relaxed_pair(lg, u, v)

    def c_z(x: Array) -> Array:
        return control(_relaxed_pair(x, u, v)[1])

    def c_zt(x: Array) -> Array:
        return control(_relaxed_pair(x, u, v)[2])

    c_tilde, grad_tilde = jax.value_and_grad(c_zt)(lg)
    return (f(b) - c_tilde) * (b - jax.nn.sigmoid(lg)) + jax.grad(c_z)(lg) - grad_tilde


def rebar(
    f: Cost,
    logits: Array,
    key: Array,
    num_samples: int,
    eta: float = 1.0,
    temperature: float = 0.5,
) -> Array:
    r"""REBAR (Tucker et al. 2017, eq. 6) with fixed scale :math:`\eta` and temperature
    :math:`\lambda`: the control is :math:`c(z) = \eta f(\sigma(z / \lambda))`."""
    u, v = _rebar_noise(logits, key, num_samples)

    def control(z: Array) -> Array:
        return eta * f(jax.nn.sigmoid(z / temperature))

    return jax.vmap(lambda ui, vi: _control_estimate(f, control, logits, ui, vi))(u, v)


def relax(
    f: Cost,
    logits: Array,
    key: Array,
    num_samples: int,
    control: Callable[[Array], Array],
) -> Array:
    r"""RELAX (Grathwohl et al. 2018, eq. 8) for a given control :math:`c_\phi(z)` (a function
    of the relaxed sample ``z: [D]``; the benchmark passes the library's default control
    rewritten here, see bench_discrete.py)."""
    u, v = _rebar_noise(logits, key, num_samples)
    return jax.vmap(lambda ui, vi: _control_estimate(f, control, logits, ui, vi))(u, v)


def vimco(f: Cost, logits: Array, key: Array, num_samples: int) -> Array:
    r"""VIMCO (Mnih & Rezende 2016, eqs. 8-10) for :math:`-\log\frac1K\sum_k e^{-f(b_k)}`
    (``f = -log w``, independent of the logits): row ``k`` is :math:`K\,(\hat L_{-k} - \hat L)
    (b_k - \sigma(\ell))` with :math:`\hat L = \log\frac1K\sum_j e^{-f_j}` and
    :math:`\hat L_{-k}` the same with :math:`-f_k` replaced by the mean of the others' (the
    geometric mean of the other weights)."""
    k = num_samples
    p = jax.nn.sigmoid(logits)
    b = jax.random.bernoulli(key, p[None], (k, p.shape[0])).astype(p.dtype)
    log_w = -jax.vmap(f)(b)
    bound = jax.nn.logsumexp(log_w) - jnp.log(k)
    others_mean = (jnp.sum(log_w) - log_w) / (k - 1)
    replaced = jnp.where(jnp.eye(k, dtype=bool), others_mean[:, None], log_w[None, :])
    bound_without = jax.nn.logsumexp(replaced, axis=1) - jnp.log(k)
    return k * (bound_without - bound)[:, None] * (b - p[None])
