"""Rasterising scenes to uint8 frames, and conversions to and from diffusers video tensors."""

from __future__ import annotations

import numpy as np
import torch

from .geometry import frame_times, positions
from .scenes import BACKGROUNDS, COLORS, DEFAULT_HEIGHT, DEFAULT_NUM_FRAMES, DEFAULT_WIDTH, SceneSpec

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

        >>> from diffusers_evdit.data import render, sample_scene
        >>> frames = render(sample_scene(0), 29, 128, 128)
        >>> frames.shape
        (29, 128, 128, 3)
    """
    if antialias < 1:
        raise ValueError("antialias must be >= 1")
    k = int(antialias)
    t = frame_times(num_frames)
    aspect = width / height
    # sub-sample centres in pixel units
    offs = (np.arange(k) + 0.5) / k
    xs = (np.arange(width)[:, None] + offs[None, :]).reshape(1, 1, width * k)
    ys = (np.arange(height)[:, None] + offs[None, :]).reshape(1, height * k, 1)
    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    frames[...] = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    r_unit = min(height, width)
    for obj in scene.objects:
        pos = positions(obj, t, aspect)
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
        >>> from diffusers_evdit.data import render, sample_scene
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
        >>> from diffusers_evdit.data import render, sample_scene
        >>> frames = render(sample_scene(0), 5, 32, 32)
        >>> bool((tensor_to_frames(frames_to_tensor(frames)) == frames).all())
        True
    """
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) tensor, got shape {tuple(video.shape)}")
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).numpy()

