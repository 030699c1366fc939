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
``prompt_alignment``          every prompted object found with its colour and shape, moving as prompted
``temporal_quality``          smoothness x consistency of the worst object, x temporal flickering
``final_score``               prompt alignment x temporal quality (:mod:`~diffusers_evdit.metrics.scores`)
``legacy_final_score``        the former weighted mean (:data:`DEFAULT_WEIGHTS`), only to compare with old tables
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
    >>> evaluate_video(render(scene)[::-1], scene.caption()).final_score  # played backwards
    0.0
"""

from .config import DEFAULT_WEIGHTS, SHAPE_FILL_RATIOS, MetricConfig
from .features import (
    VIDEO_FEATURE_DIM,
    frechet_distance,
    frechet_distance_gaussians,
    frechet_video_feature_distance,
    video_features,
)
from .fidelity import psnr, ssim
from .scores import VideoScores, evaluate, evaluate_video, final_score
from .segmentation import as_frames, estimate_background, foreground_mask, segment_objects
from .tracking import ObjectTrack, classify_color, classify_motion, classify_shape, track_object

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
    "final_score",
    "frechet_distance",
    "frechet_distance_gaussians",
    "video_features",
    "frechet_video_feature_distance",
    "psnr",
    "ssim",
]
