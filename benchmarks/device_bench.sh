#!/usr/bin/env bash
# Issues 21, 24 and 26 on the device machine in ONE call of under 9 minutes (run from the repo root; carry .whl):
#
#   bash benchmarks/device_bench.sh
#
# Parts, each under its own time cap and all under one budget (DEVICE_BENCH_BUDGET, default 510 s after setup); a
# part that fails or hits its cap is reported and the next one runs. DEVICE_BENCH_PARTS picks parts by name
# (default: tests kernels-small kernels-bwd train-step kernels-fa4):
#   1. the CUDA tests of the kernels and of mixed precision (-m gpu, 8 workers: tests/test_kernels.py,
#      tests/test_backward.py, the FlashAttention-4 block-sparsity tests, every family under bf16 autocast and the
#      distillation scripts in bf16)                                                 -> device-bench.log
#   2. `evdit bench kernels --shapes small` (forward; the demo model's shape and three up to CogVideoX's; kernel
#      "auto" timed too: rows carry auto_vs_dense)
#                                                                                    -> kernels-small-<gpu>.json
#   3. `evdit bench kernels --backward` on the five full-size shapes (2 rounds)     -> kernels-bwd-<gpu>.json
#   4. `evdit bench train-step` on Wan2.1-1.3B 81f 480p, dense vs 1:20 student        -> train-step-<gpu>.json
#      (DEVICE_BENCH_TRAIN_MODELS="wan2.1-1.3b_81f_480p cogvideox-5b_49f_480p" adds CogVideoX-5B)
#   6. (demo-eval, not in the default parts) the demo rows on >= 64 held-out test prompts x 3 seeds with their
#      denoising wall-clock (Base, MLCD, Efficient-vDiT), then the curve of quality against speedup: Base at fewer
#      steps, the MLCD student under the searched and uniform plans without KD (issue 21)  -> demo-rows-<gpu>.json
#   7. (quality-wallclock, not in the default parts) every row of the committed quality tables timed on the demo
#      model with its own steps, guidance and plan (benchmarks/quality_wallclock.py)   -> quality*.json, updated
#   5. FlashAttention-4 rows (forward, its tile kernel beside split, 3 rounds; only where `flash_attn.cute` imports
#      on this GPU: its wheels travel in two calls, benchmarks/device_setup.sh)      -> kernels-fa4-<gpu>.json
#   then, where FlashAttention-4 runs, parts not in the default list (the FA4 follow-ups, issue 21's closing notes):
#      fa4-tests (the FA4 kernel on the generated exactness cases, its GPU tests and auto's pick, -m gpu -k fa4);
#      flex-flash (FlexAttention's FlashAttention-4 backend beside fa4 and split on CogVideoX-5B's shape)
#                                                                                -> kernels-flex-flash-<gpu>.json;
#      step-fa4, step-split (`evdit bench step` on Wan2.1-1.3B and CogVideoX-5B with each kernel, 3 reps)
#                                                                                -> step-fa4-<gpu>.json, step-split-...;
#      fa4-bwd-long (forward + backward on HunyuanVideo's shape, split and fa4)   -> kernels-fa4-bwd-long-<gpu>.json
# Results land in $OUT (at most 5 files; JSON written after every shape/model, so a part cut by its cap keeps what
# it measured) and, for committing, under benchmarks/results/ in the repo copy.
#
# The same parts at CPU size (what the tests run): DEVICE_BENCH_CPU=1 bash benchmarks/device_bench.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/device-bench.log"
: >"$LOG"
if [ "${DEVICE_BENCH_CPU:-0}" = 1 ]; then  # CPU-sized equivalents, to check this script
    export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
    PY=${PYTHON:-python3}
    gpu=cpu
    small=(--shapes quick --device cpu --kernels auto split gathered)
    full=(--shapes quick --device cpu --backward --kernels auto split gathered)
    train=(--models tiny_wan --device cpu --reps 1)
    fa4=(--shapes quick --device cpu --kernels split fa4)  # fa4 does not run on a CPU: skipped with a note
    fa4_tests=(-m "not gpu" tests/test_fa4_blocks.py -k fa4)
    flex_flash=(--shapes quick --device cpu --kernels split flex flex_flash)
    fa4_bwd_long=(--shapes quick_text_last --device cpu --backward --kernels split fa4)
    demo=(--model tiny --device cpu --prompts 2 --seeds 1 --timing-videos 1 --base-steps 2
          --extra-row "MLCD + uniform 1:7, no KD=mlcd:uniform:1")
    tests=(-m "not gpu" tests/test_fa4_blocks.py)
    RESULTS=$(mktemp -d)
