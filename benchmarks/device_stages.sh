#!/usr/bin/env bash
# The demo model's Stage 1 (MLCD) and Stage 3 (search + KD) results, on one GPU of the device machine, in two
# calls of under 10 minutes each. Run from the repo root (the device tool's working directory):
#
#   bash benchmarks/device_stages.sh mlcd        # S=8 from the teacher, S=4 from S=8 (lr 3e-5), then mlcd_table.py
#   bash benchmarks/device_stages.sh reproduce   # benchmarks/reproduce_tables.py with the S=8 student as MLCD model
#   bash benchmarks/device_stages.sh low-r       # search thresholds on this model's loss scale (r = 0.002, 0.005)
#   bash benchmarks/device_stages.sh s4-sweep    # S=8, then six S=4 variants side by side on the one GPU, one table
#   bash benchmarks/device_stages.sh reproduce-long [MLCD_DIR [ARGS...]]
#                     # reproduce_tables with 6 KD runs side by side at batch 32 (ARGS are added to its options);
#                     # MLCD model: MLCD_DIR, else the best S=4 of the s4-sweep table / mlcd.json if within 0.01 of the
#                     # teacher and in runs/, else runs/mlcd-s8 (trained first when missing); every KD run adds the
#                     # options of runs/kd-choice.args when kd-options left one. Each call gets a fresh copy of
#                     # the local working tree: files an earlier call wrote outside runs/ are gone.
#   bash benchmarks/device_stages.sh reproduce-quick  # r = 0.005 and 4:4 only, KD of >= 1 min (~6.5 min cold)
#   bash benchmarks/device_stages.sh reproduce-resume [MODEL [ARGS]]  # the full table over 2-3 warm calls,
#                     # KD runs of 1.8 min each (run the same command again until it says it wrote the table)
#   bash benchmarks/device_stages.sh s4-long-kd [MODEL]  # r = 0.005 and 4:4 with 4-min KD runs (~7.5 min)
#   bash benchmarks/device_stages.sh kd-lr       # KD of a 2:6 plan at lr 1e-4 / 3e-5 / 1e-5 in the same minutes
#   bash benchmarks/device_stages.sh s4-student  # the `mlcd` phase's two students without its table (~6.5 min)
#   bash benchmarks/device_stages.sh s4-curve    # the same with S=4 snapshots (train_mlcd.py --snapshot_steps)
#   bash benchmarks/device_stages.sh s8-student  # the S=8 student alone (S8_MINUTES, default 2): runs/mlcd-s8
#   bash benchmarks/device_stages.sh s8-s6-s4    # S=8, S=6 from it, S=4 from S=6 (runs/mlcd-s6, runs/mlcd-s4-via6)
#   bash benchmarks/device_stages.sh kd-options [MODEL]  # KD variants (lr, warm-up, lambda, LoRA) of 4:4 and 2:6
#
# Results land in $OUT/results.tar.gz (benchmarks/results/... paths; unpack in the repo root) and logs beside it;
# per-row evaluations and run logs stay under runs/ (curate what a table needs into benchmarks/results/MANIFEST.md).
# runs/ stays on the machine between calls while it is warm (30 s); `reproduce` trains its own S=8 model (batch 8,
# three time shares of its budget: weaker than the `mlcd` phase's) when runs/mlcd-s8 is gone. These phases made
# benchmarks/results/mlcd*, quality*, kd-lr/ (H100, 2026-11-23).
set -uo pipefail
phase=${1:?usage: device_stages.sh mlcd|s4-student|s4-curve|s8-student|s8-seeds|s8-s6-s4|reproduce|low-r|s4-sweep|reproduce-long|reproduce-quick|reproduce-resume|s4-long-kd|kd-lr|kd-options}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" runs
# shellcheck disable=SC1091
source benchmarks/device_setup.sh || exit 1
teacher=diffusers_evdit/demo_model
mlcd_common=(--teacher "$teacher" --dataset synthetic --teacher_steps 48 --train_batch_size 32 --learning_rate 1e-4
             --mixed_precision no --allow_tf32 --dataloader_num_workers 8 --max_train_steps 1000000 --cache_latents
             --synthetic_num_samples 2048 --checkpointing_steps 0 --validation_steps 0 --no_final_validation
             --eval_prompts 0 --report_to none)

