"""Writing, tiling and reading video files (GIF with Pillow; MP4 and others through imageio)."""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch

from ..video_io import to_uint8_frames, write_video

# ---------------------------------------------------------------------------
# Saving and tiling
# ---------------------------------------------------------------------------


def save_video(frames: Any, path: str | os.PathLike, fps: int = 8) -> None:
    """Write frames ``(T, H, W, 3)`` (uint8, or float in [0, 1]) to ``.gif`` or ``.mp4``.

    The package's one writer (:func:`diffusers_evdit.video_io.write_video`) under its dataset name. For a dataset
    tensor ``(3, T, H, W)`` in [-1, 1] call :func:`tensor_to_frames` first.

    Example::

        >>> from diffusers_evdit.data import render, sample_scene
        >>> save_video(render(sample_scene(0)), "/tmp/clip.gif", fps=8)
    """
    write_video(frames, path, fps=fps)


def video_grid(videos: Sequence[Any], ncols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile same-shaped videos ``(T, H, W, 3)`` into one ``uint8`` video.

    Example::

        >>> from diffusers_evdit.data import render, sample_scene
        >>> grid = video_grid([render(sample_scene(i), 9, 32, 32) for i in range(4)], ncols=2)
        >>> grid.shape
        (9, 70, 70, 3)
    """
    arrs = [to_uint8_frames(v) for v in videos]
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

        >>> from diffusers_evdit.data import render, sample_scene
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

