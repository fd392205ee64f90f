"""Drop-in replacements for ``optax.monte_carlo`` (removed in optax 0.2.7; 0.2.6 has it last).

Same arguments and returns as optax 0.2.6: ``params`` is a sequence of arrays, ``dist_builder``
takes them positionally (``dist_builder(*params)``), and the result is a sequence of the same
type holding one ``[num_samples, *param.shape]`` jacobian per parameter. ``function`` is written
for one sample, as in optax. The random draws differ from optax's (a key per sample here), so
estimates agree in distribution, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._common import Array
from ._distributions import Distribution
from ._pathwise import pathwise
from ._score_function import score_function


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
    return type(params)(jac)


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
    return type(params)(jac)
