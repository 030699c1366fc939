#!/usr/bin/env bash
# The shipped distilled demo model (issue 21), on one GPU of the device machine, in two warm calls:
#
#   bash benchmarks/device_ship.sh mlcd    # S=8 student (2 min), then the S=4 student from it (4 min): runs/mlcd-s4
#   bash benchmarks/device_ship.sh all     # both in one call, shorter budgets (what shipped)
#   bash benchmarks/device_ship.sh kd      # on the still-warm machine: search (r = 0.005, 0.05) + KD, and uniform 4:4 + KD
#
# Each call packs the trained transformers in float16 (transformer/ + scheduler/ + plan + training configs) as
# $OUT/<row>.tar, ready to unpack under diffusers_evdit/demo_model/<row>/.
set -uo pipefail
phase=${1:?usage: device_ship.sh mlcd|kd|all}
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

case $phase in
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
