#!/usr/bin/env bash
# The shipped distilled demo model (issue 21), on one GPU of the device machine, in two warm calls:
#
#   bash benchmarks/device_ship.sh mlcd    # S=8 student (2 min), then the S=4 student from it (4 min): runs/mlcd-s4
#   bash benchmarks/device_ship.sh all     # both in one call, shorter budgets (what shipped)
#   bash benchmarks/device_ship.sh kd      # on the still-warm machine: search (r = 0.005, 0.05) + KD, and uniform 4:4 + KD
#   bash benchmarks/device_ship.sh curve   # Stage 1's learning curve: S=8 (2 min), S=4 from it (4.5 min) with
#                                          # snapshots, all scored against the shipped MLCD on validation prompts
#   bash benchmarks/device_ship.sh ship-best  # on the still-warm machine: the validation-best S=4 student of `curve`,
#                                          # KD with the shipped plan, then Base and old/new rows on the test prompts
#   bash benchmarks/device_ship.sh steps-curve  # S=8, S=6, S=4 from S=6 (device_stages.sh s8-s6-s4), the new S=4
#                                          # against the shipped MLCD on validation prompts
#   bash benchmarks/device_ship.sh steps-test  # on the still-warm machine: Base, shipped rows and the students at 8,
#                                          # 6 and 4 steps on the test prompts
#   bash benchmarks/device_ship.sh s8-evdit # an 8-step Efficient-vDiT: S=8 (3 min), KD with the shipped plan and
#                                          # with 4:4 (2 min), validation choice, then the test prompts (~8.5 min)
#   bash benchmarks/device_ship.sh s8-test  # the S=8 student, then it, Base and the shipped MLCD on the test prompts
#   bash benchmarks/device_ship.sh s8-seeds # three S=8 students (training seeds 0-2, snapshots), each one's stopping
#                                          # point chosen on validation prompts, the three on the test prompts
#   bash benchmarks/device_ship.sh compare # searched (COMPARE_PLAN, default the budget plan) vs uniform plans of
#                                          # equal sparsity, both with KD from the shipped MLCD student, 3 training
#                                          # seeds each, scored on the test prompts (< 10 min)
#
# Each call packs the trained transformers in float16 (transformer/ + scheduler/ + plan + training configs) as
# $OUT/<row>.tar, ready to unpack under diffusers_evdit/demo_model/<row>/.
set -uo pipefail
phase=${1:?usage: device_ship.sh mlcd|kd|all|curve|ship-best|steps-curve|steps-test|s8-test|s8-seeds|s8-evdit|compare}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" runs
# shellcheck disable=SC1091
source benchmarks/device_setup.sh || exit 1
teacher=diffusers_evdit/demo_model

