"""Analytic, VBench-like video metrics with known ground truth (no model weights).

The synthetic clips of :mod:`diffusers_evdit.data` contain one or two flat
coloured objects on a solid background, and their captions state each object's
colour, shape and motion. This module measures, from pixels alone, how well a
generated clip follows its caption and how temporally clean it is:

============================  ===============================================
dimension                     what it measures (all in [0, 1], higher = better)
============================  ===============================================
``color_accuracy``            object's median colour is nearest to the prompted palette colour
``shape_accuracy``            bounding-box fill ratio is nearest to the prompted shape's
``motion_accuracy``           centroid trajectory is classified as the prompted motion
``dynamic_degree``            how much objects move (not "better"; reported as in VBench)
``dynamic_agreement``         dynamic degree for moving prompts, 1 - it for "still" ones
``motion_smoothness``         1 - normalised second difference of the centroid trajectory
``temporal_flickering``       1 - mean absolute frame difference of the background
``subject_consistency``       similarity of the object's normalised mask across frames
``final_score``               weighted sum of the above (:data:`DEFAULT_WEIGHTS`)
============================  ===============================================

Pipeline (per video, frames ``(T, H, W, 3)`` in [0, 1]):

1. **Background** ``b_t``: per-frame median colour of a ``border``-pixel ring.
2. **Foreground** ``F_t = max_c |I_t(c) - b_t(c)| > fg_threshold`` (max-channel
   difference; default 0.2 = 51/255).
3. **Objects**: per frame, the foreground's 4-connected components are
   ranked by how many of their pixels survive a 3x3 morphological opening
   (speckle noise does not); the K largest (K = number of prompted objects)
   are matched to the prompted objects by the assignment minimising the
   summed RGB distance between component median colour and prompted colour
   (so a wrongly coloured object is still found, and scored as wrongly
   coloured). If fewer than K components exist (merged objects) their union
   is split by nearest prompted colour. Frames with fewer than ``min_area``
   object pixels count as "object absent".
4. Per-object, per-frame statistics: centroid (normalised by width/height),
   bounding-box fill ratio, median colour, bounding-box crop of the mask.

Example::

    >>> from diffusers_evdit.data import sample_scene, render
    >>> from diffusers_evdit.metrics import evaluate_video
    >>> scene = sample_scene(0)
    >>> scores = evaluate_video(render(scene), scene.caption())
    >>> scores.color_accuracy, scores.final_score > 0.9
    (1.0, True)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .data import COLORS, SHAPES, CaptionAttributes, SceneSpec, parse_caption

__all__ = [
    "DEFAULT_WEIGHTS",
    "SHAPE_FILL_RATIOS",
    "VIDEO_FEATURE_DIM",
    "MetricConfig",
    "ObjectTrack",
    "VideoScores",
    "as_frames",
    "estimate_background",
    "foreground_mask",
    "segment_objects",
    "track_object",
    "classify_shape",
    "classify_color",
    "classify_motion",
    "evaluate_video",
    "evaluate",
    "frechet_distance",
    "frechet_distance_gaussians",
    "video_features",
    "frechet_video_feature_distance",
    "psnr",
    "ssim",
]

#: Expected bounding-box fill ratio (area / bbox area) of each shape: a disc
#: fills pi/4 of its square, a square all of it, a triangle (apex up, base =
#: bbox width) half of it. Shapes are classified by the nearest ratio.
SHAPE_FILL_RATIOS: Mapping[str, float] = MappingProxyType(
    {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
)

#: Weights of the final score (they sum to 1): the three prompt-following
#: accuracies dominate (0.6), temporal quality dimensions share 0.4.
DEFAULT_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("color_accuracy", 0.2),
    ("shape_accuracy", 0.2),
    ("motion_accuracy", 0.2),
    ("subject_consistency", 0.1),
    ("motion_smoothness", 0.1),
    ("temporal_flickering", 0.1),
    ("dynamic_agreement", 0.1),
)

_PALETTE_NAMES: tuple[str, ...] = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32) / 255.0


@dataclass(frozen=True)
class MetricConfig:
    """Thresholds of the metrics (all lengths normalised by the frame size).

    Attributes:
        fg_threshold: max-channel difference from the background (in [0, 1])
            above which a pixel is foreground.
        border: width in pixels of the ring used to estimate the background.
        min_area: an object with fewer pixels in a frame is "absent".
        clean: rank components by their pixels surviving a 3x3 opening (noise robust).
        still_threshold: trajectory range (fraction of the frame) below which
            an object is "still".
        bounce_threshold: minimum back-travel ``range - |net displacement|``
            along the main axis for "bouncing".
        ref_step: per-frame centroid displacement that counts as fully dynamic.
        smooth_eps: speed floor (fraction of ``min(H, W)`` per frame) in the
            smoothness ratio; suppresses jitter of near-static objects.
        smooth_tolerance_px: second-difference magnitude (pixels) tolerated
            as rasterisation jitter in motion smoothness.
        crop_size: side of the resampled mask crop for subject consistency.
        weights: ``(name, weight)`` pairs of the final score.

    Example:
        >>> from diffusers_evdit.data import render, sample_scene
        >>> scene = sample_scene(0)
        >>> scores = evaluate_video(render(scene, 13, 64, 64), scene.caption(), config=MetricConfig(min_area=4))
        >>> scores.color_accuracy
        1.0
    """

    fg_threshold: float = 0.2
    border: int = 2
    min_area: int = 6
    clean: bool = True
    still_threshold: float = 0.06
    bounce_threshold: float = 0.12
    ref_step: float = 0.005
    smooth_eps: float = 0.01
    smooth_tolerance_px: float = 1.0
    crop_size: int = 16
    weights: tuple[tuple[str, float], ...] = DEFAULT_WEIGHTS


# ---------------------------------------------------------------------------
# Low-level image helpers
# ---------------------------------------------------------------------------


def as_frames(video: Any) -> np.ndarray:
    """Convert a video to float32 frames ``(T, H, W, 3)`` in [0, 1].

    Accepts numpy arrays or torch tensors of shape ``(T, H, W, 3)``, either
    ``uint8`` (divided by 255) or float (clipped to [0, 1]). For a diffusers
    tensor ``(3, T, H, W)`` in [-1, 1] use
    :func:`diffusers_evdit.data.tensor_to_frames` first.

    Example::

        >>> as_frames(np.zeros((2, 4, 4, 3), np.uint8)).dtype
        dtype('float32')
    """
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        video = video.numpy() if video.dtype == torch.uint8 else video.float().numpy()
    arr = np.asarray(video)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected a video of shape (T, H, W, 3), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def estimate_background(frames: np.ndarray, border: int = 2) -> np.ndarray:
    """Per-frame background colour ``(T, 3)``: median of a ``border``-pixel frame ring.

    Robust as long as objects cover less than half of the ring.

    Example:
        >>> from diffusers_evdit.data import render, sample_scene
        >>> frames = as_frames(render(sample_scene(0), 5, 32, 32))
        >>> estimate_background(frames).shape
        (5, 3)
    """
    b = max(1, int(border))
    ring = np.concatenate(
        [
            frames[:, :b].reshape(frames.shape[0], -1, 3),
            frames[:, -b:].reshape(frames.shape[0], -1, 3),
            frames[:, b:-b, :b].reshape(frames.shape[0], -1, 3),
            frames[:, b:-b, -b:].reshape(frames.shape[0], -1, 3),
        ],
        axis=1,
    )
    return np.median(ring, axis=1)


def foreground_mask(frames: np.ndarray, background: np.ndarray | None = None, threshold: float = 0.2,
                    border: int = 2) -> np.ndarray:
    """Boolean foreground ``(T, H, W)``: ``max_c |I(c) - b_t(c)| > threshold``.

    Example::

        >>> f = np.zeros((1, 8, 8, 3), np.float32); f[0, 3:5, 3:5] = 1.0
        >>> int(foreground_mask(f).sum())
        4
    """
    if background is None:
        background = estimate_background(frames, border)
    return np.abs(frames - background[:, None, None, :]).max(axis=-1) > threshold


def _shift(mask: np.ndarray, dy: int, dx: int, fill: bool) -> np.ndarray:
    out = np.full_like(mask, fill)
    h, w = mask.shape[-2:]
    ys_dst = slice(max(dy, 0), h + min(dy, 0))
    ys_src = slice(max(-dy, 0), h + min(-dy, 0))
    xs_dst = slice(max(dx, 0), w + min(dx, 0))
    xs_src = slice(max(-dx, 0), w + min(-dx, 0))
    out[..., ys_dst, xs_dst] = mask[..., ys_src, xs_src]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                out &= _shift(mask, dy, dx, True)
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                out |= _shift(mask, dy, dx, False)
    return out


def _component_labels(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of a ``(T, H, W)`` mask (background = ``mask.size``).

    Batched min-label propagation with pointer jumping: labels are flat pixel
    indices, so ``labels.flat[label]`` jumps to the label's own label. Each
    component ends up labelled by its smallest flat index.
    """
    t, h, w = mask.shape
    n = t * h * w
    labels = np.where(mask, np.arange(n, dtype=np.int64).reshape(t, h, w), n)
    ext = np.empty(n + 1, dtype=np.int64)
    ext[n] = n
    while True:
        new = labels.copy()
        np.minimum(new[:, 1:], labels[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], labels[:, 1:], out=new[:, :-1])
        np.minimum(new[:, :, 1:], labels[:, :, :-1], out=new[:, :, 1:])
        np.minimum(new[:, :, :-1], labels[:, :, 1:], out=new[:, :, :-1])
        new[~mask] = n
        for _ in range(4):  # pointer jumping
            ext[:n] = new.reshape(-1)
            new = ext[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


def _match_components(frame: np.ndarray, comps: list[np.ndarray], pal: np.ndarray) -> list[np.ndarray | None]:
    """Assign connected components of one frame to the K prompted colours ``pal``.

    With at least K components, the K largest are matched one-to-one to the
    prompted objects by the permutation minimising the summed RGB distance
    between each component's median colour and its object's colour. With
    fewer components (objects merged or missing), the union of the components
    is split by nearest prompted colour.
    """
    k = len(pal)
    if not comps:
        return [None] * k
    if len(comps) < k:
        union = np.logical_or.reduce(comps)
        nearest = ((frame[..., None, :] - pal) ** 2).sum(-1).argmin(-1)
        return [union & (nearest == j) for j in range(k)]
    meds = np.stack([np.median(frame[c], axis=0) for c in comps[:k]])
    cost = np.linalg.norm(meds[:, None, :] - pal[None, :, :], axis=-1)  # (component, object)
    best = min(itertools.permutations(range(k)), key=lambda perm: sum(cost[perm[j], j] for j in range(k)))
    return [comps[best[j]] for j in range(k)]


def segment_objects(
    frames: np.ndarray, colors: Sequence[str], config: MetricConfig = MetricConfig(), fg: np.ndarray | None = None
) -> np.ndarray:
    """Per-object masks ``(K, T, H, W)`` for K prompted objects of the given colours.

    Per frame: foreground 4-connected components are ranked by how many
    pixels of the foreground's 3x3 morphological opening they hold (speckle
    noise has none; the kept components keep thin parts such as a triangle's
    apex); with ``config.clean=False`` by their plain size. The K largest are
    matched to the prompted objects by colour (see module docstring); an
    object without a component in a frame gets an empty mask there. ``fg``
    optionally passes a precomputed :func:`foreground_mask`.

    Example::

        >>> from diffusers_evdit.data import sample_scene, render
        >>> scene = sample_scene(2, num_objects=2)
        >>> frames = as_frames(render(scene))
        >>> segment_objects(frames, [o.color for o in scene.objects]).shape
        (2, 29, 128, 128)
    """
    if fg is None:
        fg = foreground_mask(frames, threshold=config.fg_threshold, border=config.border)
    k = len(colors)
    out = np.zeros((k,) + fg.shape, dtype=bool)
    if k == 0 or not fg.any():
        return out
    core = _dilate(_erode(fg)) & fg if config.clean else fg
    labels = _component_labels(fg)
    pal = np.array([COLORS[c] for c in colors], dtype=np.float32) / 255.0
    for i in range(fg.shape[0]):
        score = core[i] if core[i].any() else fg[i]
        uniq, counts = np.unique(labels[i][score], return_counts=True)
        top = uniq[np.argsort(-counts, kind="stable")][:k]
        comps = [labels[i] == u for u in top]
        for j, m in enumerate(_match_components(frames[i], comps, pal) if k > 1 else comps[:1]):
            if m is not None:
                out[j, i] = m
    return out


# ---------------------------------------------------------------------------
# Per-object tracking and classification
# ---------------------------------------------------------------------------


@dataclass
class ObjectTrack:
    """Per-frame statistics of one segmented object (T frames).

    Attributes:
        present: ``(T,)`` bool, object has >= ``min_area`` pixels.
        area: ``(T,)`` pixel counts.
        centroid: ``(T, 2)`` centroid (x / width, y / height), NaN when absent.
        fill: ``(T,)`` area / bounding-box area, NaN when absent.
        color: ``(T, 3)`` median RGB in [0, 1], NaN when absent.
        crops: ``(T, S, S)`` bounding-box crop of the mask resampled to S x S.

    Example:
        >>> from diffusers_evdit.data import render, sample_scene
        >>> scene = sample_scene(0)
        >>> frames = as_frames(render(scene, 13, 64, 64))
        >>> masks = segment_objects(frames, [obj.color for obj in scene.objects])
        >>> track = track_object(frames, masks[0])
        >>> bool(track.present.all()), track.centroid.shape
        (True, (13, 2))
    """

    present: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    fill: np.ndarray
    color: np.ndarray
    crops: np.ndarray


def track_object(frames: np.ndarray, mask: np.ndarray, config: MetricConfig = MetricConfig()) -> ObjectTrack:
    """Compute an :class:`ObjectTrack` from frames ``(T, H, W, 3)`` and a mask ``(T, H, W)``.

    Example:
        >>> from diffusers_evdit.data import render, sample_scene
        >>> scene = sample_scene(0)
        >>> frames = as_frames(render(scene, 9, 64, 64))
        >>> track = track_object(frames, segment_objects(frames, [scene.objects[0].color])[0])
        >>> classify_color(np.nanmedian(track.color, axis=0)) == scene.objects[0].color
        True
    """
    t, h, w = mask.shape
    s = config.crop_size
    present = np.zeros(t, bool)
    area = mask.reshape(t, -1).sum(1)
    centroid = np.full((t, 2), np.nan)
    fill = np.full(t, np.nan)
    color = np.full((t, 3), np.nan)
    crops = np.zeros((t, s, s), np.float32)
    for i in range(t):
        if area[i] < config.min_area:
            continue
        ys, xs = np.nonzero(mask[i])
        present[i] = True
        centroid[i] = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        fill[i] = area[i] / float((y1 - y0) * (x1 - x0))
        color[i] = np.median(frames[i][mask[i]], axis=0)
        crop = Image.fromarray(mask[i, y0:y1, x0:x1].astype(np.float32))
        crops[i] = np.asarray(crop.resize((s, s), Image.Resampling.BOX), dtype=np.float32)
    return ObjectTrack(present, area, centroid, fill, color, crops)


def classify_shape(fill_ratio: float) -> str:
    """Shape whose expected fill ratio (:data:`SHAPE_FILL_RATIOS`) is nearest.

    Example::

        >>> classify_shape(0.78), classify_shape(0.98), classify_shape(0.52)
        ('circle', 'square', 'triangle')
    """
    return min(SHAPES, key=lambda k: abs(SHAPE_FILL_RATIOS[k] - fill_ratio))


def classify_color(rgb: Sequence[float]) -> str:
    """Palette colour (:data:`diffusers_evdit.data.COLORS`) nearest in RGB to ``rgb`` in [0, 1].

    Example::

        >>> classify_color((0.9, 0.1, 0.1))
        'red'
    """
    d = ((_PALETTE - np.asarray(rgb, dtype=np.float32)) ** 2).sum(1)
    return _PALETTE_NAMES[int(d.argmin())]


def _fill_missing(traj: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaN rows of a ``(T, 2)`` trajectory (edges held constant)."""
    ok = ~np.isnan(traj[:, 0])
    out = traj.copy()
    idx = np.arange(len(traj))
    for c in range(2):
        out[:, c] = np.interp(idx, idx[ok], traj[ok, c])
    return out


def _smooth(traj: np.ndarray) -> np.ndarray:
    """Moving average of width 3 (edges padded by replication)."""
    if len(traj) < 3:
        return traj
    p = np.concatenate([traj[:1], traj, traj[-1:]])
    return (p[:-2] + p[1:-1] + p[2:]) / 3.0


def classify_motion(traj: np.ndarray, config: MetricConfig = MetricConfig()) -> str:
    """Classify a normalised centroid trajectory ``(T, 2)`` into a motion label.

    On the 3-frame moving average: if the larger per-axis range
    ``R = max - min`` is below ``still_threshold`` the object is ``"still"``.
    Otherwise on the axis of larger range, if the back-travel
    ``R - |p_end - p_start|`` exceeds ``bounce_threshold`` it is
    ``"bouncing"`` (a reversal); else the sign of the net displacement gives
    ``left``/``right`` (x) or ``up``/``down`` (y; image y grows downwards).

    Example::

        >>> classify_motion(np.stack([np.linspace(0.8, 0.3, 29), np.full(29, 0.5)], 1))
        'left'
    """
    p = _smooth(np.asarray(traj, dtype=np.float64))
    rng = p.max(0) - p.min(0)
    axis = int(rng.argmax())
    if rng[axis] < config.still_threshold:
        return "still"
    net = p[-1, axis] - p[0, axis]
    if rng[axis] - abs(net) > config.bounce_threshold:
        return "bouncing"
    if axis == 0:
        return "right" if net > 0 else "left"
    return "down" if net > 0 else "up"


def _dynamic_degree(traj: np.ndarray, config: MetricConfig) -> float:
    """``min(1, mean_t ||c_{t+1} - c_t|| / ref_step)`` on the smoothed trajectory."""
    if len(traj) < 2:
        return 0.0
    steps = np.linalg.norm(np.diff(_smooth(traj), axis=0), axis=1)
    return float(min(1.0, steps.mean() / config.ref_step))


def _motion_smoothness(traj: np.ndarray, height: int, width: int, config: MetricConfig) -> float:
    """``1 - mean_t min(1, max(0, ||a_t|| - tol) / (||v_t|| + ||v_{t+1}|| + eps))``.

    Computed in pixels: ``v_t = c_{t+1} - c_t`` and ``a_t = v_{t+1} - v_t``
    (second difference) of the raw centroid trajectory; ``tol`` =
    ``config.smooth_tolerance_px`` absorbs the rasterisation jitter of hard
    edges, ``eps = config.smooth_eps * min(H, W)`` is a speed floor. Uniform
    motion gives 1, a reflection at a wall costs at most one or two terms,
    randomly ordered frames give large accelerations (score ~0.3).
    """
    if len(traj) < 3:
        return 1.0
    px = traj * np.array([width, height], dtype=np.float64)
    v = np.diff(px, axis=0)
    a = np.diff(v, axis=0)
    sp = np.linalg.norm(v, axis=1)
    acc = np.maximum(np.linalg.norm(a, axis=1) - config.smooth_tolerance_px, 0.0)
    ratio = acc / (sp[:-1] + sp[1:] + config.smooth_eps * min(height, width))
    return float(1.0 - np.minimum(1.0, ratio).mean())


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    den = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / den) if den > 0 else 0.0


def _subject_consistency(track: ObjectTrack) -> float:
    """VBench-style ``0.5 * (mean sim to first frame + mean sim to previous frame)``.

    ``sim(i, j) = softIoU(crop_i, crop_j) * sqrt(min(area) / max(area))`` where
    crops are the bounding-box mask crops resampled to a fixed size (so the
    comparison is translation invariant) and ``softIoU = sum(min) / sum(max)``;
    the area factor penalises size changes. Absent frames score 0; the
    reference is the first frame where the object is present.
    """
    idx = np.flatnonzero(track.present)
    t = len(track.present)
    if len(idx) == 0:
        return 0.0
    if t < 2:
        return 1.0

    def sim(i: int, j: int) -> float:
        if not (track.present[i] and track.present[j]):
            return 0.0
        ai, aj = float(track.area[i]), float(track.area[j])
        return _soft_iou(track.crops[i], track.crops[j]) * math.sqrt(min(ai, aj) / max(ai, aj))

    ref = int(idx[0])
    first = np.mean([sim(i, ref) for i in range(t) if i != ref])
    prev = np.mean([sim(i, i - 1) for i in range(1, t)])
    return float(0.5 * (first + prev))


def _temporal_flickering(frames: np.ndarray, fg: np.ndarray) -> float:
    """``1 - mean |I_{t+1} - I_t|`` over background pixels of both frames (VBench style).

    The background region excludes the (1-pixel dilated) foreground of both
    frames, so moving objects do not count as flicker.
    """
    if len(frames) < 2:
        return 1.0
    fg = _dilate(fg)
    static = ~(fg[1:] | fg[:-1])
    if not static.any():
        return 0.0
    diff = np.abs(frames[1:] - frames[:-1]).mean(-1)
    return float(1.0 - diff[static].mean())


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


@dataclass
class VideoScores:
    """Scores of one video (all numeric fields in [0, 1]).

    Object-level values are averaged over the prompted objects; per-frame
    accuracies (colour, shape) are the fraction of frames classified correctly
    (absent frames count as wrong); motion accuracy is 0/1 per object.
    ``detected_*`` give per-object predictions for debugging (majority over
    frames; ``"none"`` when the object is never found).

    Example:
        >>> from diffusers_evdit.data import render, sample_scene
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
    final_score: float
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


def evaluate_video(
    video: Any, prompt: str | CaptionAttributes | SceneSpec, config: MetricConfig = MetricConfig()
) -> VideoScores:
    """Score one video ``(T, H, W, 3)`` (uint8 or float in [0, 1]) against its prompt.

    ``prompt`` may be a caption (parsed with
    :func:`diffusers_evdit.data.parse_caption`), :class:`CaptionAttributes`
    or a :class:`SceneSpec`. The final score is
    ``sum_k w_k * score_k`` with ``config.weights`` (:data:`DEFAULT_WEIGHTS`).

    Example::

        >>> from diffusers_evdit.data import sample_scene, render
        >>> scene = sample_scene(1)
        >>> evaluate_video(render(scene), scene).motion_accuracy
        1.0
    """
    frames = as_frames(video)
    attrs = _as_attributes(prompt)
    fg = foreground_mask(frames, threshold=config.fg_threshold, border=config.border)
    masks = segment_objects(frames, [o.color for o in attrs.objects], config, fg=fg)
    col, shp, mot, dyn, agree, smooth, cons = [], [], [], [], [], [], []
    det_c, det_s, det_m = [], [], []
    for obj, mask in zip(attrs.objects, masks):
        tr = track_object(frames, mask, config)
        pres = np.flatnonzero(tr.present)
        colors = [classify_color(tr.color[i]) for i in pres]
        shapes = [classify_shape(float(tr.fill[i])) for i in pres]
        col.append(sum(c == obj.color for c in colors) / len(frames))
        shp.append(sum(s == obj.shape for s in shapes) / len(frames))
        det_c.append(_majority(colors))
        det_s.append(_majority(shapes))
        if len(pres) == 0:
            for lst in (mot, dyn, agree, smooth, cons):
                lst.append(0.0)
            det_m.append("none")
            continue
        traj = _fill_missing(tr.centroid)
        motion = classify_motion(traj, config)
        det_m.append(motion)
        mot.append(float(motion == obj.motion))
        d = _dynamic_degree(traj, config)
        dyn.append(d)
        agree.append(1.0 - d if obj.motion == "still" else d)
        smooth.append(_motion_smoothness(traj, frames.shape[1], frames.shape[2], config))
        cons.append(_subject_consistency(tr))
    values = {
        "color_accuracy": float(np.mean(col)),
        "shape_accuracy": float(np.mean(shp)),
        "motion_accuracy": float(np.mean(mot)),
        "dynamic_degree": float(np.mean(dyn)),
        "dynamic_agreement": float(np.mean(agree)),
        "motion_smoothness": float(np.mean(smooth)),
        "temporal_flickering": _temporal_flickering(frames, fg),
        "subject_consistency": float(np.mean(cons)),
    }
    total_w = sum(w for _, w in config.weights)
    final = sum(w * values[k] for k, w in config.weights) / total_w
    return VideoScores(
        **values, final_score=float(final),
        detected_colors=tuple(det_c), detected_shapes=tuple(det_s), detected_motions=tuple(det_m),
    )


def evaluate(
    videos: Sequence[Any], prompts: Sequence[str | CaptionAttributes | SceneSpec],
    config: MetricConfig = MetricConfig(),
) -> dict[str, float]:
    """Mean of every :class:`VideoScores` field over a set of videos, plus ``num_videos``.

    Example::

        >>> from diffusers_evdit.data import heldout_prompts, render
        >>> pairs = heldout_prompts()[:2]
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


# ---------------------------------------------------------------------------
# Frechet distance on weight-free features
# ---------------------------------------------------------------------------


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein squared) distance between two Gaussians.

    ``d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})``.
    ``tr (S1^{1/2} S2 S1^{1/2})^{1/2}`` equals ``tr (S1 S2)^{1/2}`` of the usual
    FID formula but only needs symmetric eigendecompositions (numpy only).

    Example::

        >>> frechet_distance_gaussians(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))
        4.0
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError("incompatible mean / covariance shapes")
    r1 = _sqrtm_psd(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(d, 0.0)


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Fréchet distance between Gaussians fit to two feature sets ``(N, D)`` and ``(M, D)``.

    Means and (unbiased) covariances are estimated from the rows; see
    :func:`frechet_distance_gaussians`. Symmetric and 0 for identical sets.

    Example::

        >>> x = np.random.default_rng(0).normal(size=(100, 3))
        >>> round(frechet_distance(x, x), 8)
        0.0
    """
    a = np.asarray(feats_a, np.float64)
    b = np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) feature arrays, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two samples per set")
    return frechet_distance_gaussians(
        a.mean(0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1]),
        b.mean(0), np.cov(b, rowvar=False).reshape(b.shape[1], b.shape[1]),
    )


