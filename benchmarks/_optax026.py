"""Where the benchmarks find optax 0.2.6, the last release with ``optax.monte_carlo``.

It lives in its own virtual environment (the project must not depend on it), made by
``bash benchmarks/setup_optax026.sh`` at ``<repo>/.venv-optax026``. Every benchmark also takes
``--baseline-python PATH`` and skips the comparison with a message if the interpreter is absent.
"""

from pathlib import Path

DEFAULT_BASELINE = str(Path(__file__).resolve().parents[1] / ".venv-optax026" / "bin" / "python")
