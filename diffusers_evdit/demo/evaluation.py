"""The ``evdit eval`` metrics of a pipeline on test prompts: generation, scoring, plan summary."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..data import eval_prompts, render
from ..metrics import evaluate_video, frechet_distance, video_features
from .generation import generate_videos
from .model import GenerationConfig

#: Metric keys of ``evdit eval`` (0-1 scores, higher is better, except ``frechet``) and their source in
#: :class:`diffusers_evdit.metrics.VideoScores` (``None``: computed over the set).
EVAL_KEYS: dict[str, str | None] = {
    "color_accuracy": "color_accuracy",
    "object_class_accuracy": "shape_accuracy",
    "motion_direction_accuracy": "motion_accuracy",
    "dynamic_degree": "dynamic_degree",
    "motion_smoothness": "motion_smoothness",
    "temporal_flickering": "temporal_flickering",
    "subject_consistency": "subject_consistency",
    "final_score": "final_score",
    "frechet": None,
}


def _score_one(args) -> dict:
    video, caption = args
    s = evaluate_video(video, caption)
    row = s.as_dict()
    row["detected"] = {"colors": list(s.detected_colors), "shapes": list(s.detected_shapes),
                       "motions": list(s.detected_motions)}
    return row


def metrics_pool(workers: int):
    """A process pool for :func:`score_videos` (``fork`` where the platform has it): create it before CUDA is
    initialised and pass it as ``workers`` to reuse it across calls; it is a context manager.

    Example:
        >>> with metrics_pool(2) as pool:
        ...     score_videos([render(s, 13, 64, 64) for _, s in eval_prompts(2)],
        ...                  [c for c, _ in eval_prompts(2)], workers=pool)[0]["num_videos"]
        2
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    return ctx.Pool(workers)


def score_videos(
    videos: Sequence[np.ndarray], captions: Sequence[str], real: Sequence[np.ndarray] | None = None,
    workers: Any = 1,
) -> tuple[dict, list[dict]]:
    """The ``evdit eval`` metrics of a video set: ``(summary, per_video_rows)``.

    ``summary`` has every key of :data:`EVAL_KEYS` (``frechet`` between :func:`video_features` of ``videos`` and
    of ``real``, ``None`` without ``real`` or with fewer than two videos), plus ``dynamic_agreement``,
    ``prompt_alignment``, ``temporal_quality`` and ``num_videos``. ``workers > 1`` scores in a new process pool;
    ``workers`` may also be a ``multiprocessing.Pool`` to reuse (create it before CUDA is initialised).

    Example:
        >>> pairs = eval_prompts(2)
        >>> real = [render(s, 13, 64, 64) for _, s in pairs]
        >>> summary, rows = score_videos(real, [c for c, _ in pairs], real=real)
        >>> summary["color_accuracy"], summary["frechet"] < 1e-6
        (1.0, True)
    """
    if len(videos) != len(captions):
        raise ValueError(f"got {len(videos)} videos but {len(captions)} captions")
    if not videos:
        raise ValueError("no videos to score")
    jobs = list(zip(videos, captions))
    if hasattr(workers, "map"):
        rows = workers.map(_score_one, jobs)
    elif workers > 1 and len(jobs) > 1:
        with metrics_pool(min(workers, len(jobs))) as pool:
            rows = pool.map(_score_one, jobs)
    else:
        rows = [_score_one(j) for j in jobs]
    summary: dict[str, Any] = {}
    for key, src in EVAL_KEYS.items():
        if src is not None:
            summary[key] = float(np.mean([r[src] for r in rows]))
    for key in ("dynamic_agreement", "prompt_alignment", "temporal_quality"):  # the final score's factors
        summary[key] = float(np.mean([r[key] for r in rows]))
    summary["frechet"] = None
    if real is not None and len(videos) >= 2:
        if len(real) != len(videos):
            raise ValueError(f"got {len(videos)} videos but {len(real)} real videos")
        summary["frechet"] = frechet_distance(
            np.stack([video_features(v) for v in videos]), np.stack([video_features(v) for v in real])
        )
    summary["num_videos"] = len(videos)
    for row, cap in zip(rows, captions):
        row["prompt"] = cap
    return summary, rows


