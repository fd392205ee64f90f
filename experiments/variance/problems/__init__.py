r"""The problems of the variance runner: a distribution, its parameters, costs and exact values.

A :class:`Problem` is everything the runner needs to know about one family
:math:`p(x; \theta)`: the config keys that set :math:`\theta` (``loc`` and ``scale`` for the
Gaussian), the parameter pytree at each dimension ``D``, the distribution builder the
estimators receive, the costs, and the exact values (the gradient, and the single-sample
variance of each estimator whose variance is known, keyed by the estimator's registry name).
The Monte Carlo side runs any estimator that supports the distribution; an estimator without an
exact variance gets Monte Carlo points only (and its mean is still checked against the exact
gradient).

A config picks one with ``config.problem``: a module name in this folder (``"gaussian"``,
``"bernoulli"``; its ``PROBLEM``) or an importable path ``"package.module:attribute"``.

Adding a problem is one new file here, ``experiments/variance/problems/<name>.py`` defining
``PROBLEM = Problem(...)``:

1. ``values``: the config keys of the parameters and their defaults (e.g. ``{"logit": 0.0}``),
   and ``check_values`` raising ``ValueError("config.<key> ...")`` for a bad one;
2. ``params(values, dim)``: the pytree the estimators differentiate, leaves ``[D]``, built
   with ``jax.numpy`` from the (traced) values; ``parameters`` names its leaves with their
   axis labels; ``dist_builder(params)`` returns an ``estimators`` distribution;
3. ``costs``: the separable costs of ``costs.COSTS`` that make sense for the family;
4. ``exact_gradient(parameter, rows, values, num_nodes)`` and ``exact_variance(estimator,
   parameter, rows, values, num_nodes)``: ``[R]`` float64 values of the first coordinate for
   the rows of a grid (:class:`costs.Rows`), the latter ``None`` for an estimator whose
   variance the problem does not know. For a discrete family, sum over its atoms
   (enumeration, exact; ``exact.score_function_variance`` takes any rule, the atoms and
   their probabilities included), as ``bernoulli.py`` does.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from ..costs import Cost, Rows

ExactGradient = Callable[[str, Rows, Mapping[str, float], int], np.ndarray]
ExactVariance = Callable[[str, str, Rows, Mapping[str, float], int], "np.ndarray | None"]


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static jit argument
class Problem:
    """One family of the variance runner (see the module docstring for each field's role).

    Fields:
      name: short name, for results and messages.
      values: config key -> default value of each parameter of the family (floats).
      value_labels: config key -> mathtext symbol (``r"\\mu"``), for the figure's note.
      check_values: ``values -> None``; raises ``ValueError("config.<key> ...")``.
      parameters: leaf name of ``params`` -> mathtext axis label (``r"$\\mu$"``), in order.
      params: ``(values, dim) -> {leaf: [dim]}``; jax.numpy, the values may be traced.
      dist_builder: ``params -> estimators.Distribution``.
      costs: cost name -> :class:`costs.Cost`, the costs a config may name.
      exact_gradient: ``(parameter, rows, values, num_nodes) -> [R]``.
      exact_variance: ``(estimator, parameter, rows, values, num_nodes) -> [R] or None``.
      exact_estimators: the registry names ``exact_variance`` knows.
      exact_method: how the exact values are computed, for the figure's note.
    """

    name: str
    values: Mapping[str, float]
    value_labels: Mapping[str, str]
    check_values: Callable[[Mapping[str, Any]], None]
    parameters: Mapping[str, str]
    params: Callable[[Mapping[str, jax.Array], int], dict[str, jax.Array]]
    dist_builder: Callable[[dict[str, jax.Array]], Any]
    costs: Mapping[str, Cost]
    exact_gradient: ExactGradient
    exact_variance: ExactVariance
    exact_estimators: tuple[str, ...]
    exact_method: str


def available() -> list[str]:
    """The problems of this folder, by module name."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(spec: str) -> Problem:
    """The problem ``spec`` names: a module of this folder or ``"package.module:attribute"``.

    Raises ``ValueError`` naming ``config.problem`` if it cannot be found or is no Problem.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"config.problem must be a problem name; got {spec!r}")
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
    elif spec in available():
        module_name, attribute = f"{__name__}.{spec}", "PROBLEM"
    else:
        raise ValueError(
            f"config.problem {spec!r} is unknown; known: {available()} or an importable path "
            "'package.module:attribute'"
        )
    try:
        problem = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"config.problem {spec!r} cannot be imported ({e})") from None
    if not isinstance(problem, Problem):
        raise ValueError(f"config.problem {spec!r} is a {type(problem).__name__}, not a Problem")
    return problem