else
    # shellcheck disable=SC1091
    source benchmarks/device_setup.sh 2>&1 | tee -a "$LOG" || { echo "device_setup.sh failed" | tee -a "$LOG"; }
    # (sourced through a pipe, i.e. in a subshell: its exports do not reach here; dsl_packages: FlashAttention-4)
    export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD PYTHONUNBUFFERED=1
    PY=python3
    gpu=$($PY -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())" 2>/dev/null || echo gpu)
    small=(--shapes small --kernels auto masked keysets split gathered flex --rounds 3 --rep-ms 50)
    # the five full-size shapes, smallest first (a part cut by its cap keeps the shapes it finished)
    # (auto runs split on these shapes; flex's backward was 1.2-1.6x behind it in the first run, kernels-h100.json
    # backward_run, whose single round of 50 ms left up to 23% noise: now 2 rounds of 200 ms, fewer kernels)
    full=(--shapes cogvideox5b_49f_480p wan2.1-14b_81f_480p osp_29f_720p osp_93f_720p hunyuan_129f_720p
          --backward --kernels auto gathered --rounds 2 --rep-ms 200)
    # shellcheck disable=SC2206
    train=(--models ${DEVICE_BENCH_TRAIN_MODELS:-wan2.1-1.3b_81f_480p} --reps 2)
    fa4=(--shapes full --kernels split fa4 --rounds 3 --rep-ms 100)
    fa4_tests=(-m gpu -p no:benchmark -n 8 tests/test_fuzz_exactness.py tests/test_fa4_blocks.py
               tests/test_registry.py -k fa4)
    flex_flash=(--shapes cogvideox5b_49f_480p --kernels split fa4 flex_flash --rounds 2 --rep-ms 100)
    step=(--models wan2.1-1.3b_81f_480p cogvideox-5b_49f_480p --reps 3)
    fa4_bwd_long=(--shapes hunyuan_129f_720p --backward --kernels split fa4 --rounds 2 --rep-ms 200)
    plan=diffusers_evdit/demo_model/evdit/mask_plan.json
    demo=(--device cuda --prompts 64 --seeds 3 --workers 12 --base-steps 10 4
          --extra-row "MLCD + searched plan, no KD=mlcd:$PWD/$plan"
          --extra-row "MLCD + searched plan at 3:5's budget, no KD=mlcd:$PWD/benchmarks/results/plans/searched-budget-3of8.json"
          --extra-row "MLCD + uniform 4:4, no KD=mlcd:uniform:4" --extra-row "MLCD + uniform 3:5, no KD=mlcd:uniform:3"
          --extra-row "MLCD + uniform 2:6, no KD=mlcd:uniform:2" --extra-row "MLCD + uniform 1:7, no KD=mlcd:uniform:1")
    tests=(-m gpu -p no:benchmark -n 8)
    for f in tests/test_kernels.py tests/test_backward.py tests/test_fa4_blocks.py \
        tests/test_families.py tests/test_distill_mixed_precision.py; do
        [ -f "$f" ] && tests+=("$f")
    done
fi
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
BUDGET=${DEVICE_BENCH_BUDGET:-510}
PARTS=" ${DEVICE_BENCH_PARTS:-tests kernels-small kernels-bwd train-step kernels-fa4} "
START=$SECONDS

# part NAME CAP_S COMMAND...: run under min(CAP_S, what is left of the budget); report, never stop the script.
# Returns 1 when the part did not run (not selected, or no budget left), so that `part ... && keep FILE` copies only
# what this call wrote, not a committed result of the same name.
part() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [[ $PARTS != *" $name "* ]]; then
        echo "== $name: not in DEVICE_BENCH_PARTS" | tee -a "$LOG"
        return 1
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    if [ "$cap" -lt 15 ]; then
        echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
        return 1
    fi
    echo "== $name (cap ${cap}s, $((SECONDS - START))s used)" | tee -a "$LOG"
    timeout --kill-after=10 "$cap" "$@" >>"$LOG" 2>&1
    local rc=$?
    case $rc in
    0) echo "== $name: ok" ;;
    124 | 137) echo "== $name: hit its ${cap}s cap (kept what it wrote)" ;;
    *) echo "== $name: FAILED (exit $rc); see $LOG" ;;
    esac | tee -a "$LOG"
    return 0
}

