"""The result rows of ``reproduce_tables.py`` as tables: their speedup columns, the checks (Ours vs Base, searched vs
uniform plans on Frechet), ``quality.json`` and its Markdown, ``quality.md``; ``--render`` rewrites both."""

from __future__ import annotations

import json
import math
import os


def fmt(v, spec=".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def runs(layers) -> str:
    """``[3, 3, 3, None]`` -> ``"0-2: 3, 3: dense"``."""
    if not layers:
        return "n/a"
    out, start = [], 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or layers[i] != layers[start]:
            span = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            out.append(f"{span}: {'dense' if layers[start] is None else layers[start]}")
            start = i
    return ", ".join(out)


def fx(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def finish_rows(rows: list[dict], base: dict, step_speedup) -> None:
    """Fill the speedup columns of every row (``step_speedup(row) -> (value, source)``)."""
    for row in rows:
        s, source = step_speedup(row)
        row["step_speedup"], row["step_speedup_source"] = s, source
        row["step_ratio"] = base["steps"] / row["steps"]
        row["speedup"] = row["step_ratio"] * s
        cfg = lambda r: 2 if r["guidance_scale"] > 1.0 else 1  # noqa: E731  (forwards per step, CFG batched)
        row["speedup_incl_cfg"] = row["speedup"] * cfg(base) / cfg(row)


def comparisons(rows: list[dict]) -> dict:
    """The issue's checks, as measured: Ours within 0.01 of Base at >= 5x; searched vs uniform plans on Frechet."""
    base = next((r for r in rows if r["name"] == "Base"), None)
    ours = [r for r in rows if r["name"].startswith("Ours_")]
    uniform = [r for r in rows if r["name"].startswith("MLCD_") and r.get("plan")]
    uniform_kd = [r for r in uniform if r["name"].endswith("+KD")] or uniform
    out: dict = {}
    if base is not None:
        ok = [r["name"] for r in ours if r["final_score"] is not None and r["speedup"] is not None
              and r["final_score"] >= base["final_score"] - 0.01 and r["speedup"] >= 5.0]
        out["ours_within_0.01_of_base_at_5x"] = ok
    out["searched_vs_uniform_at_equal_or_higher_sparsity"] = sparsity_pairs(ours, uniform_kd)
    out["searched_vs_uniform_curve_at_matched_sparsity"] = matched_sparsity(ours, uniform_kd)
    out["searched_vs_sparser_uniform"] = sparsity_pairs(ours, uniform_kd, uniform_sparser=True)
    searched = [r for r in rows if r["name"].startswith("Search_")]
    if searched:
        out["searched_vs_uniform_without_kd"] = sparsity_pairs(searched, [u for u in uniform if u not in uniform_kd])
    return out


def matched_sparsity(searched: list[dict], uniform: list[dict]) -> list[dict]:
    """Each searched-plan row against the uniform plans' Frechet at its own sparsity.

    The uniform rows give a curve of Frechet over element sparsity; it is interpolated linearly between the two uniform
    plans around the searched plan's sparsity (rows outside the curve's range, and rows whose plan is a uniform one,
    are left out). This compares plans at equal cost, which the pairwise check cannot when no uniform plan has the
    searched plan's sparsity.
    """
    curve = sorted((u["sparsity"], u["frechet"], u.get("plan")) for u in uniform if u["frechet"] is not None)
    out = []
    for o in searched:
        if o["frechet"] is None or any(o.get("plan") == plan for _, _, plan in curve):
            continue
        for (s0, f0, _), (s1, f1, _) in zip(curve, curve[1:]):
            if s0 <= o["sparsity"] <= s1 and s1 > s0:
                at = f0 + (f1 - f0) * (o["sparsity"] - s0) / (s1 - s0)
                out.append({"ours": o["name"], "ours_sparsity": o["sparsity"], "ours_frechet": o["frechet"],
                            "uniform_frechet_at_sparsity": at, "ours_better": o["frechet"] < at})
                break
    return out


def sparsity_pairs(searched: list[dict], uniform: list[dict], uniform_sparser: bool = False) -> list[dict]:
    """Each searched-plan row against each uniform-plan row it matches or exceeds in sparsity (``uniform_sparser``:
    each uniform-plan row at least as sparse as it), on Frechet."""
    pairs = []
    for u in uniform:
        for o in searched:
            same_plan = o.get("plan") is not None and o.get("plan") == u.get("plan")
            if same_plan or (o.get("training") and o.get("model_dir") == u.get("model_dir")):
                continue  # one plan (or one KD run) behind both rows
            lower, higher = (o, u) if uniform_sparser else (u, o)
            at_least = higher["sparsity"] >= lower["sparsity"] - 1e-9
            if at_least and o["frechet"] is not None and u["frechet"] is not None:
                pairs.append({"ours": o["name"], "uniform": u["name"], "ours_sparsity": o["sparsity"],
                              "uniform_sparsity": u["sparsity"], "ours_frechet": o["frechet"],
                              "uniform_frechet": u["frechet"], "ours_better": o["frechet"] < u["frechet"]})
    return pairs


def write_results(args, rows, ablation, meta, final: bool) -> None:
    data = {"benchmark": "quality", "complete": final, "smoke": args.smoke, **meta,
            "rows": rows, "order_ablation": ablation, "checks": comparisons(rows) if final else None}
    write_tables(args.out_dir, data)


def write_tables(out_dir: str, data: dict) -> None:
    """``out_dir/quality.json`` and the Markdown rendering of it, ``quality.md``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "quality.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "quality.md"), "w", encoding="utf-8") as f:
        f.write(markdown(data))


def _pair_text(p: dict) -> str:
    return (f"{p['ours']} ({p['ours_sparsity']:.1%}, {p['ours_frechet']:.3f}) vs {p['uniform']} "
            f"({p['uniform_sparsity']:.1%}, {p['uniform_frechet']:.3f})")


def _check_lines(title: str, items: list[dict], text, noun: str = "pairs ") -> list[str]:
    """A check's Markdown: how many comparisons favour the searched plan, then each one (``text(item)``)."""
    wins = sum(p["ours_better"] for p in items)
    return [f"* {title}: {wins} of {len(items)} {noun}favour the searched plan:"] + [
        f"  * {text(p)}: {'searched better' if p['ours_better'] else 'uniform better'}" for p in items]


def markdown(data: dict) -> str:
    lines = ["# Efficient-vDiT on the demo model: quality and speed", ""]
    if data["smoke"]:
        lines += ["**Smoke run: a tiny random-weight pipeline and a few training steps per stage. These numbers test "
                  "the script; they say nothing about quality.**", ""]
    if not data["complete"]:
        lines += ["**Incomplete: the run stopped before all rows were built.**", ""]
    s = data["settings"]
    lines += [
        f"Model `{s['model']}` ({s['device']}), {s['eval_prompts']} held-out prompts (same prompts and seeds for every "
        f"row), {s['latent_frames']} latent frames x {s['tokens_per_frame']} tokens. MLCD: {s['num_segments']} "
        f"steps. KD: lambda = {s['task_weight']}, feature weight {s['kd_weight']}, lr {s.get('kd_learning_rate')}"
        + (f", then `{s['kd_extra_args']}` (these win)" if s.get("kd_extra_args") else "") + ". Generated by "
        "`benchmarks/reproduce_tables.py` on " + f"{data['date']} in {data['total_minutes']:.1f} min"
        + (" (this call, with `--resume`: work an earlier call finished was reused)" if s.get("resume") else "")
        + ".", "",
        "`final_score`: analytic metric, 0-1, higher is better; `frechet`: Frechet distance of analytic video "
        "features to real videos of the same prompts, lower is better. `sparsity`: mean attention element sparsity "
        "of the plan on the demo layout. `speedup` = step ratio (Base steps / steps) x per-step speedup of the same "
        "plan on the full-size architecture (a projection); `incl. CFG` also counts Base's two transformer passes "
        "per step. `demo CPU` / `demo GPU`: measured denoising wall-clock of one video on the demo model itself with "
        "the row's steps, guidance and plan, Base / row (`benchmarks/quality_wallclock.py`)"
        + "".join(f"; {tag.upper()}: {w['device']}, {w['threads']} threads, median of {w['rounds']} rounds, "
                  f"{w['date']}" for tag, w in ((t, data.get(f"wallclock_{t}")) for t in ("cpu", "gpu")) if w)
        + ".", "",
        "| name | steps | sparsity | final_score | frechet | per-step speedup (source) | projected speedup | "
        "incl. CFG | demo CPU | demo GPU | train steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def line(r):
        src = r.get("step_speedup_source", "")
        train = r.get("training") or {}
        name = r["name"] + (f" (= {r['same_plan_as']})" if r.get("same_plan_as") else "")
        return (f"| {name} | {r['steps']} | {r['sparsity']:.1%} | {fmt(r['final_score'])} | "
                f"{fmt(r['frechet'], '.3f')} | {fx(r.get('step_speedup'))} ({src or 'pending'}) | "
                f"{fx(r.get('speedup'))} | {fx(r.get('speedup_incl_cfg'))} | {fx(r.get('wallclock_speedup_cpu'))} | "
                f"{fx(r.get('wallclock_speedup_gpu'))} | {train.get('steps', '')} |")

    lines += [line(r) for r in data["rows"]]
    if data["order_ablation"]:
        lines += ["", "## Order ablation (paper Tables 5 / 11)", "",
                  "Same plan for both orders. `MLCD_then_KD`: MLCD, then KD of the sparse student from the dense "
                  "MLCD model (the `Ours` pipeline). `KD_then_MLCD`: KD of the Base model with the plan (diffusion "
                  "loss), then MLCD of that sparse model with itself as the ODE teacher.", "",
                  "| order | steps | sparsity | final_score | frechet | speedup |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['name']} | {r['steps']} | {r['sparsity']:.1%} | {fmt(r['final_score'])} | "
                  f"{fmt(r['frechet'], '.3f')} | {fx(r.get('speedup'))} |" for r in data["order_ablation"]]
    sp = data["speedup_source"]
    lines += ["", "## What is measured and what is derived", ""] if sp else []
    lines += [] if not sp else [
              "* Measured here: every `final_score` / `frechet` (generated videos scored against real ones), the "
              "plans (search on recorded MLCD calls), the training runs.",
              f"* Per-step speedups on `{sp['fullsize_model']}`: {sp['description']}",
              "* Derived: `speedup` = step ratio x per-step speedup (the two are measured separately, not as one "
              "end-to-end time of the demo model, whose 512-token sequences are too short for attention to matter).",
              ""]
    checks = data.get("checks")
    if checks:
        ok = checks.get("ours_within_0.01_of_base_at_5x")
        lines += ["## Checks", "",
                  f"* `Ours` rows within 0.01 of Base's final_score at >= 5x speedup: "
                  f"{', '.join(ok) if ok else 'none'}."]
        for key, what in (("searched_vs_uniform_at_equal_or_higher_sparsity", "after the same KD"),
                          ("searched_vs_uniform_without_kd", "before KD (the search's own choice)")):
            if key not in checks:
                continue
            if checks[key]:
                lines += _check_lines(f"Searched plans vs uniform plans they match or exceed in sparsity, {what}, on "
                                      "Frechet", checks[key], _pair_text)
            else:
                lines.append(f"* {what.capitalize()}: no searched plan is at least as sparse as a uniform plan, no "
                             "Frechet comparison at equal or higher sparsity.")
        if checks.get("searched_vs_sparser_uniform"):
            lines += _check_lines("Searched plans vs uniform plans at least as sparse (the issue's wording), after the "
                                  "same KD, on Frechet", checks["searched_vs_sparser_uniform"], _pair_text)
        if checks.get("searched_vs_uniform_curve_at_matched_sparsity"):
            lines += _check_lines(
                "Searched plans vs the uniform plans' Frechet interpolated at the same sparsity, after the same KD",
                checks["searched_vs_uniform_curve_at_matched_sparsity"],
                lambda p: f"{p['ours']} ({p['ours_sparsity']:.1%}): {p['ours_frechet']:.3f} vs uniform "
                          f"{p['uniform_frechet_at_sparsity']:.3f}", noun="")
        lines.append("")
    plans = [r for r in data["rows"] if r.get("plan")]
    if plans:
        lines += ["## Plans (k per layer; None = dense)", ""]
        lines += [f"* {r['name']}: {r['plan']} (full-size, {len(r.get('fullsize_plan') or [])} layers: "
                  f"{runs(r.get('fullsize_plan'))})" for r in plans]
        lines.append("")
    return "\n".join(lines)



def render(out_dir: str) -> dict:
    """Recompute the checks and rewrite quality.md of a finished run from its quality.json."""
    path = os.path.join(out_dir, "quality.json")
    if not os.path.isfile(path):
        raise SystemExit(f"--render: no {path}")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data["complete"]:
        data["checks"] = comparisons(data["rows"])
    write_tables(out_dir, data)
    print(f"[reproduce] rewrote {out_dir}/quality.md from quality.json")
    return data
