"""Scores of a video against its prompt: one score per dimension and the final score.

The final score is the product of two factors, each in [0, 1]:

* ``prompt_alignment``: geometric mean over the prompted objects of ``appearance * motion``, where ``appearance`` is
  the fraction of frames in which the object is found with the prompted colour *and* shape, and ``motion`` is 1 when
  its trajectory is classified as the prompted motion, else 0. A missing object, or one moving the wrong way (a
  frozen or time-reversed clip of a directional prompt), sets it to 0.
* ``temporal_quality``: ``motion_smoothness * subject_consistency`` of the worst prompted object, times
  ``temporal_flickering``: shuffled frames (jerky trajectories), changing objects and noise (no static background)
  pull it down.

A reversed or frozen clip cannot be told from a real one where every prompted object is "standing still" or
"bouncing" (the caption gives no direction); every other degenerate clip scores far below a real one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np

from ..data import CaptionAttributes, SceneSpec, parse_caption
from .config import MetricConfig
from .segmentation import as_frames, foreground_mask, segment_objects
from .tracking import (
    classify_color,
    classify_motion,
    classify_shape,
    dynamic_degree,
    fill_missing,
    motion_smoothness,
    subject_consistency,
    temporal_flickering,
    track_object,
)


@dataclass
class VideoScores:
    """Scores of one video (all numeric fields in [0, 1]; see the module docstring for the final score).

    Object-level values are averaged over the prompted objects; per-frame accuracies (colour, shape) are the fraction
    of frames classified correctly (absent frames count as wrong); motion accuracy is 0/1 per object.
    ``legacy_final_score`` is the weighted mean used before the gated final score (``MetricConfig.weights``), kept
    only to compare with old tables. ``detected_*`` give per-object predictions for debugging (majority over frames;
    ``"none"`` when the object is never found).

    Example:
        >>> from diffusers_evdit.data import render, sample_scene
        >>> from diffusers_evdit.metrics import evaluate_video
        >>> scene = sample_scene(0)
        >>> scores = evaluate_video(render(scene, 13, 64, 64), scene.caption())
        >>> scores.color_accuracy, 0.0 <= scores.final_score <= 1.0
        (1.0, True)
    """

    color_accuracy: float
    shape_accuracy: float
    motion_accuracy: float
    dynamic_degree: float
    dynamic_agreement: float
    motion_smoothness: float
    temporal_flickering: float
    subject_consistency: float
    prompt_alignment: float
    temporal_quality: float
    final_score: float
    legacy_final_score: float
    detected_colors: tuple[str, ...] = ()
    detected_shapes: tuple[str, ...] = ()
    detected_motions: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        """Numeric fields only."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("detected_")}


def _as_attributes(prompt: str | CaptionAttributes | SceneSpec) -> CaptionAttributes:
    if isinstance(prompt, str):
        return parse_caption(prompt)
    if isinstance(prompt, SceneSpec):
        return prompt.attributes()
    if isinstance(prompt, CaptionAttributes):
        return prompt
    raise TypeError(f"prompt must be a caption, CaptionAttributes or SceneSpec, got {type(prompt)}")


def _majority(labels: Sequence[str]) -> str:
    if not labels:
        return "none"
    vals, counts = np.unique(np.asarray(labels), return_counts=True)
    return str(vals[counts.argmax()])


def final_score(prompt_alignment: float, temporal_quality: float) -> float:
    """The final score: ``prompt_alignment * temporal_quality`` (both in [0, 1]).

    Example::

        >>> final_score(1.0, 0.5)
        0.5
    """
    return float(prompt_alignment * temporal_quality)


