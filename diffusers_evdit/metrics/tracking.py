"""Per-object tracks and what they say: colour, shape and motion labels, smoothness, consistency, flicker."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..data import COLORS, SHAPES
from .config import SHAPE_FILL_RATIOS, MetricConfig
from .segmentation import dilate

_PALETTE_NAMES: tuple[str, ...] = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32) / 255.0


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
        >>> from diffusers_evdit.metrics import as_frames, segment_objects
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
        >>> from diffusers_evdit.metrics import as_frames, segment_objects
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


def fill_missing(traj: np.ndarray) -> np.ndarray:
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


def dynamic_degree(traj: np.ndarray, config: MetricConfig) -> float:
    """``min(1, mean_t ||c_{t+1} - c_t|| / ref_step)`` on the smoothed trajectory."""
    if len(traj) < 2:
        return 0.0
    steps = np.linalg.norm(np.diff(_smooth(traj), axis=0), axis=1)
    return float(min(1.0, steps.mean() / config.ref_step))


def motion_smoothness(traj: np.ndarray, height: int, width: int, config: MetricConfig) -> float:
    """``1 - mean_t min(1, max(0, ||a_t|| - tol) / (||v_t|| + ||v_{t+1}|| + eps))``.

    Computed in pixels: ``v_t = c_{t+1} - c_t`` and ``a_t = v_{t+1} - v_t``
    (second difference) of the raw centroid trajectory; ``tol`` =
    ``config.smooth_tolerance_px`` absorbs the rasterisation jitter of hard
    edges, ``eps = config.smooth_eps * min(H, W)`` is a speed floor. Uniform
    motion gives 1, a reflection at a wall costs at most one or two terms,
    randomly ordered frames give large accelerations (a low score).
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


def subject_consistency(track: ObjectTrack) -> float:
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


def temporal_flickering(frames: np.ndarray, fg: np.ndarray) -> float:
    """``1 - mean |I_{t+1} - I_t|`` over background pixels of both frames (VBench style).

    The background region excludes the (1-pixel dilated) foreground of both
    frames, so moving objects do not count as flicker.
    """
    if len(frames) < 2:
        return 1.0
    fg = dilate(fg)
    static = ~(fg[1:] | fg[:-1])
    if not static.any():
        return 0.0
    diff = np.abs(frames[1:][static] - frames[:-1][static])  # (pixels, 3)
    return float(1.0 - diff.mean())

