"""``evdit demo``: the shipped demo model's Base, MLCD and Efficient-vDiT rows side by side, with a report.

    evdit demo --out demo/                                  # shipped model and students, 2 held-out test prompts
    evdit demo --out demo/ --plan uniform:2 --prompts 4     # another plan on the Efficient-vDiT row
    evdit demo --out demo/ --model tiny                     # random tiny pipeline and stand-in students: plumbing only

Writes ``side_by_side.gif`` (rows: prompts; columns: real synthetic | one per row), ``contact_sheet.png``,
``report.md`` and ``report.json`` (per row: denoising and whole-video seconds measured in this run, wall-clock
speedups over Base, metrics). Uses CUDA when present. Clip size, steps and guidance of the Base row come from the
model folder's ``generation_defaults.json`` (or legacy ``evdit_demo.json``); the students' from their own folders.
Progress: diffusers' bars on a terminal, one line a phase in a log.
"""

from __future__ import annotations

import os

from . import non_negative_int, positive_int


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
        help="Base, MLCD and Efficient-vDiT rows of the shipped demo model on held-out test prompts: video, sheet, "
             "report with measured wall-clock speedups",
    )
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--model", default=None,
                      help="pipeline folder (default: the shipped diffusers_evdit/demo_model), or 'tiny'")
    demo.add_argument("--prompts", type=positive_int, default=2, help="held-out prompts (default 2)")
    demo.add_argument("--steps", type=positive_int, default=None,
                      help="the Base row's denoising steps (default: the model's)")
    demo.add_argument("--plan", default=None,
                      help="override the Efficient-vDiT row's plan: uniform:K or a plan JSON file (default: its searched "
                           "plan, mask_plan.json in the row folder)")
    demo.add_argument("--guidance-scale", type=float, default=None, help="the Base row's guidance (default: the model's)")
    demo.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED + i")
    demo.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    demo.add_argument("--video-format", default="gif", choices=["gif", "mp4"],
                      help="side-by-side video format (default gif)")
    demo.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (default: torch's choice)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_cmd_demo)