def evaluate_video(
    video: Any, prompt: str | CaptionAttributes | SceneSpec, config: MetricConfig = MetricConfig()
) -> VideoScores:
    """Score one video ``(T, H, W, 3)`` (uint8 or float in [0, 1]) against its prompt.

    ``prompt`` may be a caption (parsed with :func:`diffusers_evdit.data.parse_caption`), :class:`CaptionAttributes`
    or a :class:`SceneSpec`.

    Example::

        >>> from diffusers_evdit.data import sample_scene, render
        >>> scene = sample_scene(1)
        >>> video = render(scene)
        >>> evaluate_video(video, scene).motion_accuracy
        1.0
        >>> evaluate_video(video[:1].repeat(len(video), 0), scene).final_score  # frozen first frame
        0.0
    """
    frames = as_frames(video)
    attrs = _as_attributes(prompt)
    t = len(frames)
    fg = foreground_mask(frames, threshold=config.fg_threshold, border=config.border)
    masks = segment_objects(frames, [o.color for o in attrs.objects], config, fg=fg)
    col, shp, joint, mot, dyn, agree, smooth, cons = [], [], [], [], [], [], [], []
    det_c, det_s, det_m = [], [], []
    for obj, mask in zip(attrs.objects, masks):
        tr = track_object(frames, mask, config)
        pres = np.flatnonzero(tr.present)
        colors = [classify_color(tr.color[i]) for i in pres]
        shapes = [classify_shape(float(tr.fill[i])) for i in pres]
        col.append(sum(c == obj.color for c in colors) / t)
        shp.append(sum(s == obj.shape for s in shapes) / t)
        joint.append(sum(c == obj.color and s == obj.shape for c, s in zip(colors, shapes)) / t)
        det_c.append(_majority(colors))
        det_s.append(_majority(shapes))
        if len(pres) == 0:
            for lst in (mot, dyn, agree, smooth, cons):
                lst.append(0.0)
            det_m.append("none")
            continue
        traj = fill_missing(tr.centroid)
        motion = classify_motion(traj, config)
        det_m.append(motion)
        mot.append(float(motion == obj.motion))
        d = dynamic_degree(traj, config)
        dyn.append(d)
        agree.append(1.0 - d if obj.motion == "still" else d)
        smooth.append(motion_smoothness(traj, frames.shape[1], frames.shape[2], config))
        cons.append(subject_consistency(tr))
    values = {
        "color_accuracy": float(np.mean(col)),
        "shape_accuracy": float(np.mean(shp)),
        "motion_accuracy": float(np.mean(mot)),
        "dynamic_degree": float(np.mean(dyn)),
        "dynamic_agreement": float(np.mean(agree)),
        "motion_smoothness": float(np.mean(smooth)),
        "temporal_flickering": temporal_flickering(frames, fg),
        "subject_consistency": float(np.mean(cons)),
    }
    per_object = np.asarray(joint) * np.asarray(mot)
    alignment = float(np.prod(per_object) ** (1.0 / len(per_object)))
    worst = min(s * c for s, c in zip(smooth, cons))  # one jerky object is not hidden by a still one
    temporal = worst * values["temporal_flickering"]
    total_w = sum(w for _, w in config.weights)
    legacy = sum(w * values[k] for k, w in config.weights) / total_w
    return VideoScores(
        **values, prompt_alignment=alignment, temporal_quality=float(temporal),
        final_score=final_score(alignment, temporal), legacy_final_score=float(legacy),
        detected_colors=tuple(det_c), detected_shapes=tuple(det_s), detected_motions=tuple(det_m),
    )


def evaluate(
    videos: Sequence[Any], prompts: Sequence[str | CaptionAttributes | SceneSpec],
    config: MetricConfig = MetricConfig(),
) -> dict[str, float]:
    """Mean of every :class:`VideoScores` field over a set of videos, plus ``num_videos``.

    Example::

        >>> from diffusers_evdit.data import eval_prompts, render
        >>> pairs = eval_prompts(2)
        >>> res = evaluate([render(s) for _, s in pairs], [c for c, _ in pairs])
        >>> res["num_videos"], res["color_accuracy"]
        (2.0, 1.0)
    """
    if len(videos) != len(prompts):
        raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts")
    if not videos:
        raise ValueError("no videos to evaluate")
    rows = [evaluate_video(v, p, config).as_dict() for v, p in zip(videos, prompts)]
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["num_videos"] = float(len(rows))
    return out
