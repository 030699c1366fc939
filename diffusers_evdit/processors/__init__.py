"""Tile-sparse attention processors: one generic processor around diffusers' own, and the model families as data."""

from __future__ import annotations

from .base import TileSparseAttnProcessor
from .cogvideox import CogVideoXTileSparseAttnProcessor
from .families import FAMILIES
from .family import ModelFamily
from .hunyuan_video import HunyuanVideoTileSparseAttnProcessor
from .registry import family_for, is_supported_class, refused_models, supported_models
from .state import TileAttentionConfig, TileState
from .wan import WanTileSparseAttnProcessor


__all__ = [
    "FAMILIES",
    "ModelFamily",
    "TileAttentionConfig",
    "TileSparseAttnProcessor",
    "TileState",
    "CogVideoXTileSparseAttnProcessor",
    "WanTileSparseAttnProcessor",
    "HunyuanVideoTileSparseAttnProcessor",
    "family_for",
    "is_supported_class",
    "refused_models",
    "supported_models",
]
