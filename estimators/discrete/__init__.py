r"""The discrete family: gradient estimators for :math:`\nabla_\theta E_{p(b;\theta)}[f(b)]`
when :math:`b` is discrete (Bernoulli bits, categorical choices), where the pathwise estimator
does not apply.

Each module holds one method and the registry names it declares in its ``BASES``
(``name -> factory(**options) -> GradientEstimator``); :mod:`estimators.registry` registers
them all, so each joins the conformance battery, the variance runner and the comparisons by
name. The score function with the leave-one-out baseline (REINFORCE-LOO, Kool et al. 2019) is
the registry's ``"score_function+loo"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _arm, _double_cv, _relax, _relaxations, _rodeo, _vimco

BASES: dict[str, Callable[..., Any]] = {}
BASES.update(_relaxations.BASES)
BASES.update(_vimco.BASES)
BASES.update(_arm.BASES)
BASES.update(_relax.BASES)
BASES.update(_double_cv.BASES)
BASES.update(_rodeo.BASES)
