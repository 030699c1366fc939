#!/usr/bin/env python
"""The MLCD result table: distilled students against their teacher, on the same held-out prompts and noise.

For a teacher pipeline and one or more MLCD students (``train_mlcd.py`` output folders) this evaluates, with the
``evdit eval`` metrics on ``--prompts`` held-out synthetic prompts (prompt ``i`` from seed ``seed + i``):

- ``Teacher``: the teacher at its default steps and guidance (its ``evdit_demo.json``);
- ``Teacher_S=<S>``: the teacher at each student's step count, without distillation: the baseline a student must beat;
- ``MLCD_S=<S>``: each student at its own default (S steps, guidance as saved by ``train_mlcd.py``); students of the
  same step count (a sweep) are named ``MLCD_S=<S>[<folder name>]``.

and writes ``--out`` (JSON: rows with ``name``, ``steps``, ``final_score`` on the 0-1 scale, ``frechet``, the
per-attribute accuracies, ``transformer_calls`` per video, and per student the two checks of the MLCD issue) with a
Markdown table beside it. Evaluations already on disk are reused with ``--reuse NAME=FILE`` (an ``evdit eval`` JSON);
the script checks that such a file scored the same prompts, seed, steps and guidance before using it.

    python benchmarks/mlcd_table.py --teacher diffusers_evdit/demo_model --students runs/mlcd-s8 runs/mlcd-s4 \\
        --prompts 64 --out benchmarks/results/mlcd.json \\
        --reuse Teacher=diffusers_evdit/demo_model/eval.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

WITHIN = 0.02  # the MLCD issue's bar: a student's final_score within this of the teacher at its default steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=None, help="teacher pipeline folder (default: the shipped demo model)")
    p.add_argument("--students", nargs="+", required=True, help="MLCD student folders (train_mlcd.py --output_dir)")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts per row")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED + i")
    p.add_argument("--reuse", nargs="*", default=[], metavar="NAME=FILE",
                   help="use an existing evdit eval JSON for a row (checked against the row's settings)")
    p.add_argument("--eval_dir", default=None, help="where each row's evdit eval JSON is written (default: beside --out)")
    p.add_argument("--out", default="benchmarks/results/mlcd.json")
    p.add_argument("--batch_size", type=int, default=None, help="videos per call (default 16 on CUDA, 4 on CPU)")
    p.add_argument("--workers", type=int, default=1, help="processes for the metrics")
    p.add_argument("--device", default=None)
    return p.parse_args(argv)


def generation_settings(folder: str | None) -> tuple[int, float]:
    """(steps, guidance_scale) of a pipeline folder's default call."""
    from diffusers_evdit.demo import GenerationConfig, resolve_model

    path = resolve_model(folder)
    gen = GenerationConfig.tiny() if path == "tiny" else GenerationConfig.load(path)
    return gen.num_inference_steps, gen.guidance_scale


def check_reused(name: str, data: dict, prompts: int, seed: int, steps: int, guidance: float) -> None:
    """Refuse an evaluation that scored other prompts, noise, steps or guidance than the row needs."""
    gen = data.get("generation", {})
    got = (data.get("num_videos"), data.get("seed"), gen.get("num_inference_steps"), gen.get("guidance_scale"))
    want = (prompts, seed, steps, guidance)
    if got[:3] != want[:3] or abs(float(got[3]) - guidance) > 1e-9:
        raise SystemExit(f"--reuse {name}: the file scored (prompts, seed, steps, guidance) = {got}, the row needs "
                         f"{want}; re-run without --reuse for this row.")


def row_from_eval(name: str, model: str, data: dict, steps: int, guidance: float, source: str) -> dict:
    keys = ("final_score", "frechet", "color_accuracy", "object_class_accuracy", "motion_direction_accuracy",
            "motion_smoothness", "subject_consistency")
    row = {"name": name, "model": model, "steps": steps, "guidance_scale": guidance,
           "transformer_calls": steps * (2 if guidance > 1 else 1)}
    row.update({k: data.get(k) for k in keys})
    row["eval_json"] = source
    return row


