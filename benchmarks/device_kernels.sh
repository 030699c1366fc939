#!/usr/bin/env bash
# Issue 3 on the device machine in one call (~9 min on an H100): the CUDA kernel tests (split with both merges
# included), `evdit bench kernels` of split, split_triton and split_triton_c2 on all five shapes (gathered and flex,
# never the fastest so far, are left out to fit the call; the full run is `evdit bench kernels`), then the split
# kernel's profile (per-call TFLOP/s, merge GB/s per implementation, % of ideal with each, the chunked global call).
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
timeout 320 python -m diffusers_evdit.cli bench kernels --kernels split split_triton split_triton_c2 \
    --out "benchmarks/results/kernels-$gpu-merge.json" 2>&1 | tee "$OUT/kernels.log" | tail -n 40
tar czf "$OUT/results.tar.gz" benchmarks/results/kernels-"$gpu"-merge.json
timeout 120 python benchmarks/profile_split.py --json "benchmarks/results/profile-split-$gpu.json" 2>&1 \
    | tee "$OUT/profile.log" | grep -v "ms/call"
tar czf "$OUT/results.tar.gz" benchmarks/results/kernels-"$gpu"-merge.json benchmarks/results/profile-split-"$gpu".json
