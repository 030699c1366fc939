"""``evdit bench kernels``, ``evdit bench step`` and ``evdit bench train-step``."""

from __future__ import annotations

from . import positive_int


def _cmd_kernels(args) -> int:
    from ..bench.kernels import run_kernel_benchmark, select_shapes

    shapes = select_shapes(args.shapes or (["quick"] if args.quick else ["full"]))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_kernel_benchmark(args.out, shapes, args.device, args.kernels or None, rep_ms=args.rep_ms, rounds=args.rounds,
                         backward=args.backward)
    return 0


def _cmd_step(args) -> int:
    from ..bench.step import MODELS, run_step_benchmark

    models = args.models or list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}; choose from {', '.join(MODELS)}.")
    run_step_benchmark(args.out, models, args.kernel, reps=args.reps)
    return 0


def _cmd_train_step(args) -> int:
    from ..bench.train import run_train_step_benchmark

    run_train_step_benchmark(args.out, tuple(args.models), args.device, args.kernel, reps=args.reps, k_ref=args.k)
    return 0


def register(sub) -> None:
    # torch is imported already
    from ..bench.kernels import (AUTO_KERNEL, EXTRA_KERNELS, FA4_KERNELS, FLEX_FLASH_KERNEL, SHORT_KERNELS,
                                 SPARSE_KERNELS)

    bench = sub.add_parser("bench", help="benchmarks: attention kernels, denoising steps, KD training steps")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    kernels = bench_sub.add_parser("kernels", help="sparse kernels vs the best dense kernel on model shapes")
    kernels.add_argument("--shapes", nargs="*",
                         help="shape groups (small: the demo model's shape and three up to CogVideoX's; full: the "
                              "five model shapes; all: both) and/or shape names (default: full)")
    kernels.add_argument("--kernels", nargs="*",
                         choices=[*SPARSE_KERNELS, *SHORT_KERNELS, *EXTRA_KERNELS, *FA4_KERNELS, FLEX_FLASH_KERNEL,
                                  AUTO_KERNEL],
                         help="sparse kernels to time (default: split, gathered, flex, walk on CUDA with Triton, fa4 "
                              "where FlashAttention-4 runs; split_triton = split with its Triton merge, "
                              "split_triton_c2 = the same with the global queries in 2 key chunks, split_overlap = "
                              "split with its global call on a second stream, walk = a Triton launch over the kept "
                              "tiles of the partial rows + cuDNN for the global rows, walk_all = the Triton launch for "
                              "all rows, fa4 = FlashAttention-4 block sparsity, fa4_kv64 = the same with 64-token key "
                              "blocks, flex_flash = FlexAttention's experimental FlashAttention-4 backend; CUDA "
                              "only; masked = one SDPA call with the tile mask, keysets = two dense calls "
                              "over the rows' key sets, no mask or merge (the short-sequence kernels); auto = the "
                              "dispatcher's choice, rows then carry auto_vs_dense)")
    kernels.add_argument("--backward", action="store_true",
                         help="time forward+backward (rows with mode fwd+bwd; kernels without a backward are skipped)")
    kernels.add_argument("--quick", action="store_true",
                         help="tiny shapes, runs on CPU (checks the code path only; same as --shapes quick)")
    kernels.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    kernels.add_argument("--rep-ms", type=float, default=300, help="timing budget per measurement (ms)")
    kernels.add_argument("--rounds", type=positive_int, default=3,
                         help="alternating rounds of each mask's dense and sparse timings (medians reported)")
    kernels.add_argument("--threads", type=positive_int, default=None,
                         help="CPU threads for torch (default: torch's own; recorded in the JSON on the CPU)")
    kernels.add_argument("--out", default=None, help="JSON result path, e.g. benchmarks/results/kernels-h100.json")
    kernels.set_defaults(func=_cmd_kernels)
    step = bench_sub.add_parser("step", help="per-step time of full-size transformers (random weights), dense vs plans")
    step.add_argument("--models", nargs="*", help="model names (default: all)")
    step.add_argument("--kernel", default="auto", help="tile kernel for sparse layers (default auto)")
    step.add_argument("--reps", type=positive_int, default=3, help="timed steps per configuration (median)")
    step.add_argument("--out", default=None, help="JSON result path")
    step.set_defaults(func=_cmd_step)
    from ..bench.train import TRAIN_MODELS

    train = bench_sub.add_parser("train-step", help="one KD step (dense teacher, sparse student, AdamW) of full-size "
                                                    "random-weight transformers: dense vs sparse student")
    train.add_argument("--models", nargs="+", default=["wan2.1-1.3b_81f_480p"], choices=list(TRAIN_MODELS),
                       metavar="MODEL", help="models (default: wan2.1-1.3b_81f_480p; tiny_* run on a CPU)")
    train.add_argument("--k", type=positive_int, default=None,
                       help="reference frames of the sparse plan (default 1: 1:F-1)")
    train.add_argument("--kernel", default="auto", help="tile kernel of the sparse student (default auto)")
    train.add_argument("--reps", type=positive_int, default=2,
                       help="timed steps per student (median, after one warm-up)")
    train.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    train.add_argument("--out", default=None, help="JSON result path, e.g. benchmarks/results/train-step-h100.json")
    train.set_defaults(func=_cmd_train_step)