keep() {  # copy a result into $OUT
    [ -f "$1" ] && cp "$1" "$OUT/" && echo "   -> $(basename "$1")" | tee -a "$LOG"
    return 0
}

part tests 120 $PY -m pytest -q -rs "${tests[@]}"
tail -n 15 "$LOG"

r=$RESULTS/kernels-small-$gpu.json
part kernels-small 100 $PY -m diffusers_evdit.cli bench kernels "${small[@]}" --out "$r" && keep "$r"

if [[ $PARTS == *" quality-wallclock "* ]]; then  # the quality tables' rows timed on the demo model (issue 21)
    tables=(benchmarks/results/quality.json benchmarks/results/quality-shipped/quality.json)
    wall=(--device cuda --rounds 5)
    if [ "${DEVICE_BENCH_CPU:-0}" = 1 ]; then  # a copy of the small table, one round
        cp "${tables[1]}" "$RESULTS/q.json" && tables=("$RESULTS/q.json") && wall=(--rounds 1)
    fi
    part quality-wallclock 90 $PY benchmarks/quality_wallclock.py "${wall[@]}" "${tables[@]}"
    for t in "${tables[@]}"; do cp "$t" "$OUT/$(echo "${t#benchmarks/results/}" | tr / -)" 2>/dev/null; done
fi

r=$RESULTS/demo-rows-$gpu.json
part demo-eval "${DEVICE_BENCH_DEMO_CAP:-400}" $PY benchmarks/eval_demo_rows.py "${demo[@]}" --out "$r" \
    --plot "${r%.json}.png" && keep "$r" && keep "${r%.json}.png"

r=$RESULTS/kernels-bwd-$gpu.json
part kernels-bwd 190 $PY -m diffusers_evdit.cli bench kernels "${full[@]}" --out "$r" && keep "$r"

r=$RESULTS/train-step-$gpu.json
part train-step 110 $PY -m diffusers_evdit.cli bench train-step "${train[@]}" --out "$r" && keep "$r"

fa4_runs() { $PY -c "from diffusers_evdit.kernels.fa4 import fa4_available as a; import sys; sys.exit(not a())"; }
if [ "${DEVICE_BENCH_CPU:-0}" = 1 ] || fa4_runs; then
    r=$RESULTS/kernels-fa4-$gpu.json
    part kernels-fa4 260 $PY -m diffusers_evdit.cli bench kernels "${fa4[@]}" --out "$r" && keep "$r"
    # the FA4 kernel on the generated exactness cases and its own GPU tests (auto's pick included)
    part fa4-tests 200 $PY -m pytest -q -rs "${fa4_tests[@]}"
    # FlexAttention's FlashAttention-4 backend beside the fa4 tile kernel: FA4 inside torch.compile graphs?
    r=$RESULTS/kernels-flex-flash-$gpu.json
    part flex-flash 170 $PY -m diffusers_evdit.cli bench kernels "${flex_flash[@]}" --out "$r" && keep "$r"
    # whole denoising steps with the fa4 tile kernel, and with split in the same call (same host; each run times its
    # own dense step)
    for k in fa4 split; do  # (full-size models only: no CPU equivalent)
        r=$RESULTS/step-$k-$gpu.json
        [ "${DEVICE_BENCH_CPU:-0}" = 1 ] && continue
        part "step-$k" 170 $PY -m diffusers_evdit.cli bench step "${step[@]}" --kernel $k --out "$r" && keep "$r"
    done
    # forward + backward on HunyuanVideo's shape (cut from the first FA4 run by its cap)
    r=$RESULTS/kernels-fa4-bwd-long-$gpu.json
    part fa4-bwd-long 300 $PY -m diffusers_evdit.cli bench kernels "${fa4_bwd_long[@]}" --out "$r" && keep "$r"
else
    echo "== kernels-fa4: skipped: FlashAttention-4 does not run here ($($PY -c "
import importlib.util, torch
print('flash_attn.cute importable:', importlib.util.find_spec('flash_attn') is not None,
      '| capability:', torch.cuda.get_device_capability() if torch.cuda.is_available() else None)" 2>&1 | tail -n 1))" \
        | tee -a "$LOG"
fi
echo "== done in $((SECONDS - START))s of ${BUDGET}s; files in $OUT:" | tee -a "$LOG"
ls "$OUT" | tee -a "$LOG"
grep -E "^== |passed|failed|error|speedup|->" "$LOG" | tail -n 60
