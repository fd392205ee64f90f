"""Settings shared by the toy's configs (``experiments/configs/rebar_toy*.py``, ``relax_fig1.py``,
``discrete_dims.py``)."""

import ml_collections


def base_config(figure: str, name: str, title: str, target: float) -> ml_collections.ConfigDict:
    """Every discrete estimator of the registry on ``E[(b - t)^2]``; Concrete temperature 0.5
    (REBAR's initial one), ``K = 4`` samples for a multi-sample estimator."""
    config = ml_collections.ConfigDict()
    config.runner = "discrete_toy"
    config.figure = figure  # "theta", "dims" or "trajectories"
    config.name = name
    config.title = title
    config.seed = 0
    config.target = target
    config.estimators = ("all",)  # registry specs, or "all" (every one that fits the toy)
    config.temperature = 0.5  # the registry option: relaxations' temperature, REBAR's initial
    config.num_samples = 4  # K of a multi-sample estimator (REINFORCE-LOO, ...); others use 1
    config.progress = True
    return config


def variance_config(name: str, title: str, target: float) -> ml_collections.ConfigDict:
    """Variance per cost against theta: exact on 197 points, Monte Carlo on every 14th."""
    config = base_config("theta", name, title, target)
    config.theta_grid = ml_collections.ConfigDict({"start": 0.01, "stop": 0.99, "num": 197})
    config.mc_every = 14
    config.num_estimates = 20_000
    config.adapt_steps = 300  # updates of an adaptive estimator at each point before measuring
    return config