#: Length of :func:`video_features` vectors.
VIDEO_FEATURE_DIM = 92


def video_features(video: Any, config: MetricConfig = MetricConfig()) -> np.ndarray:
    """Fixed, weight-free descriptor (length :data:`VIDEO_FEATURE_DIM`) of a video.

    Resolution- and length-independent; needs no prompt. Concatenates:

    * background colour, mean over frames (3)
    * foreground fraction of the frame, mean over frames (1)
    * foreground colour histogram, 3 bins per channel, normalised (27)
    * foreground centroid trajectory (normalised): mean (2), std (2), net
      displacement (2), mean step length (1), range (2)
    * foreground bounding-box fill ratio: mean (1) and std (1) over frames
    * absolute frame difference: mean (1) and std over frame pairs (1)
    * temporal mean frame block-averaged to 4 x 4 RGB (48)

    Example::

        >>> from diffusers_evdit.data import sample_scene, render
        >>> video_features(render(sample_scene(0))).shape
        (92,)
    """
    frames = as_frames(video)
    t, h, w, _ = frames.shape
    bg = estimate_background(frames, config.border)
    fg = foreground_mask(frames, bg, config.fg_threshold)
    feats: list[np.ndarray] = [bg.mean(0), np.array([fg.mean()])]
    pix = frames[fg]
    if len(pix):
        bins = np.minimum((pix * 3).astype(np.int64), 2)
        hist = np.bincount(bins[:, 0] * 9 + bins[:, 1] * 3 + bins[:, 2], minlength=27).astype(np.float64)
        feats.append(hist / hist.sum())
    else:
        feats.append(np.zeros(27))
    cents = np.full((t, 2), np.nan)
    fills = np.full(t, np.nan)
    for i in range(t):
        ys, xs = np.nonzero(fg[i])
        if len(xs):
            cents[i] = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
            fills[i] = len(xs) / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    if np.isnan(cents[:, 0]).all():
        feats.append(np.zeros(9))
        feats.append(np.zeros(2))
    else:
        c = _fill_missing(cents)
        step = np.linalg.norm(np.diff(c, axis=0), axis=1).mean() if t > 1 else 0.0
        feats += [c.mean(0), c.std(0), c[-1] - c[0], np.array([step]), c.max(0) - c.min(0)]
        feats.append(np.array([np.nanmean(fills), np.nanstd(fills)]))
    if t > 1:
        fd = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
        feats.append(np.array([fd.mean(), fd.std()]))
    else:
        feats.append(np.zeros(2))
    mean_frame = torch.from_numpy(frames.mean(0)).permute(2, 0, 1)[None]
    pooled = torch.nn.functional.adaptive_avg_pool2d(mean_frame, 4)[0].permute(1, 2, 0).numpy()
    feats.append(pooled.reshape(-1))
    out = np.concatenate([np.asarray(f, np.float64).reshape(-1) for f in feats])
    assert out.shape == (VIDEO_FEATURE_DIM,), out.shape
    return out