train_s8() {  # [MINUTES, default 2]: the S=8 student distilled from the teacher -> runs/mlcd-s8
    python examples/train_mlcd.py "${mlcd_common[@]}" --output_dir runs/mlcd-s8 --num_segments 8 --seed 0 \
        --latent_cache runs/latents-seed0.pt \
        --max_minutes "${1:-2.0}" 2>&1 | tail -n 25 >"$OUT/train_s8.log"
    tail -n 2 "$OUT/train_s8.log"
}
need_s8() { [ -f runs/mlcd-s8/model_index.json ] || train_s8 "$@"; }  # train_s8 unless it is there (warm machine)
train_from() {  # SEGMENTS INIT OUTDIR SEED MINUTES [MORE ARGS]: a student of SEGMENTS from the student INIT at
    # lr 3e-5 (progressive reduction, the recipe of mlcd.md); log: $OUT/train_<OUTDIR's name less "mlcd-">.log
    local name log
    name=$(basename "$3")
    log="$OUT/train_${name#mlcd-}.log"
    python examples/train_mlcd.py "${mlcd_common[@]}" --output_dir "$3" --num_segments "$1" --seed "$4" \
        --latent_cache "runs/latents-seed$4.pt" --init_student "$2" --learning_rate 3e-5 --max_minutes "$5" \
        "${@:6}" 2>&1 | tail -n 25 >"$log"
    tail -n 2 "$log"
}
train_s4() {  # [MINUTES, default 4 [MORE ARGS]]: the S=4 student from runs/mlcd-s8 -> runs/mlcd-s4 (train_s4.log)
    train_from 4 runs/mlcd-s8 runs/mlcd-s4 1 "${1:-4.0}" "${@:2}"
}

pack() {  # what comes back: results and the small files of each run (no weights)
    local files=()
    for f in benchmarks/results/mlcd.json benchmarks/results/mlcd.md runs/mlcd-evals \
             benchmarks/results/quality.json benchmarks/results/quality.md; do
        [ -e "$f" ] && files+=("$f")
    done
    for d in runs/mlcd-s8 runs/mlcd-s4 runs/reproduce; do
        [ -d "$d" ] && while IFS= read -r f; do files+=("$f"); done < <(find "$d" -name '*.json' -o -name '*.jsonl' -o -name '*.md' | grep -v checkpoint-)
    done
    [ ${#files[@]} -gt 0 ] && tar czf "$OUT/results.tar.gz" "${files[@]}"
}

kd_variants() {  # MODEL OUTDIR MINUTES "K..." "NAME=KD ARGS"...: KD runs of uniform:K side by side, then evdit eval
    local model=$1 dir=$2 minutes=$3 ks=$4
    shift 4
    mkdir -p "$dir"
    local k spec name
    for k in $ks; do
        for spec in "$@"; do
            name="k$k-${spec%%=*}"
            # shellcheck disable=SC2086
            python examples/train_kd.py --teacher "$model" --plan "uniform:$k" --task_loss mlcd --mlcd_teacher "$teacher" \
                --task_weight 100 --kd_weight 1 --train_batch_size 32 ${spec#*=} --output_dir "runs/kd-$name" \
                --max_train_steps 1000000 --max_minutes "$minutes" --report_to none --checkpointing_steps 0 \
                --validation_steps 0 --no_final_validation --mixed_precision no --allow_tf32 \
                --dataloader_num_workers 1 --latent_cache runs/latents-kd.pt --synthetic_num_samples 2048 \
                >"$OUT/kd_$name.log" 2>&1 &
        done
    done
    python -m diffusers_evdit.cli eval --model "$model" --prompts 64 --workers 4 --no-progress \
        --json "$dir/dense.json" >/dev/null 2>&1
    for k in $ks; do
        python -m diffusers_evdit.cli eval --model "$model" --plan "uniform:$k" --prompts 64 --workers 4 --no-progress \
            --json "$dir/k$k-no-kd.json" >/dev/null 2>&1
    done
    wait
    for k in $ks; do
        for spec in "$@"; do
            name="k$k-${spec%%=*}"
            python -m diffusers_evdit.cli eval --model "runs/kd-$name" --plan saved --prompts 64 --workers 4 \
                --no-progress --json "$dir/$name.json" >/dev/null 2>&1 &
            cp "runs/kd-$name/kd_config.json" "$dir/$name.config.json"
        done
        wait
    done
    python - "$dir" <<'PY'
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    if not f.endswith(".config.json"):
        d = json.load(open(f))
        print(f"{os.path.basename(f):<28} final_score {d['final_score']:.4f}  frechet {d['frechet']:.3f}")
PY
    grep -h "Stopping at step" "$OUT"/kd_*.log
    mkdir -p "$dir/logs" && mv "$OUT"/kd_*.log "$dir/logs/"  # the device tool returns at most 8 files a call
    tar czf "$OUT/results.tar.gz" "$dir"
}

case "$phase" in
mlcd)
    # plumbing check of every reproduce stage on this GPU (tiny random model), beside the first training run
    (timeout 240 python benchmarks/reproduce_tables.py --smoke --work_dir /tmp/smoke >"$OUT/smoke.log" 2>&1;
     echo "smoke rc=$?" >>"$OUT/smoke.log") &
    train_s8
    train_s4
    wait
    tail -n 5 "$OUT/smoke.log"
    timeout 170 python benchmarks/mlcd_table.py --teacher "$teacher" --students runs/mlcd-s8 runs/mlcd-s4 --prompts 64 \
        --workers 8 --out benchmarks/results/mlcd.json --eval_dir runs/mlcd-evals 2>&1 | grep -v '%|' \
        | tee "$OUT/table.log"
    pack
    ;;
s4-student-short)
    # the same two students on shorter budgets (S=8 1.5 min, S=4 2.5 min), for device_ship.sh's one-call run
    train_s8 1.5
    train_s4 2.5
    ;;
s4-curve)
    # the s4-student recipe with S=4 snapshots along the way (device_ship.sh curve scores them); ~7 min
    train_s8 "${CURVE_S8_MINUTES:-2.0}"
    train_s4 "${CURVE_S4_MINUTES:-4.5}" --snapshot_steps 300 656 1000 1300
    ;;
