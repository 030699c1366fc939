"""Pictures of a demo run: contact sheet, labelled video grid, video file."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..data import video_grid
from ..video_io import write_video  # noqa: F401  (the demo's writer: the package's one)

def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], num_columns: int = 8, pad: int = 2,
):
    """A PNG-ready contact sheet (``PIL.Image``): per prompt a caption line, then one strip of ``num_columns``
    evenly spaced frames per labelled video.

    ``rows`` is ``[(caption, [(label, video), ...]), ...]`` with ``uint8 (T, H, W, 3)`` videos.

    Example:
        >>> from diffusers_evdit.data import render, sample_scene
        >>> v = render(sample_scene(0), 9, 32, 32)
        >>> contact_sheet([("a caption", [("real", v), ("copy", v)])], num_columns=4).size[1]  # caption + 2 strips
        86
    """
    from PIL import Image, ImageDraw

    font = _font()
    text_h = 16
    first = rows[0][1][0][1]
    t, h, w, _ = first.shape
    cols = min(num_columns, t)
    idx = np.linspace(0, t - 1, cols).round().astype(int)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([60] + [int(probe.textlength(label, font=font)) + 10 for _, vids in rows for label, _ in vids])
    text_w = max(int(probe.textlength(caption, font=font)) for caption, _ in rows) + 8
    width = max(label_w + cols * (w + pad) + pad, text_w)
    height = sum(text_h + len(vids) * (h + pad) + pad for _, vids in rows)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for caption, vids in rows:
        draw.text((4, y + 2), caption, fill=(0, 0, 0), font=font)
        y += text_h
        for label, video in vids:
            draw.text((4, y + h // 2 - 6), label, fill=(0, 0, 0), font=font)
            for j, fi in enumerate(idx):
                sheet.paste(Image.fromarray(np.asarray(video[fi], dtype=np.uint8)), (label_w + pad + j * (w + pad), y))
            y += h + pad
        y += pad
    return sheet


def labeled_video_grid(videos: Sequence[np.ndarray], ncols: int, labels: Sequence[str]) -> np.ndarray:
    """:func:`~diffusers_evdit.data.video_grid` with a header strip naming the ``ncols`` columns.

    Example:
        >>> from diffusers_evdit.data import render, sample_scene
        >>> v = render(sample_scene(0), 9, 32, 32)
        >>> labeled_video_grid([v, v], 2, ["real", "dense"]).shape
        (9, 50, 70, 3)
    """
    from PIL import Image, ImageDraw

    grid = video_grid(videos, ncols=ncols)
    t, gh, gw, _ = grid.shape
    w = videos[0].shape[2]
    header = Image.new("RGB", (gw, 14), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    font = _font()
    for j, label in enumerate(labels[:ncols]):
        draw.text((2 + j * (w + 2) + 2, 1), label, fill=(0, 0, 0), font=font)
    head = np.broadcast_to(np.asarray(header, dtype=np.uint8)[None], (t, 14, gw, 3))
    return np.concatenate([head, grid], axis=1)