def markdown(result: dict) -> str:
    lines = [f"# MLCD on {result['teacher']} ({result['prompts']} held-out prompts, seed {result['seed']})", "",
             "| name | steps | guidance | transformer calls | final_score | frechet | colour | object | motion |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['steps']} | {r['guidance_scale']:g} | {r['transformer_calls']} | "
                     f"{r['final_score']:.4f} | {r['frechet']:.4f} | {r['color_accuracy']:.3f} | "
                     f"{r['object_class_accuracy']:.3f} | {r['motion_direction_accuracy']:.3f} |")
    lines += ["", f"Checks (student within {WITHIN} of the teacher's default-step final_score; margin over the "
              "teacher at the same steps):", ""]
    for c in result["checks"]:
        lines.append(f"- {c['student']}: {c['final_score']:.4f} vs Teacher {c['teacher_final_score']:.4f} "
                     f"(gap {c['gap_to_teacher']:+.4f}, within {WITHIN}: {'yes' if c['within'] else 'no'}); "
                     f"vs {c['baseline']} {c['baseline_final_score']:.4f} ({c['margin_over_baseline']:+.4f})")
    lines += ["", f"Measured on {result['device']} ({result['date']}); "
              "`python benchmarks/mlcd_table.py --help` says how to rerun."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    import diffusers_evdit.schedulers  # noqa: F401  (the students' MLCD schedulers load by name)
    from diffusers_evdit.commands.eval import eval_model
    from diffusers_evdit.demo import resolve_model

    reuse = {}
    for item in args.reuse:
        if "=" not in item:
            raise SystemExit(f"--reuse expects NAME=FILE, got {item!r}")
        name, file = item.rsplit("=", 1)  # row names hold "=" (MLCD_S=8), file names seldom do
        reuse[name] = file
    eval_dir = args.eval_dir or os.path.join(os.path.dirname(os.path.abspath(args.out)), "mlcd-evals")
    os.makedirs(eval_dir, exist_ok=True)
    batch = args.batch_size or (16 if torch.cuda.is_available() else 4)

    teacher = resolve_model(args.teacher)
    teacher_steps, teacher_guidance = generation_settings(teacher)
    wanted = [("Teacher", teacher, teacher_steps, teacher_guidance)]
    students = []
    settings = {folder: generation_settings(folder) for folder in args.students}
    per_steps = [s for s, _ in settings.values()]
    for folder, (steps, guidance) in settings.items():
        name = f"MLCD_S={steps}"
        if per_steps.count(steps) > 1:  # several students of one step count (a sweep): tell them apart by folder
            name += f"[{os.path.basename(os.path.normpath(folder))}]"
        wanted.append((f"Teacher_S={steps}", teacher, steps, teacher_guidance))
        wanted.append((name, folder, steps, guidance))
        students.append((name, f"Teacher_S={steps}"))
    unknown = set(reuse) - {w[0] for w in wanted}
    if unknown:
        raise SystemExit(f"--reuse {sorted(unknown)}: no such row; the rows are {[w[0] for w in wanted]}")
    rows, seen = {}, set()
    for name, model, steps, guidance in wanted:
        if name in seen:
            continue
        seen.add(name)
        if name in reuse:
            with open(reuse[name], encoding="utf-8") as f:
                data = json.load(f)
            check_reused(name, data, args.prompts, args.seed, steps, guidance)
            source = reuse[name]
        else:
            data = eval_model(model, None, steps, guidance, args.prompts, args.seed, batch, args.workers,
                              args.device, progress=True)
            source = os.path.join(eval_dir, "".join(c for c in name if c.isalnum() or c in "_-.") + ".json")
            with open(source, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
        rows[name] = row_from_eval(name, model, data, steps, guidance, os.path.relpath(source))
        print(f"{name:<14} steps {steps:>3}  final_score {rows[name]['final_score']:.4f}", flush=True)

    base = rows["Teacher"]["final_score"]
    checks = []
    for student, baseline in students:
        s, b = rows[student]["final_score"], rows[baseline]["final_score"]
        checks.append({"student": student, "final_score": s, "teacher_final_score": base,
                       "gap_to_teacher": s - base, "within": s >= base - WITHIN, "baseline": baseline,
                       "baseline_final_score": b, "margin_over_baseline": s - b})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    result = {"teacher": teacher, "prompts": args.prompts, "seed": args.seed, "device": device,
              "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "rows": list(rows.values()), "checks": checks}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md, "w", encoding="utf-8") as f:
        f.write(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out} and {md}")
    return result


if __name__ == "__main__":
    main()
