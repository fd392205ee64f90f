"""Settings shared by the variance-figure configs (`experiments/configs/fig2.py` ... `fig7.py`).

Each figure is one problem (``experiments/variance/problems/``; the Gaussian ``N(loc, scale^2)``
of the paper here), estimators and costs, with the exact variance
by quadrature on a dense grid and Monte Carlo points on part of it; each config names its own.
"""

import ml_collections

# The grid of k (the cost's parameter) each one-dimensional family is drawn over.
GRIDS = {
    "quadratic": {"start": -3.0, "stop": 3.0, "num": 100, "log": False},
    "exp_quadratic": {"start": 0.1, "stop": 10.0, "num": 100, "log": True},
    "cosine": {"start": 0.5, "stop": 5.0, "num": 100, "log": True},
}


def base_config(name: str, title: str) -> ml_collections.ConfigDict:
    """The Gaussian ``N(1, 1)``, 1e5 samples per Monte Carlo point, 512 quadrature nodes, log y."""
    config = ml_collections.ConfigDict()
    config.runner = "variance"
    config.name = name
    config.title = title
    config.seed = 0
    config.problem = "gaussian"  # experiments/variance/problems/gaussian.py: keys loc, scale
    config.loc = 1.0
    config.scale = 1.0
    config.num_samples = 100_000
    config.num_nodes = 512  # quadrature nodes per integration rule
    config.yscale = "log"
    config.progress = True  # progress bar on stderr; false for batch jobs and logs
    return config


def grids(*costs: str) -> ml_collections.ConfigDict:
    """The standard grids of k of ``costs``, as the ``grid`` entry of a config."""
    return ml_collections.ConfigDict({cost: dict(GRIDS[cost]) for cost in costs})