s8-student)
    train_s8 "${S8_MINUTES:-2.0}"
    ;;
s8-seeds)
    # three S=8 students of train_s8's recipe, training seeds 0, 1, 2 (the seed also draws the synthetic clips, so each
    # run has its own latent cache), S8_STEPS steps (default 650) with snapshots at S8_SNAPSHOTS, side by side on one
    # GPU -> runs/s8-seed<N>; logs $OUT/s8-seed<N>.log. device_ship.sh s8-seeds scores them.
    for seed in 0 1 2; do
        # shellcheck disable=SC2086
        python examples/train_mlcd.py "${mlcd_common[@]}" --output_dir "runs/s8-seed$seed" --num_segments 8 \
            --seed "$seed" --latent_cache "runs/latents-seed$seed.pt" --max_train_steps "${S8_STEPS:-650}" \
            --max_minutes "${S8_MINUTES:-3.5}" --snapshot_steps ${S8_SNAPSHOTS:-200 350 500} \
            >"$OUT/s8-seed$seed.log" 2>&1 &
    done
    wait
    ;;
s8-s6-s4)
    # a gentler progressive reduction, S=8 -> 6 -> 4 (the shipped S=4 came from S=8 directly; mlcd.md): the S=8
    # student (2 min), S=6 from it (1.5 min), S=4 from S=6 (2.5 min, the shipped S=4's minutes); ~6.5 min.
    # device_ship.sh steps-curve scores them.
    need_s8 "${S8_MINUTES:-2.0}"
    train_from 6 runs/mlcd-s8 runs/mlcd-s6 2 "${S6_MINUTES:-1.5}"
    train_from 4 runs/mlcd-s6 runs/mlcd-s4-via6 1 "${S4_MINUTES:-2.5}"
    ;;
