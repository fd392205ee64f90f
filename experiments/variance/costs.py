"""The costs of the variance figures (Mohamed et al. 2020, Figs 2-7), one formula for both sides.

Every cost is separable, ``f(x) = a + sum_d phi(x_d; k)`` with
``phi(x; k) = sum_t w_t term_t(x; k)`` over the terms below, so one traced program covers every
cost of a figure (the weights and ``k`` are traced arrays that a grid is vmapped over) and the
exact side needs only one-dimensional integrals. The term formulas are written once, for an
array namespace ``xp`` (``numpy`` for the quadrature in float64, ``jax.numpy`` for the Monte
Carlo side); their derivatives, needed by the exact pathwise variance, are written by hand, so
they check the ``jax.grad`` the pathwise estimator uses rather than reuse it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# The terms phi may combine, in a fixed order: weights arrays are [..., len(TERMS)].
TERMS = ("quadratic", "exp_quadratic", "cosine", "linear", "quartic")
# The terms of the one-dimensional families in k. The k-figures all evaluate these three (the
# unused ones with weight 0), so they share one traced program per estimator and grid size.
K_TERMS = ("quadratic", "exp_quadratic", "cosine")


def term(name: str, xp: ModuleType, x: Any, k: Any) -> Any:
    """``term_name(x; k)`` elementwise (``x`` and ``k`` broadcast)."""
    if name == "quadratic":
        return (x - k) ** 2
    if name == "exp_quadratic":
        return xp.exp(-k * x**2)
    if name == "cosine":
        return xp.cos(k * x)
    if name == "linear":
        return x + 0 * k
    if name == "quartic":
        return x**4 + 0 * k
    raise ValueError(f"unknown cost term {name!r}; known: {TERMS}")


def term_derivative(name: str, xp: ModuleType, x: Any, k: Any) -> Any:
    """``d term_name(x; k) / dx`` elementwise, by hand."""
    if name == "quadratic":
        return 2 * (x - k)
    if name == "exp_quadratic":
        return -2 * k * x * xp.exp(-k * x**2)
    if name == "cosine":
        return -k * xp.sin(k * x)
    if name == "linear":
        return 1 + 0 * (x + k)
    if name == "quartic":
        return 4 * x**3 + 0 * k
    raise ValueError(f"unknown cost term {name!r}; known: {TERMS}")


@dataclasses.dataclass(frozen=True)
class Cost:
    """A named cost ``f(x) = constant + sum_d sum_t weights[t] term_t(x_d; k)``."""

    label: str  # matplotlib mathtext, for titles and legends
    weights: dict[str, float]
    constant: float = 0.0
    uses_k: bool = False

    def weight_vector(self) -> list[float]:
        return [float(self.weights.get(t, 0.0)) for t in TERMS]


class Rows(NamedTuple):
    """The rows of a grid for the exact side: one cost and one ``k`` (or ``D``) per row."""

    weights: np.ndarray  # [R, len(TERMS)] term weights of each row's cost
    k: np.ndarray  # [R] the cost family's parameter
    constant: np.ndarray  # [R] the constant a of each cost
    dim: np.ndarray  # [R] the dimension D


COSTS: dict[str, Cost] = {
    "quadratic": Cost(r"$f(x) = (x - k)^2$", {"quadratic": 1.0}, uses_k=True),
    "exp_quadratic": Cost(r"$f(x) = \exp(-k x^2)$", {"exp_quadratic": 1.0}, uses_k=True),
    "cosine": Cost(r"$f(x) = \cos(k x)$", {"cosine": 1.0}, uses_k=True),
    "constant": Cost(r"$f(x) = 100$", {}, constant=100.0),
    "linear": Cost(r"$f(x) = \sum_d x_d$", {"linear": 1.0}),
    "quartic": Cost(r"$f(x) = \sum_d x_d^4$", {"quartic": 1.0}),
}


def active_terms(cost_names: Sequence[str]) -> tuple[str, ...]:
    """The terms with a nonzero weight in any of the costs, in ``TERMS`` order (static)."""
    used = {t for name in cost_names for t, w in COSTS[name].weights.items() if w != 0}
    return tuple(t for t in TERMS if t in used)


def separable_phi(
    x: jax.Array, weights: jax.Array, k: jax.Array, *, terms: tuple[str, ...]
) -> jax.Array:
    """``phi(x_d; k) = sum_t weights[t] term_t(x_d; k)`` elementwise (``x`` any shape).

    A term with weight 0 sees ``k = 0``, so it stays finite (``exp(-k x^2)`` overflows for
    ``k < 0`` and ``0 * inf`` would be NaN) and so does its gradient. Only ``terms`` (static)
    are evaluated; the others must have weight 0.
    """
    per_coordinate = jnp.zeros_like(x)
    for t in terms:
        w = weights[TERMS.index(t)]
        per_coordinate = per_coordinate + w * term(t, jnp, x, jnp.where(w != 0, k, 0.0))
    return per_coordinate


def separable_cost(
    x: jax.Array, weights: jax.Array, k: jax.Array, constant: jax.Array, *, terms: tuple[str, ...]
) -> jax.Array:
    """``f(x) = constant + sum_d sum_t weights[t] term_t(x_d; k)`` for ONE sample, in JAX.

    Args:
      x: ``[D]`` one sample.
      weights: ``[len(TERMS)]`` term weights (traced); only ``terms`` are evaluated.
      k: ``[]`` the cost family's parameter (traced).
      constant: ``[]``.
      terms: the terms to evaluate (static); the others must have weight 0.

    Returns:
      ``[]``.
    """
    return constant + jnp.sum(separable_phi(x, weights, k, terms=terms))


def separable_coordinate_costs(
    x: jax.Array,
    values: jax.Array,
    weights: jax.Array,
    k: jax.Array,
    constant: jax.Array,
    *,
    terms: tuple[str, ...],
) -> jax.Array:
    """``out[p, d] = f(x with x_d = values[p, d])`` for :func:`separable_cost`'s ``f``, in
    O(P D) instead of the O(P D^2) of evaluating ``f`` at every replaced sample: ``f`` minus
    the coordinate's own term plus the new one, ``(f(x) - phi(x_d)) + phi(values[p, d])``.
    The evaluator that ``estimators.with_coordinate_costs`` carries to the measure-valued
    estimator (``x: [D]``, ``values: [P, D] -> [P, D]``). Its rounding is of the plain
    evaluation's order, a few float32 ulps of ``|constant| + sum_d |phi(x_d)|`` (both are held
    to (D + 8) ulps in ``tests/test_variance_experiments.py``).
    """
    phi_x = separable_phi(x, weights, k, terms=terms)
    rest = constant + jnp.sum(phi_x) - phi_x  # [D]: f(x) without coordinate d's term
    return rest[None] + separable_phi(values, weights, k, terms=terms)
