"""``evdit bench kernels`` and ``evdit bench step``."""

from __future__ import annotations


def _cmd_kernels(args) -> int:
    from ..bench.kernels import QUICK_SHAPES, SHAPES, run_kernel_benchmark

    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        known = {s.name: s for s in SHAPES + QUICK_SHAPES}
        unknown = [n for n in args.shapes if n not in known]
        if unknown:
            raise ValueError(f"Unknown shape(s) {unknown}; choose from {', '.join(known)}.")
        shapes = tuple(known[n] for n in args.shapes)
    run_kernel_benchmark(args.out, shapes, args.device, args.kernels or None, rep_ms=args.rep_ms, rounds=args.rounds)
    return 0


def _cmd_step(args) -> int:
    from ..bench.step import MODELS, run_step_benchmark

    models = args.models or list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}; choose from {', '.join(MODELS)}.")
    run_step_benchmark(args.out, models, args.kernel, reps=args.reps)
    return 0


def register(sub) -> None:
    from ..bench.kernels import EXTRA_KERNELS, SPARSE_KERNELS  # the package root has imported torch already

    bench = sub.add_parser("bench", help="benchmarks: attention kernels, denoising steps")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    kernels = bench_sub.add_parser("kernels", help="sparse kernels vs the best dense kernel on model shapes")
    kernels.add_argument("--shapes", nargs="*", help="shape names (default: all five model shapes)")
    kernels.add_argument("--kernels", nargs="*",
                         choices=[*SPARSE_KERNELS, *EXTRA_KERNELS],
                         help="sparse kernels to time (default: split, gathered, flex, and walk on CUDA with "
                              "Triton; split_triton = split with its Triton merge, split_triton_c2 = the same with "
                              "the global queries in 2 key chunks, split_overlap = split with its global call on a "
                              "second stream, walk = a Triton launch over the kept tiles of the partial rows + cuDNN "
                              "for the global rows, walk_all = the Triton launch for all rows; CUDA only)")
    kernels.add_argument("--quick", action="store_true", help="tiny shapes, runs on CPU (checks the code path only)")
    kernels.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    kernels.add_argument("--rep-ms", type=float, default=300, help="timing budget per measurement (ms)")
    kernels.add_argument("--rounds", type=int, default=3,
                         help="alternating rounds of each mask's dense and sparse timings (medians reported)")
    kernels.add_argument("--out", default=None, help="JSON result path, e.g. benchmarks/results/kernels-h100.json")
    kernels.set_defaults(func=_cmd_kernels)
    step = bench_sub.add_parser("step", help="per-step time of full-size transformers (random weights), dense vs plans")
    step.add_argument("--models", nargs="*", help="model names (default: all)")
    step.add_argument("--kernel", default="auto", help="tile kernel for sparse layers (default auto)")
    step.add_argument("--reps", type=int, default=3, help="timed steps per configuration (median)")
    step.add_argument("--out", default=None, help="JSON result path")
    step.set_defaults(func=_cmd_step)