s4-student)
    # the S=8 and S=4 students of the `mlcd` phase without its table (for `reproduce-long runs/mlcd-s4` next, on the
    # still-warm machine); ~6.5 min
    train_s8
    train_s4
    tar czf "$OUT/results.tar.gz" runs/mlcd-s8/mlcd_config.json runs/mlcd-s8/losses.jsonl runs/mlcd-s4/mlcd_config.json \
        runs/mlcd-s4/losses.jsonl
    ;;
reproduce)
    mlcd=()
    if [ -f runs/mlcd-s8/model_index.json ]; then mlcd=(--mlcd_model runs/mlcd-s8); else echo "no runs/mlcd-s8: training one"; fi
    timeout 578 python benchmarks/reproduce_tables.py --work_dir runs/reproduce --out_dir benchmarks/results \
        --budget_minutes 9.0 --measure_step_speedups --cache_samples 0 "${mlcd[@]}" 2>&1 \
        | grep -v '%|' | tee "$OUT/reproduce.log" | tail -n 60
    pack
    ;;
low-r)
    timeout 290 python benchmarks/reproduce_tables.py --work_dir runs/reproduce-low-r \
        --out_dir benchmarks/results/quality-low-r --ratios 0.002,0.005 --uniform_ks 4 --no_uniform_kd --no_ablation \
        --mlcd_shares 6 --budget_minutes 4.5 --cache_samples 0 2>&1 | grep -v '%|' | tee "$OUT/reproduce.log" | tail -n 30
    tar czf "$OUT/results.tar.gz" benchmarks/results/quality-low-r
    ;;
s4-sweep)
    # The demo model (13M parameters) leaves an H100 mostly idle at batch 32, so the variants train concurrently.
    # The teacher rows are the ones of mlcd-first-run.json (same prompts, seeds, steps and guidance; mlcd_table checks that).
    need_s8
    sweep=(--num_segments 4 --seed 1 --max_minutes 4.0 --dataloader_num_workers 2)
    s8=(--init_student runs/mlcd-s8)
    declare -A variants=([s4-base]="${s8[*]}" [s4-solver3]="${s8[*]} --solver_steps 3"
                         [s4-huber]="${s8[*]} --loss_type huber" [s4-teacher]=""
                         [s4-lr3e-5]="${s8[*]} --learning_rate 3e-5" [s4-ema0]="${s8[*]} --ema_decay 0")
    for name in "${!variants[@]}"; do
        # shellcheck disable=SC2086
        python examples/train_mlcd.py "${mlcd_common[@]}" "${sweep[@]}" ${variants[$name]} --output_dir "runs/$name" \
            >"$OUT/train_$name.log" 2>&1 &
    done
    wait
    tail -n 2 "$OUT"/train_s4-*.log
    evals=benchmarks/results/mlcd-evals
    timeout 240 python benchmarks/mlcd_table.py --teacher "$teacher" --students runs/mlcd-s8 runs/s4-* --prompts 64 \
        --workers 8 --out benchmarks/results/mlcd-s4-sweep.json --eval_dir runs/mlcd-s4-sweep-evals \
        --reuse "Teacher=$evals/Teacher.json" "Teacher_S=8=$evals/Teacher_S8.json" "Teacher_S=4=$evals/Teacher_S4.json" \
        2>&1 | grep -v '%|' | tail -n 20
    tar czf "$OUT/results.tar.gz" benchmarks/results/mlcd-s4-sweep* runs/mlcd-s8/mlcd_config.json \
        runs/mlcd-s8/losses.jsonl runs/s4-*/mlcd_config.json runs/s4-*/losses.jsonl
    ;;
