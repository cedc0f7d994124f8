#!/usr/bin/env bash
# GPU check for minilr: the GPU tests, then benchmarks/gpu_bench.py (minilr's CUDA engine for LR, ALR,
# ES, A-Hybrid vs the same LR step in PyTorch-CUDA; a ResNet-5 step through
# estimate_gradient(backend="cupy"); the digits job on CuPy vs NumPy), first with --quick, then in
# full. Installs nothing: needs CuPy (and PyTorch for its column) already there; numba.cuda is not
# needed. Under 7 minutes.
#
#   bash benchmarks/gpu_check.sh [--out-dir DIR] [--dry-run] [gpu_bench.py options]
#
# Results go to DIR (--out-dir, else $MINILR_GPU_OUT, else benchmarks/): RESULTS_GPU_quick.md and
# RESULTS_GPU.md (tables rewritten after each K), *.rows.tsv (one line per figure, written as it is
# measured: a timeout keeps what was measured) and gpu_tests.xml (the GPU tests). Python: $PYTHON,
# else the first of `python`, `python3` that exists. --dry-run prints the steps and runs none.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

out_dir="${MINILR_GPU_OUT:-benchmarks}"
dry=0
bench_args=()
while (($#)); do
    case "$1" in
        --out-dir) out_dir="${2:?--out-dir needs a folder}"; shift 2 ;;
        --out-dir=*) out_dir="${1#--out-dir=}"; shift ;;
        --dry-run) dry=1; shift ;;
        *) bench_args+=("$1"); shift ;;
    esac
done

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    for cand in python python3; do
        if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
    done
fi
if [[ -z "$py" ]]; then
    echo "gpu_check: neither python nor python3 is on PATH (set PYTHON=...)." >&2
    exit 1
fi
mkdir -p "$out_dir" || { echo "gpu_check: cannot create the output folder $out_dir" >&2; exit 1; }

status=0
step() {  # label, timeout in seconds, command...: run it (or, with --dry-run, print it)
    local label="$1" limit="$2"
    shift 2
    echo "== $label =="
    if ((dry)); then echo "timeout $limit $*"; return 0; fi
    timeout "$limit" "$@" || status=1
}

if ((dry)); then
    echo "gpu_check: dry run; python: $py; results in: $out_dir"
else
    "$py" - <<'PY' || { echo "gpu_check: CuPy sees no GPU here (or is not installed): nothing to check."; exit 1; }
import sys
try:
    import cupy
    sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)
except Exception as exc:
    print(f"gpu_check: {type(exc).__name__}: {exc}")
    sys.exit(1)
PY
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    echo "gpu_check: python: $py; results in: $out_dir"
fi

step "GPU tests (pytest -m gpu)" 120 \
    "$py" -m pytest -q -m gpu -p no:cacheprovider --junit-xml="$out_dir/gpu_tests.xml" tests
step "quick: minilr CUDA engine vs PyTorch-CUDA, ResNet-5 (gpu_bench.py --quick)" 90 \
    "$py" benchmarks/gpu_bench.py --quick --out "$out_dir/RESULTS_GPU_quick.md" "${bench_args[@]}"
step "full: minilr CUDA engine vs PyTorch-CUDA, ResNet-5, digits (gpu_bench.py)" 170 \
    "$py" benchmarks/gpu_bench.py --out "$out_dir/RESULTS_GPU.md" "${bench_args[@]}"
exit $status
