r"""Independent Bernoulli coordinates, :math:`x_d \sim \mathrm{Bernoulli}(\sigma(\eta))`, the
gradient in the logits :math:`\eta`; exact values by enumeration of the two atoms.

A discrete family in the runner: only estimators that need a score apply (the score function,
with or without a baseline); for a separable cost and the first coordinate, with
:math:`p = \sigma(\eta)`, :math:`\phi(x) = \sum_t w_t \mathrm{term}_t(x; k)` and the score
:math:`s(x) = x - p`,

.. math:: \partial E f / \partial\eta_1 = E[\phi(x_1) s(x_1)] = p (1 - p) (\phi(1) - \phi(0)),

and the variance of the score-function estimate is that of ``exact.score_function_variance``
with the rule ``{0: 1 - p, 1: p}`` (a sum over the atoms: exact, no quadrature).

Use it with ``config.problem = "bernoulli"`` and the key ``logit`` instead of ``loc`` and
``scale``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import estimators

from .. import exact
from ..costs import COSTS, Rows
from . import Problem

ATOMS = np.array([0.0, 1.0])
# The estimators whose exact variance the enumeration gives: the score function, with the
# optimal baseline b* = E[f s^2] / E[s^2] or without.
_SCORE_FUNCTION = {"score_function": False, "score_function+optimal": True}


def _check(values: Mapping[str, Any]) -> None:
    v = values["logit"]
    if isinstance(v, bool) or not (isinstance(v, int | float) and math.isfinite(v)):
        raise ValueError(f"config.logit must be a finite number; got {v!r}")


def _params(values: Mapping[str, jax.Array], dim: int) -> dict[str, jax.Array]:
    return {"logits": jnp.full((dim,), values["logit"])}


def _bernoulli(params: dict[str, jax.Array]) -> estimators.Bernoulli:
    return estimators.Bernoulli(params["logits"])


def _rule(values: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Atom probabilities ``[1 - p, p]`` and the score ``x - p`` at the atoms."""
    p = 1.0 / (1.0 + math.exp(-values["logit"]))
    return np.array([1.0 - p, p]), ATOMS - p


def _check_parameter(parameter: str) -> None:
    if parameter != "logits":
        raise ValueError(f"unknown parameter {parameter!r}; known: ('logits',)")


def _exact_gradient(
    parameter: str, rows: Rows, values: Mapping[str, float], num_nodes: int
) -> np.ndarray:
    _check_parameter(parameter)
    w, s = _rule(values)
    phi = exact.term_sum(ATOMS, np.asarray(rows.weights, np.float64), np.asarray(rows.k))
    return phi @ (w * s)


def _exact_variance(
    estimator: str, parameter: str, rows: Rows, values: Mapping[str, float], num_nodes: int
) -> np.ndarray | None:
    _check_parameter(parameter)
    if estimator not in _SCORE_FUNCTION:
        return None
    w, s = _rule(values)
    phi = exact.term_sum(ATOMS, np.asarray(rows.weights, np.float64), np.asarray(rows.k))
    constant, dim = np.asarray(rows.constant, np.float64), np.asarray(rows.dim, np.float64)
    return exact.score_function_variance(
        phi, w, s, constant, dim, optimal=_SCORE_FUNCTION[estimator]
    )


PROBLEM = Problem(
    name="bernoulli",
    values={"logit": 0.0},
    value_labels={"logit": r"\eta"},
    check_values=_check,
    parameters={"logits": r"$\eta$"},
    params=_params,
    dist_builder=_bernoulli,
    costs=COSTS,
    exact_gradient=_exact_gradient,
    exact_variance=_exact_variance,
    exact_estimators=tuple(_SCORE_FUNCTION),
    exact_method="enumeration",
)
