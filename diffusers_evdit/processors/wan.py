"""Wan 2.x: self-attention over video tokens only; cross-attention to text is left untouched."""

from __future__ import annotations

from .families import WAN, WanTileSparseAttnProcessor

__all__ = ["WAN", "WanTileSparseAttnProcessor"]
