#!/usr/bin/env bash
# Make the separate environment with PyTorch (CPU) that bench_vae.py --compare measures against.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-torch
.venv-torch/bin/python -m pip install --quiet --upgrade pip
.venv-torch/bin/python -m pip install --quiet torch numpy --index-url https://download.pytorch.org/whl/cpu \
  || .venv-torch/bin/python -m pip install --quiet torch numpy
.venv-torch/bin/python -c "import torch; print('torch', torch.__version__, torch.get_num_threads(), 'threads')"
