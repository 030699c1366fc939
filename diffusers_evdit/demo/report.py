"""The Markdown report of ``evdit demo`` and the notes on what its timings mean."""

from __future__ import annotations

import math

from .evaluation import EVAL_KEYS


def fmt(value, spec: str = ".3f") -> str:
    """``format(value, spec)``, or ``"n/a"`` for ``None`` / NaN.

    Example:
        >>> fmt(0.51234), fmt(None), fmt(2.0, ".1f")
        ('0.512', 'n/a', '2.0')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def timing_notes(rows: list[dict]) -> list[str]:
    """Sentences on the timings of ``rows`` (``evdit demo`` report rows): where a row's videos took uneven times (the
    machine's speed changed) and where VAE decoding dominates a row.

    Example:
        >>> row = {"name": "fast", "denoise_seconds": 0.2, "decode_seconds": 0.5, "seconds_per_video": 0.8}
        >>> timing_notes([row])[0][:33]
        'fast: VAE decoding takes 0.50 s o'
    """
    notes = []
    spread = {r["name"]: r.get("timing", {}).get("denoise_s_per_call") or [] for r in rows}
    uneven = {name: (min(v), max(v)) for name, v in spread.items()
              if len(v) > 1 and min(v) > 0 and max(v) > 1.5 * min(v)}
    if uneven:
        notes.append(
            "the machine's speed changed during the run: "
            + ", ".join(f"{name}'s videos took {lo:.2f}-{hi:.2f} s to denoise" for name, (lo, hi) in uneven.items())
            + ". The rows ran prompt by prompt in turn, so each ratio compares rows of the same moments, but with so "
            "few videos the speedups are rough; run again (more --prompts) on a quiet machine for steadier numbers."
        )
    for r in rows:
        dec, den, total = r.get("decode_seconds"), r["denoise_seconds"], r["seconds_per_video"]
        if dec is not None and den and dec > 1.1 * den:  # clearly more, not a tie at the printed precision
            notes.append(
                f"{r['name']}: VAE decoding takes {dec:.2f} s of its {total:.2f} s per video, more than denoising "
                f"({den:.2f} s), so decoding dominates this row: its whole-video speedup (video_speedup) is bounded "
                "by the decoder, not by the transformer."
            )
    return notes


def markdown_report(report: dict) -> str:
    """``report.md`` of an ``evdit demo`` report dict.

    Example:
        >>> rep = {"model": "m", "pipeline_class": "P", "device": "cpu", "dtype": "float32", "prompts": ["p"],
        ...        "generation": {"num_frames": 9, "height": 32, "width": 32}, "total_s": 1.0, "notes": [],
        ...        "missing_rows": [], "reference": {}, "files": {"video": "v.gif"},
        ...        "rows": [{"name": "Base", "steps": 2, "guidance_scale": 1.0, "plan": {"sparsity": 0.0},
        ...                  "denoise_seconds": 1.0, "decode_seconds": 0.1, "seconds_per_video": 1.5,
        ...                  "wallclock_speedup": 1.0, "video_speedup": 1.0, "final_score": 0.5, "metrics": {},
        ...                  "per_video": [{"final_score": 0.5}]}]}
        >>> markdown_report(rep).splitlines()[0]
        '# Efficient-vDiT demo'
    """
    gen, rows = report["generation"], report["rows"]
    lines = [
        "# Efficient-vDiT demo",
        "",
        f"Model: `{report['model']}` ({report['pipeline_class']}) on {report['device']} ({report['dtype']}); "
        f"{len(report['prompts'])} test prompts, {gen['num_frames']} frames {gen['height']}x{gen['width']}. Every "
        f"row ran in this run on this machine, same prompts and seeds. Total {report['total_s']:.1f} s.",
        "",
        "![contact sheet](contact_sheet.png)",
        "",
        f"Side by side (real synthetic | {' | '.join(r['name'] for r in rows)}): "
        f"[{report['files']['video']}]({report['files']['video']})",
        "",
        "## Speed and quality",
        "",
        "| row | steps | guidance | attention sparsity | denoising s / video | decoding s | s / video | "
        "denoising speedup | video speedup | final score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['guidance_scale']} | {r['plan']['sparsity']:.1%} | "
            f"{fmt(r['denoise_seconds'], '.3f')} | {fmt(r['decode_seconds'], '.3f')} | "
            f"{fmt(r['seconds_per_video'], '.3f')} | {fmt(r['wallclock_speedup'], '.2f')}x | "
            f"{fmt(r['video_speedup'], '.2f')}x | {fmt(r['final_score'])} |"
        )
    lines += [
        "",
        "Denoising = every transformer call (two a step with classifier-free guidance) and scheduler step of one "
        "video; s / video adds text encoding and VAE decoding. Speedups are the first row's time over each row's.",
    ]
    for note in report.get("notes", []):
        lines += ["", f"**Note:** {note}"]
    for m in report.get("missing_rows", []):
        lines += ["", f"**Not run:** {m['reason']}"]
    lines += ["", "## Metrics", "", "| metric | real videos | " + " | ".join(r["name"] for r in rows) + " |",
              "| --- | --- |" + " --- |" * len(rows)]
    for key in EVAL_KEYS:
        lines.append(f"| {key} | {fmt(report['reference'].get(key))} | "
                     + " | ".join(fmt(r["metrics"].get(key)) for r in rows) + " |")
    lines += [
        "",
        "Scores are 0-1 (higher is better) except `frechet` (lower is better; only indicative with a few videos). "
        "The final score is prompt alignment x temporal quality (`diffusers_evdit.metrics`): a frozen, reversed, "
        "shuffled, noisy or blank clip scores far below a real one. Real videos are rendered from the prompts' scenes.",
        "",
        "## Prompts (final score per row)",
        "",
        "| # | prompt | " + " | ".join(r["name"] for r in rows) + " |",
        "| --- | --- |" + " --- |" * len(rows),
    ]
    for i, p in enumerate(report["prompts"]):
        lines.append(f"| {i} | {p} | " + " | ".join(f"{r['per_video'][i]['final_score']:.3f}" for r in rows) + " |")
    folders = [(r["name"], r["folder"]) for r in rows if r.get("folder") and r["folder"] != "tiny"]
    if folders:
        lines += ["", "## Generate with a row yourself", "",
                  "Each row's folder loads as a whole pipeline with its own defaults (steps, guidance, size), "
                  "scheduler and saved plan (`EfficientVDiTPipeline.from_pretrained(folder)`; a student folder "
                  "loads on its base pipeline, docs/pipeline.md):", ""]
        lines += [f"* {name}: `evdit generate --model {folder} --prompt \"...\" --out video.mp4`"
                  for name, folder in folders]
    return "\n".join(lines) + "\n"
