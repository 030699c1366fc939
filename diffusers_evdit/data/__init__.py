"""Synthetic captioned videos with exactly known ground truth.

This module procedurally generates short video clips of one or two simple
objects (circle, square, triangle) of a well separated colour moving over a
solid background, together with a templated caption such as::

    "a red circle moving left on a dark background"
    "a green square bouncing and a blue triangle standing still on a light background"

Every clip is fully determined by a :class:`SceneSpec` (a frozen dataclass),
so the same spec always renders the same pixels, and the caption can be parsed
back into the attributes that generated it (:func:`parse_caption`). This is
what makes the analytic metrics in :mod:`diffusers_evdit.metrics` possible.

Coordinate conventions
----------------------
* Positions ``x``/``y`` are normalised to the frame: ``x`` is the object centre
  as a fraction of the width, ``y`` as a fraction of the height (``y`` grows
  downwards, so "up" means decreasing ``y``).
* ``size`` is the object's half-extent (radius of the circle, half side of the
  square, half side of the triangle's bounding box) as a fraction of
  ``min(height, width)``.
* ``speed`` is the displacement over the *whole clip*, as a fraction of the
  frame extent along the motion axis (width for left/right, height for
  up/down). A scene therefore describes the same motion whatever the number of
  frames it is rendered with: frame ``t`` of ``T`` is at normalised time
  ``t / (T - 1)``. In pixels per frame this is
  ``speed * width / (num_frames - 1)`` for horizontal motion (see
  :meth:`ObjectSpec.pixels_per_frame`).
* Bouncing objects move along one axis and are reflected at the borders so
  that the whole object always stays inside the frame.

Held-out split
--------------
:data:`HELDOUT_COMBOS` lists 12 (colour, shape, motion) triples. A scene is
*held-out* iff at least one of its objects has one of these triples (the
background plays no role). ``sample_scene(..., split="train")`` never produces
such a scene, ``split="heldout"`` only produces such scenes, ``split="all"`` is
unrestricted. Every colour, shape and motion, and every *pair* of them, still
occurs in the training split (each triple removes one motion out of six for a
given colour/shape pair), so the held-out prompts test compositional
generalisation. :func:`heldout_prompts` returns a fixed list of 24 of them.
:func:`eval_prompts` draws the evaluation sets from them: ``split="validation"`` for every choice,
``split="test"`` for every reported number; no caption is in both (:mod:`~diffusers_evdit.data.prompts`).

Example::

    >>> from diffusers_evdit.data import sample_scene, render, caption
    >>> scene = sample_scene(0)
    >>> frames = render(scene, num_frames=29, height=128, width=128)
    >>> frames.shape, frames.dtype
    ((29, 128, 128, 3), dtype('uint8'))
    >>> caption(scene) == scene.caption()
    True
"""

from .datasets import (
    CaptionDataset,
    SyntheticVideoDataset,
    SyntheticVideoStream,
    VideoFolderDataset,
    collate_videos,
    save_video_folder,
)
from .geometry import trajectory
from .prompts import SPLITS, eval_prompts, prompt_split
from .render import frames_to_tensor, render, tensor_to_frames
from .sampling import heldout_prompts, sample_scene
from .scenes import (
    BACKGROUNDS,
    COLORS,
    DEFAULT_HEIGHT,
    DEFAULT_NUM_FRAMES,
    DEFAULT_WIDTH,
    DIRECTIONS,
    HELDOUT_COMBOS,
    MOTIONS,
    SHAPES,
    CaptionAttributes,
    ObjectAttributes,
    ObjectSpec,
    SceneSpec,
    caption,
    caption_vocabulary,
    is_heldout,
    parse_caption,
)
from .video_io import VIDEO_EXTENSIONS, read_video_frames, save_video, video_grid

__all__ = [
    "COLORS",
    "BACKGROUNDS",
    "SHAPES",
    "MOTIONS",
    "DIRECTIONS",
    "HELDOUT_COMBOS",
    "DEFAULT_NUM_FRAMES",
    "DEFAULT_HEIGHT",
    "DEFAULT_WIDTH",
    "ObjectSpec",
    "SceneSpec",
    "ObjectAttributes",
    "CaptionAttributes",
    "sample_scene",
    "render",
    "trajectory",
    "caption",
    "parse_caption",
    "caption_vocabulary",
    "is_heldout",
    "heldout_prompts",
    "frames_to_tensor",
    "tensor_to_frames",
    "collate_videos",
    "CaptionDataset",
    "SyntheticVideoDataset",
    "SyntheticVideoStream",
    "save_video",
    "video_grid",
    "VIDEO_EXTENSIONS",
    "read_video_frames",
    "VideoFolderDataset",
    "save_video_folder",
    "SPLITS",
    "eval_prompts",
    "prompt_split",
]