reproduce-long)
    # MLCD model: $2 if given, else the best S=4 student of the s4-sweep table (or of mlcd.json) when it is within
    # 0.01 of the teacher and still in runs/ (only S <= 4 can reach a 5x combined speedup), else the S=8 student.
    mlcd_model=${2:-$(python - <<'PY'
import json, os
res = {"rows": []}
for table in ("benchmarks/results/mlcd-s4-sweep.json", "benchmarks/results/mlcd.json"):  # a fresh sweep, else the
    if os.path.isfile(table):                                                          # committed table
        res = json.load(open(table))
        break
base = next((r["final_score"] for r in res["rows"] if r["name"] == "Teacher"), 1.0)
best = max((r for r in res["rows"] if r["name"].startswith("MLCD_S=4") and os.path.isdir(r["model"])),
           key=lambda r: r["final_score"], default=None)
print(best["model"] if best and best["final_score"] >= base - 0.01 else "runs/mlcd-s8")
PY
)}
    [ -f "$mlcd_model/model_index.json" ] || mlcd_model=runs/mlcd-s8
    echo "MLCD model: $mlcd_model"
    [ -f "$mlcd_model/model_index.json" ] || train_s8
    kd_extra=()
    if [ -s runs/kd-choice.args ]; then kd_extra=(--kd_extra_args "$(cat runs/kd-choice.args)"); echo "KD: ${kd_extra[1]}"; fi
    timeout 470 python benchmarks/reproduce_tables.py "${kd_extra[@]}" --work_dir runs/reproduce --out_dir benchmarks/results \
        --mlcd_model "$mlcd_model" --ratios 0.005,0.025,0.05,0.1,0.2,0.4 --jobs 6 --kd_batch_size 32 \
        --budget_minutes 7.6 --measure_step_speedups "${@:3}" 2>&1 | grep -v '%|' | tee "$OUT/reproduce.log" | tail -n 60
    pack
    ;;
reproduce-quick)
    # The one row issue 7's check needs, with KD long enough to mean something (~6 min cold): an S=8 student (1 min),
    # then reproduce_tables with r = 0.005 and uniform 4:4 only, two KD runs side by side, no order ablation, per-step
    # speedups derived from step-h100.json. Writes benchmarks/results/quality-s8-quick/.
    need_s8 1.0
    timeout 270 python benchmarks/reproduce_tables.py --work_dir runs/reproduce-quick \
        --out_dir benchmarks/results/quality-s8-quick --mlcd_model runs/mlcd-s8 --ratios 0.005 --uniform_ks 4 \
        --no_ablation --jobs 2 --kd_batch_size 32 --budget_minutes 4.2 --min_train_minutes 1.0 "${@:2}" 2>&1 \
        | grep -v '%|' | tee "$OUT/reproduce.log" | tail -n 30
    tar czf "$OUT/results.tar.gz" benchmarks/results/quality-s8-quick \
        $(find runs/reproduce-quick runs/mlcd-s8 -name '*.json' -o -name '*.jsonl' | grep -v checkpoint-)
    ;;
reproduce-resume)
    # The full table with KD runs of 1.8 min (~220 steps) each, over several warm calls: each call trains at most three
    # waves of two KD runs side by side, writes the rows so far and stops; the next call (same command, within 30 s,
    # so runs/ is still there) reuses what is finished and goes on. MODEL: default runs/mlcd-s4 (the s4-student
    # phase). After s4-student: call 1 = evaluations of Base and MLCD, search, 3 waves (~8.5 min); call 2 = the last
    # wave, KD_then_MLCD, the row evaluations (~9.5 min; a timeout keeps the evaluations done); call 3 if needed =
    # what is left and the measured per-step speedups. Search_r rows are left out to fit (see quality-s8-kd-starved).
    model=${2:-runs/mlcd-s4}
    [ -f "$model/model_index.json" ] || { echo "no $model on this machine: train it first (s4-student)"; exit 1; }
    timeout 560 python benchmarks/reproduce_tables.py --resume --work_dir runs/reproduce-resume \
        --out_dir benchmarks/results --mlcd_model "$model" --ratios 0.005,0.025,0.05,0.1,0.2,0.4 --jobs 2 \
        --kd_batch_size 32 --kd_minutes 1.8 --max_kd_waves 3 --no_search_rows --measure_step_speedups \
        "${@:3}" 2>&1 | grep -v '%|' | tee "$OUT/reproduce.log" | tail -n 40
    tar czf "$OUT/results.tar.gz" benchmarks/results/quality.json benchmarks/results/quality.md \
        $(find runs/reproduce-resume -name '*.json' -o -name '*.jsonl' | grep -v checkpoint-)
    ;;
