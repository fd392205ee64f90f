r"""What a distribution can do, as marker classes (in the spirit of diffrax's solver markers).

An estimator states which capabilities it needs (``GradientEstimator.requires``) and checks
``isinstance(dist, marker)``, never a list of distribution classes: a new distribution that
declares what it is works with every estimator that needs only that.

- :class:`HasScore`: ``log_prob(x)`` is differentiable in the parameters (score function).
- :class:`Reparameterizable`: ``sample`` is differentiable in the parameters (pathwise).
- :class:`StandardNoise`: ``standard_noise(key, sample_shape)`` draws the randomness of
  ``sample`` in one batch and ``from_noise(noise)`` maps it to a sample (a location-scale
  family); estimators then draw all samples' noise at once.
- :class:`WeakDerivative`: ``weak_derivative(key, coupling)`` gives a measure-valued
  decomposition of the density's derivative (measure-valued estimator).
- :class:`FactorizedMoments`: independent coordinates with closed-form ``mean`` and
  ``variance`` (the delta-method control variate).
- :class:`Discrete`: samples take values in a countable set.
- :class:`Binary`: a :class:`Discrete` with values in :math:`\{0, 1\}^D`, independent
  coordinates ``b_d ~ Bernoulli(sigmoid(logits_d))`` drawn as ``b = 1[u < sigmoid(logits)]``
  from uniform noise (ARM, DisARM, REBAR, RELAX, RODEO).
- :class:`Relaxable`: a :class:`Discrete` whose ``relaxed(temperature)`` is a continuous,
  reparameterisable relaxation (Concrete / Gumbel-softmax) on whose support the cost is also
  defined; its samples tend to the discrete ones as the temperature goes to 0.
"""

from __future__ import annotations

import abc


class Capability(abc.ABC):  # noqa: B024 (markers: no abstract methods on purpose)
    """Base of the capability markers; carries no behaviour.

    The markers are abstract base classes, so a distribution class defined elsewhere (another
    library's) can be declared without subclassing: ``estimators.Reparameterizable.register(
    TheirNormal)``.
    """


class HasScore(Capability):
    """``log_prob(x)`` is differentiable with respect to the distribution's parameters."""


class Reparameterizable(Capability):
    """``sample(key, shape)`` is differentiable with respect to the parameters."""


class StandardNoise(Reparameterizable):
    """``standard_noise(key, sample_shape)`` and ``from_noise(noise)``: a batched draw of noise."""


class WeakDerivative(Capability):
    """``weak_derivative(key, coupling)``: a measure-valued decomposition of the derivative."""


class FactorizedMoments(Capability):
    """Independent coordinates with closed-form ``mean`` and ``variance``."""


class Discrete(Capability):
    """Samples take values in a countable set."""


class Binary(Discrete):
    """Independent bits ``b = 1[u < sigmoid(logits)]``, ``u ~ Uniform(0, 1)``: a ``logits``
    attribute of the event's shape."""


class Relaxable(Discrete):
    """``relaxed(temperature)``: a continuous reparameterisable relaxation of the samples."""


def capability_names(capabilities: tuple[type, ...]) -> str:
    """``"Reparameterizable, WeakDerivative"``: for error messages."""
    return ", ".join(c.__name__ for c in capabilities) or "nothing"
