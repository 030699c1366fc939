"""Does a plan's output error predict its video score? The whole-plan losses of uniform and searched plans on the
shipped MLCD student, next to their measured final scores.

    python benchmarks/plan_losses.py --plans diffusers_evdit/demo_model/evdit/mask_plan.json \
        benchmarks/results/plans/searched-budget-3of8.json --scores benchmarks/results/demo-rows-h100.json \
        --out benchmarks/results/plan-losses-cpu.json --plot benchmarks/results/plan-losses-cpu.png

For every plan (uniform ``k:F-k`` for every ``k``, and each ``--plans`` file) on validation prompts, never test
prompts:

- ``call_loss``: :func:`diffusers_evdit.search.plan_output_loss`, the MSE of the transformer's output with all the
  plan's layers sparse at once against the dense output, on the dense student's own sampling calls (max and mean
  over the calls); the budget search minimises the sum of single-layer losses as a stand-in for it.
- ``video_loss``: the MSE of the final latents after the student's 4 sampling steps with the plan against those of
  the dense student from the same noise, where errors of one step feed the next.

``--scores`` joins each plan's no-KD final score from an ``eval_demo_rows.py`` JSON (rows with the student's own
weights and that plan), so the table shows whether lower losses mean better videos at equal sparsity.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="base pipeline folder (default: the shipped demo model)")
    p.add_argument("--row", default="mlcd", help="student subfolder whose calls are measured")
    p.add_argument("--plans", nargs="*", default=[], metavar="[NAME=]FILE",
                   help="plan files to measure besides the uniform plans (NAME labels the row; default: the path)")
    p.add_argument("--prompts", type=int, default=8, help="validation prompts (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scores", default=None, help="eval_demo_rows.py JSON whose no-KD student rows give final scores")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw final score against video loss")
    return p.parse_args(argv)


def _scores(path: str | None, row: str) -> dict:
    """``tuple(layers) -> (final score mean, paired s.e. vs the first row)`` of the no-KD rows of ``row``."""
    if path is None:
        return {}
    with open(path) as f:
        rows = json.load(f)["rows"]
    found = {}
    for r in rows:
        layers = r["plan"]["layers"]
        if r.get("folder") == row and layers is not None:
            found[tuple(layers)] = (r["final_score"]["mean"], r["paired_difference_vs_first_row"]["stderr"], r["name"])
    return found


def main(argv=None):
    args = parse_args(argv)
    from diffusers_evdit import MaskPlan, TileLayout, num_plan_layers
    from diffusers_evdit.analysis import record_transformer_inputs
    from diffusers_evdit.data import eval_prompts
    from diffusers_evdit.demo import DemoRow, load_pipeline, load_row, plan_summary, resolve_model
    from diffusers_evdit.masks import format_mask
    from diffusers_evdit.search import plan_output_loss

    began = time.perf_counter()
    path = resolve_model(args.model)
    base, gen = load_pipeline(path, device="cpu")
    row = DemoRow(args.row, args.row, steps=4, guidance_scale=1.0)
    pipe = load_row(base, path, row, seed=args.seed)
    row_gen = row.generation(gen)
    prompts = [caption for caption, _ in eval_prompts(args.prompts, split="validation")]

    def sample(plan):
        pipe.set_mask_plan(plan)
        with torch.no_grad():
            return pipe(prompt=prompts, generator=torch.Generator("cpu").manual_seed(args.seed), output_type="latent",
                        **row_gen.call_kwargs()).frames

    pipe.set_mask_plan(None)
    with record_transformer_inputs(pipe.transformer, device=None) as calls:
        dense_latents = sample(None)
    info = plan_summary(pipe, row_gen)
    layout = TileLayout(info["latent_frames"], info["tokens_per_frame"])
    num_layers = num_plan_layers(pipe.transformer)
    plans = [(f"uniform {format_mask(layout.num_frames, k)}", MaskPlan.uniform(num_layers, k))
             for k in range(layout.num_frames - 2, 0, -1)]
    for spec in args.plans:
        name, _, file = spec.rpartition("=")
        plans.append((name or os.path.relpath(file), MaskPlan.load(file)))
    scores = _scores(args.scores, args.row)
    results = []
    for name, plan in plans:
        sparsity = plan.sparsity(layout)
        video = float(((sample(plan).float() - dense_latents.float()) ** 2).mean())
        score = scores.get(tuple(plan.layers))
        call_losses = plan_output_loss(pipe.transformer, calls, plan, "none")  # one pass, both reductions
        results.append({
            "plan": name, "layers": plan.layers, "sparsity": sparsity,
            "call_loss_max": max(call_losses),
            "call_loss_mean": sum(call_losses) / len(call_losses),
            "video_loss": video,
            "final_score_no_kd": None if score is None else score[0],
            "final_score_paired_stderr": None if score is None else score[1],
            "score_row": None if score is None else score[2],
        })
        r = results[-1]
        print(f"{name:55s} sparsity {sparsity:.4f}  call max {r['call_loss_max']:.5f} mean {r['call_loss_mean']:.5f}"
              f"  video {video:.5f}  score {'-' if score is None else f'{score[0]:.3f}'}", flush=True)
    out = {
        "benchmark": "plan_losses", "model": os.path.relpath(path), "row": args.row, "device": "cpu",
        "device_name": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"), "split": "validation", "prompts": prompts, "seed": args.seed,
        "calls": len(calls), "scores_from": args.scores, "plans": results,
        "command": "plan_losses.py " + " ".join(sys.argv[1:]), "total_s": time.perf_counter() - began,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")
    if args.plot:
        _plot(results, args.plot)


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in results if r["final_score_no_kd"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in scored:
        uniform = r["plan"].startswith("uniform")
        ax.errorbar(r["video_loss"], r["final_score_no_kd"], yerr=r["final_score_paired_stderr"], fmt="o" if uniform
                    else "s", color="tab:blue" if uniform else "tab:red", capsize=3)
        ax.annotate(r["plan"].replace("benchmarks/results/plans/", "").replace("diffusers_evdit/demo_model/", ""),
                    (r["video_loss"], r["final_score_no_kd"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("video loss (final-latent MSE vs dense student, validation prompts)")
    ax.set_ylabel("final score, no KD (test prompts, +- paired s.e.)")
    ax.set_title("Plan error against video score (MLCD student)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
