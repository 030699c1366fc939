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

Example::

    >>> from diffusers_evdit.data import sample_scene, render, caption
    >>> scene = sample_scene(0)
    >>> frames = render(scene, num_frames=29, height=128, width=128)
    >>> frames.shape, frames.dtype
    ((29, 128, 128, 3), dtype('uint8'))
    >>> caption(scene) == scene.caption()
    True
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

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
]

# ---------------------------------------------------------------------------
# Vocabulary of attributes (immutable)
# ---------------------------------------------------------------------------

#: Object colours (RGB uint8). Pairwise Chebyshev (max-channel) distance is
#: >= 130 and the distance to every background is >= 80, so colours are
#: unambiguous and objects are easy to segment from the background.
COLORS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 40, 40),
        "green": (40, 190, 60),
        "blue": (40, 80, 230),
        "yellow": (240, 220, 40),
        "magenta": (210, 50, 210),
        "cyan": (40, 210, 220),
    }
)

#: Solid background colours (RGB uint8).
BACKGROUNDS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "dark": (16, 16, 16),
        "gray": (128, 128, 128),
        "light": (236, 236, 236),
    }
)

#: Object shapes.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

#: Motion labels used in captions.
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "bouncing")

#: Unit direction vectors (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
)

#: (colour, shape, motion) triples excluded from the training split. Each
#: colour and each motion occurs twice, each shape four times.
HELDOUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "up"),
    ("red", "square", "bouncing"),
    ("green", "circle", "left"),
    ("green", "triangle", "still"),
    ("blue", "square", "down"),
    ("blue", "circle", "right"),
    ("yellow", "triangle", "bouncing"),
    ("yellow", "square", "left"),
    ("magenta", "circle", "up"),
    ("magenta", "triangle", "right"),
    ("cyan", "square", "still"),
    ("cyan", "circle", "down"),
)
_HELDOUT_SET = frozenset(HELDOUT_COMBOS)

#: Default clip: 29 frames -> 8 latent frames with 4x temporal VAE compression;
#: 128x128 pixels -> 8x8 = 64 tokens per latent frame with 8x spatial
#: compression and patch size 2.
DEFAULT_NUM_FRAMES = 29
DEFAULT_HEIGHT = 128
DEFAULT_WIDTH = 128

# Sampling ranges (normalised units, see module docstring).
_SIZE_RANGE = (0.09, 0.14)
_LINEAR_SPEED_RANGE = (0.25, 0.5)
_BOUNCE_SPEED_RANGE = (0.9, 1.6)
_MIN_BOUNCE_BACKTRACK = 0.25  # min(range - |net displacement|) of a bounce
_OBJECT_GAP = 0.04  # min gap between bounding boxes of two objects
_CHECK_STEPS = 65  # time samples used for overlap / bounce checks
_HELDOUT_SEED = 20240611

_MOTION_PHRASES: Mapping[str, str] = MappingProxyType(
    {
        "left": "moving left",
        "right": "moving right",
        "up": "moving up",
        "down": "moving down",
        "still": "standing still",
        "bouncing": "bouncing",
    }
)
_PHRASE_TO_MOTION: Mapping[str, str] = MappingProxyType({v: k for k, v in _MOTION_PHRASES.items()})


# ---------------------------------------------------------------------------
# Dataclasses
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectAttributes:
    """The captioned attributes of one object (what a caption can express).

    Example:
        >>> parse_caption("a red circle moving right on a dark background").objects[0]
        ObjectAttributes(color='red', shape='circle', motion='right')
    """

    color: str
    shape: str
    motion: str


