"""``evdit eval``: the analytic metrics table of a pipeline on held-out synthetic prompts, as JSON.

    evdit eval --prompts 64 --json eval.json                       # the shipped demo model, dense
    evdit eval --model out/ --plan plan.json --steps 10 --prompts 64 --json eval_sparse.json
    evdit eval --model tiny --prompts 2 --json /tmp/e.json         # random tiny pipeline: plumbing only

Top-level JSON keys (0-1, higher is better, except ``frechet``): ``color_accuracy``, ``object_class_accuracy``,
``motion_direction_accuracy``, ``dynamic_degree``, ``motion_smoothness``, ``temporal_flickering``,
``subject_consistency``, ``final_score``, ``frechet`` (Frechet distance between analytic features of the generated
videos and real synthetic videos of the same prompts; ``null`` with one prompt). Also: ``dynamic_agreement``,
``num_videos``, ``reference`` (the same metrics on the real videos), ``timing``, ``plan`` (k per layer, sparsity),
``generation``, ``model`` and ``per_video`` (scores and detected colours/shapes/motions of each video).

Any pipeline compatible with the synthetic prompts works (a text-to-video pipeline that takes ``num_frames``,
``height``, ``width``; its ``generation_defaults.json`` or legacy ``evdit_demo.json`` gives the clip size, else 29
frames of 128x128). Progress: a bar on a terminal, a line every few seconds with an ETA in a log.
"""

from __future__ import annotations

import json
import os

from . import non_negative_int, positive_int


def eval_model(model: str | None = None, plan: str | None = None, steps: int | None = None,
               guidance_scale: float | None = None, prompts: int = 64, seed: int = 0, batch_size: int | None = None,
               workers: int = 1, device: str | None = None, progress: bool = True, quiet: bool = False,
               verbose: bool = False, split: str = "test") -> dict:
    """The ``evdit eval`` JSON of one pipeline folder (``model``; None: the shipped demo model; ``"tiny"``).

    ``plan`` is ``uniform:K``, a plan JSON file, ``"saved"`` (the folder's ``mask_plan.json``) or None (dense);
    ``steps`` / ``guidance_scale`` override the folder's generation defaults. Prompt ``i`` uses seed ``seed + i``, so
    two calls with the same ``prompts`` and ``seed`` score the same scenes from the same noise. Progress
    (:mod:`diffusers_evdit.progress`): a bar on a terminal, a line every few seconds otherwise, none when
    ``progress`` is false or ``quiet``.
    """
    from ..demo import EVAL_KEYS, evaluate_pipeline, load_pipeline, parse_plan, resolve_model, strip_private
    from ..generation import estimate_work
    from ..progress import Progress, count_transformer_calls, progress_mode

    if prompts < 1:
        raise ValueError(f"prompts (evdit eval --prompts) must be >= 1, got {prompts}")
    path = resolve_model(model)
    pipe, gen = load_pipeline(path, device=device)
    if getattr(pipe, "generation_defaults", None) is not None:  # generation_defaults.json over evdit_demo.json
        pipe.generation_defaults.apply_to(gen)
    if steps is not None:
        gen.num_inference_steps = steps
    if guidance_scale is not None:
        gen.guidance_scale = guidance_scale
    if plan == "saved":
        from ..plan import MaskPlan

        file = os.path.join(path, "mask_plan.json")
        if path == "tiny" or not os.path.isfile(file):
            raise FileNotFoundError(f"--plan saved: {path} has no mask_plan.json")
        mask_plan = MaskPlan.load(file)
    else:
        mask_plan = parse_plan(plan, pipe.transformer) if plan else None
    pipe.set_mask_plan(mask_plan)
    where = str(pipe._execution_device)
    batch = batch_size or (16 if where.startswith("cuda") else 1)
    mode = progress_mode(quiet or not progress)
    if not quiet:
        print(f"evaluating {path} on {prompts} held-out prompts ({where}, batch {batch}, "
              f"{gen.num_inference_steps} steps, plan {plan or 'dense'})", flush=True)
    work = estimate_work(pipe, gen.call_kwargs())
    total = -(-prompts // batch) * work.transformer_calls
    with Progress(total, f"eval: {prompts} videos", unit="transformer call", mode=mode) as bar, \
            count_transformer_calls(pipe, bar):
        result = evaluate_pipeline(pipe, gen, num_prompts=prompts, split=split, seed=seed, batch_size=batch, workers=workers,
                                   progress=mode == "bar" and verbose)
    out = {k: result[k] for k in EVAL_KEYS}
    out.update({k: v for k, v in strip_private(result).items() if k not in out})
    out["model"] = path
    out["plan"]["spec"] = plan or "dense"
    return out


def _cmd_eval(args) -> int:
    import torch

    from ..demo import EVAL_KEYS

    if args.threads:
        torch.set_num_threads(args.threads)
    out = eval_model(args.model, args.plan, args.steps, args.guidance_scale, args.prompts, args.seed,
                     args.batch_size, args.workers, args.device, progress=not args.no_progress, quiet=args.quiet,
                     verbose=args.verbose, split=args.split)
    directory = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(directory, exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    width = max(len(k) for k in EVAL_KEYS)
    ref = out.get("reference", {})
    print(f"{'metric':<{width}}  generated  real")
    for key in EVAL_KEYS:
        v, r = out[key], ref.get(key)
        vs = "n/a" if v is None else f"{v:.4f}"
        rs = "" if r is None else f"{r:.4f}"
        print(f"{key:<{width}}  {vs:>9}  {rs}")
    print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    ev = sub.add_parser("eval", help="analytic metrics (colour, object, motion, ...) on held-out prompts, as JSON")
    ev.add_argument("--model", default=None, help="pipeline folder (default: the shipped demo model; default/mlcd and "
                                                  "default/evdit: its students), or 'tiny'")
    ev.add_argument("--plan", default=None,
                    help="uniform:K, a plan JSON file, or 'saved' (the folder's mask_plan.json); default: dense")
    ev.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    ev.add_argument("--prompts", type=positive_int, required=True,
                    help="prompts of the chosen split (default split: the held-out test prompts)")
    ev.add_argument("--split", choices=("test", "validation"), default="test",
                    help="test prompts for numbers you report (default), validation prompts for choices you make")
    ev.add_argument("--json", required=True, help="output JSON file")
    ev.add_argument("--guidance-scale", type=float, default=None)
    ev.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED + i")
    ev.add_argument("--batch-size", type=positive_int, default=None,
                    help="videos per call (default 16 on CUDA, 1 on CPU)")
    ev.add_argument("--workers", type=positive_int, default=1, help="processes for the metrics")
    ev.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ev.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (default: torch's choice)")
    ev.add_argument("--no-progress", action="store_true", help="no progress (the rest of the output stays)")
    ev.set_defaults(func=_cmd_eval)
