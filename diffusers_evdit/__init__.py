"""diffusers-evdit: Efficient-vDiT (Attention Tile sparse attention) for Hugging Face diffusers video transformers.

Two lines on top of a diffusers pipeline::

    from diffusers_evdit import MaskPlan, apply_mask_plan
    apply_mask_plan(pipe.transformer, MaskPlan.uniform(len(pipe.transformer.transformer_blocks), k=2))
"""

from . import schedulers  # registers the few-step MLCD schedulers so saved students reload
from .kernels import TileAttention, tile_attention
from .layout import TileLayout, layout_from_latents
from .masks import element_sparsity, format_mask, reference_frames, tile_mask
from .plan import MaskPlan, apply_mask_plan, get_mask_plan, mask_plan_processors, num_plan_layers, remove_mask_plan
from .processors import TileAttentionConfig, refused_models
from .generation import GenerationDefaults
from .pipeline import EfficientVDiTPipeline, mask_plan_model_card
from .processors import (
    CogVideoXTileSparseAttnProcessor,
    HunyuanVideoTileSparseAttnProcessor,
    TileSparseAttnProcessor,
    WanTileSparseAttnProcessor,
    supported_models,
)
from .analysis import AttentionProfile, profile_attention, record_transformer_inputs, tile_statistics
from .search import budget_search, greedy_search, solve_budget_exact, solve_budget_lagrangian

__version__ = "0.1.0"

__all__ = [
    "GenerationDefaults",
    "TileAttentionConfig",
    "mask_plan_processors",
    "refused_models",
    "AttentionProfile",
    "budget_search",
    "greedy_search",
    "profile_attention",
    "record_transformer_inputs",
    "solve_budget_exact",
    "solve_budget_lagrangian",
    "tile_statistics",
    "CogVideoXTileSparseAttnProcessor",
    "EfficientVDiTPipeline",
    "mask_plan_model_card",
    "HunyuanVideoTileSparseAttnProcessor",
    "MaskPlan",
    "TileAttention",
    "TileLayout",
    "TileSparseAttnProcessor",
    "WanTileSparseAttnProcessor",
    "apply_mask_plan",
    "element_sparsity",
    "format_mask",
    "get_mask_plan",
    "layout_from_latents",
    "num_plan_layers",
    "reference_frames",
    "remove_mask_plan",
    "supported_models",
    "tile_attention",
    "tile_mask",
]