@dataclass(frozen=True)
class CaptionAttributes:
    """The attributes a caption expresses: objects (in caption order) and background.

    Example:
        >>> attrs = parse_caption("a red circle moving right and a blue square bouncing on a light background")
        >>> len(attrs.objects), attrs.background, caption(attrs)
        (2, 'light', 'a red circle moving right and a blue square bouncing on a light background')
    """

    objects: tuple[ObjectAttributes, ...]
    background: str


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: key of :data:`COLORS`.
        motion: one of :data:`MOTIONS`.
        x: initial centre, fraction of the width.
        y: initial centre, fraction of the height.
        size: half-extent as a fraction of ``min(height, width)``.
        speed: displacement over the whole clip as a fraction of the frame
            extent along the motion axis (0 for ``"still"``).
        heading: initial direction of travel (``"left"``, ``"right"``, ``"up"``,
            ``"down"``); equal to ``motion`` for linear motions, the initial
            direction for ``"bouncing"``, ``None`` for ``"still"``.

    Example:
        >>> obj = ObjectSpec(shape="circle", color="red", motion="right", x=0.3, y=0.5, size=0.1, speed=0.4)
        >>> SceneSpec(objects=(obj,), background="dark").caption()
        'a red circle moving right on a dark background'
    """

    shape: str
    color: str
    motion: str
    x: float
    y: float
    size: float
    speed: float = 0.0
    heading: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {tuple(COLORS)}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; expected one of {MOTIONS}")
        if self.heading is not None and self.heading not in DIRECTIONS:
            raise ValueError(f"unknown heading {self.heading!r}")
        if self.motion in DIRECTIONS and self.heading not in (None, self.motion):
            raise ValueError("for linear motions heading must equal motion")
        if self.motion == "bouncing" and self.heading is None:
            raise ValueError("a bouncing object needs a heading")

    @property
    def direction(self) -> tuple[int, int]:
        """Unit (dx, dy) of the initial heading, (0, 0) when still."""
        heading = self.motion if self.motion in DIRECTIONS else self.heading
        if self.motion == "still" or heading is None:
            return (0, 0)
        return DIRECTIONS[heading]

    def attributes(self) -> ObjectAttributes:
        """The captioned attributes of this object."""
        return ObjectAttributes(color=self.color, shape=self.shape, motion=self.motion)

    def pixels_per_frame(self, num_frames: int, height: int, width: int) -> float:
        """Speed in pixels per frame when rendered at the given clip size."""
        if num_frames < 2 or self.motion == "still":
            return 0.0
        dx, dy = self.direction
        extent = width if dx != 0 else height
        return self.speed * extent / (num_frames - 1)


@dataclass(frozen=True)
class SceneSpec:
    """A full description of a clip: objects (drawn in order) and a background.

    Example::

        >>> obj = ObjectSpec("circle", "red", "left", x=0.7, y=0.5, size=0.12, speed=0.4)
        >>> SceneSpec((obj,), "dark").caption()
        'a red circle moving left on a dark background'
    """

    objects: tuple[ObjectSpec, ...]
    background: str = "dark"

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {tuple(BACKGROUNDS)}")

    def caption(self) -> str:
        """The templated caption of the scene (see :func:`caption`)."""
        return caption(self)

    def attributes(self) -> CaptionAttributes:
        """The captioned attributes; equals ``parse_caption(self.caption())``."""
        return CaptionAttributes(tuple(o.attributes() for o in self.objects), self.background)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict form (inverse: :meth:`from_dict`)."""
        return {"objects": [asdict(o) for o in self.objects], "background": self.background}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SceneSpec":
        """Build a scene from :meth:`to_dict` output."""
        return cls(tuple(ObjectSpec(**o) for o in d["objects"]), d["background"])

    @property
    def is_heldout(self) -> bool:
        """Whether any object has a held-out (colour, shape, motion) triple."""
        return is_heldout(self)


# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------


def _object_phrase(color: str, shape: str, motion: str) -> str:
    return f"a {color} {shape} {_MOTION_PHRASES[motion]}"


def caption(scene: SceneSpec | CaptionAttributes) -> str:
    """Templated caption of a scene.

    ``"a {colour} {shape} {motion phrase}[ and a ...] on a {background} background"``
    where the motion phrase is ``moving left|right|up|down``, ``standing still``
    or ``bouncing``.

    Example::

        >>> caption(sample_scene(3, num_objects=1)).startswith("a ")
        True
    """
    parts = [_object_phrase(o.color, o.shape, o.motion) for o in scene.objects]
    return " and ".join(parts) + f" on a {scene.background} background"


def parse_caption(text: str) -> CaptionAttributes:
    """Inverse of :func:`caption`: recover the captioned attributes.

    Case, surrounding whitespace and a trailing period are ignored. Raises
    ``ValueError`` for text that does not follow the template.

    Example::

        >>> parse_caption("a red circle moving left on a dark background")
        CaptionAttributes(objects=(ObjectAttributes(color='red', shape='circle', motion='left'),), background='dark')
    """
    s = " ".join(text.strip().lower().rstrip(".").split())
    head, sep, tail = s.rpartition(" on a ")
    if not sep or not tail.endswith(" background"):
        raise ValueError(f"caption does not match the template: {text!r}")
    background = tail[: -len(" background")]
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r} in caption {text!r}")
    objects = []
    for part in head.split(" and "):
        words = part.split()
        if len(words) < 4 or words[0] != "a":
            raise ValueError(f"cannot parse object phrase {part!r} in caption {text!r}")
        color, shape, phrase = words[1], words[2], " ".join(words[3:])
        if color not in COLORS or shape not in SHAPES or phrase not in _PHRASE_TO_MOTION:
            raise ValueError(f"cannot parse object phrase {part!r} in caption {text!r}")
        objects.append(ObjectAttributes(color=color, shape=shape, motion=_PHRASE_TO_MOTION[phrase]))
    return CaptionAttributes(tuple(objects), background)


def caption_vocabulary() -> list[str]:
    """Sorted list of every word any caption can contain.

    Enough to build a tiny word-level tokenizer.

    Example::

        >>> set("a red circle moving left on a dark background".split()) <= set(caption_vocabulary())
        True
    """
    words = {"a", "and", "on", "background"}
    words.update(COLORS)
    words.update(SHAPES)
    words.update(BACKGROUNDS)
    for phrase in _MOTION_PHRASES.values():
        words.update(phrase.split())
    return sorted(words)


