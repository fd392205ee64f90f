#!/usr/bin/env bash
# Make the separate environment with optax 0.2.6 that the benchmarks compare against.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-optax026
.venv-optax026/bin/python -m pip install --quiet --upgrade pip
.venv-optax026/bin/python -m pip install --quiet "optax==0.2.6" jax jaxlib numpy
.venv-optax026/bin/python -c "import optax, jax; print('optax', optax.__version__, 'jax', jax.__version__)"
