#!/usr/bin/env bash
# gpu_check.sh: the CuPy backend on a real GPU, in one go (under 8 minutes).
#
#   bash scripts/gpu_check.sh            # from anywhere; results also in $OUT if set
#
# 1. Makes the Python packages importable: whatever is missing is installed
#    from wheels carried in .whl/ into /tmp/site (no network there).
# 2. Runs the CuPy backend's tests against NumPy: every test whose id says
#    cupy (the `xp`/`cupy` fixtures of tests/conftest.py, the fused kernels
#    of tests/runtime/test_cupy_kernels.py), with a real device this time.
# 3. Times training steps of ResNet-34 (224×224, batch 64) and of the
#    Fashion-MNIST CNN on the cupy backend against PyTorch on the same GPU
#    (benchmarks/bench_gpu.py; the PyTorch part only where torch has CUDA),
#    prints a table and writes gpu_results.{md,json} and the logs to $OUT.
# The tests are stopped after 200 s and the timings after 240 s, so a run
# ends inside 8 minutes even where CuPy compiles every kernel afresh.
#
# Wheels. The NVIDIA H200 machine this was written for has an image with
# Python 3.12 with cupy-cuda13x, numpy, networkx, pytest, hypothesis,
# threadpoolctl and torch (CUDA 13); of cnndsl's import-time needs
# (lark, numpy, networkx) only lark is missing. Fetch it here, in the repo root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl lark
#
# and carry .whl to the machine. On a machine without the rest, add to that
# download: numpy networkx pytest pluggy iniconfig packaging hypothesis
# sortedcontainers attrs, and a CuPy that matches the machine's CUDA:
# cupy-cuda12x (CuPy 13 needs fastrlock too; CuPy 14 needs cuda-pathfinder
# and, without a CUDA toolkit there, the nvidia-*-cu12 runtime wheels).
# NOTE: a CuPy wheel is over 100 MiB, too large to carry along with the
# checkout comfortably, so CuPy is expected in the GPU machine's image.
# Keep one version of each package in .whl: pip refuses two.
#
# NOTE: written without a GPU at hand (checked with bash -n, shellcheck where
# installed, and a stand-in run of benchmarks/bench_gpu.py --standin on NumPy);
# the first real run is the test of this script.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-}
LOG=${OUT:-/tmp}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0

echo "== machine"
"$PY" --version
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: not available"

echo "== packages"
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["lark", "numpy", "networkx", "pytest", "hypothesis", "cupy"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
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
"$PY" - <<'EOF' || exit 1
import cupy, numpy, lark, networkx
import cnndsl
from cnndsl.runtime.backends import get_backend
b = get_backend("cupy")
print("cupy", cupy.__version__, "numpy", numpy.__version__, "lark", lark.__version__,
      "device", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), b)
EOF

echo "== tests: the cupy backend against numpy"
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -k "cupy or gpu" \
    tests/ops/test_ops_definition.py tests/runtime/test_backends.py tests/runtime/test_cupy_kernels.py \
    tests/training/test_model.py tests/runtime/test_lower.py 2>&1 | tee "$LOG/gpu_tests.log"
test_status=${PIPESTATUS[0]}
[ "$test_status" -eq 0 ] || status=$test_status

echo "== timings: cupy backend vs PyTorch on the same GPU"
timeout 240 "$PY" benchmarks/bench_gpu.py --steps 5 ${OUT:+--out "$OUT"} 2>&1 \
    | tee "$LOG/gpu_bench.log"
bench_status=${PIPESTATUS[0]}
[ "$bench_status" -eq 0 ] || status=$bench_status

echo "== done: tests exit $test_status, timings exit $bench_status"
exit "$status"
