"""Object motion over normalised clip time: positions, bounces and pixel trajectories."""

from __future__ import annotations

import numpy as np

from .scenes import ObjectSpec



def half_extents(size: float, aspect_ratio: float) -> tuple[float, float]:
    """Half-extent in normalised x (fraction of width) and y (of height).

    Example::

        >>> half_extents(0.1, 2.0)
        (0.05, 0.1)
    """
    return size * min(1.0, 1.0 / aspect_ratio), size * min(1.0, aspect_ratio)


def _reflect(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates into [lo, hi] (triangle wave), as a ball bouncing off walls."""
    length = hi - lo
    if length <= 0:
        return np.full_like(p, (lo + hi) / 2)
    u = np.mod(p - lo, 2 * length)
    return lo + np.where(u <= length, u, 2 * length - u)


def positions(obj: ObjectSpec, s: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Normalised centre positions ``(len(s), 2)`` at normalised times ``s`` in [0, 1] (bounces reflected).

    Example::

        >>> obj = ObjectSpec("circle", "red", "left", x=0.7, y=0.5, size=0.1, speed=0.4)
        >>> positions(obj, [0.0, 1.0], 1.0).round(2).tolist()
        [[0.7, 0.5], [0.3, 0.5]]
    """
    s = np.asarray(s, dtype=np.float64)
    dx, dy = obj.direction
    x = obj.x + dx * obj.speed * s
    y = obj.y + dy * obj.speed * s
    if obj.motion == "bouncing":
        rx, ry = half_extents(obj.size, aspect_ratio)
        x = _reflect(x, rx, 1 - rx)
        y = _reflect(y, ry, 1 - ry)
    return np.stack([x, y], axis=-1)


def frame_times(num_frames: int) -> np.ndarray:
    """Normalised time ``t / (T - 1)`` of each of ``num_frames`` frames (0 for a single frame).

    Example::

        >>> frame_times(3).tolist()
        [0.0, 0.5, 1.0]
    """
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
    pos = positions(obj, frame_times(num_frames), width / height)
    return pos * np.array([width, height], dtype=np.float64)

