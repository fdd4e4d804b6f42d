#!/usr/bin/env bash
# The prepared GPU check, for a session that is lent a device machine. It needs only torch, numpy and
# pytest (all in the device image), runs in about 3 minutes on one H200 (its stages' time limits add up
# to 510 s, under the device tool's 600 s a call) and writes its logs to $OUT
# (the device tool brings them back) or to ./device-check/:
#
#   device tool:  run(command="bash bench/device_check.sh", timeout_s=540)
#   by hand:      bash bench/device_check.sh
#
#   1. CUDA correctness: every architecture's ensemble, run on the GPU in float64, equals separate
#      single runs on the CPU (tests/engine/test_trainer_ensemble.py), and every dataset delivers
#      batches on cuda in both dtypes (tests/engine/test_data_devices.py).
#   2. The issue #2 speed ratio on the GPU: bench/engine.py's grid, reference and ensemble both on
#      cuda, 3 side-by-side pairs; then a wider grid where the ensemble fills more of the chip.
#   3. Units sized by memory: the estimate against max_memory_allocated per architecture
#      (bench/memory_estimate.py --device cuda) and, where the worker's packages are installed, a
#      real torch.OutOfMemoryError splitting a unit (tests/tasks/test_memory_units.py -k cuda).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
status=0

python3 - <<'EOF' 2>&1 | tee "$out/env.log"
import platform, numpy, torch
print("python", platform.python_version(), "torch", torch.__version__, "numpy", numpy.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF

echo "== 1. CUDA correctness" | tee "$out/pytest.log"
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" --import-mode=importlib \
    tests/engine/test_trainer_ensemble.py tests/engine/test_data_devices.py -k cuda -rA 2>&1 | tail -40 |
    tee -a "$out/pytest.log" || status=1

echo "== 2. speed ratio on the GPU" | tee "$out/bench_cuda.log"
timeout 120 python3 bench/engine.py --device cuda --repeat 3 2>&1 | tee -a "$out/bench_cuda.log" || status=1
timeout 60 python3 bench/engine.py --device cuda --repeat 1 --width 1024 --cells 72 2>&1 |
    tee -a "$out/bench_cuda.log" || status=1

echo "== 3. units sized by memory on the GPU" | tee "$out/memory.log"
if python3 -c "import redis, sqlalchemy, duckdb" 2>/dev/null; then  # the worker's own packages
    timeout 90 python3 -m pytest -q -p no:cacheprovider -o addopts="" --import-mode=importlib \
        tests/tasks/test_memory_units.py -k cuda -rA 2>&1 | tail -20 | tee -a "$out/memory.log" || status=1
else
    echo "the out-of-memory split test needs redis, sqlalchemy and duckdb (not in this image): skipped" |
        tee -a "$out/memory.log"
fi
timeout 90 python3 bench/memory_estimate.py --device cuda 2>&1 | tee -a "$out/memory.log" || status=1
exit $status
