#!/usr/bin/env bash
# GPU check for minilr: the GPU tests, then the benchmark with CuPy (CuPy vs NumPy, and vs
# PyTorch-CUDA running the same LR algorithm where torch is installed). Installs nothing; needs
# CuPy and numba (with a CUDA toolkit numba can find) already present. About 2-4 minutes.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
status=0

python - <<'PY' || { echo "gpu_check: CuPy cannot see a GPU here; nothing to check."; exit 1; }
import minilr, sys
sys.exit(0 if minilr.cupy_available() else 1)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== GPU tests (pytest -m gpu) =="
timeout 180 python -m pytest -q -m gpu -p no:cacheprovider || status=1

echo "== CuPy vs NumPy vs PyTorch-CUDA (benchmark, 1 round) =="
timeout 240 python benchmarks/run.py --rounds 3 --gpu-only --out benchmarks/RESULTS_GPU.md || status=1
cat benchmarks/RESULTS_GPU.md 2>/dev/null || true
exit $status
