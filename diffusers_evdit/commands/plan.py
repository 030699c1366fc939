"""``evdit plan``: make or inspect mask plan files."""

from __future__ import annotations

from ..layout import TileLayout
from ..masks import element_sparsity
from ..plan import MaskPlan
from . import non_negative_int, positive_int


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


def register(sub) -> None:
    plan = sub.add_parser("plan", help="make or inspect mask plan files")
    plan_sub = plan.add_subparsers(dest="plan_command", required=True)
    uniform = plan_sub.add_parser("uniform", help="write a plan with the same k on every layer")
    uniform.add_argument("--layers", type=positive_int, required=True)
    uniform.add_argument("--k", type=positive_int, required=True)
    uniform.add_argument("--model-class", default=None)
    uniform.add_argument("--out", required=True)
    uniform.set_defaults(func=_cmd_plan_uniform)
    show = plan_sub.add_parser("show", help="print a plan, with per-layer sparsity for a given layout")
    show.add_argument("path")
    show.add_argument("--frames", type=non_negative_int, default=0, help="latent frames F (enables the sparsity table)")
    show.add_argument("--tokens-per-frame", type=positive_int, default=1)
    show.add_argument("--text", type=non_negative_int, default=0, help="text tokens in self-attention")
    show.add_argument("--text-position", choices=["first", "last"], default="first")
    show.set_defaults(func=_cmd_plan_show)