def is_heldout(scene: SceneSpec | CaptionAttributes) -> bool:
    """True iff any object's (colour, shape, motion) is in :data:`HELDOUT_COMBOS`.

    Example:
        >>> is_heldout(sample_scene(0, split="heldout")), is_heldout(sample_scene(0, split="train"))
        (True, False)
    """
    return any((o.color, o.shape, o.motion) in _HELDOUT_SET for o in scene.objects)


# ---------------------------------------------------------------------------
# Geometry and sampling
# ---------------------------------------------------------------------------


def _half_extents(size: float, aspect_ratio: float) -> tuple[float, float]:
    """Half-extent in normalised x (fraction of width) and y (of height)."""
    return size * min(1.0, 1.0 / aspect_ratio), size * min(1.0, aspect_ratio)


def _reflect(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates into [lo, hi] (triangle wave), as a ball bouncing off walls."""
    length = hi - lo
    if length <= 0:
        return np.full_like(p, (lo + hi) / 2)
    u = np.mod(p - lo, 2 * length)
    return lo + np.where(u <= length, u, 2 * length - u)


def _positions(obj: ObjectSpec, s: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Normalised centre positions (len(s), 2) at normalised times ``s`` in [0, 1]."""
    s = np.asarray(s, dtype=np.float64)
    dx, dy = obj.direction
    x = obj.x + dx * obj.speed * s
    y = obj.y + dy * obj.speed * s
    if obj.motion == "bouncing":
        rx, ry = _half_extents(obj.size, aspect_ratio)
        x = _reflect(x, rx, 1 - rx)
        y = _reflect(y, ry, 1 - ry)
    return np.stack([x, y], axis=-1)


def _times(num_frames: int) -> np.ndarray:
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    if num_frames == 1:
        return np.zeros(1)
    return np.arange(num_frames) / (num_frames - 1)


def trajectory(obj: ObjectSpec, num_frames: int, height: int, width: int) -> np.ndarray:
    """Pixel coordinates (num_frames, 2) of the object's centre as (x, y).

    The centre of pixel (row i, column j) is at (j + 0.5, i + 0.5).

    Example::

        >>> obj = ObjectSpec("square", "blue", "right", x=0.3, y=0.5, size=0.1, speed=0.5)
        >>> trajectory(obj, 29, 128, 128)[[0, -1], 0].round(1).tolist()
        [38.4, 102.4]
    """
    pos = _positions(obj, _times(num_frames), width / height)
    return pos * np.array([width, height], dtype=np.float64)


def _as_rng(rng: int | np.random.Generator | Sequence[int] | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _sample_geometry(rng: np.random.Generator, motion: str, aspect_ratio: float) -> dict[str, Any]:
    size = float(rng.uniform(*_SIZE_RANGE))
    rx, ry = _half_extents(size, aspect_ratio)
    lo = np.array([rx, ry])
    hi = 1.0 - lo
    if motion == "still":
        x, y = rng.uniform(lo, hi)
        return dict(x=float(x), y=float(y), size=size, speed=0.0, heading=None)
    if motion in DIRECTIONS:
        dx, dy = DIRECTIONS[motion]
        axis = 0 if dx != 0 else 1
        sign = dx + dy
        span = hi[axis] - lo[axis]
        speed = min(float(rng.uniform(*_LINEAR_SPEED_RANGE)), 0.9 * span)
        pos = rng.uniform(lo, hi)
        if sign > 0:
            pos[axis] = rng.uniform(lo[axis], hi[axis] - speed)
        else:
            pos[axis] = rng.uniform(lo[axis] + speed, hi[axis])
        return dict(x=float(pos[0]), y=float(pos[1]), size=size, speed=speed, heading=motion)
    # bouncing: reject until the path has a substantial reversal
    s = np.linspace(0.0, 1.0, _CHECK_STEPS)
    for _ in range(100):
        heading = str(rng.choice(list(DIRECTIONS)))
        speed = float(rng.uniform(*_BOUNCE_SPEED_RANGE))
        x, y = rng.uniform(lo, hi)
        obj = ObjectSpec("circle", "red", "bouncing", float(x), float(y), size, speed, heading)
        p = _positions(obj, s, aspect_ratio)[:, 0 if DIRECTIONS[heading][0] != 0 else 1]
        backtrack = (p.max() - p.min()) - abs(p[-1] - p[0])
        if backtrack >= _MIN_BOUNCE_BACKTRACK:
            return dict(x=float(x), y=float(y), size=size, speed=speed, heading=heading)
    raise RuntimeError("could not sample a bouncing trajectory (extreme aspect ratio?)")


def _overlaps(a: ObjectSpec, b: ObjectSpec, aspect_ratio: float) -> bool:
    """Whether the bounding boxes of two objects come closer than the gap at any time."""
    s = np.linspace(0.0, 1.0, _CHECK_STEPS)
    scale = np.array([max(1.0, aspect_ratio), max(1.0, 1.0 / aspect_ratio)])  # to min-side units
    d = np.abs(_positions(a, s, aspect_ratio) - _positions(b, s, aspect_ratio)) * scale
    limit = a.size + b.size + _OBJECT_GAP
    return bool(np.any((d[:, 0] < limit) & (d[:, 1] < limit)))


def _sample_attributes(
    rng: np.random.Generator, split: str, exclude_colors: set[str]
) -> tuple[str, str, str]:
    colors = [c for c in COLORS if c not in exclude_colors]
    if split == "heldout":
        combos = [c for c in HELDOUT_COMBOS if c[0] not in exclude_colors]
        return combos[int(rng.integers(len(combos)))]
    while True:
        combo = (str(rng.choice(colors)), str(rng.choice(SHAPES)), str(rng.choice(MOTIONS)))
        if split == "all" or combo not in _HELDOUT_SET:
            return combo


def sample_scene(
    rng: int | np.random.Generator | Sequence[int] | None = None,
    *,
    split: str = "train",
    num_objects: int | None = None,
    two_object_prob: float = 0.5,
    aspect_ratio: float = 1.0,
    background: str | None = None,
) -> SceneSpec:
    """Sample a random scene.

    Args:
        rng: seed (int or sequence of ints) or a ``numpy.random.Generator``.
        split: ``"train"`` (no held-out triple, see :data:`HELDOUT_COMBOS`),
            ``"heldout"`` (at least one object has a held-out triple) or
            ``"all"``.
        num_objects: 1 or 2; ``None`` draws 2 with probability ``two_object_prob``.
        aspect_ratio: ``width / height`` the scene will be rendered at; used to
            keep objects inside the frame.
        background: force a background, else uniform over :data:`BACKGROUNDS`.

    Guarantees: objects have distinct colours, stay fully inside the frame for
    the whole clip, never overlap (bounding boxes keep a gap), linear movers
    travel ``speed`` in [0.25, 0.5] of the frame, bouncing objects reverse
    direction at least once with >= 0.25 of the frame travelled on each side.

    Example::

        >>> scene = sample_scene(42, split="heldout")
        >>> scene.is_heldout
        True
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    gen = _as_rng(rng)
    if num_objects is None:
        num_objects = 2 if gen.random() < two_object_prob else 1
    if num_objects not in (1, 2):
        raise ValueError("num_objects must be 1 or 2")
    bg = background if background is not None else str(gen.choice(list(BACKGROUNDS)))
    for _ in range(1000):
        attrs: list[tuple[str, str, str]] = []
        used: set[str] = set()
        for k in range(num_objects):
            sub_split = split if (split != "heldout" or k == 0) else "all"
            combo = _sample_attributes(gen, sub_split, used)
            used.add(combo[0])
            attrs.append(combo)
        if split == "heldout" and num_objects > 1 and gen.random() < 0.5:
            attrs.reverse()
        objects: list[ObjectSpec] = []
        for color, shape, motion in attrs:
            for _ in range(200):
                obj = ObjectSpec(shape, color, motion, **_sample_geometry(gen, motion, aspect_ratio))
                if not any(_overlaps(obj, other, aspect_ratio) for other in objects):
                    objects.append(obj)
                    break
            else:
                break  # resample the whole scene
        if len(objects) == num_objects:
            return SceneSpec(tuple(objects), bg)
    raise RuntimeError("could not sample a non-overlapping scene")


def heldout_prompts(aspect_ratio: float = 1.0) -> list[tuple[str, SceneSpec]]:
    """Fixed list of 24 held-out ``(caption, scene)`` pairs.

    For each triple of :data:`HELDOUT_COMBOS` (in order): one single-object
    scene and one two-object scene whose other object is a training triple.
    Backgrounds cycle. The list is deterministic (fixed internal seed).

    Example::

        >>> prompts = heldout_prompts()
        >>> len(prompts), all(scene.is_heldout for _, scene in prompts)
        (24, True)
    """
    out: list[tuple[str, SceneSpec]] = []
    bgs = list(BACKGROUNDS)
    for k, (color, shape, motion) in enumerate(HELDOUT_COMBOS):
        gen = np.random.default_rng([_HELDOUT_SEED, k])
        single = SceneSpec(
            (ObjectSpec(shape, color, motion, **_sample_geometry(gen, motion, aspect_ratio)),), bgs[k % len(bgs)]
        )
        out.append((single.caption(), single))
        while True:
            main = ObjectSpec(shape, color, motion, **_sample_geometry(gen, motion, aspect_ratio))
            c2, s2, m2 = _sample_attributes(gen, "train", {color})
            other = ObjectSpec(s2, c2, m2, **_sample_geometry(gen, m2, aspect_ratio))
            if not _overlaps(main, other, aspect_ratio):
                break
        objs = (main, other) if k % 2 == 0 else (other, main)
        pair = SceneSpec(objs, bgs[(k + 1) % len(bgs)])
        out.append((pair.caption(), pair))
    return out


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _coverage(shape: str, cx: np.ndarray, cy: np.ndarray, r: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean inside-mask (T, H, W) for centres cx, cy of shape (T, 1, 1)."""
    dx = xs - cx
    dy = ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":  # apex up at (cx, cy - r), base at y = cy + r, width 2r
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def render(
    scene: SceneSpec,
    num_frames: int = DEFAULT_NUM_FRAMES,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    *,
    antialias: int = 1,
) -> np.ndarray:
    """Render a scene to ``uint8`` frames of shape ``(num_frames, height, width, 3)``.

    Deterministic. With ``antialias=1`` (default) edges are hard and every
    object pixel has exactly the object's colour; ``antialias=k > 1``
    supersamples ``k x k`` points per pixel and blends the coverage.

    Example::

        >>> frames = render(sample_scene(0), 29, 128, 128)
        >>> frames.shape
        (29, 128, 128, 3)
    """
    if antialias < 1:
        raise ValueError("antialias must be >= 1")
    k = int(antialias)
    t = _times(num_frames)
    aspect = width / height
    # sub-sample centres in pixel units
    offs = (np.arange(k) + 0.5) / k
    xs = (np.arange(width)[:, None] + offs[None, :]).reshape(1, 1, width * k)
    ys = (np.arange(height)[:, None] + offs[None, :]).reshape(1, height * k, 1)
    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    frames[...] = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    r_unit = min(height, width)
    for obj in scene.objects:
        pos = _positions(obj, t, aspect)
        cx = (pos[:, 0] * width).reshape(-1, 1, 1)
        cy = (pos[:, 1] * height).reshape(-1, 1, 1)
        inside = _coverage(obj.shape, cx, cy, obj.size * r_unit, xs, ys)
        if k == 1:
            cov = inside.astype(np.float32)
        else:
            cov = inside.reshape(num_frames, height, k, width, k).mean(axis=(2, 4), dtype=np.float32)
        cov = cov[..., None]
        frames = frames * (1.0 - cov) + np.asarray(COLORS[obj.color], dtype=np.float32) * cov
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``uint8 (T, H, W, 3)`` frames -> float tensor ``(3, T, H, W)`` in [-1, 1].

    Example:
        >>> frames = render(sample_scene(0), 5, 32, 32)
        >>> video = frames_to_tensor(frames)
        >>> video.shape, float(video.min()) >= -1.0
        (torch.Size([3, 5, 32, 32]), True)
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return x.permute(3, 0, 1, 2).contiguous()


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """Float tensor ``(3, T, H, W)`` in [-1, 1] -> ``uint8 (T, H, W, 3)`` frames.

    Example:
        >>> frames = render(sample_scene(0), 5, 32, 32)
        >>> bool((tensor_to_frames(frames_to_tensor(frames)) == frames).all())
        True
    """
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) tensor, got shape {tuple(video.shape)}")
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).numpy()


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