export_row() {  # FOLDER NAME: the folder's transformer in float16 with its scheduler, plan and configs -> $OUT/NAME.tar
    local src=$1 name=$2 dst=/tmp/export/$2
    rm -rf "$dst" && mkdir -p "$dst"
    python - "$src" "$dst" <<'PY'
import sys, torch
from diffusers import WanTransformer3DModel
src, dst = sys.argv[1:]
t = WanTransformer3DModel.from_pretrained(src, subfolder="transformer", torch_dtype=torch.float32)
t.to(torch.float16).save_pretrained(f"{dst}/transformer")
print("exported", src, sum(p.numel() for p in t.parameters()), "parameters")
PY
    cp -r "$src/scheduler" "$dst/" 2>/dev/null
    for f in "$src"/*.json "$src"/*.jsonl "$src"/*.md; do [ -e "$f" ] && cp "$f" "$dst/"; done
    tar cf - -C /tmp/export "$name" | split -b 15M - "$OUT/$name.tar.part-"
}

kd_student() {  # STUDENT PLAN OUTDIR LATENT_CACHE MINUTES [MORE ARGS]: Stage 3 KD as shipped (lr 3e-5, batch 32,
    # task loss x 100 + layer features) of the MLCD student STUDENT, its own teacher, under PLAN
    python examples/train_kd.py --teacher "$1" --student "$1" --plan "$2" --output_dir "$3" --latent_cache "$4" \
        --max_minutes "$5" --train_batch_size 32 --learning_rate 3e-5 --task_weight 100 --kd_weight 1 \
        --no_final_validation --report_to none --checkpointing_steps 0 --validation_steps 0 --mixed_precision no \
        --allow_tf32 --synthetic_num_samples 2048 "${@:6}"
}

materialize() {  # ROW DIR: the shipped student row (a 4-bit delta) as a full pipeline folder to train from
    python - "$teacher" "$1" "$2" <<'PY'
import json, os, shutil, sys
from diffusers import WanTransformer3DModel
from diffusers_evdit.weight_delta import load_delta
base, row, dst = sys.argv[1:]
shutil.copytree(base, dst, ignore=shutil.ignore_patterns("mlcd", "evdit", "transformer", "scheduler"), dirs_exist_ok=True)
t = load_delta(WanTransformer3DModel.from_pretrained(base, subfolder="transformer"), os.path.join(base, row))
t.save_pretrained(os.path.join(dst, "transformer"))
shutil.copytree(os.path.join(base, row, "scheduler"), os.path.join(dst, "scheduler"), dirs_exist_ok=True)
shutil.copy(os.path.join(base, row, "generation_defaults.json"), dst)
with open(os.path.join(base, row, "training.json")) as f:
    json.dump(json.load(f)["mlcd"], open(os.path.join(dst, "mlcd_config.json"), "w"), indent=2)
print("materialised", row, "->", dst)
PY
}

case $phase in
compare)
    # Issue 21: does the search beat a uniform plan at equal sparsity, both after KD? Plans: uniform 3:5 and the
    # latency-budget plan with exactly its kept pairs (benchmarks/equal_sparsity_plan.py, searched on training
    # prompts). KD as shipped (lr 3e-5, batch 32, task loss MLCD x 100), the same number of steps for every run,
    # seeds 0-2, all six side by side on the one GPU; then every student on the 64 test prompts x 3 seeds.
    steps=${COMPARE_STEPS:-100}  # KD steps a run; COMPARE_DEADLINE_S (default 590): seconds the phase may take
    materialize mlcd runs/mlcd-s4 || exit 1
    mkdir -p runs/cmp
    kd() {  # NAME PLAN SEED
        kd_student runs/mlcd-s4 "$2" "runs/cmp/$1-s$3" runs/cmp/latents.pt "${COMPARE_KD_MINUTES:-4}" --seed "$3" \
            --dataloader_num_workers 2 --max_train_steps "$steps" --time_reserve_s 6 >"runs/cmp/$1-s$3.log" 2>&1
    }
    # the searched side: the budget plan of the 2026-12-05 run, or COMPARE_PLAN (e.g.
    # benchmarks/results/plans/refined-budget-3of8.json, the refined plan: level with uniform on validation without
    # KD, plan-losses-cpu.json)
    searched=${COMPARE_PLAN:-benchmarks/results/plans/searched-budget-3of8.json}
    kd searched "$searched" 0 &
    while [ ! -f runs/cmp/latents.pt ] && jobs %1 >/dev/null 2>&1; do sleep 2; done  # the first run fills the cache
    kd searched "$searched" 1 & kd searched "$searched" 2 &
    for s in 0 1 2; do kd uniform uniform:3 "$s" & done
    wait
    echo "KD done at ${SECONDS}s"; grep -h '"steps"' runs/cmp/*/kd_config.json | head -n 6
    rows=()  # Base first (the paired reference), the six students in turn, then the shipped rows
    for s in 0 1 2; do for p in searched uniform; do
        d=runs/cmp/$p-s$s && [ -f "$d/mask_plan.json" ] && rows+=(--extra-row "$p-s$s=$PWD/$d:saved")
    done; done
    timeout $((${COMPARE_DEADLINE_S:-590} - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --rows Base \
        --prompts 64 --seeds 3 --workers 12 --timing-videos 3 "${rows[@]}" --extra-row "MLCD=mlcd:dense" \
        --extra-row "Efficient-vDiT=evdit:saved" --out "$OUT/compare-rows.json" 2>&1 | grep -v '%|' | tail -n 14
    python benchmarks/compare_summary.py "$OUT/compare-rows.json" --runs runs/cmp  # summary + kd_runs, in place
    tar czf "$OUT/compare-runs.tar.gz" runs/cmp/*.log runs/cmp/*/kd_config.json runs/cmp/*/losses.jsonl \
        runs/cmp/*/mask_plan.json 2>/dev/null
    ;;
curve)
    # Is Stage 1 (the quality line's limit, demo-rows-h100.json) short of training? One S=8 student, one S=4 run
    # from it with snapshots at the shipped student's length (656 steps) and beyond; every snapshot and the final
    # student against the shipped MLCD row on 64 validation prompts x 2 seeds (choices on validation only).
    if [ "${CURVE_GPU_TESTS:-0}" = 1 ]; then  # the GPU tests beside the training (2026-12-06: many failed, cut at 420 s; run them alone)
        (timeout 420 python -m pytest -m gpu -q -p no:cacheprovider tests/ >"$OUT/gpu-tests.log" 2>&1;
         echo "gpu tests rc=$?" >>"$OUT/gpu-tests.log") &
    fi
    bash benchmarks/device_stages.sh s4-curve
    tail -n 1 "$OUT/train_s8.log" "$OUT/train_s4.log"
    rows=()
    for d in runs/mlcd-s4/snapshot-* runs/mlcd-s4; do
        [ -f "$d/model_index.json" ] && rows+=(--extra-row "$(basename "$d")=$PWD/$d:dense")
    done
    timeout $((590 - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --split validation --rows MLCD \
        --prompts 64 --seeds 2 --workers 12 --timing-videos 1 "${rows[@]}" --out "$OUT/curve-validation.json" 2>&1 \
        | grep -v '%|' | tail -n 10
    cp runs/mlcd-s4/losses.jsonl "$OUT/curve-s4-losses.jsonl"; cp runs/mlcd-s8/losses.jsonl "$OUT/curve-s8-losses.jsonl"
    cp "$OUT/curve-validation.json" runs/
    wait
    tail -n 3 "$OUT/gpu-tests.log" 2>/dev/null
    ;;
steps-curve)
    # Quality against steps of distilled students, and a gentler Stage 1 (S=8 -> 6 -> 4; the shipped S=4 came from
    # S=8 directly): device_stages.sh s8-s6-s4, then the new S=4 against the shipped MLCD on 64 validation prompts x 2
    # seeds (the shipping choice is made on validation only). `steps-test` follows on the still-warm machine.
    bash benchmarks/device_stages.sh s8-s6-s4
    tail -n 1 "$OUT"/train_*.log
    timeout $((560 - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --split validation --rows MLCD \
        --prompts 64 --seeds 2 --workers 12 --timing-videos 1 --extra-row "S4-via6=$PWD/runs/mlcd-s4-via6:dense" \
        --out "$OUT/steps-validation.json" 2>&1 | grep -v '%|' | tail -n 6
    cp "$OUT/steps-validation.json" runs/ 2>/dev/null
    for d in s8 s6 s4-via6; do cp "runs/mlcd-$d/losses.jsonl" "$OUT/steps-$d-losses.jsonl"; done
    ;;
s8-test)
    # the short form, for a call that spent its first minutes elsewhere (SHIP_DEADLINE_S: seconds this phase may
    # take, default 560): the S=8 student, then Base, the shipped MLCD and the S=8 student at 8 steps on the test
    # prompts (rows finished before the deadline are kept)
    deadline=${SHIP_DEADLINE_S:-560}
    bash benchmarks/device_stages.sh s8-student
    timeout $((deadline - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --rows Base,MLCD --prompts 64 \
        --seeds 3 --workers 12 --timing-videos 3 --extra-row "MLCD, 8 segments=$PWD/runs/mlcd-s8:dense@8" \
        --out "$OUT/steps-test.json" 2>&1 | grep -v '%|' | tail -n 8
    cp runs/mlcd-s8/losses.jsonl "$OUT/steps-s8-losses.jsonl"
    ;;
s8-seeds)
    # The 8-step point of the quality curve as issue 21's protocol asks: three S=8 students of the shipped first-stage
    # recipe (training seeds 0, 1, 2; S8_STEPS steps, default 650, with snapshots), trained side by side on one GPU
    # from one teacher-latent cache; each seed's stopping point chosen on 64 validation prompts x 1 seed; then the
    # three chosen students beside Base and the shipped MLCD on the 64 test prompts x 3 seeds (~8 min).
    deadline=${SHIP_DEADLINE_S:-585}  # seconds this phase may take (validation gets up to two thirds of them)
    bash benchmarks/device_stages.sh s8-seeds
    tail -n 1 "$OUT"/s8-seed*.log
    rows=()
    for d in runs/s8-seed? runs/s8-seed*/snapshot-*; do  # the final students first: a cut pass keeps them
        case $d in  # s8-seed<N>/snapshot-<step>, s8-seed<N>/final
        */snapshot-*) name="$(basename "$(dirname "$d")")/$(basename "$d")" ;;
        *) name="$(basename "$d")/final" ;;
        esac
        [ -f "$d/model_index.json" ] && rows+=(--extra-row "$name=$PWD/$d:dense@8")
    done
    timeout $((deadline * 2 / 3 - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --split validation \
        --rows Base --prompts 64 --seeds 1 --workers 12 --timing-videos 0 "${rows[@]}" \
        --out "$OUT/s8-seeds-validation.json" 2>&1 | grep -v '%|' | tail -n 16
    mapfile -t picks < <(python - "$OUT/s8-seeds-validation.json" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["name"] != "Base"]
for seed in sorted({r["name"].split("/")[0] for r in rows}):
    mine = [r for r in rows if r["name"].startswith(seed + "/")]
    best = max(mine, key=lambda r: r["final_score"]["mean"])
    print("--extra-row")
    print(f'{seed} ({best["name"].split("/")[1]})={best["folder"]}:dense@8')
PY
)
    echo "validation picks: ${picks[*]}"
    timeout $((deadline - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --rows Base,MLCD --prompts 64 \
        --seeds 3 --workers 12 --timing-videos 3 --timing-rounds 3 "${picks[@]}" --out "$OUT/s8-seeds-test.json" 2>&1 \
        | grep -v '%|' | tail -n 8
    tar czf "$OUT/s8-seeds-logs.tar.gz" "$OUT"/s8-seed*.log runs/s8-seed?/losses.jsonl runs/s8-seed0/mlcd_config.json \
        2>/dev/null && rm -f "$OUT"/s8-seed*.log
    ;;
s8-evdit)
    # An 8-step Efficient-vDiT candidate (stage1_steps in demo-rows-h100.json: the S=8 student is 0.027 below Base at
    # 5.4x). The S=8 student (S8_MINUTES, default 3), then KD of it (KD_MINUTES, default 2) with the shipped plan and
    # with uniform 4:4 side by side; the choice between them is made on 64 validation prompts x 2 seeds; then every
    # row on the 64 test prompts x 3 seeds beside Base and the shipped rows (same-call timings); the students come
    # back as float16 tars (~8.5 min in all).
    S8_MINUTES=${S8_MINUTES:-3.0} bash benchmarks/device_stages.sh s8-student
    mkdir -p runs/s8kd
    kd8() {  # NAME PLAN
        kd_student runs/mlcd-s8 "$2" "runs/s8kd/$1" runs/s8kd/latents.pt "${KD_MINUTES:-2.0}" --task_loss mlcd \
            --mlcd_teacher "$teacher" --seed 0 --dataloader_num_workers 4 --max_train_steps 1000000 \
            --time_reserve_s 6 >"$OUT/s8kd-$1.log" 2>&1
    }
    kd8 shipped-plan "$teacher/evdit/mask_plan.json" &
    while [ ! -f runs/s8kd/latents.pt ] && jobs %1 >/dev/null 2>&1; do sleep 2; done  # the first run fills the cache
    kd8 uniform-4 uniform:4 &
    wait
    tail -n 1 "$OUT"/s8kd-*.log
    rows=(--extra-row "MLCD, 8 segments=$PWD/runs/mlcd-s8:dense@8")
    for d in runs/s8kd/*/; do
        [ -f "$d/mask_plan.json" ] && rows+=(--extra-row "8 segments + $(basename "$d") + KD=$PWD/$d:saved@8")
    done
    timeout $((560 - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --split validation --rows Base \
        --prompts 64 --seeds 2 --workers 12 --timing-videos 0 "${rows[@]}" --out "$OUT/s8-validation.json" 2>&1 \
        | grep -v '%|' | tail -n 6
    timeout $((570 - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --rows Base,MLCD,Efficient-vDiT \
        --prompts 64 --seeds 3 --workers 12 --timing-videos 3 "${rows[@]}" --out "$OUT/s8-test.json" 2>&1 \
        | grep -v '%|' | tail -n 8
    # the tool returns at most 8 files: the S=8 student, the validation-best KD row (2 parts each), two JSONs, logs
    best=$(python - "$OUT/s8-validation.json" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if "KD" in r["name"]]
print(max(rows, key=lambda r: r["final_score"]["mean"])["folder"] if rows else "")
PY
)
    echo "validation-best KD row: ${best:-none}"
    export_row runs/mlcd-s8 mlcd-s8
    [ -n "$best" ] && export_row "$best" evdit-s8
    tar czf "$OUT/s8-logs.tar.gz" "$OUT"/*.log runs/mlcd-s8/losses.jsonl runs/s8kd/*/kd_config.json \
        runs/s8kd/*/losses.jsonl 2>/dev/null && rm -f "$OUT"/*.log
    ;;
steps-test)
    # on the still-warm machine after `steps-curve`: Base, the shipped rows and the students of every step count on
    # the 64 test prompts x 3 seeds, in one call (same-call timings); then the students as float16 tars
    for d in s8 s6 s4-via6; do
        [ -f "runs/mlcd-$d/model_index.json" ] || { echo "no runs/mlcd-$d: run steps-curve first"; exit 1; }
    done
    timeout $((560 - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --rows Base,MLCD,Efficient-vDiT \
        --prompts 64 --seeds 3 --workers 12 --timing-videos 3 --extra-row "MLCD, 8 segments=$PWD/runs/mlcd-s8:dense@8" \
        --extra-row "MLCD, 6 segments=$PWD/runs/mlcd-s6:dense@6" \
        --extra-row "MLCD, 4 segments via 6=$PWD/runs/mlcd-s4-via6:dense" \
        --out "$OUT/steps-test.json" 2>&1 | grep -v '%|' | tail -n 10
    export_row runs/mlcd-s4-via6 mlcd-via6
    ;;
ship-best)
    # The S=4 student of `curve` with the best mean validation score (runs/curve-validation.json; the shipped MLCD
    # row is only the reference), KD with the shipped Efficient-vDiT plan (searched on the shipped student: the
    # plan is not searched again), then Base, the shipped rows and the new rows on the 64 test prompts x 3 seeds.
    [ -f runs/curve-validation.json ] || { echo "no runs/curve-validation.json here: run the curve phase first"; exit 1; }
    best=$(python - <<'PY'
import json
rows = [r for r in json.load(open("runs/curve-validation.json"))["rows"] if r["name"] != "MLCD"]
best = max(rows, key=lambda r: r["final_score"]["mean"])
print(best["folder"])
PY
)
    echo "validation-best S=4 student: $best"
    kd_student "$best" "$teacher/evdit/mask_plan.json" runs/curve-kd runs/latents-kd.pt "${SHIP_KD_MINUTES:-3.0}" \
        --task_loss mlcd --mlcd_teacher "$teacher" --seed 0 --dataloader_num_workers 4 --max_train_steps 1000000 \
        >"$OUT/curve-kd.log" 2>&1
    tail -n 1 "$OUT/curve-kd.log"
    timeout $((585 - SECONDS)) python benchmarks/eval_demo_rows.py --device cuda --rows Base,MLCD,Efficient-vDiT \
        --prompts 64 --seeds 3 --workers 12 --timing-videos 3 --extra-row "MLCD-long=$best:dense" \
        --extra-row "Efficient-vDiT-long=$PWD/runs/curve-kd:saved" --out "$OUT/curve-test.json" 2>&1 \
        | grep -v '%|' | tail -n 10
    export_row "$best" mlcd-long
    export_row runs/curve-kd evdit-long
    cp runs/curve-kd/kd_config.json "$OUT/curve-kd-config.json"
    ;;
mlcd)
    bash benchmarks/device_stages.sh s4-student
    export_row runs/mlcd-s4 mlcd
    ;;
kd)
    [ -f runs/mlcd-s4/model_index.json ] || { echo "no runs/mlcd-s4 on this machine: run the mlcd phase first"; exit 1; }
    timeout 520 python benchmarks/reproduce_tables.py --work_dir runs/ship --out_dir runs/ship/tables \
        --mlcd_model runs/mlcd-s4 --ratios 0.005,0.05 --uniform_ks 4 --no_ablation --no_search_rows --jobs 3 \
        --kd_batch_size 32 --kd_minutes 3.5 --eval_prompts 16 2>&1 | grep -v '%|' | tee "$OUT/ship.log" | tail -n 30
    export_row runs/mlcd-s4 mlcd
    export_row "runs/ship/ours_r=0.005" evdit
    tar czf "$OUT/tables.tar.gz" runs/ship/tables runs/ship/plans runs/ship/evals 2>/dev/null
    ;;
all)
    # everything in one call (< 10 min): S=8 (1.5 min), S=4 (2.5 min), search r = 0.005 + KD (2 min) beside uniform
    # 4:4 + KD; the two students come back in float16 as split tars.
    bash benchmarks/device_stages.sh s4-student-short
    left=$((545 - SECONDS))
    echo "reproduce gets ${left}s"
    timeout "$left" python benchmarks/reproduce_tables.py --work_dir runs/ship --out_dir runs/ship/tables \
        --mlcd_model runs/mlcd-s4 --ratios 0.005 --uniform_ks 4 --no_ablation --no_search_rows --jobs 2 \
        --kd_batch_size 32 --kd_minutes 2.0 --eval_prompts 8 2>&1 | grep -v '%|' | tee "$OUT/ship.log" | tail -n 25
    export_row runs/mlcd-s4 mlcd
    [ -f "runs/ship/ours_r=0.005/model_index.json" ] && export_row "runs/ship/ours_r=0.005" evdit
    tar czf "$OUT/tables.tar.gz" runs/ship/tables runs/ship/plans runs/ship/evals runs/mlcd-s8/losses.jsonl \
        runs/mlcd-s4/losses.jsonl runs/mlcd-s4/mlcd_config.json 2>/dev/null
    ;;
esac
ls -la "$OUT"
