"""HunyuanVideo: video tokens first, then text (with a text padding mask), in double- and single-stream blocks."""

from __future__ import annotations

from .families import HUNYUAN_VIDEO, HunyuanVideoTileSparseAttnProcessor

__all__ = ["HUNYUAN_VIDEO", "HunyuanVideoTileSparseAttnProcessor"]
