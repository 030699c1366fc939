"""``evdit demo``: the shipped demo model, dense vs an Attention Tile plan, side by side, with a report.

    evdit demo --out demo/                                  # shipped model, 2 held-out prompts, uniform:2 plan
    evdit demo --out demo/ --plan plan.json --prompts 4 --steps 12
    evdit demo --out demo/ --model tiny                     # random tiny pipeline: plumbing only

Writes ``side_by_side.gif`` (rows: prompts; columns: real synthetic | dense | sparse), ``contact_sheet.png``,
``report.md`` and ``report.json`` (per-step time, attention sparsity, speedup, metrics, PSNR/SSIM of sparse vs
dense). Uses CUDA when present. On a 2-core CPU the defaults take one to two minutes with the shipped model. Clip
size, steps and guidance come from the model folder's ``generation_defaults.json`` (or legacy ``evdit_demo.json``).
Progress: diffusers' bars on a terminal, one line a phase in a log.
"""

from __future__ import annotations

import os


def _model_generation(model):
    """The folder's ``generation_defaults.json`` as the demo's ``GenerationConfig`` (None: let the demo read its
    legacy ``evdit_demo.json``)."""
    from ..demo import GenerationConfig, resolve_model
    from ..generation import GENERATION_DEFAULTS_FILE, GenerationDefaults

    path = resolve_model(model)
    if path == "tiny" or not os.path.isfile(os.path.join(path, GENERATION_DEFAULTS_FILE)):
        return None
    return GenerationDefaults.load(path).apply_to(GenerationConfig.load(path))


def _cmd_demo(args) -> int:
    from ..demo import run_demo
    from ..progress import progress_mode

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    mode = progress_mode(args.quiet or args.no_progress)

    def log(line: str) -> None:  # one line a phase (load, dense, sparse, scoring, written); --quiet: the last only
        if not args.quiet or line.startswith("wrote "):
            print(line, flush=True)

    run_demo(
        args.out, model=args.model, num_prompts=args.prompts, steps=args.steps, plan=args.plan, seed=args.seed,
        device=args.device, video_format=args.video_format, guidance_scale=args.guidance_scale,
        progress=mode == "bar", log=log, generation=_model_generation(args.model),
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
    demo.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    demo.add_argument("--plan", default="uniform:2", help="uniform:K or a plan JSON file (default uniform:2)")
    demo.add_argument("--guidance-scale", type=float, default=None, help="default: the model's")
    demo.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED + i")
    demo.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    demo.add_argument("--video-format", default="gif", choices=["gif", "mp4"],
                      help="side-by-side video format (default gif)")
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_cmd_demo)
