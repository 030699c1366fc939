"""HunyuanVideo: video tokens first, then text (with a text padding mask), in double- and single-stream blocks."""

from __future__ import annotations

from .base import TileSparseAttnProcessor
from .families import HUNYUAN_VIDEO


class HunyuanVideoTileSparseAttnProcessor(TileSparseAttnProcessor):
    """:class:`TileSparseAttnProcessor` for HunyuanVideo (video, then text with its padding mask; double-stream
    blocks, then single-stream blocks).

    Example:
        >>> from diffusers_evdit import MaskPlan, apply_mask_plan, num_plan_layers
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = tiny_transformer("hunyuan_video")            # 2 double-stream + 2 single-stream blocks
        >>> t = apply_mask_plan(t, MaskPlan.uniform(num_plan_layers(t), k=1))
        >>> t.single_transformer_blocks[1].attn.processor
        HunyuanVideoTileSparseAttnProcessor(layer=3, k=1)
    """

    family_name = "hunyuan_video"


__all__ = ["HUNYUAN_VIDEO", "HunyuanVideoTileSparseAttnProcessor"]
