#!/usr/bin/env bash
# The project's checks on an accelerator, in one short run (under 8 minutes on one GPU): the
# default test suite on that backend (in parallel workers sharing the device), and every
# benchmark of the README's table with the device's figures: Figure 2's grid (ours, plain JAX,
# the random-number floor), the measure-valued estimator against plain JAX, Figures 2-7 end to
# end cold and warm (persistent compilation cache), the VAE step against the device's matmul
# roofline and a plain Flax step (at batch 128 and at a batch that suits the device), and 5 VAE
# seeds in one program against 5 runs one after another.
#
#     bash benchmarks/gpu_check.sh [OUTDIR]      # default runs/gpu_check
#
# Logs go to OUTDIR. Run from the repository root with a Python that has JAX for the
# accelerator (pip install -e '.[cuda,dev]') and this project's dependencies (the project is put
# on PYTHONPATH, not installed). The optax 0.2.6 and PyTorch baselines run only where their
# environments exist (.venv-optax026, .venv-torch). Every step is bounded by `timeout` (the
# limits add up to 470 s); a step's failure is reported at the end (exit status 1) without
# stopping the later steps.
set -uo pipefail
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Several test subprocesses share one GPU: allocate on demand, not 75% of the card each.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
failed=()

step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc in $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

step devices 30 "$PY" -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())"
# Compile-bound on a GPU: one worker per two host cores, at most 8, share the device.
WORKERS=$(( $(nproc) / 2 )); WORKERS=$(( WORKERS < 1 ? 1 : (WORKERS > 8 ? 8 : WORKERS) ))
step tests 240 "$PY" -m pytest -q -p no:cacheprovider -n "$WORKERS" --durations=10
step bench_variance_figures 40 "$PY" benchmarks/bench_variance_figures.py --repeats 5
step bench_measure_valued 30 "$PY" benchmarks/bench_measure_valued.py --dims 1000,10000 --repeats 3
step bench_reproduce 60 "$PY" benchmarks/bench_reproduce.py --rounds 1
step bench_vae 30 "$PY" benchmarks/bench_vae.py --repeats 5 --matmul-n 2048 4096
step bench_vae_compare 20 "$PY" benchmarks/bench_vae.py --compare --batch-size 1024 --repeats 3
step bench_vae_seeds 20 "$PY" benchmarks/bench_vae_seeds.py --config vae_digits --rounds 1

if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}"
  exit 1
fi
echo "all steps passed"
