#!/usr/bin/env bash
# gpu_check.sh: the CuPy backend on a real GPU, in one go (under 8 minutes).
#
#   bash scripts/gpu_check.sh [--dry-run]   # from anywhere; results and logs in $OUT if set
#
# 1. Prints the machine, Python, CUDA, CuPy, NumPy (and PyTorch, cuDNN) versions and
#    makes the packages importable: whatever is missing is installed from the
#    wheels carried in .whl/ (ignored by git) into /tmp/site (no network there).
# 2. The CuPy tests of the suite (the `cupy` fixtures: every op against NumPy,
#    the fused kernels, the NaN cases), with a real device this time (90 s at most).
# 3. scripts/gpu_check.py: every conv algorithm (im2col, Winograd, cuDNN where
#    nvidia-cudnn-frontend imports), the fused batchnorm kernels with NaNs,
#    dropout and the generator state, every op of the registry at 56×56×64,
#    a ResNet-18 training step's gradients within 1e-3 of float64 NumPy's (150 s).
# 4. Times training steps (benchmarks/bench_gpu.py: Fashion-MNIST CNN,
#    ResNet-34 at 224², batch 64) against PyTorch on the same GPU, cuDNN on,
#    TF32 off on both (CUPY_TF32=0; PyTorch's flags), memory as reserved
#    bytes on both (200 s).
# Logs, gpu_check.json, gpu_results.{md,json} and CuPy's kernel cache
# (CUPY_CACHE_DIR, so that a later run need not compile again) go to $OUT.
#
# --dry-run: NumPy stands in for CuPy (scripts/gpu_check.py --dry-run and
# bench_gpu.py --standin, small sizes): checks this script on a CPU.
#
# Wheels. The GPU machine's image is expected to have Python with CuPy
# (cupy-cuda12x or cupy-cuda13x, matching its CUDA), NumPy and PyTorch; of
# cnndsl's import-time needs (lark, numpy, networkx) fetch what is missing
# here, in the repo root, for the machine's Python (3.12 in the image this was
# written for):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl lark
#
# and carry .whl to the machine. Add pytest pluggy iniconfig packaging
# hypothesis sortedcontainers attrs networkx where the image lacks them, and
# nvidia-cudnn-frontend (with nvidia-cudnn-cu12 or -cu13) for the cuDNN checks.
# NOTE: a CuPy wheel is over 100 MiB, too large to carry with the checkout,
# so CuPy is expected in the image. Keep one version of each package in
# .whl: pip refuses two.
#
# NOTE: written without a GPU at hand (checked with bash -n and a --dry-run on
# a CPU); the first real run is the test of this script.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-}
LOG=${OUT:-/tmp/gpu_check}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export CUPY_TF32=0  # float32 GEMMs in full precision, as PyTorch with TF32 off
export CUPY_CACHE_DIR="$LOG/cupy_kernel_cache"
status=0

echo "== machine"
"$PY" --version
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: not available"

echo "== packages"
need="lark numpy networkx pytest hypothesis"
[ "$DRY" -eq 1 ] || need="$need cupy"
# shellcheck disable=SC2086
missing=$("$PY" -c "
import importlib.util, sys
print(' '.join(n for n in sys.argv[1:] if importlib.util.find_spec(n) is None))" $need)
if [ -n "$missing" ]; then
    echo "missing: $missing"
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "no wheels in .whl/: see this script's header for how to fetch them"
        exit 1
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - "$DRY" <<'PYEOF' || exit 1
import sys
import numpy, lark, networkx
print("numpy", numpy.__version__, "lark", lark.__version__, "networkx", networkx.__version__)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
          torch.backends.cudnn.version() if torch.cuda.is_available() else "n/a")
except ImportError:
    print("torch: not installed")
from cnndsl.runtime.backends import cudnn
print("cuDNN for cnndsl:", cudnn.describe())
if sys.argv[1] == "0":
    import cupy
    from cnndsl.runtime.backends import get_backend
    b = get_backend("cupy")
    print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "device", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), b, b.capabilities)
PYEOF

test_status=0
if [ "$DRY" -eq 0 ]; then
    echo "== tests: the cupy backend against numpy"
    timeout 90 "$PY" -m pytest -q -p no:cacheprovider -p no:randomly -k "cupy or gpu" \
        tests/ops/test_ops_definition.py tests/runtime/test_backends.py \
        tests/runtime/test_cupy_kernels.py tests/runtime/test_gpu_path.py 2>&1 \
        | tee "$LOG/gpu_tests.log"
    test_status=${PIPESTATUS[0]}
    [ "$test_status" -eq 0 ] || status=$test_status
fi

echo "== checks: conv algorithms, fused kernels, dropout, every op, ResNet-18 gradients"
check_flags=(--out "$LOG")
[ "$DRY" -eq 1 ] && check_flags+=(--dry-run)
timeout 150 "$PY" scripts/gpu_check.py "${check_flags[@]}" 2>&1 | tee "$LOG/gpu_check.log"
check_status=${PIPESTATUS[0]}
[ "$check_status" -eq 0 ] || status=$check_status

echo "== timings: cupy backend vs PyTorch on the same GPU"
bench_flags=(--steps 5 --out "$LOG")
[ "$DRY" -eq 1 ] && bench_flags=(--standin --nets fashion_mnist --steps 1 --out "$LOG")
timeout 200 "$PY" benchmarks/bench_gpu.py "${bench_flags[@]}" 2>&1 | tee "$LOG/gpu_bench.log"
bench_status=${PIPESTATUS[0]}
[ "$bench_status" -eq 0 ] || status=$bench_status

echo "== done: tests exit $test_status, checks exit $check_status, timings exit $bench_status"
exit "$status"
