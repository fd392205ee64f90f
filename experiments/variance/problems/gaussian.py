r"""The Gaussian of Figs 2-7: :math:`x \sim N(\mu 1_D, \sigma^2 I_D)`, gradients in :math:`\mu`
and :math:`\sigma`, exact values by quadrature (``experiments.variance.exact``)."""

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


def _check(values: Mapping[str, Any]) -> None:
    for key in ("loc", "scale"):
        v = values[key]
        if isinstance(v, bool) or not (isinstance(v, int | float) and math.isfinite(v)):
            raise ValueError(f"config.{key} must be a finite number; got {v!r}")
    if values["scale"] <= 0:
        raise ValueError(f"config.scale must be > 0 (it is sigma); got {values['scale']}")


def _params(values: Mapping[str, jax.Array], dim: int) -> dict[str, jax.Array]:
    return {"loc": jnp.full((dim,), values["loc"]), "scale": jnp.full((dim,), values["scale"])}


def _normal(params: dict[str, jax.Array]) -> estimators.Normal:
    return estimators.Normal(params["loc"], params["scale"])


def _exact_gradient(
    parameter: str, rows: Rows, values: Mapping[str, float], num_nodes: int
) -> np.ndarray:
    return exact.exact_gradient(
        parameter, rows.weights, rows.k, values["loc"], values["scale"], num_nodes=num_nodes
    )


def _exact_variance(
    estimator: str, parameter: str, rows: Rows, values: Mapping[str, float], num_nodes: int
) -> np.ndarray | None:
    if estimator not in exact.ESTIMATORS:
        return None
    return exact.exact_variance(
        estimator,
        parameter,
        rows.weights,
        rows.k,
        rows.constant,
        rows.dim,
        values["loc"],
        values["scale"],
        num_nodes=num_nodes,
    )


PROBLEM = Problem(
    name="gaussian",
    values={"loc": 1.0, "scale": 1.0},
    value_labels={"loc": r"\mu", "scale": r"\sigma"},
    check_values=_check,
    parameters={"loc": r"$\mu$", "scale": r"$\sigma$"},
    params=_params,
    dist_builder=_normal,
    costs=COSTS,
    exact_gradient=_exact_gradient,
    exact_variance=_exact_variance,
    exact_estimators=exact.ESTIMATORS,
    exact_method="numerical integration",
)