s4-long-kd)
    # Does a longer KD close the gap to Base? On MODEL (default runs/mlcd-s4 from the s4-student phase on the warm
    # machine): reproduce_tables with r = 0.005 and uniform 4:4 only, two KD runs of 4 min side by side (~2x the
    # steps of reproduce-resume), no order ablation, per-step speedups derived from step-h100.json (~7.5 min).
    # Writes benchmarks/results/quality-s4-long-kd/.
    model=${2:-runs/mlcd-s4}
    [ -f "$model/model_index.json" ] || { echo "no $model on this machine: train it first (s4-student)"; exit 1; }
    timeout 560 python benchmarks/reproduce_tables.py --work_dir runs/s4-long-kd \
        --out_dir benchmarks/results/quality-s4-long-kd --mlcd_model "$model" --ratios 0.005 --uniform_ks 4 \
        --no_ablation --jobs 2 --kd_batch_size 32 --kd_minutes 4.0 "${@:3}" 2>&1 \
        | grep -v '%|' | tee "$OUT/reproduce.log" | tail -n 30
    tar czf "$OUT/results.tar.gz" benchmarks/results/quality-s4-long-kd \
        $(find runs/s4-long-kd runs/mlcd-s4 -name '*.json' -o -name '*.jsonl' | grep -v checkpoint-)
    ;;
kd-lr)
    # Does KD recover a sparse plan better at a lower learning rate in the same minutes? S=8 MLCD model (short run),
    # plan 2:6 on every layer, three KD runs side by side (lr 1e-4 = reproduce_tables' default then, 3e-5, 1e-5),
    # then the evdit eval of the plan before KD and of each KD student. ~4.5 min. Writes runs/kd-lr/
    # (the table of benchmarks/results/kd-lr/README.md came from its printed summary).
    need_s8 1.2
    kd_variants runs/mlcd-s8 runs/kd-lr 1.1 "2" \
        "lr1e-4=--learning_rate 1e-4" "lr3e-5=--learning_rate 3e-5" "lr1e-5=--learning_rate 1e-5"
    ;;
kd-options)
    # Why does a short KD lower a near-lossless plan (4:4)? KD of 4:4 and 2:6 on MODEL (default runs/mlcd-s8, trained
    # first when missing; runs/mlcd-s4 needs the s4-student phase on the warm machine) at lr 1e-4 (the old default),
    # at lr 3e-5 after a 10-step warm-up, with lambda = 1 instead of 100 (feature-led), and as a LoRA (rank 16), side
    # by side for 2 min each. ~6 min. Writes runs/kd-options-<model>/ and runs/kd-choice.args (the
    # variant of the best summed final_score), which reproduce-long then passes to every KD run.
    model=${2:-runs/mlcd-s8}
    if [ "$model" = runs/mlcd-s8 ]; then need_s8; fi
    [ -f "$model/model_index.json" ] || { echo "no $model: train it first (s4-student for runs/mlcd-s4)"; exit 1; }
    dir=runs/kd-options-$(basename "$model")  # summarised by hand in benchmarks/results/
    variants=("lr1e-4=--learning_rate 1e-4"
              "warmup=--learning_rate 3e-5 --lr_scheduler constant_with_warmup --lr_warmup_steps 10"
              "lambda1=--learning_rate 1e-4 --task_weight 1" "lora=--learning_rate 1e-4 --use_lora --lora_rank 16")
    kd_variants "$model" "$dir" 2.0 "4 2" "${variants[@]}"
    python - "$dir" "${variants[@]}" >runs/kd-choice.args <<'PY'
import json, os, sys
folder, specs = sys.argv[1], dict(v.split("=", 1) for v in sys.argv[2:])
score = lambda name: sum(json.load(open(os.path.join(folder, f"k{k}-{name}.json")))["final_score"] for k in (4, 2))
have = [n for n in specs if all(os.path.isfile(os.path.join(folder, f"k{k}-{n}.json")) for k in (4, 2))]
best = max(have, key=score) if have else "lr1e-4"
print(specs[best])
print(f"KD choice: {best} ({specs[best]})", file=sys.stderr)
PY
    cp runs/kd-choice.args "$dir/choice.args"
    tar czf "$OUT/results.tar.gz" "$dir"
    ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac
