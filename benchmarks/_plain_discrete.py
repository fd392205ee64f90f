r"""Hand-written JAX versions of the discrete estimators, the yardstick of bench_discrete.py.

Each is written from its paper's formula the way a researcher writes it in a notebook: one
batched draw of the noise, ``jax.vmap`` of the cost over the rows, ``jax.grad`` where a cost is
differentiated. They import nothing from ``estimators``. All estimate

.. math:: \nabla_\ell\, E_{b \sim \mathrm{Bernoulli}(\sigma(\ell))}[f(b)]

(or, for VIMCO, :math:`\nabla_\ell E[-\log\frac1K\sum_k e^{-f(b_k)}]`) with respect to the
logits :math:`\ell \in R^D`, and return one gradient per row, ``[num_samples, D]``, whose mean
is the estimate. ``f`` takes one sample ``[D]`` (a float 0/1 vector, or a point of
:math:`[0,1]^D` for the relaxations) and returns a scalar.

The noise is one batched draw per estimate: ``jax.random.uniform(key, (num_samples, D))``
where a method is written with uniform noise (ARM, DisARM; REBAR and RELAX draw ``u`` so,
``v`` the same from ``jax.random.fold_in(key, 1)``, and take ``b = 1[u < p]``),
``jax.random.bernoulli(key, p, (num_samples, D))`` where it needs only the bits (REINFORCE,
LOO, VIMCO, double CV, RODEO), logistic noise for the
Concrete relaxation, exponentials normalised to a Dirichlet for ARMS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def arms(f: Cost, logits: Array, key: Array, num_samples: int) -> Array:
    r"""ARMS (Dimitriev & Zhou 2021) with the Dirichlet copula, ``K = num_samples``: per
    coordinate :math:`w \sim \mathrm{Dirichlet}(1, \dots, 1)` (normalised exponentials), the
    rarer value (probability :math:`m = \sigma(-|\ell|)`) where :math:`w_k > s = 1 -
    m^{1/(K-1)}`, and :math:`(f_k - \mathrm{mean}_{j\ne k} f_j)(b_k - \sigma(\ell)) / (1 -
    \rho)`, :math:`1 - \rho = (m - (1 - 2s)_+^{K-1}) / (m (1 - m))`."""
    k = num_samples
    e = jax.random.exponential(key, (k, logits.shape[0]))
    w = e / jnp.sum(e, axis=0, keepdims=True)
    m = jax.nn.sigmoid(-jnp.abs(logits))
    s = 1.0 - m ** (1.0 / (k - 1))
    rare = (w > s[None]).astype(w.dtype)
    b = jnp.where((logits < 0)[None], rare, 1.0 - rare)
    one_minus_rho = (m - jnp.maximum(1.0 - 2.0 * s, 0.0) ** (k - 1)) / (m * (1.0 - m))
    fs = jax.vmap(f)(b)
    baseline = (jnp.sum(fs) - fs) / (k - 1)
    return (fs - baseline)[:, None] * (b - jax.nn.sigmoid(logits)[None]) / one_minus_rho[None]


def arms_systematic(f: Cost, logits: Array, key: Array, num_samples: int) -> Array:
    r"""ARMS's estimator (as :func:`arms`) on ``K = num_samples`` bits drawn by systematic
    sampling: per coordinate :math:`u_k = (\pi_k + v) / K`, :math:`\pi` a random permutation
    (ranks of uniforms), :math:`v \sim U(0, 1)`, the rarer value where :math:`u_k < m`; then
    :math:`1 - \rho = (m - r_{11}) / (m (1 - m))` with :math:`r_{11} = (a(a-1) + 2ar) / (K(K-1))`,
    :math:`Km = a + r` (:math:`a` its integer part)."""
    k = num_samples
    kv, kp = jax.random.split(key)
    v = jax.random.uniform(kv, logits.shape)
    ranks = jnp.argsort(jax.random.uniform(kp, (k, logits.shape[0])), axis=0)
    u = (ranks + v[None]) / k
    m = jax.nn.sigmoid(-jnp.abs(logits))
    rare = (u < m[None]).astype(u.dtype)
    b = jnp.where((logits < 0)[None], rare, 1.0 - rare)
    a = jnp.floor(k * m)
    r = k * m - a
    one_minus_rho = (m - (a * (a - 1) + 2 * a * r) / (k * (k - 1))) / (m * (1.0 - m))
    fs = jax.vmap(f)(b)
    baseline = (jnp.sum(fs) - fs) / (k - 1)
    return (fs - baseline)[:, None] * (b - jax.nn.sigmoid(logits)[None]) / one_minus_rho[None]


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
    shape = (num_samples, logits.shape[0])
    u = jax.random.uniform(key, shape)
    return u, jax.random.uniform(jax.random.fold_in(key, 1), shape)


def _conditional_z(lg: Array, b: Array, v: Array) -> Array:
    r""":math:`\tilde z \sim p(z \mid b)` from ``v``, stably: :math:`\mathrm{softplus}(
    \mathrm{softplus}(\ell) - \mathrm{logit}(v))` where ``b = 1``, :math:`-\mathrm{softplus}(
    \mathrm{logit}(v) + \mathrm{softplus}(-\ell))` where ``b = 0`` (the outer softplus's
    argument chosen by ``b`` first). Finite for every logit and ``v``."""
    lv = _logistic(jnp.maximum(v, jnp.finfo(v.dtype).tiny))
    one = b > 0
    m = jax.nn.softplus(jnp.where(one, jax.nn.softplus(lg) - lv, lv + jax.nn.softplus(-lg)))
    return jnp.where(one, m, -m)


def _conditional_z_algebraic(lg: Array, b: Array, v: Array) -> Array:
    r"""The same :math:`\tilde z` by the algebra of Tucker et al. (2017, App. C): :math:`\tilde
    u = v p` where ``b = 1``, :math:`p + v(1 - p)` where ``b = 0``, :math:`\tilde z = \ell -
    \mathrm{logit}(\tilde u)`. Fewer transcendentals, but :math:`1 - p` cancels: where ``p``
    rounds to 1 (:math:`\ell \gtrsim 17`) and ``b = 0``, :math:`\tilde u = 1` and
    :math:`\tilde z = -\infty` (its gradient NaN); where ``p`` underflows to 0 (:math:`\ell
    \lesssim -104`) and ``b = 1``, :math:`\tilde z = +\infty`. For reference only."""
    p = jax.nn.sigmoid(lg)
    return lg - _logistic(jnp.where(b > 0, v * p, p + v * (1.0 - p)))


Conditional = Callable[[Array, Array, Array], Array]


def _relaxed_pair(
    lg: Array, u: Array, v: Array, conditional: Conditional = _conditional_z
) -> tuple[Array, Array, Array]:
    r"""``b = H(z) = 1[u < \sigma(\ell)]``, ``z = \ell - logit(u)``, and ``\tilde z ~ p(z |
    b)`` reparameterised by ``v`` (Tucker et al. 2017, App. C)."""
    b = (u < jax.nn.sigmoid(lg)).astype(u.dtype)
    z = lg - _logistic(jnp.maximum(u, jnp.finfo(u.dtype).tiny))
    return b, z, conditional(lg, b, v)


def _control_estimate(
    f: Cost,
    control: Callable[[Array], Array],
    lg: Array,
    u: Array,
    v: Array,
    conditional: Conditional = _conditional_z,
) -> Array:
    r"""One row of :math:`[f(b) - c(\tilde z)]\,\nabla\log p(b) + \nabla c(z) - \nabla c(\tilde
    z)` (REBAR, RELAX), the gradients of ``c`` through ``z(\ell)`` and ``\tilde z(\ell)``."""
    b, _, _ = _relaxed_pair(lg, u, v, conditional)

    def c_z(x: Array) -> Array:
        return control(_relaxed_pair(x, u, v, conditional)[1])

    def c_zt(x: Array) -> Array:
        return control(_relaxed_pair(x, u, v, conditional)[2])

    c_tilde, grad_tilde = jax.value_and_grad(c_zt)(lg)
    return (f(b) - c_tilde) * (b - jax.nn.sigmoid(lg)) + jax.grad(c_z)(lg) - grad_tilde


def _control_rows(
    f: Cost,
    logits: Array,
    key: Array,
    num_samples: int,
    control: Callable[[Array], Array],
    conditional: Conditional,
) -> Array:
    u, v = _rebar_noise(logits, key, num_samples)
    return jax.vmap(lambda ui, vi: _control_estimate(f, control, logits, ui, vi, conditional))(u, v)


def rebar(
    f: Cost,
    logits: Array,
    key: Array,
    num_samples: int,
    eta: float = 1.0,
    temperature: float = 0.5,
    conditional: Conditional = _conditional_z,
) -> Array:
    r"""REBAR (Tucker et al. 2017, eq. 6) with fixed scale :math:`\eta` and temperature
    :math:`\lambda`: the control is :math:`c(z) = \eta f(\sigma(z / \lambda))`."""

    def control(z: Array) -> Array:
        return eta * f(jax.nn.sigmoid(z / temperature))

    return _control_rows(f, logits, key, num_samples, control, conditional)


def relax(
    f: Cost,
    logits: Array,
    key: Array,
    num_samples: int,
    eta: Array,
    temperature: Array,
    net: Callable[[Array], Array],
    conditional: Conditional = _conditional_z,
) -> Array:
    r"""RELAX (Grathwohl et al. 2018, eq. 8) with the control of its discrete experiments, the
    relaxed cost plus a network: :math:`c(z) = \eta f(\sigma(z/\lambda)) + r(z)`
    (``net(z: [D]) -> []``)."""

    def control(z: Array) -> Array:
        return eta * f(jax.nn.sigmoid(z / temperature)) + net(z)

    return _control_rows(f, logits, key, num_samples, control, conditional)


def rebar_algebraic(f: Cost, logits: Array, key: Array, num_samples: int, **kwargs: Any) -> Array:
    """:func:`rebar` with :func:`_conditional_z_algebraic` (reference only: not finite at
    extreme logits)."""
    return rebar(f, logits, key, num_samples, conditional=_conditional_z_algebraic, **kwargs)


def relax_algebraic(f: Cost, logits: Array, key: Array, num_samples: int, **kwargs: Any) -> Array:
    """:func:`relax` with :func:`_conditional_z_algebraic` (reference only: not finite at
    extreme logits)."""
    return relax(f, logits, key, num_samples, conditional=_conditional_z_algebraic, **kwargs)


def coordinatewise_mlp(w1: Array, b1: Array, w2: Array, b2: Array) -> Callable[[Array], Array]:
    r"""The library's default RELAX network: :math:`r(z) = \sum_d (\frac1H w_2^\top \tanh(w_1
    z_d + b_1) + b_2)`, one small MLP (hidden width ``H``, its output averaged over the hidden
    units) on each coordinate, summed."""

    def net(z: Array) -> Array:
        return jnp.sum(jnp.tanh(z[:, None] * w1[None] + b1[None]) @ w2 / w2.shape[0] + b2)

    return net


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


def double_cv(f: Cost, logits: Array, key: Array, num_samples: int, alpha: Array) -> Array:
    r"""Double control variates (Titsias & Shi 2022) on REINFORCE-LOO, ``K = num_samples``:
    the cost corrected by the Taylor term :math:`\alpha\,\bar g_{-k}^\top (b_k - \sigma(\ell))`
    (:math:`\bar g_{-k}` the others' mean gradient of ``f``), its closed-form mean
    :math:`\alpha\,\bar g_{-k}\,\sigma(1-\sigma)` subtracted:
    :math:`(\tilde f_k - \frac1{K-1}\sum_{j\ne k}\tilde f_j)(b_k - \sigma(\ell)) - \alpha\,\bar
    g_{-k}\,\sigma(\ell)(1 - \sigma(\ell))`."""
    k = num_samples
    p = jax.nn.sigmoid(logits)
    b = jax.random.bernoulli(key, p[None], (k, p.shape[0])).astype(p.dtype)
    fs, gs = jax.vmap(jax.value_and_grad(f))(b)
    score = b - p[None]
    g_others = (jnp.sum(gs, axis=0)[None] - gs) / (k - 1)
    corrected = fs + alpha * jnp.sum(g_others * score, axis=1)
    baseline = (jnp.sum(corrected) - corrected) / (k - 1)
    return (corrected - baseline)[:, None] * score - alpha * g_others * (p * (1 - p))[None]


def rodeo(
    f: Cost,
    logits: Array,
    key: Array,
    num_samples: int,
    net: Callable[[Array, Array], Array],
    alpha: Array,
    beta: Array,
) -> Array:
    r"""RODEO (Shi et al. 2022) on REINFORCE-LOO, ``K = num_samples``, with the Gibbs Stein
    operator :math:`(\mathcal A h)(x) = \frac1D\sum_d q(\neg x_d)(h(x^{(d)}) - h(x))` and the
    leave-one-out base functions :math:`h_k(y) = \mathrm{mean}_{j\ne k}\,\mathrm{net}(f_j,
    g_j^\top(y - b_j)) \in R^2` (``net(f, lin) -> [2]``): row ``k`` is
    :math:`(f_k - \mathrm{mean}_{j\ne k}(f_j + \alpha\,\mathcal A h^0_j(b_j)))(b_k - \sigma)
    + \beta\,\mathcal A[h^1_k(y)(y - \sigma)](b_k)`. Written as the formula reads: ``h`` at
    the ``D`` flipped neighbours of each sample, by ``vmap``."""
    k = num_samples
    p = jax.nn.sigmoid(logits)
    b = jax.random.bernoulli(key, p[None], (k, p.shape[0])).astype(p.dtype)
    fs, gs = jax.vmap(jax.value_and_grad(f))(b)

    def h(i: int, y: Array) -> Array:  # the base function of sample i at y: [2]
        outs = [net(fs[j], jnp.dot(gs[j], y - b[j])) for j in range(k) if j != i]
        return sum(outs) / (k - 1)

    def stein(hx: Array, h_nbrs: Array, x: Array) -> Array:
        flip = jnp.where(x > 0.5, 1 - p, p)
        return jnp.mean(flip.reshape((-1,) + (1,) * (hx.ndim)) * (h_nbrs - hx[None]), axis=0)

    a_h0, a_big_h = [], []
    for i in range(k):
        x = b[i]
        nbrs = x[None] + jnp.eye(x.shape[0]) * (1 - 2 * x)[None]  # row d: bit d flipped
        hx, h_nbrs = h(i, x), jax.vmap(lambda y, i=i: h(i, y))(nbrs)  # [2], [D, 2]
        a_h0.append(stein(hx[0], h_nbrs[:, 0], x))
        a_big_h.append(
            stein(hx[1] * (x - p), h_nbrs[:, 1:2] * (nbrs - p[None]), x)  # [D]
        )
    a_h0_arr = jnp.stack(a_h0)
    corrected = fs + alpha * a_h0_arr
    baseline = (jnp.sum(corrected) - corrected) / (k - 1)
    return (fs - baseline)[:, None] * (b - p[None]) + beta * jnp.stack(a_big_h)


def leaky_mlp(
    w_lin: Array, w_f: Array, bias: Array, w_out: Array, b_out: Array, leak: float = 0.3
) -> Callable[[Array, Array], Array]:
    """RODEO's control network: ``net(f, lin) = LeakyReLU(lin w_lin + f w_f + bias) w_out +
    b_out``, two scalars in, ``[2]`` out (hidden width ``H``: ``w_out [H, 2]``)."""

    def net(f: Array, lin: Array) -> Array:
        return jax.nn.leaky_relu(lin * w_lin + f * w_f + bias, leak) @ w_out + b_out

    return net


def rodeo_linear_flips(
    f: Cost,
    logits: Array,
    key: Array,
    num_samples: int,
    net: Callable[[Array, Array], Array],
    alpha: Array,
    beta: Array,
) -> Array:
    r""":func:`rodeo` (the same rows on the same key) without forming the ``D`` flipped
    neighbours: flipping bit ``d`` of ``y`` moves the linearisation :math:`g_j^\top(y - b_j)`
    by :math:`g_{jd}(1 - 2y_d)`, and :math:`\mathcal A[h^1(y)(y - \sigma)](x)_e =
    \frac1D[(x_e - \sigma_e)\sum_d q_d (h^1(x^{(d)}) - h^1(x)) + q_e h^1(x^{(e)})(1 - 2x_e)]`
    (:math:`q_d = q(\neg x_d)`): :math:`O(K^2 D H)` per estimate instead of
    :math:`O(K^2 D^2)`."""
    k = num_samples
    p = jax.nn.sigmoid(logits)
    b = jax.random.bernoulli(key, p[None], (k, p.shape[0])).astype(p.dtype)
    fs, gs = jax.vmap(jax.value_and_grad(f))(b)
    dim = p.shape[0]
    a_h0, a_big_h = [], []
    for i in range(k):
        x = b[i]
        flip = jnp.where(x > 0.5, 1 - p, p)
        others = [j for j in range(k) if j != i]
        # [1 + D] linearisations per other sample: at x, then at x with bit d flipped.
        outs = []
        for j in others:
            at_x = jnp.dot(gs[j], x - b[j])
            lin = jnp.concatenate([at_x[None], at_x + gs[j] * (1 - 2 * x)])
            outs.append(jax.vmap(lambda v, j=j: net(fs[j], v))(lin))  # [1 + D, 2]
        h = sum(outs) / (k - 1)
        hx, h_nbrs = h[0], h[1:]
        a_h0.append(jnp.mean(flip * (h_nbrs[:, 0] - hx[0])))
        spread = jnp.sum(flip * (h_nbrs[:, 1] - hx[1]))
        a_big_h.append(((x - p) * spread + flip * h_nbrs[:, 1] * (1 - 2 * x)) / dim)
    corrected = fs + alpha * jnp.stack(a_h0)
    baseline = (jnp.sum(corrected) - corrected) / (k - 1)
    return (fs - baseline)[:, None] * (b - p[None]) + beta * jnp.stack(a_big_h)