def _make_item(
    seed: int, index: int, split: str, num_frames: int, height: int, width: int,
    two_object_prob: float, antialias: int,
) -> dict[str, Any]:
    gen = np.random.default_rng([int(seed), int(index)])
    scene = sample_scene(gen, split=split, two_object_prob=two_object_prob, aspect_ratio=width / height)
    frames = render(scene, num_frames, height, width, antialias=antialias)
    return {"video": frames_to_tensor(frames), "caption": scene.caption(), "scene": scene, "index": int(index)}


def collate_videos(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate dataset items: stack ``video`` to ``(B, 3, T, H, W)``, keep the rest as lists.

    Example::

        >>> loader = torch.utils.data.DataLoader(SyntheticVideoDataset(4), batch_size=2, collate_fn=collate_videos)
    """
    out: dict[str, Any] = {"video": torch.stack([b["video"] for b in batch])} if "video" in batch[0] else {}
    for key in batch[0]:
        if key != "video":
            out[key] = [b[key] for b in batch]
    return out


class CaptionDataset(Dataset):
    """The captions and indices of a video dataset, without its videos: for training loops whose clean latents
    are all cached already (``--latent_cache`` of the distillation examples), so no clip is rendered or decoded.
    ``dataset`` needs a ``caption(index)`` method (:class:`SyntheticVideoDataset`, :class:`VideoFolderDataset`).

    Example::

        >>> ds = SyntheticVideoDataset(num_samples=8, seed=0)
        >>> CaptionDataset(ds)[3] == {"caption": ds[3]["caption"], "index": 3}
        True
    """

    def __init__(self, dataset: Dataset):
        if not callable(getattr(dataset, "caption", None)):
            raise TypeError(f"{type(dataset).__name__} has no caption(index) method")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = index % len(self)
        return {"caption": self.dataset.caption(index), "index": int(index)}


@dataclass
class SyntheticVideoDataset(Dataset):
    """Map-style dataset of ``num_samples`` synthetic clips; item ``i`` depends only on ``(seed, i)``.

    Each item is a dict with ``video`` (float tensor ``(3, T, H, W)`` in [-1, 1]),
    ``caption`` (str), ``scene`` (:class:`SceneSpec`) and ``index`` (int). Use
    :func:`collate_videos` with a ``DataLoader`` (scenes are not tensors).

    Example::

        >>> ds = SyntheticVideoDataset(num_samples=8, seed=0)
        >>> item = ds[3]
        >>> item["video"].shape, item["caption"] == item["scene"].caption()
        (torch.Size([3, 29, 128, 128]), True)
    """

    num_samples: int = 1000
    seed: int = 0
    num_frames: int = DEFAULT_NUM_FRAMES
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    split: str = "train"
    two_object_prob: float = 0.5
    antialias: int = 1

    def __post_init__(self) -> None:
        if self.split not in ("train", "heldout", "all"):
            raise ValueError(f"unknown split {self.split!r}")

    def __len__(self) -> int:
        return self.num_samples

    def caption(self, index: int) -> str:
        """The caption of item ``index`` without rendering it (equal to ``self[index]["caption"]``)."""
        return self.scene(index % self.num_samples).caption()

    def scene(self, index: int) -> SceneSpec:
        """The scene of item ``index`` without rendering it."""
        gen = np.random.default_rng([int(self.seed), int(index)])
        return sample_scene(
            gen, split=self.split, two_object_prob=self.two_object_prob, aspect_ratio=self.width / self.height
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(index)
        index = index % self.num_samples
        return _make_item(
            self.seed, index, self.split, self.num_frames, self.height, self.width,
            self.two_object_prob, self.antialias,
        )


@dataclass
class SyntheticVideoStream(IterableDataset):
    """Unlimited stream of synthetic clips: yields item ``i = start, start+1, ...``.

    Item ``i`` equals ``SyntheticVideoDataset(seed=seed, ...)[i]`` for the same
    settings. With several ``DataLoader`` workers, worker ``w`` of ``n`` yields
    the indices ``i`` with ``i % n == w`` so no item is duplicated.
    ``max_items`` bounds the stream (``None`` = infinite).

    Example::

        >>> stream = iter(SyntheticVideoStream(seed=0, max_items=2))
        >>> next(stream)["caption"] == SyntheticVideoDataset(seed=0)[0]["caption"]
        True
    """

    seed: int = 0
    num_frames: int = DEFAULT_NUM_FRAMES
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    split: str = "train"
    two_object_prob: float = 0.5
    antialias: int = 1
    start: int = 0
    max_items: int | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        i = self.start + wid
        end = None if self.max_items is None else self.start + self.max_items
        while end is None or i < end:
            yield _make_item(
                self.seed, i, self.split, self.num_frames, self.height, self.width,
                self.two_object_prob, self.antialias,
            )
            i += nw


# ---------------------------------------------------------------------------
# Saving and tiling
# ---------------------------------------------------------------------------


def _to_uint8_frames(frames: Any) -> np.ndarray:
    """(T, H, W, 3) uint8 or float in [0, 1] (numpy or torch) -> uint8 numpy."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def save_video(frames: Any, path: str | os.PathLike, fps: int = 8) -> None:
    """Write frames ``(T, H, W, 3)`` (uint8, or float in [0, 1]) to ``.gif`` or ``.mp4``.

    GIF uses Pillow. MP4 needs the optional ``imageio`` + ``imageio-ffmpeg``
    packages and raises ``RuntimeError`` if they are missing. For a dataset
    tensor ``(3, T, H, W)`` in [-1, 1] call :func:`tensor_to_frames` first.

    Example::

        >>> save_video(render(sample_scene(0)), "/tmp/clip.gif", fps=8)
    """
    arr = _to_uint8_frames(frames)
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in arr]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0,
            optimize=False,
        )
    elif ext == ".mp4":
        try:
            import imageio.v2 as imageio  # type: ignore[import-not-found]
            import imageio_ffmpeg  # type: ignore[import-not-found]  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on optional deps
            raise RuntimeError(
                "writing .mp4 needs the optional packages 'imageio' and 'imageio-ffmpeg'; "
                "install them or save as .gif"
            ) from exc
        imageio.mimwrite(path, list(arr), fps=fps, macro_block_size=1)  # pragma: no cover
    else:
        raise ValueError(f"unsupported video extension {ext!r}; use .gif or .mp4")


