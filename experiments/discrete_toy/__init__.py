r"""The toy of REBAR and RELAX (Tucker et al. 2017; Grathwohl et al. 2018):
:math:`E_{b \sim \mathrm{Bernoulli}(\theta)}[(b - t)^2]`, for every discrete estimator of the
registry.

Three figures, one runner (``config.runner = "discrete_toy"``), picked by ``config.figure``:

- ``"theta"`` (:mod:`.variance`): the variance of one estimate of
  :math:`\partial/\partial\alpha` (the logit; :math:`\theta = \sigma(\alpha)`) times the
  evaluations of ``f`` it costs, against :math:`\theta`: exact lines (:mod:`.exact`, NumPy
  float64) and Monte Carlo points (:mod:`.measure`), with the bias of the biased estimators;
- ``"dims"`` (:mod:`.variance`): the same for coordinate 1 of :math:`f(b) = \sum_{d \le D}
  (b_d - t)^2` against :math:`D`;
- ``"trajectories"`` (:mod:`.trajectories`): :math:`\theta` optimised by Adam from each
  estimator's gradient (several seeds) beside the exact gradient's trajectory, and the log
  variance along the way, as RELAX's Figure 1.

``config.estimators`` holds registry specs, or ``"all"``: every registered estimator that
estimates :math:`\nabla E[f]` of a Bernoulli (plus the score function's ``+loo`` and
``+optimal``), so an estimator registered later appears without a runner edit. Configs:
``experiments/configs/rebar_toy.py`` (t = 0.45), ``rebar_toy_0499.py`` (t = 0.499),
``relax_fig1.py`` (trajectories), ``discrete_dims.py`` (D up to 200).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from .._workdir import read_json

FIGURES = ("theta", "dims", "trajectories")


def _module(figure: str):
    if figure not in FIGURES:
        raise ValueError(f"config.figure must be one of {FIGURES}; got {figure!r}")
    if figure == "trajectories":
        from . import trajectories

        return trajectories
    from . import variance

    return variance


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the key of any unusable value, before anything runs."""
    if "figure" not in config:
        raise ValueError(f"missing config key 'figure' (one of {FIGURES})")
    _module(config.figure).validate(config)


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """Compute the figure's numbers, write results.json/.csv, draw the figure."""
    return _module(config.figure).run(config, workdir)


def plot(workdir: str | Path) -> list[Path]:
    """Redraw a finished run's figure from its results.json."""
    results = read_json(Path(workdir) / "results.json")
    return _module(results["figure"]).plot(workdir)
