"""Add the measured denoising wall-clock speedup on the demo model itself to the rows of a quality table.

    python benchmarks/quality_wallclock.py --rounds 5 benchmarks/results/quality.json ...   # on this CPU
    python benchmarks/quality_wallclock.py --device cuda --rounds 5 TABLE.json ...   # on the device machine

A row's denoising time depends on its steps, its classifier-free guidance and its mask plan, not on its weights, so
every row of the table (students whose weights were not kept included) is timed on the shipped demo model with its
own steps, guidance and plan: the demo rows' ``denoise_s`` (every transformer call and scheduler step of one video,
batch 1; ``diffusers_evdit.demo.generate_videos``), in alternating rounds, median per row. Each row gains
``wallclock_speedup_<cpu|gpu>`` (Base / row) and ``denoise_s_<cpu|gpu>``; the table gains ``wallclock_<cpu|gpu>``
(device, torch, threads, rounds, date, the spread). The existing ``speedup`` column stays what it was: a projection
from Wan2.1-1.3B step times (``speedup_source``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tables", nargs="+", help="quality.json files (updated in place)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; each times one video per row")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--prompt", default="a red circle moving right on a blue background")
    return p.parse_args(argv)


def row_key(row: dict) -> tuple:
    """What a row's denoising time depends on: steps, guidance, plan."""
    plan = row.get("plan")
    return int(row["steps"]), float(row.get("guidance_scale") or 1.0), tuple(plan) if plan else None


def time_rows(keys: list[tuple], device: str, rounds: int, prompt: str) -> dict:
    """Median (and spread) of one video's denoising seconds per ``(steps, guidance, plan)`` key."""
    import torch

    from diffusers_evdit import MaskPlan
    from diffusers_evdit.demo import generate_videos, load_pipeline, warm_up

    pipe, gen = load_pipeline(None, device=device)
    layers = len(pipe.transformer.blocks)
    times = {k: [] for k in keys}
    for r in range(rounds + 1):  # round 0 warms every configuration up, untimed
        for key in keys:
            steps, cfg, plan = key
            pipe.set_mask_plan(None if plan is None else MaskPlan(list(plan) + [None] * (layers - len(plan))))
            g = dataclasses.replace(gen, num_inference_steps=steps, guidance_scale=cfg)
            if r == 0:
                warm_up(pipe, g)
            _, timing = generate_videos(pipe, [prompt], g, [r], progress=False)
            if r:
                times[key].append(timing["denoise_s"])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    pipe.set_mask_plan(None)
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in times.items()}


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tables = {}
    for path in args.tables:
        with open(path, encoding="utf-8") as f:
            tables[path] = json.load(f)
    keys = sorted({row_key(r) for t in tables.values() for r in t["rows"]}, key=str)
    print(f"timing {len(keys)} configurations x {args.rounds} rounds on {args.device}", flush=True)
    measured = time_rows(keys, args.device, args.rounds, args.prompt)
    tag = "gpu" if args.device.startswith("cuda") else "cpu"
    name = torch.cuda.get_device_name() if tag == "gpu" else (platform.processor() or platform.machine())
    for path, table in tables.items():
        base = next(r for r in table["rows"] if r["name"] == "Base")
        t_base = measured[row_key(base)]["median"]
        print(f"\n{path}\n{'row':<16} {'denoise s':>10} {'spread':>16} {'measured':>9} {'projected':>9}")
        for r in table["rows"]:
            m = measured[row_key(r)]
            r[f"denoise_s_{tag}"] = m["median"]
            r[f"wallclock_speedup_{tag}"] = t_base / m["median"]
            print(f"{r['name']:<16} {m['median']:>10.4f} {m['min']:>7.4f}-{m['max']:<8.4f} "
                  f"{t_base / m['median']:>8.2f}x {r.get('speedup') or 0:>8.2f}x")
        table[f"wallclock_{tag}"] = {
            "what": "denoising wall-clock of one video (batch 1) on the demo model with each row's steps, guidance and "
                    "plan; Base / row. Medians of alternating rounds.",
            "device": name, "torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": args.rounds,
            "date": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/quality_wallclock.py " + " ".join(sys.argv[1:] if argv is None else argv),
        }
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(table, f, indent=2)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