def video_grid(videos: Sequence[Any], ncols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile same-shaped videos ``(T, H, W, 3)`` into one ``uint8`` video.

    Example::

        >>> grid = video_grid([render(sample_scene(i), 9, 32, 32) for i in range(4)], ncols=2)
        >>> grid.shape
        (9, 70, 70, 3)
    """
    arrs = [_to_uint8_frames(v) for v in videos]
    if not arrs:
        raise ValueError("no videos to tile")
    shape = arrs[0].shape
    if any(a.shape != shape for a in arrs):
        raise ValueError("all videos must have the same shape")
    t, h, w, _ = shape
    ncols = ncols or math.ceil(math.sqrt(len(arrs)))
    nrows = math.ceil(len(arrs) / ncols)
    grid = np.full((t, nrows * h + (nrows + 1) * pad, ncols * w + (ncols + 1) * pad, 3), pad_value, np.uint8)
    for k, a in enumerate(arrs):
        r, c = divmod(k, ncols)
        y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
        grid[:, y0 : y0 + h, x0 : x0 + w] = a
    return grid


# ---------------------------------------------------------------------------
# Folders of real videos + captions
# ---------------------------------------------------------------------------

#: Video file extensions :class:`VideoFolderDataset` reads (``.gif`` with Pillow, the rest with ``imageio``).
VIDEO_EXTENSIONS: tuple[str, ...] = (".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi")


def read_video_frames(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file to ``uint8 (T, H, W, 3)`` frames (at most ``max_frames``).

    ``.gif`` is read with Pillow; frames that the GIF writer merged because they were identical (Pillow does this)
    are expanded again from the frame durations, and a single-frame GIF is a still clip (repeated to
    ``max_frames``). ``.mp4`` / ``.webm`` / ``.mov`` / ``.mkv`` / ``.avi`` need the optional
    ``imageio`` package with a video plugin (``pip install imageio[pyav]`` or ``imageio imageio-ffmpeg``) and raise
    ``RuntimeError`` naming the install command without it.

    Example::

        >>> save_video(render(sample_scene(0), 9, 32, 32), "/tmp/clip.gif")
        >>> read_video_frames("/tmp/clip.gif").shape
        (9, 32, 32, 3)
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    frames: list[np.ndarray] = []
    if ext == ".gif":
        from PIL import Image, ImageSequence

        durations = []
        with Image.open(path) as im:
            for frame in ImageSequence.Iterator(im):
                frames.append(np.asarray(frame.convert("RGB"), dtype=np.uint8))
                durations.append(int(frame.info.get("duration") or 0))
        # GIF writers (Pillow included) merge identical consecutive frames into one longer frame: expand them
        # back, taking the shortest frame duration as the frame period. A single-frame GIF is a still clip.
        positive = [d for d in durations if d > 0]
        if len(frames) > 1 and positive:
            base = min(positive)
            frames = [f for f, d in zip(frames, durations) for _ in range(max(1, round(d / base)) if d else 1)]
        if len(frames) == 1 and max_frames is not None:
            frames = frames * max_frames
        if max_frames is not None:
            frames = frames[:max_frames]
    elif ext in VIDEO_EXTENSIONS:
        try:
            import imageio.v3 as iio  # type: ignore[import-not-found]
        except ImportError as exc:
            raise RuntimeError(
                f"reading {ext} videos needs the optional package 'imageio' with a video plugin: "
                "pip install 'imageio[pyav]' (or imageio imageio-ffmpeg); or convert the videos to .gif"
            ) from exc
        for frame in iio.imiter(path):  # pragma: no cover - depends on optional deps
            frame = np.asarray(frame)
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, axis=-1)
            frames.append(frame[..., :3].astype(np.uint8))
            if max_frames is not None and len(frames) >= max_frames:
                break
    else:
        raise ValueError(f"unsupported video file {path!r}; expected one of {VIDEO_EXTENSIONS}")
    if not frames:
        raise ValueError(f"no frames could be read from {path!r}")
    return np.stack(frames)


def _resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop ``(T, H, W, 3)`` frames to the target aspect ratio, then resize (bicubic) to ``height x width``."""
    from PIL import Image

    t, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    target = width / height
    if w / h > target:  # too wide
        cw, ch = max(1, round(h * target)), h
    else:
        cw, ch = w, max(1, round(w / target))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    out = np.empty((t, height, width, 3), np.uint8)
    for i in range(t):
        img = Image.fromarray(frames[i, y0 : y0 + ch, x0 : x0 + cw])
        out[i] = np.asarray(img.resize((width, height), Image.BICUBIC))
    return out


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f if line.strip()]


