"""Denoising wall-clock of Base against N-step rows without CFG, in interleaved rounds (what a distilled row costs).

    python benchmarks/steps_timing.py --steps 8 4 --threads 2 --rounds 7 --out OUT.json

A few-step student does the same work per step as its base model: one transformer call of the same shapes per step
(no CFG pass) and one scheduler step (the base's multistep solver where the student takes an Euler step: a tiny share
of a step). So the base model's weights sampled at N steps without CFG time an N-step student without the student
(quality is not measured here: those videos are not the student's). Each round
generates one video per row in turn (Base first), so slow spells of a shared machine hit every row alike; each
row's denoising time is the median over the rounds, and its speedup is Base's median over its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def parse_args(argv=None):
    from diffusers_evdit.commands import positive_int

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="base pipeline folder (default: the shipped demo model)")
    p.add_argument("--steps", type=positive_int, nargs="+", default=[8, 4], help="step counts of the rows without CFG")
    p.add_argument("--rounds", type=positive_int, default=7, help="interleaved rounds (one video a row each)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output JSON")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from diffusers_evdit.data import eval_prompts
    from diffusers_evdit.demo import DemoRow, generate_videos, load_pipeline, load_row, resolve_model, warm_up

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    base, gen = load_pipeline(path, device=args.device)
    rows = [DemoRow("Base")] + [DemoRow(f"{n} steps, no CFG", None, n, 1.0) for n in args.steps]
    runs = {r.name: (load_row(base, path, r), r.generation(gen)) for r in rows}
    for pipe, row_gen in runs.values():
        warm_up(pipe, row_gen)
    captions = [c for c, _ in eval_prompts(args.rounds, split="validation")]
    times = {r.name: [] for r in rows}
    for i, caption in enumerate(captions):
        for name, (pipe, row_gen) in runs.items():
            _, timing = generate_videos(pipe, [caption], row_gen, [i], batch_size=1, progress=False)
            times[name].append(timing["denoise_s"])
    base_s = statistics.median(times["Base"])
    result = {
        "benchmark": "steps_timing", "model": os.path.relpath(path), "device": str(base._execution_device),
        "threads": torch.get_num_threads() if args.device == "cpu" else None, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "base_generation": gen.to_dict(),
        "rows": [{"name": name, "steps": runs[name][1].num_inference_steps,
                  "guidance_scale": runs[name][1].guidance_scale, "denoise_seconds": v,
                  "median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                  "wallclock_speedup": base_s / statistics.median(v)} for name, v in times.items()],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'row':<20} {'median s':>9} {'min-max s':>14} {'speedup':>8}")
    for r in result["rows"]:
        spread = f"{r['min_s']:>6.3f}-{r['max_s']:<7.3f}"
        print(f"{r['name']:<20} {r['median_s']:>9.3f} {spread} {r['wallclock_speedup']:>7.2f}x")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
