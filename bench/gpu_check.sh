#!/usr/bin/env bash
# The CuPy backend on a real GPU, in one run: bash bench/gpu_check.sh OUTDIR [options of python -m bench.gpu_check]
#   (make gpu-check OUT=OUTDIR). Needs python3 with numpy, click, cupy (cupy-cuda12x or -13x), pytest and hypothesis;
#   torch (CUDA, cuDNN), jax (CUDA), nvcc, scikit-learn and matplotlib when there (what is missing is recorded as
#   skipped). refimpl runs from this working tree (PYTHONPATH=., no install step). Writes OUTDIR/gpu_check.json (strict
#   JSON: device, versions, every part's status, the tests, the goals with their measured values) and
#   OUTDIR/gpu_check.log. --rehearse runs it all without a GPU (CPU emulation, tiny shapes). docs/backends.md says how
#   to read the JSON.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_check.sh OUTDIR [--rehearse] [--parts probe,compile,tests,goals,carried,kernels]" >&2
    exit 2
fi
OUT=$1
shift
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
# The whole run stops at 8 minutes even if a part hangs past its own timeout.
timeout --signal=TERM --kill-after=20 480 "$PY" -m bench.gpu_check "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.stdout"