@dataclass
class VideoFolderDataset(Dataset):
    """Map-style dataset of captioned videos in a folder; items like :class:`SyntheticVideoDataset`'s.

    Three layouts are recognised, in this order:

    1. ``metadata.jsonl`` (the Hugging Face ``videofolder`` / ``imagefolder`` convention): one JSON object a line
       with ``"file_name"`` (path relative to the folder) and ``"text"`` (or ``"caption"`` / ``"prompt"``)::

           folder/metadata.jsonl   {"file_name": "videos/0001.mp4", "text": "a red panda eating bamboo"}
           folder/videos/0001.mp4

    2. ``videos.txt`` + ``prompts.txt`` (the CogVideoX fine-tuning layout): line ``i`` of ``videos.txt`` is a path
       relative to the folder, line ``i`` of ``prompts.txt`` its caption.
    3. Sidecar captions: every video in the folder or its ``videos/`` subfolder with a ``<same name>.txt`` caption
       next to it (videos without one are an error).

    Each item has ``video`` (float ``(3, num_frames, height, width)`` in [-1, 1]: frames ``0, s, 2s, ...`` with
    ``s = frame_stride``, centre-cropped to the aspect ratio and resized), ``caption``, ``index`` and ``path``. A
    video with too few frames raises ``ValueError`` naming it. ``.gif`` needs only Pillow; other formats need
    ``imageio`` (see :func:`read_video_frames`). Use :func:`collate_videos` with a ``DataLoader``.

    Example::

        >>> folder = save_video_folder(SyntheticVideoDataset(3, num_frames=9, height=32, width=32), "/tmp/vf")
        >>> ds = VideoFolderDataset(folder, num_frames=9, height=32, width=32)
        >>> len(ds), ds[0]["video"].shape, ds[0]["caption"] == SyntheticVideoDataset(3)[0]["caption"]
        (3, torch.Size([3, 9, 32, 32]), True)
    """

    root: str
    num_frames: int = DEFAULT_NUM_FRAMES
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    frame_stride: int = 1

    def __post_init__(self) -> None:
        self.root = os.fspath(self.root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"video folder {self.root!r} does not exist")
        if self.num_frames < 1 or self.frame_stride < 1:
            raise ValueError("num_frames and frame_stride must be >= 1")
        self.samples: list[tuple[str, str]] = self._index()
        if not self.samples:
            raise ValueError(f"no captioned videos found in {self.root!r}; see VideoFolderDataset for the layouts")
        for path, _ in self.samples:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{self.root}: listed video {path!r} does not exist")

    def _index(self) -> list[tuple[str, str]]:
        import json

        meta = os.path.join(self.root, "metadata.jsonl")
        if os.path.isfile(meta):
            out = []
            with open(meta, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{meta}:{n}: not valid JSON ({err})") from None
                    text = next((row[k] for k in ("text", "caption", "prompt") if k in row), None)
                    if "file_name" not in row or text is None:
                        raise ValueError(f"{meta}:{n}: each line needs 'file_name' and 'text' (or 'caption')")
                    out.append((os.path.join(self.root, row["file_name"]), str(text)))
            return out
        videos_txt, prompts_txt = os.path.join(self.root, "videos.txt"), os.path.join(self.root, "prompts.txt")
        if os.path.isfile(videos_txt) or os.path.isfile(prompts_txt):
            if not (os.path.isfile(videos_txt) and os.path.isfile(prompts_txt)):
                raise ValueError(f"{self.root}: videos.txt and prompts.txt must both exist")
            videos, prompts = _read_lines(videos_txt), _read_lines(prompts_txt)
            if len(videos) != len(prompts):
                raise ValueError(
                    f"{self.root}: videos.txt has {len(videos)} lines but prompts.txt has {len(prompts)}"
                )
            return [(os.path.join(self.root, v.strip()), p.strip()) for v, p in zip(videos, prompts)]
        out = []
        for sub in (self.root, os.path.join(self.root, "videos")):
            if not os.path.isdir(sub):
                continue
            for name in sorted(os.listdir(sub)):
                path = os.path.join(sub, name)
                if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS or not os.path.isfile(path):
                    continue
                caption_file = os.path.splitext(path)[0] + ".txt"
                if not os.path.isfile(caption_file):
                    raise ValueError(
                        f"{path} has no caption file {os.path.basename(caption_file)}; add one, or index the folder "
                        "with metadata.jsonl"
                    )
                with open(caption_file, encoding="utf-8") as f:
                    out.append((path, f.read().strip()))
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def caption(self, index: int) -> str:
        """The caption of item ``index`` without reading its video."""
        return self.samples[index % len(self)][1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = index % len(self)
        path, text = self.samples[index]
        need = (self.num_frames - 1) * self.frame_stride + 1
        frames = read_video_frames(path, max_frames=need)
        if frames.shape[0] < need:
            raise ValueError(
                f"{path} has {frames.shape[0]} frames; {self.num_frames} frames with stride {self.frame_stride} "
                f"need {need}"
            )
        frames = _resize_center_crop(frames[: need : self.frame_stride], self.height, self.width)
        return {"video": frames_to_tensor(frames), "caption": text, "index": int(index), "path": path}


def save_video_folder(dataset: Sequence[Mapping[str, Any]], folder: str | os.PathLike, fps: int = 8,
                      ext: str = ".gif") -> str:
    """Write a dataset's clips as ``folder/videos/NNNNNN<ext>`` + ``folder/metadata.jsonl``; returns ``folder``.

    The result loads with :class:`VideoFolderDataset` (layout 1). Handy to export synthetic clips.

    Example::

        >>> folder = save_video_folder(SyntheticVideoDataset(2, num_frames=5, height=16, width=16), "/tmp/vf2")
        >>> sorted(os.listdir(folder))
        ['metadata.jsonl', 'videos']
    """
    import json

    folder = os.fspath(folder)
    os.makedirs(os.path.join(folder, "videos"), exist_ok=True)
    rows = []
    for i in range(len(dataset)):
        item = dataset[i]
        name = f"videos/{i:06d}{ext}"
        save_video(tensor_to_frames(item["video"]), os.path.join(folder, name), fps=fps)
        rows.append({"file_name": name, "text": item["caption"]})
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return folder
