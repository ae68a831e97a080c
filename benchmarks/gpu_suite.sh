#!/usr/bin/env bash
# The GPU benchmarks of issue #16 in one call, on the device machine, from the repo root.
#
#   bash benchmarks/gpu_suite.sh [GROUP...]   # on the GPU machine; default: every group
#   bash benchmarks/gpu_suite.sh wheels       # here, once, with a registry: fetch the
#                                             # packages the GPU image lacks into .whl/
#
# Groups, in this order (the most wanted first; each has its own time limit and the
# whole suite a budget, so a slow group costs the later ones, never the results so far):
#   eager        bf16 without compile: UNet+ControlNet call, paper setting, v2.1
#                default, 4K peak VRAM, text encoder freed, --offload (512 and 4K)
#   tests        tests/test_compile_and_dtypes.py on the GPU (CUDA tests included:
#                inductor and CUDA graphs give the uncompiled image)
#   compile      bf16, torch.compile (inductor, default mode): v2.1, paper, call (the
#                CFG pair first, so both batch sizes get static graphs)
#   graphs       bf16, torch.compile mode reduce-overhead (CUDA graphs): the same
#   half         fp16 and fp32 without compile: call, paper, v2.1
#   hypir        HYPIR one step, bf16 (issue #25): 128->512, 256->1024 and 1024->4096
#                (tiled), seconds and peak VRAM each (bench_hypir.py --only hypir)
#   fp16compile  fp16 compiled (not in the default list: name it)
#
# The GPU image has its own python3 with a CUDA torch and no package registry: the
# project runs from src/ (PYTHONPATH), never `pip install -e . -c constraints.txt`
# (constraints.txt pins the CPU torch of the development machines), and the
# pure-Python packages the image lacks (diffusers, torchsde, trampoline) come as wheels
# in .whl/, which the `run` call carries. Where a CUDA torch and a registry are both
# there instead, `pip install -e .` (without the constraints) is used.
#
# Environment: OUT (results folder; the device tool sets it; default results/gpu),
# GPU_SUITE_BUDGET (seconds for all groups, default 480), PYTHON (default python3),
# GPU_SUITE_DRY_RUN=1 (check this script on a CPU: bench_gpu.py --dry-run, tiny models).
# Results: $OUT/gpu_results.md (the table), $OUT/rows.jsonl (raw rows), $OUT/suite.log.
set -u -o pipefail
cd "$(dirname "$0")/.."

# The versions the project's CPU environment uses; the GPU image has the rest.
WHEELS="diffusers==0.42.1 torchsde==0.2.6 trampoline==0.1.2"

if [ "${1:-}" = wheels ]; then
    exec "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $WHEELS
fi

OUT=${OUT:-$PWD/results/gpu}
BUDGET=${GPU_SUITE_BUDGET:-480}
PY=${PYTHON:-python3}
GROUPS_WANTED=${*:-eager hypir tests compile graphs half}
ROWS="$OUT/rows.jsonl"
BENCH=("$PY" benchmarks/bench_gpu.py --jsonl "$ROWS" --no-table)
DRY=${GPU_SUITE_DRY_RUN:-0}
[ "$DRY" = 1 ] && BENCH+=(--dry-run --repeats 1 --call-iters 1)
declare -A LIMIT=([eager]=150 [hypir]=120 [tests]=100 [compile]=200 [graphs]=150 [half]=100 [fp16compile]=200)
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

run_group() {
    local name=$1 used left limit rc t0
    used=$(($(date +%s) - START))
    left=$((BUDGET - used))
    limit=${LIMIT[$name]:-0}
    ((left < limit)) && limit=$left
    if ((limit < 30)); then
        echo "== $name: skipped, ${left} s of the suite's budget left"
        return
    fi
    echo "== $name: at most ${limit} s"
    t0=$(date +%s)
    case $name in
    eager) timeout -k 10 "$limit" "${BENCH[@]}" --budget $((limit - 20)) --dtypes bf16 --compile none ;;
    hypir) timeout -k 10 "$limit" "$PY" benchmarks/bench_hypir.py --device cuda --dtype bf16 --only hypir --repeats 1 --sizes 128 256 1024 | tee "$OUT/hypir.md" ;;
    tests) timeout -k 10 "$limit" "$PY" -m pytest -q -x -p no:cacheprovider tests/test_compile_and_dtypes.py ;;
    compile) timeout -k 10 "$limit" "${BENCH[@]}" --budget $((limit - 20)) --dtypes bf16 --compile default --parts v21 paper call ;;
    graphs) timeout -k 10 "$limit" "${BENCH[@]}" --budget $((limit - 20)) --dtypes bf16 --compile reduce-overhead --parts v21 paper call ;;
    half) timeout -k 10 "$limit" "${BENCH[@]}" --budget $((limit - 20)) --dtypes fp16 fp32 --compile none --parts call paper v21 ;;
    fp16compile) timeout -k 10 "$limit" "${BENCH[@]}" --budget $((limit - 20)) --dtypes fp16 --compile default --compile-dtypes fp16 --parts v21 paper call ;;
    *) echo "gpu_suite: unknown group $name" ;;
    esac
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - t0)) s$( ((rc == 124 || rc == 137)) && echo ' (stopped at its limit; its finished rows are kept)')"
}

main() {
    echo "== gpu_suite $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${BUDGET} s, groups: $GROUPS_WANTED"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
    if [ "$DRY" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_suite: no CUDA device for $PY ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1)); nothing measured"
        return 2
    fi

    # --- the project and its packages, without touching the image's torch
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    if ! "$PY" -c "import diffusers, torchsde" 2>/dev/null; then
        if ls .whl/*.whl >/dev/null 2>&1; then
            echo "== installing $(ls .whl | tr '\n' ' ')into /tmp/diffbir-site"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/diffbir-site .whl/*.whl || return 1
            export PYTHONPATH="$PYTHONPATH:/tmp/diffbir-site"
        else
            echo "== no .whl/: trying pip install -e . (keeps the installed CUDA torch)"
            timeout 300 "$PY" -m pip install -q --retries 1 --timeout 15 -e . || {
                echo "gpu_suite: diffusers/torchsde missing and no .whl/ to install them from;"
                echo "  here, run: bash benchmarks/gpu_suite.sh wheels  then carry .whl"
                return 1
            }
        fi
    fi
    "$PY" - <<'EOF' || return 1
import diffusers, torch, transformers
import diffbir.restore.pipeline  # noqa: F401
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), diffusers {diffusers.__version__}, "
      f"transformers {transformers.__version__}, {gpu}")
EOF

    # --- the groups
    for group in $GROUPS_WANTED; do
        run_group "$group"
    done

    echo "== results ($(($(date +%s) - START)) s in all)"
    if [ -s "$ROWS" ]; then
        "$PY" benchmarks/bench_gpu.py --report --jsonl "$ROWS" --out "$OUT/gpu_results.md"
    else
        echo "gpu_suite: no rows were measured"
        return 1
    fi
}

mkdir -p "$OUT"
main 2>&1 | tee -a "$OUT/suite.log"
exit "${PIPESTATUS[0]}"
