r"""Bayesian logistic regression, mean-field Gaussian posterior (Mohamed et al. 2020, sec. 8.3).

Model: weights :math:`w \in R^D`, prior :math:`N(0, I)`, labels
:math:`y_n \sim \mathrm{Bernoulli}(\sigma(x_n^\top w))`. Posterior
:math:`q(w) = N(\mu, \mathrm{diag}(e^{2 s}))` with ``params = {"loc": mu, "log_scale": s}``.

.. math:: \mathrm{ELBO} = E_q[\log p(y \mid X, w)] - \mathrm{KL}(q \,\|\, N(0, I)),

the expected log-likelihood estimated by Monte Carlo, the KL in closed form. Every function is
pure and written for one weight sample ``w: [D]``; ``features: [B, D]``, ``labels: [B]`` (0/1
floats). A minibatch log-likelihood is scaled to the full data set with ``scale = N_data / B``.

:func:`log_likelihood_cost` is the log-likelihood as a cost that carries its fast coordinate
evaluator (:func:`perturbed_log_likelihoods`, through :func:`estimators.with_coordinate_costs`):
the cost depends on ``w`` only through the logits ``X w``, so replacing one coordinate changes
every logit by ``X[:, d] * delta`` and a perturbed cost costs ``O(B)`` instead of ``O(B D)``.
Every estimator takes it as an ordinary cost; the measure-valued one (from
``estimators.registry`` or :func:`estimators.measure_valued`) uses the fast evaluator
(tests/test_blr_model.py checks it against the plain cost to rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import estimators

Array = jax.Array
Params = dict[str, Array]


def _matmul(a: Array, b: Array) -> Array:
    """``a @ b`` in full float32 on every backend.

    GPUs multiply float32 matrices in TF32 by default (10-bit mantissa): the logits of this model
    then carry relative errors of about 1e-3 (the measure-valued fast path differed from the
    plain cost by up to 1.6% on an H100), far above float32 rounding. Its matrices are small, so
    full precision costs little.
    """
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


# Elements of the perturbed-logit tensor the measure-valued evaluator processes per vectorised
# step (see _in_chunks).
_CHUNK_ELEMENTS = 2**20


softplus = estimators.softplus  # max(z, 0) + log1p(exp(-|z|)): this module's inner loop


def init_params(dim: int) -> Params:
    """Posterior parameters initialised at zero: ``{"loc": [D], "log_scale": [D]}`` (q = prior)."""
    return {"loc": jnp.zeros((dim,)), "log_scale": jnp.zeros((dim,))}


def posterior(params: Params) -> estimators.Normal:
    """The mean-field Gaussian ``N(loc, exp(log_scale)^2)``; event shape ``[D]``."""
    return estimators.Normal.from_log_scale(params["loc"], params["log_scale"])


def kl_to_prior(params: Params) -> Array:
    r"""Closed form :math:`\mathrm{KL}(N(\mu, \sigma^2) \| N(0, I)) = \tfrac12 \sum_d
    (\sigma_d^2 + \mu_d^2 - 1 - 2 \log \sigma_d)`. Returns ``[]``."""
    loc, log_scale = params["loc"], params["log_scale"]
    return 0.5 * jnp.sum(jnp.exp(2 * log_scale) + jnp.square(loc) - 1.0 - 2 * log_scale)


def log_likelihood(
    weights: Array, features: Array, labels: Array, scale: float | Array = 1.0
) -> Array:
    r"""``scale`` times :math:`\sum_n \log p(y_n \mid x_n, w) = \sum_n y_n z_n -
    \mathrm{softplus}(z_n)`, :math:`z = X w`.

    Args:
      weights: ``[D]`` one weight sample.
      features: ``[B, D]``; labels: ``[B]`` in {0, 1}.
      scale: ``N_data / B`` to estimate the full-data log-likelihood from a minibatch.

    Returns:
      ``[]``.
    """
    logits = _matmul(features, weights)
    return scale * jnp.sum(labels * logits - softplus(logits))


def accuracy(weights: Array, features: Array, labels: Array) -> Array:
    """Fraction of ``labels: [B]`` predicted right by ``sign(X w)`` for one sample ``w: [D]``."""
    predicted = (_matmul(features, weights) > 0).astype(labels.dtype)
    return jnp.mean(predicted == labels)


def evaluate(
    params: Params, features: Array, labels: Array, key: Array, *, num_samples: int
) -> dict[str, Array]:
    r"""ELBO and accuracy on ``(features [B, D], labels [B])`` from ``num_samples`` draws of q.

    Returns:
      ``{"elbo": [], "accuracy": []}``: the ELBO (Monte Carlo expected log-likelihood minus the
      closed-form KL) and the expected accuracy :math:`E_q[\mathrm{accuracy}(w)]`.
    """
    q = posterior(params)
    eps = jax.random.normal(key, (num_samples, q.loc.shape[0]), q.loc.dtype)
    ws = q.loc[None] + q.scale[None] * eps  # [num_samples, D]
    logits = _matmul(ws, features.T)  # [num_samples, B]: one product serves both metrics
    loglik = jnp.sum(labels[None] * logits - softplus(logits), axis=1)
    correct = (logits > 0) == (labels[None] > 0.5)
    return {"elbo": jnp.mean(loglik) - kl_to_prior(params), "accuracy": jnp.mean(correct)}


def perturbed_log_likelihoods(
    features: Array, labels: Array, scale: float | Array = 1.0
) -> estimators.CoordinateCostFn:
    r"""The fast coordinate evaluator of :func:`log_likelihood` (see :func:`log_likelihood_cost`).

    With :math:`z = X w` and coordinate ``d`` set to ``v``, the log-likelihood is
    :math:`s\,(y^\top z + (y^\top X)_d (v - w_d) - \sum_n \mathrm{softplus}(z_n + X_{nd}(v -
    w_d)))`: ``O(B)`` per replaced coordinate instead of ``O(B D)``.

    Args:
      features: ``[B, D]``; labels: ``[B]``; scale: as :func:`log_likelihood`.

    Returns:
      ``(w: [D], values: [P, D]) -> [P, D]``, the log-likelihood with ``w_d = values[p, d]``.
    """
    yx = _matmul(labels, features)  # [D]

    def costs(w: Array, values: Array) -> Array:
        z = _matmul(features, w)  # [B]
        delta = values - w[None]  # [P, D]
        perturbed = z[None, None] + delta[..., None] * features.T[None]  # [P, D, B]
        softplus_sum = jnp.sum(softplus(perturbed), axis=-1)
        return scale * (_matmul(labels, z) + yx[None] * delta - softplus_sum)

    return costs


def _in_chunks(costs: estimators.CoordinateCostFn, dim: int, batch: int):
    """``costs`` that, when vmapped over samples, runs over them ``chunk`` at a time.

    The measure-valued estimator vmaps the evaluator over its samples; all at once, the
    ``[samples, 4, D, B]`` perturbed logits fall out of cache (100 samples on the full data:
    28 MB, several times slower). Vmapped over ``n`` samples, this evaluates them in chunks of
    the largest divisor of ``n`` with at most ``_CHUNK_ELEMENTS`` elements (a divisor: one
    compiled loop body). The values are those of ``costs`` on each sample.
    """

    @jax.custom_batching.custom_vmap
    def chunked(w: Array, values: Array) -> Array:
        return costs(w, values)

    @chunked.def_vmap
    def _vmapped(axis_size: int, in_batched: list[bool], w: Array, values: Array):
        w_batched, values_batched = in_batched
        w = w if w_batched else jnp.broadcast_to(w, (axis_size, *w.shape))
        if not values_batched:
            values = jnp.broadcast_to(values, (axis_size, *values.shape))
        limit = max(1, min(axis_size, _CHUNK_ELEMENTS // (values.shape[-2] * dim * batch)))
        chunk = max(c for c in range(1, limit + 1) if axis_size % c == 0)
        return jax.lax.map(lambda a: costs(*a), (w, values), batch_size=chunk), True

    return chunked


def log_likelihood_cost(
    features: Array, labels: Array, scale: float | Array = 1.0
) -> estimators.StructuredCost:
    r"""The cost ``w -> log_likelihood(w, features, labels, scale)``, carrying its fast
    coordinate evaluator :func:`perturbed_log_likelihoods`.

    Every estimator takes it as the plain cost (calling it calls :func:`log_likelihood`);
    :func:`estimators.measure_valued` (and the registry's ``"measure_valued"``, inside
    ``with_control_variate`` too) evaluates its ``4 D`` perturbed costs per sample with the
    evaluator, ``O(B)`` each: with :math:`z = X w` and coordinate ``d`` replaced by ``v``, the
    cost is :math:`\sum_n \ell_n(z_n + X_{nd}(v - w_d))`. Vmapped over samples, the evaluator
    runs over them in chunks that keep its ``[chunk, 4, D, B]`` intermediate near 2**20
    elements.

    Args:
      features: ``[B, D]``; labels: ``[B]``; scale: as :func:`log_likelihood`.

    Returns:
      A cost ``(w: [D]) -> []`` (an :class:`estimators.StructuredCost`).
    """
    batch, dim = features.shape
    return estimators.with_coordinate_costs(
        lambda w: log_likelihood(w, features, labels, scale),
        _in_chunks(perturbed_log_likelihoods(features, labels, scale), dim, batch),
    )
