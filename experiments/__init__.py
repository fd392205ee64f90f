"""Experiments: configs, runners, data, plotting and the one command line.

``run_experiment(config, workdir)`` runs a config under the project's results layout; the
command line ``python -m experiments`` wraps it.
"""

from ._cli import redraw as redraw
from ._cli import run_experiment as run_experiment
from ._config import ConfigError as ConfigError
from ._config import apply_overrides as apply_overrides
from ._config import available_configs as available_configs
from ._config import load_config as load_config
from ._workdir import WorkdirError as WorkdirError
