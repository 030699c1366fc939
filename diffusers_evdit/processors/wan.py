"""Wan 2.x: self-attention over video tokens only; cross-attention to text is left untouched."""

from __future__ import annotations

from .base import TileSparseAttnProcessor
from .families import WAN


class WanTileSparseAttnProcessor(TileSparseAttnProcessor):
    """:class:`TileSparseAttnProcessor` for Wan 2.x (video-only self-attention ``attn1``; ``attn2`` stays stock).

    Example:
        >>> from diffusers_evdit import MaskPlan, apply_mask_plan
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1))
        >>> t.blocks[0].attn1.processor, type(t.blocks[0].attn2.processor).__name__
        (WanTileSparseAttnProcessor(layer=0, k=1), 'WanAttnProcessor')
    """

    family_name = "wan"


__all__ = ["WAN", "WanTileSparseAttnProcessor"]
