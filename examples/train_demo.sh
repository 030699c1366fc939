#!/usr/bin/env bash
# Train the diffusers-evdit demo model end to end on one GPU and write the pipeline folder.
#
#   bash examples/train_demo.sh OUTDIR [--smoke] [WORKDIR]
#
# Run from the repository root (PYTHONPATH may point at it; the scripts also find the package themselves).
# Stages, under one wall-clock budget (EVDIT_TOTAL_MINUTES, default 9; each stage gets the time the previous ones
# left, minus reserves for the later ones, and stops and saves in time on its own):
#   1. examples/train_demo_vae.py   video VAE (AutoencoderKLWan) on synthetic clips            ~2 min
#   2. examples/train_demo_t2v.py   render + encode clips, train transformer + text encoder,   ~5 min
#                                   save the WanPipeline into OUTDIR
#   3. examples/train_demo_card.py  guidance choice, held-out evaluation, samples, model card   ~1.3 min
# OUTDIR receives only the pipeline (weights <= 40 MB), README.md (model card), training_log.json (loss curves),
# eval.json, evdit_demo.json and small sample images. Checkpoints and logs go to WORKDIR (default
# ${TMPDIR:-/tmp}/evdit-demo-work). --smoke runs everything tiny on CPU in about a minute (a test of the scripts).
# Copy OUTDIR's contents into diffusers_evdit/demo_model/ to ship the model.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash examples/train_demo.sh OUTDIR [--smoke] [WORKDIR]" >&2
  exit 2
fi
OUT=$1
shift
SMOKE=""
if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE="--smoke"
  shift
fi
WORK=${1:-${EVDIT_WORK_DIR:-${TMPDIR:-/tmp}/evdit-demo-work}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1

if [[ -n "$SMOKE" ]]; then
  TOTAL_MIN=${EVDIT_TOTAL_MINUTES:-4}
  VAE_MIN=1.0
  CARD_RESERVE_S=45
else
  TOTAL_MIN=${EVDIT_TOTAL_MINUTES:-9}
  VAE_MIN=${EVDIT_VAE_MINUTES:-2.0}
  CARD_RESERVE_S=${EVDIT_CARD_SECONDS:-80}
fi
START=$(date +%s)
DEADLINE=$(awk -v s="$START" -v m="$TOTAL_MIN" 'BEGIN { printf "%d", s + 60 * m }')
minutes_left() {  # minutes until the deadline minus $1 seconds of reserve
  awk -v d="$DEADLINE" -v now="$(date +%s)" -v r="$1" 'BEGIN { x = (d - now - r) / 60; if (x < 0.2) x = 0.2; printf "%.2f", x }'
}

rm -rf "$WORK/vae" "$WORK/t2v"  # only what this script writes there
mkdir -p "$WORK" "$OUT"
echo "== diffusers-evdit demo model: OUT=$OUT WORK=$WORK budget ${TOTAL_MIN} min ${SMOKE:+(smoke)}"
echo "== python $PY"
"$PY" - <<'EOF'
import platform, torch, diffusers, transformers, accelerate
print(f"== torch {torch.__version__} diffusers {diffusers.__version__} transformers {transformers.__version__} "
      f"accelerate {accelerate.__version__}; CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}"
      f"; {platform.node()}", flush=True)
EOF

echo "== stage 1/3: VAE ($VAE_MIN min)"
"$PY" "$HERE/train_demo_vae.py" --output_dir "$WORK/vae" --max_minutes "$VAE_MIN" $SMOKE 2>&1 | tee "$WORK/vae.log"

T2V_MIN=$(minutes_left "$CARD_RESERVE_S")
echo "== stage 2/3: transformer + text encoder ($T2V_MIN min)"
"$PY" "$HERE/train_demo_t2v.py" --vae_path "$WORK/vae/vae" --output_dir "$WORK/t2v" --pipeline_dir "$OUT" \
  --max_minutes "$T2V_MIN" $SMOKE 2>&1 | tee "$WORK/t2v.log"

CARD_MIN=$(minutes_left 8)
echo "== stage 3/3: evaluation and model card ($CARD_MIN min)"
if ! "$PY" "$HERE/train_demo_card.py" --pipeline_dir "$OUT" --vae_log "$WORK/vae/vae_log.json" \
  --t2v_log "$WORK/t2v/t2v_log.json" --max_minutes "$CARD_MIN" --started_at "$START" $SMOKE 2>&1 | tee "$WORK/card.log"; then
  echo "== WARNING: the card stage failed; the trained pipeline in $OUT is complete, see $WORK/card.log" >&2
fi
cp "$WORK/vae.log" "$WORK/t2v.log" "$WORK/card.log" "$OUT/" 2>/dev/null || true
mkdir -p "$OUT/logs" && mv "$OUT/vae.log" "$OUT/t2v.log" "$OUT/card.log" "$OUT/logs/" 2>/dev/null || true

END=$(date +%s)
echo "== done in $((END - START)) s; pipeline folder: $OUT"
du -sh "$OUT" 2>/dev/null || true
