"""Argument checks and key handling shared by every estimator.

The checks run at trace time: they look only at static things (shapes, dtypes, Python ints), so
they cost nothing under ``jit`` and fail before any computation.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._distributions import Distribution

Array = jax.Array
PyTree = Any
CostFn = Callable[[Array], Array]
DistBuilder = Callable[[PyTree], Distribution]


def check_num_samples(num_samples: Any, who: str) -> int:
    """``num_samples`` must be an integer >= 1 (it fixes shapes, so it is static under jit).

    Python and NumPy integers are accepted; bools, floats and traced values are not.
    """
    try:
        if isinstance(num_samples, bool):
            raise TypeError
        num_samples = operator.index(num_samples)
    except TypeError:
        raise TypeError(
            f"{who}: num_samples must be a Python int (static under jit); "
            f"got {type(num_samples).__name__}"
        ) from None
    if num_samples < 1:
        raise ValueError(f"{who}: num_samples must be >= 1; got {num_samples}")
    return num_samples


def plain_function(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` behind a fresh Python function, safe to hand to JAX's caching transforms.

    ``jax.jit`` and ``jax.eval_shape`` cache on the callable through a weak reference. Some
    callables cannot be weakly referenced (NumPy's array-function dispatchers such as
    ``np.sum``, builtins, some C extensions): JAX raises ``TypeError: cannot create weak
    reference``, and with JAX 0.10.2 the next such call in the process crashed the interpreter
    (segmentation fault). A closure can always be referenced; it is new on every call, so
    nothing is cached across calls either. Every user callable that ``estimators`` hands to a
    caching transformation goes through this (today: the cost in :func:`build_and_check`;
    ``vmap``/``grad`` do not cache on the callable).
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return call


def build_and_check(
    function: CostFn, params: PyTree, dist_builder: DistBuilder, num_samples: int, who: str
) -> Distribution:
    """Build the distribution and check the arguments of an estimator; returns the distribution.

    Raises a ``TypeError``/``ValueError`` naming the problem if ``num_samples`` is not a positive
    int, if a parameter leaf is not floating point, if ``dist_builder`` does not return a
    distribution, or if ``function`` does not map one sample to a scalar.
    """
    check_num_samples(num_samples, who)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"{who}: parameters must be floating point to be differentiated; "
                f"params{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}"
            )
    dist = dist_builder(params)
    if not (hasattr(dist, "sample") and hasattr(dist, "log_prob")):
        raise TypeError(
            f"{who}: dist_builder(params) must return a distribution with sample(key, "
            f"sample_shape) and log_prob(x); got {type(dist).__name__}"
        )
    sample = jax.eval_shape(lambda k: dist.sample(k), jax.random.key(0))
    out = jax.eval_shape(plain_function(function), sample)
    if not (hasattr(out, "shape") and out.shape == ()):
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"{who}: function must return a scalar for one sample of shape "
            f"{list(sample.shape)}; it returned {shape}. Write the cost for one sample; "
            "the estimator vmaps it."
        )
    return dist


def sample_noise(dist: Distribution, key: Array, num_samples: int) -> Array:
    """The randomness of ``num_samples`` samples, one row per sample.

    A distribution with ``standard_noise``/``from_noise`` (a location-scale family such as
    ``Normal``) gets one batched draw of standard noise, ``[num_samples, *event_shape]``: on a
    CPU one call is several times faster than one key per sample. Any other distribution gets
    one key per sample, ``jax.random.split(key, num_samples)``.
    """
    if hasattr(dist, "standard_noise"):
        return dist.standard_noise(key, (num_samples,))
    return jax.random.split(key, num_samples)


def sample_from_noise(dist: Distribution, noise: Array) -> Array:
    """One sample ``[*event_shape]`` from one row of :func:`sample_noise`.

    Differentiable with respect to the distribution's parameters when it is reparameterisable.
    """
    from_noise = getattr(dist, "from_noise", None)
    if from_noise is not None:
        return from_noise(noise)
    return dist.sample(noise)


def draw_samples(dist: Distribution, key: Array, num_samples: int) -> Array:
    """``[num_samples, *event_shape]``: the samples every estimator draws with this key.

    All estimators of this package draw their samples this way, so two estimators called with
    the same key see the same samples (common random numbers), and code that needs the samples
    an estimator used (to update a baseline, say) can draw them again.
    """
    return jax.vmap(lambda n: sample_from_noise(dist, n))(sample_noise(dist, key, num_samples))


def draw(dist_builder: DistBuilder, params: PyTree, key: Array, num_samples: int) -> Array:
    """:func:`draw_samples` of ``dist_builder(params)``, differentiable in ``params``."""
    return draw_samples(dist_builder(params), key, num_samples)
