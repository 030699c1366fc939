"""``evdit demo``: the Base, MLCD and Efficient-vDiT rows on test prompts, timed and scored, side by side."""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Sequence

import torch

from ..data import eval_prompts, render
from .evaluation import plan_summary, score_videos
from .generation import decode_latents, generate_videos, merge_timings, warm_up
from .loading import load_pipeline, resolve_model
from .model import GenerationConfig
from .pictures import contact_sheet, labeled_video_grid, write_video
from .report import fmt, markdown_report, timing_notes
from .rows import DEFAULT_ROWS, DemoRow, DemoRowMissingError, load_row


def _ratio(a, b) -> float | None:
    return None if not a or not b else float(a / b)


def run_demo(
    out_dir: str | os.PathLike, model: str | None = None, num_prompts: int = 2, steps: int | None = None,
    plan: str | None = None, seed: int = 0, device: str | None = None, video_format: str = "gif",
    guidance_scale: float | None = None, progress: bool = True, log: Callable[[str], None] = print,
    generation: GenerationConfig | None = None, rows: Sequence[DemoRow] | None = None,
) -> dict:
    """``evdit demo``: generate test prompts with each row (Base, MLCD, Efficient-vDiT), time, score, write.

    Every row runs in this process on this machine, on the same prompts and seeds, prompt by prompt with the rows in
    turn (so that a change of the machine's speed reaches every row alike). Writes into ``out_dir``:
    ``side_by_side.gif`` (or ``.mp4``; rows = prompts, columns = real | one per row), ``contact_sheet.png``,
    ``report.md`` and ``report.json``. ``report["rows"]`` has, per row: ``name``, ``denoise_seconds`` (all
    transformer calls and scheduler steps of one video), ``seconds_per_video`` (with text encoding and VAE
    decoding), ``wallclock_speedup`` and ``video_speedup`` (Base / row), ``final_score`` and the other metrics. A
    student row whose folder is missing is skipped with the reason in ``report["missing_rows"]``.

    Args:
        out_dir: output folder (created).
        model: base pipeline folder; ``None``: the shipped demo model; ``"tiny"``: random weights and random
            stand-in students (plumbing only).
        num_prompts: test prompts (:func:`~diffusers_evdit.data.eval_prompts`).
        steps, guidance_scale: override the Base row's (the model's ``evdit_demo.json``).
        plan: override the Efficient-vDiT row's plan (``"uniform:K"`` or a plan file); default: its searched plan.
        rows: the rows to run (default :data:`DEFAULT_ROWS`); the first is the speedups' reference.
        generation: override the model's :class:`GenerationConfig` entirely.

    Example:
        >>> import tempfile
        >>> rep = run_demo(tempfile.mkdtemp(), model="tiny", num_prompts=1, steps=2, progress=False,
        ...                log=lambda s: None)
        >>> [r["name"] for r in rep["rows"]], rep["rows"][0]["wallclock_speedup"]
        (['Base', 'MLCD', 'Efficient-vDiT'], 1.0)
    """
    t0 = time.perf_counter()
    if video_format not in ("gif", "mp4"):
        raise ValueError(f"video format must be gif or mp4, got {video_format!r}")
    if num_prompts < 1:
        raise ValueError(f"num_prompts (evdit demo --prompts) must be >= 1, got {num_prompts}")
    rows = list(DEFAULT_ROWS if rows is None else rows)
    if not rows:
        raise ValueError("no rows to run")
    if plan is not None:
        rows = [DemoRow(r.name, r.folder, r.steps, r.guidance_scale, plan) if r.plan == "saved" else r for r in rows]
    out_dir = os.fspath(out_dir)
    path = resolve_model(model)  # clear error before anything is loaded
    base_pipe, gen = load_pipeline(path, device=device)
    if generation is not None:
        gen = generation
    if steps is not None:
        gen.num_inference_steps = int(steps)
    if guidance_scale is not None:
        gen.guidance_scale = float(guidance_scale)
    device_name = str(base_pipe._execution_device)
    log(f"model {path if path != 'tiny' else 'tiny (random weights)'}: {type(base_pipe).__name__} on {device_name}, "
        f"{gen.num_frames} frames {gen.height}x{gen.width}")
    pairs = eval_prompts(num_prompts, split="test")
    captions = [c for c, _ in pairs]
    seeds = [seed + i for i in range(len(pairs))]
    real = [render(s, gen.num_frames, gen.height, gen.width) for _, s in pairs]

    warm_up(base_pipe, gen, decode=True)  # one-time set-up (kernels, allocator, VAE) counts for no row
    loaded, missing = [], []
    for row in rows:
        try:
            pipe = load_row(base_pipe, path, row, seed=seed)
        except DemoRowMissingError as err:
            log(f"skipping {row.name}: {err}")
            missing.append({"name": row.name, "reason": str(err)})
            continue
        row_gen = row.generation(gen)
        log(f"{row.name}: {row_gen.num_inference_steps} steps, guidance {row_gen.guidance_scale}, "
            f"attention sparsity {plan_summary(pipe, row_gen)['sparsity']:.1%}")
        warm_up(pipe, row_gen)
        loaded.append((row, pipe, row_gen, pipe.mask_plan))
    if not loaded:
        raise DemoRowMissingError("no demo row could be loaded: " + "; ".join(m["reason"] for m in missing))
    # Prompt by prompt, every row in turn: a change of the machine's speed during the run (a shared CPU's slow
    # phase) then reaches every row alike instead of the rows that ran through it.
    videos = {row.name: [] for row, *_ in loaded}
    timings = {row.name: [] for row, *_ in loaded}
    for caption, video_seed in zip(captions, seeds):
        for row, pipe, row_gen, row_plan in loaded:
            if pipe.mask_plan != row_plan:  # rows on the base pipeline take turns with their plans
                pipe.set_mask_plan(row_plan)
                warm_up(pipe, row_gen)
            # decoded below, a row's videos in one batch (the VAE decodes two videos a call faster per video)
            outputs, timing = generate_videos(pipe, [caption], row_gen, [video_seed], progress=progress, decode=False)
            videos[row.name] += outputs
            timings[row.name].append(timing)
    decode_s = {}
    for row, pipe, *_ in loaded:
        if timings[row.name][0]["latents"]:
            start = time.perf_counter()
            videos[row.name] = decode_latents(pipe, torch.stack(videos[row.name]))
            decode_s[row.name] = (time.perf_counter() - start) / len(captions)
    results = []
    for row, pipe, row_gen, row_plan in loaded:
        if pipe.mask_plan != row_plan:
            pipe.set_mask_plan(row_plan)  # the row's own plan for its summary
        timing = merge_timings(timings[row.name])
        if row.name in decode_s:
            timing["decode_s"] = decode_s[row.name]
            timing["video_s"] += decode_s[row.name]
        info = plan_summary(pipe, row_gen, timing.get("layout"))
        info["spec"] = row.plan or "dense"
        summary, per_video = score_videos(videos[row.name], captions, real=real)
        results.append({
            "name": row.name, "folder": pipe.config.get("_name_or_path") if row.folder else path,
            "steps": row_gen.num_inference_steps, "guidance_scale": row_gen.guidance_scale, "plan": info,
            "denoise_seconds": timing["denoise_s"], "seconds_per_video": timing["video_s"],
            "decode_seconds": timing["decode_s"], "final_score": summary["final_score"], "metrics": summary,
            "timing": timing, "per_video": per_video,
        })
    base_pipe.set_mask_plan(None)
    ref = results[0]
    for r in results:
        r["wallclock_speedup"] = _ratio(ref["denoise_seconds"], r["denoise_seconds"])
        r["video_speedup"] = _ratio(ref["seconds_per_video"], r["seconds_per_video"])
    reference, _ = score_videos(real, captions)
    reference.pop("frechet", None)

    os.makedirs(out_dir, exist_ok=True)
    names = [r["name"] for r in results]
    video_name = f"side_by_side.{video_format}"
    tiles = [v for i in range(len(captions)) for v in [real[i]] + [videos[n][i] for n in names]]
    write_video(labeled_video_grid(tiles, 1 + len(names), ["real"] + names), os.path.join(out_dir, video_name),
                gen.fps)
    sheet = contact_sheet([(c, [("real", real[i])] + [(n, videos[n][i]) for n in names])
                           for i, c in enumerate(captions)])
    sheet.save(os.path.join(out_dir, "contact_sheet.png"))
    report = {
        "model": path,
        "pipeline_class": type(base_pipe).__name__,
        "device": device_name,
        "dtype": str(base_pipe.transformer.dtype).replace("torch.", ""),
        "generation": gen.to_dict(),
        "split": "test",
        "prompts": captions,
        "seeds": seeds,
        "rows": results,
        "missing_rows": missing,
        "reference": reference,
        "files": {"video": video_name, "contact_sheet": "contact_sheet.png", "report_md": "report.md",
                  "report_json": "report.json"},
    }
    report["notes"] = timing_notes(results)
    if len(captions) < 64:
        report["notes"].append(
            f"final scores over {len(captions)} test prompt{'s' if len(captions) > 1 else ''}, one seed each: too few "
            "to rank the rows or to set beside BENCHMARKS.md's quality tables (64 test prompts x 3 seeds); --prompts "
            "64 gives a steadier look.")
    if path == "tiny":
        report["notes"].insert(0, "random-weight tiny pipeline and random stand-in students: checks the plumbing "
                                  "only; the scores and speedups say nothing about the method.")
    report["total_s"] = time.perf_counter() - t0
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown_report(report))
    for r in results:
        log(f"{r['name']}: {r['denoise_seconds']:.2f} s denoising, {r['seconds_per_video']:.2f} s per video, "
            f"{fmt(r['wallclock_speedup'], '.2f')}x denoising, {fmt(r['video_speedup'], '.2f')}x video, "
            f"final score {r['final_score']:.3f}")
    for note in report["notes"]:
        log(f"note: {note}")
    written = os.path.join(out_dir, f"{{{video_name}, contact_sheet.png, report.md, report.json}}")
    log(f"wrote {written} in {report['total_s']:.1f} s")
    return report
