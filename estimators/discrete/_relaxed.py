r"""Relaxed distributions: the Concrete (Gumbel-softmax) family, and the one-hot categorical.

The Concrete distribution (Maddison, Mnih & Teh, ICLR 2017; the Gumbel-softmax of Jang, Gu &
Poole, ICLR 2017) is a continuous relaxation of a discrete one at a temperature
:math:`\tau > 0`:

- :class:`RelaxedBernoulli` (the Binary Concrete): :math:`z = \sigma((\ell + L) / \tau)`,
  :math:`L \sim \mathrm{Logistic}(0, 1)`, on :math:`(0, 1)^D`; thresholding at 1/2 gives
  :math:`1[\ell + L > 0] \sim \mathrm{Bernoulli}(\sigma(\ell))` exactly.
- :class:`RelaxedOneHotCategorical` (the Concrete): :math:`z = \mathrm{softmax}((\ell + G) /
  \tau)`, :math:`G_k` i.i.d. Gumbel(0, 1), on the simplex; its argmax is
  :math:`\mathrm{Categorical}(\mathrm{softmax}(\ell))` exactly (the Gumbel-max trick).

Both are reparameterisable through their standard noise (``standard_noise``/``from_noise``)
and have log-densities; ``hard(z)`` maps a relaxed sample to the discrete sample it rounds to.
:class:`OneHotCategorical` is the categorical with one-hot float samples, whose
``relaxed(temperature)`` is the Concrete; ``estimators.Bernoulli.relaxed(temperature)`` is the
:class:`RelaxedBernoulli`. As :math:`\tau \to 0` the relaxed samples tend to the discrete ones.

The temperature is a scalar (or one per coordinate of a Binary Concrete, one per row of a
Concrete), finite and > 0: built from
concrete values, a violation raises a ``ValueError`` naming it; built from traced values, it
turns every parameter into NaN (as for the other distributions, see
``estimators._distributions``).

Floating point. A float32 sigmoid or softmax rounds to exactly 0 or 1 far from the middle (at
:math:`\tau = 0.1`, whenever :math:`|\ell + L| > 1.7`), where the log-density is infinite.
``sample``/``from_noise`` therefore clip to ``[tiny, 1 - epsneg]`` (the Binary Concrete) or to
``>= tiny`` (the Concrete) with the gradient of the unclipped value (straight-through, as the
Beta and Dirichlet do), so ``log_prob`` of a sample is finite; at a clipped value it is the
density there, not the probability of the values rounded to it. (Work in logit space, as
Maddison et al. advise, when exact log-densities of low-temperature samples matter.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy import special

from .._capabilities import HasScore, Relaxable, StandardNoise
from .._distributions import (
    Array,
    Distribution,
    Shape,
    _clip_to_support,
    _expand,
    _is_concrete,
    _pytree_dataclass,
    _validate,
)


def _check_temperature(dist: Distribution, shapes: tuple[tuple[int, ...], ...]) -> None:
    """The temperature: a float array of one of ``shapes``, finite and > 0.

    Concrete: raise a ``ValueError`` naming it. Traced: an infinite temperature becomes NaN,
    which :func:`estimators._distributions._validate` then spreads to every parameter.
    """
    cls = type(dist).__name__
    logits, temperature = dist.logits, dist.temperature  # type: ignore[attr-defined]
    dtype = jnp.result_type(logits)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    temperature = jnp.asarray(temperature, dtype)
    if tuple(jnp.shape(temperature)) not in shapes:
        raise ValueError(
            f"{cls}: temperature must have one of the shapes {[list(s) for s in shapes]} "
            f"(logits {list(jnp.shape(logits))}); got shape {list(jnp.shape(temperature))}"
        )
    if _is_concrete(temperature):
        if not bool(jnp.all(jnp.isfinite(temperature) & (temperature > 0))):
            raise ValueError(
                f"{cls}: temperature must be finite and > 0 everywhere; got {temperature}"
            )
    else:
        temperature = jnp.where(jnp.isinf(temperature), jnp.nan, temperature)
    object.__setattr__(dist, "temperature", temperature)


@_pytree_dataclass
class RelaxedBernoulli(Distribution, HasScore, StandardNoise):
    r"""The Binary Concrete (Maddison et al. 2017, sec. 3.3; Jang et al. 2017), independent
    coordinates: :math:`z = \sigma((\ell + L)/\tau)`, :math:`L \sim \mathrm{Logistic}(0, 1)`.

    ``logits: [*event]``, ``temperature``: a scalar or ``[*event]``. The density on
    :math:`(0, 1)` (the logistic density of :math:`L = \tau\,\mathrm{logit}(z) - \ell` times
    :math:`|dL/dz| = \tau / (z(1 - z))`) is

    .. math:: p(z) = \frac{\tau\, \alpha\, z^{-\tau-1} (1-z)^{-\tau-1}}
              {(\alpha z^{-\tau} + (1-z)^{-\tau})^2}, \qquad \alpha = e^{\ell},

    evaluated in log space. ``hard(z) = 1[z > 1/2]`` is ``Bernoulli(sigmoid(logits))``.

    Example:
      >>> import jax, jax.numpy as jnp, estimators
      >>> d = estimators.RelaxedBernoulli(jnp.array([0.0, 2.0]), 0.5)
      >>> z = d.sample(jax.random.key(0), (4,))
      >>> z.shape, bool(jnp.all((z > 0) & (z < 1))), d.log_prob(z).shape
      ((4, 2), True, (4,))
    """

    logits: Array
    temperature: Array

    def __post_init__(self):
        _check_temperature(self, ((), tuple(jnp.shape(self.logits))))
        _validate(self, positive=("temperature",), not_nan=("logits",))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(jnp.shape(self.logits))

    def standard_noise(self, key: Array, sample_shape: Shape = ()) -> Array:
        """Logistic(0, 1) noise ``[*sample_shape, *event_shape]``."""
        dtype = jnp.result_type(self.logits)
        return jax.random.logistic(key, (*sample_shape, *self.event_shape), dtype)

    def from_noise(self, noise: Array) -> Array:
        """``sigmoid((logits + noise) / temperature)``, clipped to ``[tiny, 1 - epsneg]``
        with the unclipped gradient; ``noise: [*sample_shape, *event_shape]``."""
        logits, temperature = _expand(jnp.shape(noise), self.logits, self.temperature)
        return _clip_to_support(jax.nn.sigmoid((logits + noise) / temperature), upper=True)

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        return self.from_noise(self.standard_noise(key, sample_shape))

    def hard(self, z: Array) -> Array:
        """``1[z > 1/2]`` (float): the Bernoulli sample a relaxed sample rounds to."""
        return (z > 0.5).astype(jnp.result_type(z))

    def log_prob(self, x: Array) -> Array:
        logits, temperature = _expand(jnp.shape(x), self.logits, self.temperature)
        log_z, log_1mz = jnp.log(x), jnp.log1p(-x)
        lp = (
            jnp.log(temperature)
            + logits
            - (temperature + 1) * (log_z + log_1mz)
            - 2 * jnp.logaddexp(logits - temperature * log_z, -temperature * log_1mz)
        )
        return self._sum_event(lp)


@_pytree_dataclass
class OneHotCategorical(Distribution, HasScore, Relaxable):
    """Categorical(softmax(logits)) over the last axis, with one-hot float samples.

    ``logits: [*batch, K]``; a sample has the logits' shape (``event_shape``), a one-hot
    vector over the last axis; ``log_prob(x) = sum(x * log_softmax(logits))`` summed over the
    batch; ``mean`` is the probabilities. ``relaxed(temperature)`` is the
    :class:`RelaxedOneHotCategorical` (the Concrete), on whose support (the simplex) a cost
    must then be defined.

    Example:
      >>> import jax, jax.numpy as jnp, estimators
      >>> d = estimators.OneHotCategorical(jnp.log(jnp.array([0.2, 0.3, 0.5])))
      >>> x = d.sample(jax.random.key(0), (2,))
      >>> x.shape, x.sum(-1).tolist()
      ((2, 3), [1.0, 1.0])
      >>> d.log_prob(jnp.array([0.0, 0.0, 1.0]))  # log 0.5
      Array(-0.6931472, dtype=float32)
    """

    logits: Array

    def __post_init__(self):
        if jnp.ndim(self.logits) < 1:
            raise ValueError(
                "OneHotCategorical: logits need a last axis of categories; got a scalar"
            )
        _validate(self, not_nan=("logits",))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(jnp.shape(self.logits))

    @property
    def probs(self) -> Array:
        return jax.nn.softmax(self.logits, axis=-1)

    @property
    def mean(self) -> Array:
        return self.probs

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        shape = (*sample_shape, *self.event_shape[:-1])
        index = jax.random.categorical(key, self.logits, axis=-1, shape=shape)
        k = self.event_shape[-1]
        return jax.nn.one_hot(index, k, dtype=jnp.result_type(self.logits))

    def log_prob(self, x: Array) -> Array:
        (log_p,) = _expand(jnp.shape(x), jax.nn.log_softmax(self.logits, axis=-1))
        return self._sum_event(x * log_p)

    def relaxed(self, temperature: Array | float) -> RelaxedOneHotCategorical:
        """The Concrete relaxation at ``temperature``: :class:`RelaxedOneHotCategorical`."""
        return RelaxedOneHotCategorical(self.logits, temperature)  # type: ignore[arg-type]


@_pytree_dataclass
class RelaxedOneHotCategorical(Distribution, HasScore, StandardNoise):
    r"""The Concrete distribution (Maddison et al. 2017, sec. 3.3; the Gumbel-softmax of Jang
    et al. 2017): :math:`z = \mathrm{softmax}((\ell + G)/\tau)`, :math:`G_k` i.i.d.
    Gumbel(0, 1), over the last axis.

    ``logits: [*batch, K]``, ``temperature``: a scalar or ``[*batch, 1]``; samples have
    the logits' shape, each last-axis row on the simplex. The density of a row, with respect
    to Lebesgue measure on its first :math:`K - 1` coordinates (so for :math:`K = 2` it is the
    :class:`RelaxedBernoulli` density of :math:`z_1` with logit :math:`\ell_1 - \ell_2`), is

    .. math:: p(z) = (K-1)!\,\tau^{K-1} \prod_{k=1}^K
              \frac{\alpha_k z_k^{-\tau-1}}{\sum_{i=1}^K \alpha_i z_i^{-\tau}},
              \qquad \alpha_k = e^{\ell_k},

    evaluated in log space (summed over the batch). ``hard(z)`` is the one-hot argmax, a
    ``OneHotCategorical(logits)`` sample.

    Example:
      >>> import jax, jax.numpy as jnp, estimators
      >>> d = estimators.RelaxedOneHotCategorical(jnp.zeros(3), 0.5)
      >>> z = d.sample(jax.random.key(0), (4,))
      >>> z.shape, bool(jnp.allclose(z.sum(-1), 1.0)), d.log_prob(z).shape
      ((4, 3), True, (4,))
    """

    logits: Array
    temperature: Array

    def __post_init__(self):
        if jnp.ndim(self.logits) < 1 or jnp.shape(self.logits)[-1] < 2:
            raise ValueError(
                "RelaxedOneHotCategorical: logits need a last axis of at least 2 categories; "
                f"got shape {list(jnp.shape(self.logits))}"
            )
        _check_temperature(self, ((), (*jnp.shape(self.logits)[:-1], 1)))
        _validate(self, positive=("temperature",), not_nan=("logits",))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(jnp.shape(self.logits))

    def standard_noise(self, key: Array, sample_shape: Shape = ()) -> Array:
        """Gumbel(0, 1) noise ``[*sample_shape, *event_shape]``."""
        dtype = jnp.result_type(self.logits)
        return jax.random.gumbel(key, (*sample_shape, *self.event_shape), dtype)

    def from_noise(self, noise: Array) -> Array:
        """``softmax((logits + noise) / temperature)`` over the last axis, each coordinate at
        least ``tiny`` (unclipped gradient)."""
        logits, temperature = _expand(jnp.shape(noise), self.logits, self.temperature)
        return _clip_to_support(jax.nn.softmax((logits + noise) / temperature, axis=-1))

    def sample(self, key: Array, sample_shape: Shape = ()) -> Array:
        return self.from_noise(self.standard_noise(key, sample_shape))

    def hard(self, z: Array) -> Array:
        """The one-hot argmax of each last-axis row: the categorical sample ``z`` rounds to."""
        return jax.nn.one_hot(jnp.argmax(z, axis=-1), z.shape[-1], dtype=jnp.result_type(z))

    def log_prob(self, x: Array) -> Array:
        logits, temperature = _expand(jnp.shape(x), self.logits, self.temperature)
        k = x.shape[-1]
        log_x = jnp.log(x)
        per_row = (
            math.lgamma(k)
            + (k - 1) * jnp.log(temperature[..., 0])
            + jnp.sum(logits - (temperature + 1) * log_x, axis=-1)
            - k * special.logsumexp(logits - temperature * log_x, axis=-1)
        )
        return self._sum_event(per_row, len(self.event_shape) - 1)
