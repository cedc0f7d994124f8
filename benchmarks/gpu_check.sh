#!/usr/bin/env bash
# GPU check for minilr: the GPU tests, then benchmarks/gpu_bench.py (minilr's CUDA step for LR, ALR,
# ES, A-Hybrid vs the same LR step in PyTorch-CUDA, K = 200 .. 100,000; the digits job on CuPy vs
# NumPy), which writes benchmarks/RESULTS_GPU.md naming the GPU. Installs nothing: needs CuPy (and
# PyTorch for its column) already there; numba.cuda is not needed. Under 5 minutes.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

python - <<'PY' || { echo "gpu_check: CuPy sees no GPU here (or is not installed): nothing to check."; exit 1; }
import sys
try:
    import cupy
    sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)
except Exception as exc:
    print(f"gpu_check: {type(exc).__name__}: {exc}")
    sys.exit(1)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== GPU tests (pytest -m gpu) =="
timeout 120 python -m pytest -q -m gpu -p no:cacheprovider tests || status=1

echo "== minilr CUDA step vs PyTorch-CUDA (benchmarks/gpu_bench.py) =="
timeout 170 python benchmarks/gpu_bench.py "$@" || status=1
exit $status
