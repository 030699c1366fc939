"""Score the demo rows (Base, MLCD, Efficient-vDiT) on held-out test prompts x seeds, and time their denoising.

    python benchmarks/eval_demo_rows.py --device cuda --prompts 64 --seeds 3 --out benchmarks/results/demo_rows.json
    python benchmarks/eval_demo_rows.py --mlcd runs/mlcd-s4/pipe --evdit runs/kd/pipe --device cuda --out rows.json
    python benchmarks/eval_demo_rows.py --model tiny --device cpu --prompts 2 --seeds 1 --out /tmp/rows.json  # plumbing

Every row generates the same test prompts (``diffusers_evdit.data.eval_prompts(n, split="test")``) with the same
noise seeds: seed round ``s`` gives prompt ``i`` the seed ``base_seed + 1000 * s + i``. Per row the JSON holds the
final score (and every ``evdit eval`` metric) as ``mean`` / ``std`` over seed rounds with ``n`` rounds and
``n_videos``, the per-round means, and the denoising wall-clock (all transformer calls and scheduler steps of one
video, batch 1, after a warm-up) with the speedup over Base, and the paired per-video difference of the final
score from Base (same prompt and seed: mean, std, n, stderr), the tighter comparison. Validation prompts (``--split validation``) are for
choices only; report test numbers.

By default each row is timed right after it is scored. On a launch-bound GPU host the time of a step drifts over a
run, so ``--timing-rounds R`` times instead after all rows are scored, in R alternating rounds (every row once per
round, in order): ``denoise_seconds`` is then the median over rounds, ``denoise_seconds_rounds`` holds each round's
time, and ``wallclock_speedup_rounds`` each round's Base / row ratio (``wallclock_speedup`` stays the ratio of the
medians).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def parse_args(argv=None):
    from diffusers_evdit.commands import non_negative_int, positive_int

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="base pipeline folder (default: the shipped demo model), or 'tiny'")
    p.add_argument("--mlcd", default=None, help="MLCD row folder (default: MODEL/mlcd)")
    p.add_argument("--evdit", default=None, help="Efficient-vDiT row folder (default: MODEL/evdit)")
    p.add_argument("--rows", default="Base,MLCD,Efficient-vDiT", help="comma-separated rows to run")
    p.add_argument("--extra-row", action="append", default=[], metavar="NAME=FOLDER[:PLAN][@STEPS[cfgG]]",
                   help="another student row (e.g. a uniform plan + KD, to compare with the searched plan at equal "
                        "sparsity); PLAN: saved (default), dense, uniform:K or a plan file; STEPS: denoising steps "
                        "(default 4, e.g. @8 for an S=8 student); cfgG: classifier-free guidance at scale G (default "
                        "none, e.g. @4cfg1.5: two transformer calls a step); repeatable")
    p.add_argument("--base-steps", type=int, nargs="*", default=[], metavar="N",
                   help="more Base rows at N steps (the model's CFG, dense): the few-step curve without distillation")
    p.add_argument("--prompts", type=positive_int, default=64, help="test prompts (default 64)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seed rounds per prompt (default 3)")
    p.add_argument("--base-seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--batch-size", type=int, default=None, help="videos per call when scoring (default 16 CUDA, 1 CPU)")
    p.add_argument("--timing-videos", type=non_negative_int, default=4, help="videos timed one at a time per row (default 4)")
    p.add_argument("--timing-rounds", type=non_negative_int, default=0, metavar="R",
                   help="time the rows after scoring, in R alternating rounds (default 0: each row right after it "
                        "is scored)")
    p.add_argument("--workers", type=int, default=1, help="processes for the metrics")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw final score against denoising speedup (mean +- s.e. of the paired difference)")
    return p.parse_args(argv)


def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def _rows(args):
    from diffusers_evdit.demo import DEFAULT_ROWS, DemoRow

    folders = {"MLCD": args.mlcd, "Efficient-vDiT": args.evdit}
    wanted = [n.strip() for n in args.rows.split(",") if n.strip()]
    known = {r.name: r for r in DEFAULT_ROWS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(known)}")
    rows = []
    for name in wanted:
        r = known[name]
        folder = folders.get(name)
        rows.append(DemoRow(r.name, os.path.abspath(folder) if folder else r.folder, r.steps, r.guidance_scale, r.plan))
    for n in args.base_steps:
        rows.append(DemoRow(f"Base-{n}", None, n, None, None))
    for spec in args.extra_row:
        name, sep, rest = spec.partition("=")
        rest, _, steps = rest.rpartition("@") if "@" in rest else (rest, "", "4")
        steps, _, cfg = steps.partition("cfg")
        folder, _, plan = rest.partition(":")
        if (not sep or not name or not folder or not steps.isdigit() or int(steps) < 1
                or (cfg and not cfg.replace(".", "", 1).isdigit())):
            raise SystemExit(f"--extra-row {spec!r}: use NAME=FOLDER, NAME=FOLDER:PLAN, NAME=FOLDER:PLAN@STEPS or "
                             "NAME=FOLDER:PLAN@STEPScfgG")
        plan = plan or "saved"
        folder = os.path.abspath(folder) if os.path.isdir(folder) else folder  # else: a subfolder of the model
        rows.append(DemoRow(name, folder, int(steps), float(cfg) if cfg else 1.0, None if plan == "dense" else plan))
    return rows


def evaluate_rows(args, on_row=None) -> dict:
    """Every row of ``args``; ``on_row(result)`` gets the result so far after each row (rows finished so far)."""
    if args.workers <= 1:
        return _evaluate_rows(args, 1, on_row)
    from diffusers_evdit.demo import metrics_pool

    _rows(args)  # bad row specs fail before a pool is started
    with metrics_pool(args.workers) as pool:  # one pool for every round, forked before CUDA is initialised
        return _evaluate_rows(args, pool, on_row)


def _evaluate_rows(args, workers, on_row) -> dict:
    import torch

    from diffusers_evdit.data import eval_prompts, render
    from diffusers_evdit.demo import (
        EVAL_KEYS,
        generate_videos,
        load_pipeline,
        load_row,
        plan_summary,
        resolve_model,
        score_videos,
        warm_up,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = _rows(args)  # bad row specs fail before anything is loaded
    path = resolve_model(args.model)
    base, gen = load_pipeline(path, device=args.device)
    where = str(base._execution_device)
    batch = args.batch_size or (16 if where.startswith("cuda") else 1)
    pairs = eval_prompts(args.prompts, split=args.split)
    captions = [c for c, _ in pairs]
    real = [render(s, gen.num_frames, gen.height, gen.width) for _, s in pairs]
    warm_up(base, gen, decode=True)
    out_rows = []
    for row in rows:
        pipe = load_row(base, path, row, seed=args.base_seed)
        row_gen = row.generation(gen)
        print(f"{row.name}: {row_gen.num_inference_steps} steps, guidance {row_gen.guidance_scale}", flush=True)
        warm_up(pipe, row_gen)
        rounds, per_key = [], {k: [] for k in EVAL_KEYS}
        for s in range(args.seeds):
            seeds = [args.base_seed + 1000 * s + i for i in range(len(captions))]
            videos, seen = generate_videos(pipe, captions, row_gen, seeds, batch_size=batch, progress=False)
            layout = seen.get("layout")  # what the transformer saw, for the plan's sparsity
            summary, per_video = score_videos(videos, captions, real=real, workers=workers)
            for k in EVAL_KEYS:
                if summary.get(k) is not None:
                    per_key[k].append(summary[k])
            rounds.append({"seeds": [seeds[0], seeds[-1]], "final_score": summary["final_score"],
                           "per_video_final": [r["final_score"] for r in per_video]})
            print(f"  seed round {s}: final score {summary['final_score']:.4f}", flush=True)
        timing = None
        if args.timing_videos and not args.timing_rounds:  # else timed after every row is scored
            k = min(args.timing_videos, len(captions))
            _, timing = generate_videos(pipe, captions[:k], row_gen, list(range(k)), batch_size=1, progress=False)
        out_rows.append({
            # the steps the scheduler ran (an MLCD scheduler keeps its distilled milestones whatever is asked)
            "name": row.name, "folder": row.folder, "steps": len(pipe.scheduler.timesteps),
            "guidance_scale": row_gen.guidance_scale, "plan": plan_summary(pipe, row_gen, layout),
            "final_score": _stats(per_key["final_score"]),
            "metrics": {k: _stats(v) for k, v in per_key.items() if v},
            "n_videos": len(captions) * args.seeds, "rounds": rounds,
            "denoise_seconds": None if timing is None else timing["denoise_s"],
            "seconds_per_video": None if timing is None else timing["video_s"],
            "decode_seconds": None if timing is None else timing["decode_s"],
        })
        if pipe is base:
            base.set_mask_plan(None)
        del pipe
        if on_row is not None:
            on_row(_result(args, path, where, base, captions, batch, gen, out_rows, t0))
    if args.timing_videos and args.timing_rounds:
        _time_in_rounds(args, base, path, gen, rows, captions, out_rows)
    return _result(args, path, where, base, captions, batch, gen, out_rows, t0)


def _time_in_rounds(args, base, path, gen, rows, captions, out_rows) -> None:
    """Denoising times of every row in ``args.timing_rounds`` alternating rounds, into ``out_rows`` (medians)."""
    from diffusers_evdit.demo import generate_videos, load_row, warm_up

    k = min(args.timing_videos, len(captions))
    times = {r.name: {"denoise_s": [], "video_s": [], "decode_s": []} for r in rows}
    for _ in range(args.timing_rounds):
        for row in rows:
            pipe = load_row(base, path, row, seed=args.base_seed)
            row_gen = row.generation(gen)
            warm_up(pipe, row_gen)
            _, timing = generate_videos(pipe, captions[:k], row_gen, list(range(k)), batch_size=1, progress=False)
            for key, values in times[row.name].items():
                values.append(timing[key])
            if pipe is base:
                base.set_mask_plan(None)
            del pipe
    first = times[rows[0].name]["denoise_s"]
    for row, out in zip(rows, out_rows):
        mine = times[row.name]
        out["denoise_seconds"] = float(np.median(mine["denoise_s"]))
        out["seconds_per_video"] = float(np.median(mine["video_s"]))
        out["decode_seconds"] = None if None in mine["decode_s"] else float(np.median(mine["decode_s"]))
        out["denoise_seconds_rounds"] = mine["denoise_s"]
        out["wallclock_speedup_rounds"] = [a / b for a, b in zip(first, mine["denoise_s"])]


def _result(args, path, where, base, captions, batch, gen, out_rows, t0) -> dict:
    """The JSON of the rows so far: speedups and paired differences against the first row."""
    import torch

    ref = out_rows[0]
    for r in out_rows:
        ok = ref["denoise_seconds"] and r["denoise_seconds"]
        r["wallclock_speedup"] = ref["denoise_seconds"] / r["denoise_seconds"] if ok else None
        r["final_score_minus_first_row"] = r["final_score"]["mean"] - ref["final_score"]["mean"]
        diffs = [a - b for ra, rb in zip(r["rounds"], ref["rounds"])
                 for a, b in zip(ra["per_video_final"], rb["per_video_final"])]
        paired = _stats(diffs)  # same prompt, same seed: the row's video minus the first row's
        paired["stderr"] = paired["std"] / np.sqrt(paired["n"])
        r["paired_difference_vs_first_row"] = paired
    return {
        "model": path, "device": where, "device_name": torch.cuda.get_device_name() if where.startswith("cuda")
        else platform.processor() or platform.machine(), "torch": torch.__version__,
        "dtype": str(base.transformer.dtype).replace("torch.", ""), "split": args.split, "prompts": len(captions),
        "seed_rounds": args.seeds, "base_seed": args.base_seed, "batch_size": batch,
        "timing_videos": args.timing_videos, "timing_rounds": args.timing_rounds, "generation": gen.to_dict(),
        "rows": out_rows,
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "total_s": time.perf_counter() - t0,
    }


def _write(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)


def plot_curve(result: dict, path: str) -> str:
    """Final score against measured denoising speedup over the first row, one labelled point per row, with the
    standard error of each row's paired difference from the first row as its error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in result["rows"]:
        if r["wallclock_speedup"] is None:
            continue
        x, y, err = r["wallclock_speedup"], r["final_score"]["mean"], r["paired_difference_vs_first_row"]["stderr"]
        sparse = r["plan"]["sparsity"] > 0
        ax.errorbar(x, y, yerr=err, fmt="s" if sparse else "o", capsize=3, color="tab:orange" if sparse else "tab:blue")
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"denoising wall-clock speedup over {result['rows'][0]['name']} ({result['device_name']})")
    ax.set_ylabel("final score (new metric)")
    ax.set_title(f"{result['prompts']} {result['split']} prompts x {result['seed_rounds']} seed(s); "
                 "bars: s.e. of the paired difference; squares: sparse plans", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = evaluate_rows(args, on_row=lambda partial: _write(args.out, partial))  # a run cut short keeps its rows
    _write(args.out, result)
    if args.plot:
        print(f"drew {plot_curve(result, args.plot)}")
    print(f"{'row':<16} {'final score':>18} {'denoise s':>10} {'speedup':>8}")
    for r in result["rows"]:
        fs = r["final_score"]
        sp = "n/a" if r["wallclock_speedup"] is None else f"{r['wallclock_speedup']:.2f}x"
        den = "n/a" if r["denoise_seconds"] is None else f"{r['denoise_seconds']:.3f}"
        print(f"{r['name']:<16} {fs['mean']:.4f} +- {fs['std']:.4f} {den:>10} {sp:>8}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
