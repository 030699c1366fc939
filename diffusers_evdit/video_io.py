"""One video writer for the CLI, the demo and the notebooks: MP4 (H.264 via imageio-ffmpeg, which ships its own
ffmpeg), GIF (Pillow) or a folder of PNG frames.

    >>> import numpy as np, os, tempfile
    >>> path = write_video(np.zeros((3, 16, 16, 3), np.uint8), os.path.join(tempfile.mkdtemp(), "clip.gif"), fps=8)
    >>> os.path.basename(path)
    'clip.gif'
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np

__all__ = ["VIDEO_FORMATS", "video_format", "to_uint8_frames", "write_video"]

#: ``--out`` forms: a ``.mp4`` or ``.gif`` file, or a folder (a path ending in ``/``, or an existing folder) of PNGs.
VIDEO_FORMATS = ("mp4", "gif", "png")


def video_format(path: str | os.PathLike) -> str:
    """``"mp4"``, ``"gif"`` or ``"png"`` (a folder of frames) for an output path; ``ValueError`` naming the choices.

    Example:
        >>> video_format("out.mp4"), video_format("frames/")
        ('mp4', 'png')
    """
    path = os.fspath(path)
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        return "png"
    ext = os.path.splitext(path)[1].lower()
    if ext in (".mp4", ".gif"):
        return ext[1:]
    raise ValueError(
        f"Cannot write {path!r}: use a .mp4 file (default), a .gif file, or a folder ending in '/' for PNG frames."
    )


def to_uint8_frames(frames: Any) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 from PIL images, a uint8 array or a float array / tensor in [0, 1].

    Example:
        >>> to_uint8_frames(np.ones((2, 4, 4, 3), np.float32)).max()
        np.uint8(255)
    """
    if hasattr(frames, "detach"):
        frames = frames.detach().float().cpu().numpy()
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames])
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"video frames must be (T, H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr[..., :3]


def _ffmpeg():
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  the ffmpeg binary imageio uses
    except ImportError:
        raise ValueError(
            "Writing .mp4 needs imageio and imageio-ffmpeg (dependencies of diffusers-evdit: pip install imageio "
            "imageio-ffmpeg), or write a .gif instead."
        ) from None
    return imageio


def write_video(frames: Any, path: str | os.PathLike, fps: int = 8) -> str:
    """Write ``frames`` (see :func:`to_uint8_frames`) to ``path``; returns the path.

    MP4: H.264, yuv420p (plays everywhere; odd sizes are padded by one edge pixel). GIF: Pillow, looping. A folder:
    ``frame_00000.png``, ... The file appears whole or not at all (written under a temporary name, then renamed).

    Example:
        >>> import tempfile
        >>> folder = write_video(np.zeros((2, 8, 8, 3), np.uint8), os.path.join(tempfile.mkdtemp(), "f") + "/")
        >>> sorted(os.listdir(folder))
        ['frame_00000.png', 'frame_00001.png']
    """
    path = os.fspath(path)
    kind = video_format(path)
    arr = to_uint8_frames(frames)
    if len(arr) == 0:
        raise ValueError("no frames to write")
    if kind == "png":
        from PIL import Image

        os.makedirs(path, exist_ok=True)
        for i, frame in enumerate(arr):
            Image.fromarray(frame).save(os.path.join(path, f"frame_{i:05d}.png"))
        return path
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(directory, f".{stem}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        if kind == "gif":
            from PIL import Image

            images = [Image.fromarray(f) for f in arr]
            images[0].save(tmp, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
        else:
            imageio = _ffmpeg()
            pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
            if pad_h or pad_w:
                arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            imageio.mimwrite(tmp, list(arr), fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1,
                             ffmpeg_log_level="error")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
