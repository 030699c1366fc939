#!/usr/bin/env bash
# Issue 3 on the device machine, in calls of under 10 minutes (run from the repo root; carry .whl, diffusers):
#
#   bash benchmarks/device_kernels.sh          # the CUDA tests but the walk kernel's (~4 min), then `evdit bench
#                                              # step` (~2 min) -> step-<gpu>.json
#   bash benchmarks/device_kernels.sh walk-tests  # the walk kernel's CUDA tests (each head size and dtype compiles
#                                              # the Triton kernel: more than 6 min in all on an H100)
#   bash benchmarks/device_kernels.sh bench    # `evdit bench kernels` of split, gathered, flex and walk on all five
#                                              # shapes, three alternating rounds (~9 min; written after every
#                                              # shape, so a run cut at 9.3 min keeps what it measured)
#   bash benchmarks/device_kernels.sh profile  # the walk kernel's launch settings on the hard cases (~5 min):
#                                              # benchmarks/profile_walk.py -> profile-walk-<gpu>.json
#
# Measured before (H100, 2026-11-23, no gain over split): the Triton merge and key chunks (kernels-h100-merge.json,
# profile-split-h100.json), the overlapped global call (kernels-h100-overlap.json), the walk kernel
# (kernels-h100-walk.json, profile-walk-h100.json), own/shared calls on two streams and CUDA-graph replay
# (profile-split-streams-h100.json, benchmarks/profile_split_streams.py).
#
# Results: $OUT/results.tar.gz (benchmarks/results/... paths; unpack in the repo root), logs beside it.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# shellcheck disable=SC1091
source benchmarks/device_setup.sh || exit 1
gpu=$(python -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")  # h100 / h200
case "${1:-}" in
profile)
    timeout 560 python benchmarks/profile_walk.py --json "benchmarks/results/profile-walk-$gpu.json" 2>&1 \
        | tee "$OUT/profile.log" | tail -n 60
    result="benchmarks/results/profile-walk-$gpu.json" ;;
bench)
    timeout 560 python -m diffusers_evdit.cli bench kernels --kernels split gathered flex walk \
        --out "benchmarks/results/kernels-$gpu.json" 2>&1 | tee "$OUT/kernels.log" | tail -n 40
    result="benchmarks/results/kernels-$gpu.json" ;;
walk-tests)
    timeout 560 python -m pytest -q -rs --durations=10 tests/test_gpu.py -k walk 2>&1 | tail -n 30 | tee "$OUT/tests.log"
    exit 0 ;;
*)
    timeout 360 python -m pytest -q -rs --durations=5 tests/test_gpu.py -k "not walk" 2>&1 | tail -n 25 \
        | tee "$OUT/tests.log"
    timeout 200 python -m diffusers_evdit.cli bench step --reps 2 --out "benchmarks/results/step-$gpu.json" 2>&1 \
        | tee "$OUT/step.log" | tail -n 20
    result="benchmarks/results/step-$gpu.json" ;;
esac
tar czf "$OUT/results.tar.gz" "$result"
