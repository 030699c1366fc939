"""The ``evdit`` command line.

    evdit smoke                      # tiny random models: install plans, check exactness, time CPU forwards
    evdit plan uniform --layers 30 --k 2 --out plan.json
    evdit plan show plan.json --frames 13 --tokens-per-frame 1350 --text 226 --text-position first
"""

from __future__ import annotations

import argparse
import sys
import time

from .layout import TileLayout
from .masks import element_sparsity
from .plan import MaskPlan


def _cmd_smoke(args) -> int:
    import torch

    from .plan import apply_mask_plan, num_plan_layers, remove_mask_plan
    from .tiny import TINY_FAMILIES, TinyVideo, tiny_inputs, tiny_transformer

    video = TinyVideo(frames=args.frames)
    print(f"{'model':32s} {'plan':>6s} {'kernel':>9s} {'max|gathered-flex|':>24s} {'dense ms':>9s} {'sparse ms':>9s}")
    worst = 0.0
    for family in TINY_FAMILIES:
        model = tiny_transformer(family)
        inputs = tiny_inputs(model, video)
        n = num_plan_layers(model)
        with torch.no_grad():
            t0 = time.perf_counter()
            dense = model(**inputs).sample
            dense_ms = 1e3 * (time.perf_counter() - t0)
            for kernel in ("gathered", "flex"):
                apply_mask_plan(model, MaskPlan.uniform(n, args.k), kernel=kernel)
                t0 = time.perf_counter()
                sparse = model(**inputs).sample
                sparse_ms = 1e3 * (time.perf_counter() - t0)
                apply_mask_plan(model, MaskPlan.uniform(n, args.k), kernel="flex" if kernel == "gathered" else "gathered")
                other = model(**inputs).sample
                remove_mask_plan(model)
                diff = (sparse - other).abs().max().item()
                worst = max(worst, diff)
                name = type(model).__name__
                print(f"{name:32s} {f'{args.k}:{video.frames - args.k}':>6s} {kernel:>9s} {diff:24.2e} "
                      f"{dense_ms:9.1f} {sparse_ms:9.1f}")
            assert dense.shape == sparse.shape
    ok = worst < 1e-5
    print(f"kernels agree: {'yes' if ok else 'NO'} (worst {worst:.2e}); random weights: timings only, no quality")
    return 0 if ok else 1


def _cmd_plan_uniform(args) -> int:
    plan = MaskPlan.uniform(args.layers, args.k, model_class=args.model_class)
    plan.save(args.out)
    print(f"wrote {args.out}: {args.layers} layers, k={args.k}")
    return 0


def _cmd_plan_show(args) -> int:
    plan = MaskPlan.load(args.path)
    print(f"{args.path}: {plan.num_layers} layers, model {plan.model_class or 'any'}")
    if args.frames:
        layout = TileLayout(args.frames, args.tokens_per_frame, args.text, args.text_position if args.text else "none")
        names = plan.describe(args.frames)
        for i, k in enumerate(plan.layers):
            print(f"  layer {i:3d}: {names[i]:>7s}  sparsity {element_sparsity(layout, k):6.1%}")
        print(f"mean element sparsity {plan.sparsity(layout):.1%}")
    else:
        print("  k per layer:", plan.layers)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evdit", description="Efficient-vDiT tile-sparse attention for diffusers.")
    sub = parser.add_subparsers(dest="command", required=True)

    smoke = sub.add_parser("smoke", help="tiny random CogVideoX/Wan/HunyuanVideo: install plans, check, time")
    smoke.add_argument("--frames", type=int, default=6, help="latent frames of the tiny input (default 6)")
    smoke.add_argument("--k", type=int, default=2, help="reference frames of the uniform plan (default 2)")
    smoke.set_defaults(func=_cmd_smoke)

    plan = sub.add_parser("plan", help="make or inspect mask plan files")
    plan_sub = plan.add_subparsers(dest="plan_command", required=True)
    uniform = plan_sub.add_parser("uniform", help="write a plan with the same k on every layer")
    uniform.add_argument("--layers", type=int, required=True)
    uniform.add_argument("--k", type=int, required=True)
    uniform.add_argument("--model-class", default=None)
    uniform.add_argument("--out", required=True)
    uniform.set_defaults(func=_cmd_plan_uniform)
    show = plan_sub.add_parser("show", help="print a plan, with per-layer sparsity for a given layout")
    show.add_argument("path")
    show.add_argument("--frames", type=int, default=0, help="latent frames F (enables the sparsity table)")
    show.add_argument("--tokens-per-frame", type=int, default=1)
    show.add_argument("--text", type=int, default=0, help="text tokens in self-attention")
    show.add_argument("--text-position", choices=["first", "last"], default="first")
    show.set_defaults(func=_cmd_plan_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``evdit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"evdit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