def frechet_video_feature_distance(
    videos_a: Sequence[Any], videos_b: Sequence[Any], config: MetricConfig = MetricConfig()
) -> float:
    """:func:`frechet_distance` between :func:`video_features` of two video sets.

    A weight-free stand-in for FVD: compare generated clips with real
    synthetic clips rendered from the same prompts.

    Example::

        >>> from diffusers_evdit.data import sample_scene, render
        >>> real = [render(sample_scene(i), 9, 32, 32) for i in range(8)]
        >>> frechet_video_feature_distance(real, real) < 1e-6
        True
    """
    fa = np.stack([video_features(v, config) for v in videos_a])
    fb = np.stack([video_features(v, config) for v in videos_b])
    return frechet_distance(fa, fb)


# ---------------------------------------------------------------------------
# Fidelity to a reference video (sparse vs dense on the same seed)
# ---------------------------------------------------------------------------


def psnr(video: Any, reference: Any, max_db: float = 100.0) -> float:
    """Peak signal-to-noise ratio (dB) of ``video`` against ``reference`` (same shape ``(T, H, W, 3)``).

    Pixels are taken in [0, 1] (:func:`as_frames`), so the peak is 1; the mean squared error is over all frames,
    pixels and channels. Identical videos give ``max_db``.

    Example::

        >>> a = np.zeros((2, 4, 4, 3), np.float32); b = a + 0.1
        >>> round(psnr(a, b), 2)
        20.0
    """
    a, b = as_frames(video), as_frames(reference)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse <= 10.0 ** (-max_db / 10.0):
        return float(max_db)
    return float(-10.0 * math.log10(mse))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(video: Any, reference: Any, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) of ``video`` against ``reference`` ``(T, H, W, 3)``.

    Gaussian window ``window`` x ``window`` (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, data range 1, computed per
    frame and channel on the valid region (no padding) and averaged. The window shrinks for frames smaller than
    it. 1 for identical videos.

    Example::

        >>> from diffusers_evdit.data import sample_scene, render
        >>> v = render(sample_scene(0), 5, 32, 32)
        >>> ssim(v, v)
        1.0
    """
    a, b = as_frames(video), as_frames(reference)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    size = int(min(window, a.shape[1], a.shape[2]))
    w = _gaussian_window(size, sigma).to(torch.float64)[None, None].repeat(3, 1, 1, 1)
    x = torch.from_numpy(a.astype(np.float64)).permute(0, 3, 1, 2)
    y = torch.from_numpy(b.astype(np.float64)).permute(0, 3, 1, 2)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(z, w, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(min(1.0, s.mean().item()))
