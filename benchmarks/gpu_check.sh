#!/usr/bin/env bash
# The project's checks on an accelerator, in one short run: the default test suite on that
# backend, Figures 2-7 end to end (compile included), and the estimator and VAE benchmarks.
#
#     bash benchmarks/gpu_check.sh [OUTDIR]      # default runs/gpu_check
#
# Logs go to OUTDIR, the figures to $FIGDIR (default OUTDIR/figures).
#
# Run from the repository root with a Python that has JAX for the accelerator and this project's
# dependencies (the project itself is put on PYTHONPATH, not installed). Every step is bounded by
# `timeout` so the whole script ends in about eight minutes; a step's failure is reported at the
# end (exit status 1) without stopping the later steps.
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

step devices 60 "$PY" -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())"
step tests 240 "$PY" -m pytest -q -p no:cacheprovider --durations=10
step reproduce 90 "$PY" -m experiments reproduce --outdir "${FIGDIR:-$OUT/figures}" --overwrite
step bench_estimators 60 "$PY" benchmarks/bench_estimators.py --repeats 5
step bench_vae 90 "$PY" benchmarks/bench_vae.py --repeats 5

if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}"
  exit 1
fi
echo "all steps passed"
