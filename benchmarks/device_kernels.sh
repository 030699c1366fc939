#!/usr/bin/env bash
# Issue 3 on the device machine in one call (~5 min on an H100): the CUDA kernel tests (every split variant
# included), then `evdit bench kernels` of the split kernel against its variant with the global call overlapped on a
# second stream (split_overlap), on all five shapes. The Triton merge and key chunks were measured on 2026-11-23
# (kernels-h100-merge.json, profile-split-h100.json: no gain); gathered and flex, never the fastest, are left out
# here; the full run is `evdit bench kernels`. The profile of the split kernel's parts:
# `python benchmarks/profile_split.py --json benchmarks/results/profile-split-<gpu>.json` (~2 min).
#
#   bash benchmarks/device_kernels.sh          # run from the repo root; carry .whl (diffusers)
#
# Results: $OUT/results.tar.gz (benchmarks/results/... paths; unpack in the repo root), logs beside it.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# shellcheck disable=SC1091
source benchmarks/device_setup.sh || exit 1
gpu=$(python -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")  # h100 / h200
timeout 100 python -m pytest -q -x tests/test_gpu.py -k "kernels_on_cuda or split or fastest" 2>&1 | tail -n 3 | tee "$OUT/tests.log"
timeout 320 python -m diffusers_evdit.cli bench kernels --kernels split split_overlap \
    --out "benchmarks/results/kernels-$gpu-overlap.json" 2>&1 | tee "$OUT/kernels.log" | tail -n 40
tar czf "$OUT/results.tar.gz" benchmarks/results/kernels-"$gpu"-overlap.json
