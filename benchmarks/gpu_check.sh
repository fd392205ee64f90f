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
#     GPU_CHECK_ONLY="tests bench_vae_seeds" GPU_CHECK_TESTS="tests/test_docs.py" \
#         bash benchmarks/gpu_check.sh               # a rerun of some steps, some test files
#
# Logs go to OUTDIR. Run from the repository root with a Python that has JAX for the
# accelerator (pip install -e '.[cuda,dev]') and this project's dependencies (the project is put
# on PYTHONPATH, not installed). The optax 0.2.6 and PyTorch baselines run only where their
# environments exist (.venv-optax026, .venv-torch; PyTorch runs on the GPU when JAX does).
# Every step is bounded by `timeout` (SIGINT, so pytest still prints its summary; the limits add
# up to 550 s, the steps' times measured on an H100 to about 480 s); a step's failure is
# reported at the end (exit status 1) without stopping the later steps. Compiling for the GPU
# (on the host), not running, is most of every step.
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
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    return
  fi
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  # SIGINT first (pytest then prints its summary of what ran), SIGKILL 15 s later.
  timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc in $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

step devices 20 "$PY" -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())"
# Compile-bound on a GPU (XLA compiles on the host): one worker per two host cores, at most 8,
# sharing the device, a file per worker. On the H100 (16 host cores) 8 workers ran the suite in
# 247 s; 16 workers with --dist load were slower (load 35: each compile is multithreaded).
WORKERS=$(( $(nproc) / 2 )); WORKERS=$(( WORKERS < 1 ? 1 : (WORKERS > 8 ? 8 : WORKERS) ))
# shellcheck disable=SC2086  # GPU_CHECK_TESTS: test paths, split on spaces
step tests 260 "$PY" -m pytest -q -p no:cacheprovider -n "$WORKERS" --durations=10 \
  ${GPU_CHECK_TESTS:-}
step bench_variance_figures 30 "$PY" benchmarks/bench_variance_figures.py --repeats 5
step bench_measure_valued 40 "$PY" benchmarks/bench_measure_valued.py --dims 1000,10000 --repeats 3
step bench_reproduce 70 "$PY" benchmarks/bench_reproduce.py --rounds 1 --kinds cold warm
step bench_vae 20 "$PY" benchmarks/bench_vae.py --repeats 5 --matmul-n 2048 4096
# 50 s: a fourth baseline since 6695b9a (the Flax step with estimators.softplus), one more compile
step bench_vae_compare 50 "$PY" benchmarks/bench_vae.py --compare --batch-size 1024 --repeats 3
step bench_vae_seeds 70 "$PY" benchmarks/bench_vae_seeds.py --config vae_digits --rounds 1

if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}"
  exit 1
fi
echo "all steps passed"
