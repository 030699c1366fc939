"""``evdit demo``: the shipped demo model, dense vs an Attention Tile plan, side by side, with a report.

    evdit demo --out demo/                                  # shipped model, 2 held-out prompts, uniform:2 plan
    evdit demo --out demo/ --plan plan.json --prompts 4 --steps 12
    evdit demo --out demo/ --model tiny                     # random tiny pipeline: plumbing only

Writes ``side_by_side.gif`` (rows: prompts; columns: real synthetic | dense | sparse), ``contact_sheet.png``,
``report.md`` and ``report.json`` (per-step time, attention sparsity, speedup, metrics, PSNR/SSIM of sparse vs
dense). Uses CUDA when present. On a 2-core CPU the defaults take one to two minutes with the shipped model.
"""

from __future__ import annotations


def _cmd_demo(args) -> int:
    from ..demo import run_demo

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_demo(
        args.out, model=args.model, num_prompts=args.prompts, steps=args.steps, plan=args.plan, seed=args.seed,
        device=args.device, video_format=args.video_format, guidance_scale=args.guidance_scale,
        progress=not args.no_progress,
    )
    return 0


def register(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="generate held-out prompts with the shipped demo model, dense and with a tile plan; video, sheet, report",
    )
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--model", default=None,
                      help="pipeline folder (default: the shipped diffusers_evdit/demo_model), or 'tiny'")
    demo.add_argument("--prompts", type=int, default=2, help="held-out prompts (default 2)")
    demo.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 20)")
    demo.add_argument("--plan", default="uniform:2", help="uniform:K or a plan JSON file (default uniform:2)")
    demo.add_argument("--guidance-scale", type=float, default=None, help="default: the model's evdit_demo.json")
    demo.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED + i")
    demo.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    demo.add_argument("--video-format", default="gif", choices=["gif", "mp4"],
                      help="mp4 needs imageio and imageio-ffmpeg")
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_cmd_demo)
