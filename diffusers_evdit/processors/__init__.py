"""Tile-sparse attention processors, one module per model family."""

from __future__ import annotations

from torch import nn

from .base import ModelFamily, TileSparseAttnProcessor, TileState
from .cogvideox import COGVIDEOX, CogVideoXTileSparseAttnProcessor
from .hunyuan_video import HUNYUAN_VIDEO, HunyuanVideoTileSparseAttnProcessor
from .wan import WAN, WanTileSparseAttnProcessor

FAMILIES: tuple[ModelFamily, ...] = (COGVIDEOX, WAN, HUNYUAN_VIDEO)


def supported_models() -> list[str]:
    """Transformer class names that accept a mask plan.

    Example:
        >>> supported_models()
        ['CogVideoXTransformer3DModel', 'WanTransformer3DModel', 'HunyuanVideoTransformer3DModel']
    """
    return [name for family in FAMILIES for name in family.class_names]


def family_for(transformer: nn.Module) -> ModelFamily:
    """The :class:`ModelFamily` of ``transformer``; ``TypeError`` naming the supported classes otherwise.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> family_for(tiny_transformer("hunyuan_video")).name
        'hunyuan_video'
    """
    name = type(transformer).__name__
    for family in FAMILIES:
        if name in family.class_names:
            return family
    raise TypeError(
        f"{name} is not supported by diffusers-evdit. Supported transformers: {', '.join(supported_models())}. "
        "Pass the pipeline's transformer (pipe.transformer), not the pipeline."
    )


__all__ = [
    "FAMILIES",
    "ModelFamily",
    "TileSparseAttnProcessor",
    "TileState",
    "CogVideoXTileSparseAttnProcessor",
    "WanTileSparseAttnProcessor",
    "HunyuanVideoTileSparseAttnProcessor",
    "family_for",
    "supported_models",
]