def _layout_for(pipe, generation: GenerationConfig):
    """The self-attention layout of a Wan-style transformer for ``generation`` (no text in self-attention)."""
    from ..generation import vae_compression
    from ..layout import layout_from_latents

    sf_t, sf_s = vae_compression(pipe)
    latent = ((generation.num_frames - 1) // sf_t + 1, generation.height // sf_s, generation.width // sf_s)
    patch = pipe.transformer.config.patch_size
    return layout_from_latents(latent, tuple(patch) if isinstance(patch, (list, tuple)) else patch)


def plan_summary(pipe, generation: GenerationConfig, layout=None) -> dict:
    """The installed plan of ``pipe.transformer`` on a layout: k per layer, names, element sparsity.

    ``layout`` is a :class:`~diffusers_evdit.TileLayout` or the ``timing["layout"]`` dict of
    :func:`generate_videos` (the layout seen by the transformer); default: derived from ``generation`` for a
    Wan-style transformer.

    Example:
        >>> from diffusers_evdit.demo import load_pipeline
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> plan_summary(pipe, gen)["sparsity"]
        0.0
    """
    from ..layout import TileLayout

    if isinstance(layout, dict):
        layout = TileLayout(**layout)
    if layout is None:
        layout = _layout_for(pipe, generation)
    plan = pipe.mask_plan
    info = {
        "latent_frames": layout.num_frames,
        "tokens_per_frame": layout.tokens_per_frame,
        "layers": None if plan is None else plan.layers,
        "masks": None if plan is None else sorted(set(plan.describe(layout.num_frames))),
        "sparsity": 0.0 if plan is None else float(plan.sparsity(layout)),
    }
    return info


def evaluate_pipeline(
    pipe, generation: GenerationConfig, num_prompts: int = 16, seed: int = 0, batch_size: int = 1,
    workers: Any = 1, progress: bool = True, prompts: Sequence[tuple[str, Any]] | None = None,
    guidance_scale: float | None = None, reference: bool = True, split: str = "test",
) -> dict:
    """The ``evdit eval`` result for ``pipe`` (with whatever plan is installed) on held-out test prompts.

    Generates one video per prompt of ``eval_prompts(num_prompts, split)`` (seed ``seed + i``; ``split="test"`` for
    reported numbers, ``"validation"`` for choices) unless ``prompts`` is given, scores them with
    :func:`score_videos` against real synthetic videos of the same scenes and, with ``reference=True``, scores
    those real videos too (``"reference"``: near-perfect by construction, the ceiling of each metric).

    Returns the :data:`EVAL_KEYS` metrics at the top level plus ``dynamic_agreement``, ``num_videos``,
    ``reference``, ``timing``, ``plan``, ``generation`` and ``per_video``.

    Example:
        >>> from diffusers_evdit.demo import load_pipeline
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> res = evaluate_pipeline(pipe, gen, num_prompts=2, progress=False)
        >>> set(EVAL_KEYS) <= set(res)
        True
    """
    pairs = list(prompts) if prompts is not None else eval_prompts(num_prompts, split=split)
    captions = [c for c, _ in pairs]
    seeds = [seed + i for i in range(len(pairs))]
    videos, timing = generate_videos(pipe, captions, generation, seeds, batch_size, progress, guidance_scale)
    real = [render(s, generation.num_frames, generation.height, generation.width) for _, s in pairs]
    summary, rows = score_videos(videos, captions, real=real, workers=workers)
    result: dict[str, Any] = dict(summary)
    if reference:
        ref, _ = score_videos(real, captions, real=None, workers=workers)
        ref.pop("frechet", None)
        result["reference"] = ref
    gen = generation.to_dict()
    if guidance_scale is not None:
        gen["guidance_scale"] = guidance_scale
    result.update(timing=timing, plan=plan_summary(pipe, generation, timing.get("layout")), generation=gen,
                  seed=seed, per_video=rows)
    result["_videos"] = videos  # removed before JSON; kept for callers that write samples
    result["_real"] = real
    return result


def strip_private(result: dict) -> dict:
    """``result`` without the in-memory ``_videos`` / ``_real`` entries (JSON-ready).

    Example:
        >>> strip_private({"final_score": 0.5, "_videos": []})
        {'final_score': 0.5}
    """
    return {k: v for k, v in result.items() if not k.startswith("_")}


