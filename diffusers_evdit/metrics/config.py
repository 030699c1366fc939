"""Thresholds of the analytic metrics and the shape fill ratios they classify by."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

#: Expected bounding-box fill ratio (area / bbox area) of each shape: a disc
#: fills pi/4 of its square, a square all of it, a triangle (apex up, base =
#: bbox width) half of it. Shapes are classified by the nearest ratio.
SHAPE_FILL_RATIOS: Mapping[str, float] = MappingProxyType(
    {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
)

#: Weights of the legacy final score (``VideoScores.legacy_final_score``, the weighted mean used before the
#: gated final score; kept only to compare with old tables). They sum to 1.
DEFAULT_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("color_accuracy", 0.2),
    ("shape_accuracy", 0.2),
    ("motion_accuracy", 0.2),
    ("subject_consistency", 0.1),
    ("motion_smoothness", 0.1),
    ("temporal_flickering", 0.1),
    ("dynamic_agreement", 0.1),
)


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
        weights: ``(name, weight)`` pairs of the legacy weighted score (``legacy_final_score``).

    Example:
        >>> from diffusers_evdit.data import render, sample_scene
        >>> from diffusers_evdit.metrics import evaluate_video
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

