#!/usr/bin/env bash
# The GPU check: run on an H100/H200 from the repository root, e.g.
#
#     OUT=/tmp/out bash benchmarks/gpu_check.sh
#
# Three steps, each under its own time limit, each continuing past a failure of the previous one
# (about 9 minutes in all):
#   1. the kernel tests on the GPU:        python -m pytest tests/test_kernels.py -q -x
#   2. the kernel benchmark:               python benchmarks/kernels.py --out $OUT/kernels_<gpu>.json
#   3. the end-to-end benchmark:           python benchmarks/e2e.py --out $OUT/e2e_<gpu>.json
# Logs go to $OUT/<step>_<gpu>.log, a summary to $OUT/gpu_check_<gpu>.log. Needs torch, triton and
# torchvision; nothing is downloaded.
#
# The steps run without PYTHONPATH: `python -m pytest` puts the repository root on sys.path
# itself, and with the root on PYTHONPATH `python benchmarks/kernels.py` would import itself
# (benchmarks/kernels.py) instead of the kernels package.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
unset PYTHONPATH TRITON_INTERPRET

# time limits in seconds (override through the environment)
T_TESTS="${T_TESTS:-180}"
T_KERNELS="${T_KERNELS:-120}"
T_E2E="${T_E2E:-230}"

GPU="$("$PY" - <<'EOF' 2>/dev/null || echo unknown
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "nogpu"
for tag in ("H200", "H100", "A100", "L40S", "L4"):
    if tag in name:
        print(tag.lower())
        break
else:
    print("".join(c if c.isalnum() else "_" for c in name).lower())
EOF
)"
SUMMARY="$OUT/gpu_check_${GPU}.log"
: > "$SUMMARY"

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$SUMMARY"; }

step() {  # step NAME LIMIT_S COMMAND...
    local name="$1" limit="$2"
    shift 2
    local logfile="$OUT/${name}_${GPU}.log"
    log "start $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$logfile" 2>&1
    local rc=$?
    local verdict=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMEOUT"; elif [ "$rc" -ne 0 ]; then verdict="FAILED"; fi
    log "end $name: $verdict (exit $rc) after $((SECONDS - t0))s; last lines of $logfile:"
    tail -n 12 "$logfile" | sed 's/^/    /' | tee -a "$SUMMARY"
}

log "gpu=$GPU out=$OUT"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$SUMMARY"
fi
"$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| triton', triton.__version__)" 2>&1 | tee -a "$SUMMARY"

step test_kernels "$T_TESTS" "$PY" -m pytest tests/test_kernels.py -q -x --durations=10 -p no:cacheprovider
step kernels_bench "$T_KERNELS" "$PY" benchmarks/kernels.py --out "$OUT/kernels_${GPU}.json"
# e2e.py rewrites its JSON after every measurement and skips what no longer fits in its budget
step e2e "$T_E2E" "$PY" benchmarks/e2e.py --out "$OUT/e2e_${GPU}.json" --budget-s "$((T_E2E - 15))"

log "done in ${SECONDS}s; reports:"
ls -l "$OUT"/*.json 2>/dev/null | tee -a "$SUMMARY"
exit 0
