#!/usr/bin/env bash
# Make room for FlashAttention-4's compiler library in a device call (benchmarks/device_setup.sh), and put things back:
#
#   bash benchmarks/device_hold.sh out    # moves the demo model and benchmarks/results/ to $HOLD (~50 MB)
#   ... the two FA4 device calls ...
#   bash benchmarks/device_hold.sh back   # restores them
#
# While they are out, git sees them as deleted: commit only named files then (`git add path`, never `git add -A` or
# a folder above them), or the deletion lands in the commit.
set -euo pipefail
cd "$(dirname "$0")/.."
HOLD=${HOLD:-/tmp/evdit-hold}
PATHS=(diffusers_evdit/demo_model benchmarks/results)
case ${1:-} in
out)
    mkdir -p "$HOLD"
    for p in "${PATHS[@]}"; do
        [ -e "$HOLD/$(basename "$p")" ] && { echo "$HOLD/$(basename "$p") exists: run 'back' first" >&2; exit 1; }
        mv "$p" "$HOLD/"
    done
    echo "moved out: ${PATHS[*]} (-> $HOLD); restore with: bash benchmarks/device_hold.sh back" ;;
back)
    for p in "${PATHS[@]}"; do
        [ -e "$p" ] && { echo "$p is back already" >&2; continue; }
        mv "$HOLD/$(basename "$p")" "$p"
    done
    git status --short -- "${PATHS[@]}" | head -5
    echo "restored: ${PATHS[*]}" ;;
*)
    echo "usage: bash benchmarks/device_hold.sh out|back" >&2
    exit 2 ;;
esac
