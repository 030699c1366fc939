"""Seeded scene sampling (train / held-out splits) and the fixed held-out prompt list."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .geometry import half_extents, positions
from .scenes import BACKGROUNDS, COLORS, DIRECTIONS, HELDOUT_COMBOS, MOTIONS, SHAPES, ObjectSpec, SceneSpec

# Sampling ranges (normalised units, see module docstring).
_SIZE_RANGE = (0.09, 0.14)
_LINEAR_SPEED_RANGE = (0.25, 0.5)
_BOUNCE_SPEED_RANGE = (0.9, 1.6)
_MIN_BOUNCE_BACKTRACK = 0.25  # min(range - |net displacement|) of a bounce
_OBJECT_GAP = 0.04  # min gap between bounding boxes of two objects
_CHECK_STEPS = 65  # time samples used for overlap / bounce checks
_HELDOUT_SEED = 20240611
_HELDOUT_SET = frozenset(HELDOUT_COMBOS)


def _as_rng(rng: int | np.random.Generator | Sequence[int] | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _sample_geometry(rng: np.random.Generator, motion: str, aspect_ratio: float) -> dict[str, Any]:
    size = float(rng.uniform(*_SIZE_RANGE))
    rx, ry = half_extents(size, aspect_ratio)
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
        p = positions(obj, s, aspect_ratio)[:, 0 if DIRECTIONS[heading][0] != 0 else 1]
        backtrack = (p.max() - p.min()) - abs(p[-1] - p[0])
        if backtrack >= _MIN_BOUNCE_BACKTRACK:
            return dict(x=float(x), y=float(y), size=size, speed=speed, heading=heading)
    raise RuntimeError("could not sample a bouncing trajectory (extreme aspect ratio?)")


def _overlaps(a: ObjectSpec, b: ObjectSpec, aspect_ratio: float) -> bool:
    """Whether the bounding boxes of two objects come closer than the gap at any time."""
    s = np.linspace(0.0, 1.0, _CHECK_STEPS)
    scale = np.array([max(1.0, aspect_ratio), max(1.0, 1.0 / aspect_ratio)])  # to min-side units
    d = np.abs(positions(a, s, aspect_ratio) - positions(b, s, aspect_ratio)) * scale
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

