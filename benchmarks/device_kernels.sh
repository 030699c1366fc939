#!/usr/bin/env bash
# Issue 3 on the device machine in one call (~8 min on an H100): the CUDA kernel tests (split variants and the walk
# kernel), then `evdit bench kernels` of the split kernel against the Triton walk kernel (global rows by cuDNN:
# walk; all rows in the Triton launch: walk_all) on all five shapes. Measured before (2026-11-23, no gain): the
# Triton merge and key chunks (kernels-h100-merge.json, profile-split-h100.json), the overlapped global call
# (kernels-h100-overlap.json). gathered and flex, never the fastest, are left out here; the full run is
# `evdit bench kernels`. The profile of the split kernel's parts:
# `python benchmarks/profile_split.py --json benchmarks/results/profile-split-<gpu>.json` (~2 min).
#
#   bash benchmarks/device_kernels.sh          # run from the repo root; carry .whl (diffusers)
#   bash benchmarks/device_kernels.sh profile  # the walk kernel's launch settings on the hard cases (~4 min):
#                                              # benchmarks/profile_walk.py -> profile-walk-<gpu>.json
#
# Results: $OUT/results.tar.gz (benchmarks/results/... paths; unpack in the repo root), logs beside it.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# shellcheck disable=SC1091
source benchmarks/device_setup.sh || exit 1
gpu=$(python -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")  # h100 / h200
if [ "${1:-}" = profile ]; then
    timeout 560 python benchmarks/profile_walk.py --json "benchmarks/results/profile-walk-$gpu.json" 2>&1 \
        | tee "$OUT/profile.log" | tail -n 60
    tar czf "$OUT/results.tar.gz" "benchmarks/results/profile-walk-$gpu.json"
    exit 0
fi
timeout 240 python -m pytest -q tests/test_gpu.py -k "kernels_on_cuda or split or fastest or walk" 2>&1 \
    | tail -n 15 | tee "$OUT/tests.log"
timeout 320 python -m diffusers_evdit.cli bench kernels --kernels split walk walk_all \
    --out "benchmarks/results/kernels-$gpu-walk.json" 2>&1 | tee "$OUT/kernels.log" | tail -n 40
tar czf "$OUT/results.tar.gz" benchmarks/results/kernels-"$gpu"-walk.json
