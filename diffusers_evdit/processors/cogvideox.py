"""CogVideoX (and CogVideoX 1.5): text tokens first, then video, in one joint self-attention."""

from __future__ import annotations

from .base import TileSparseAttnProcessor
from .families import COGVIDEOX


class CogVideoXTileSparseAttnProcessor(TileSparseAttnProcessor):
    """:class:`TileSparseAttnProcessor` for CogVideoX (text first, then video, in ``attn1`` of every block).

    Example:
        >>> from diffusers_evdit import MaskPlan, apply_mask_plan
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = apply_mask_plan(tiny_transformer("cogvideox"), MaskPlan([2, None]))
        >>> t.transformer_blocks[0].attn1.processor
        CogVideoXTileSparseAttnProcessor(layer=0, k=2)
    """

    family_name = "cogvideox"


def cogvideox_rotary_emb(transformer, latent_frames: int, latent_height: int, latent_width: int, device=None):
    """RoPE tables that ``CogVideoXPipeline`` passes as ``image_rotary_emb``, for a latent of the given size
    (CogVideoX 1.0 layout: the crop region spans the whole grid)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p = transformer.config.patch_size
    grid = (latent_height // p, latent_width // p)
    return get_3d_rotary_pos_embed(
        embed_dim=transformer.config.attention_head_dim,
        crops_coords=((0, 0), grid),
        grid_size=grid,
        temporal_size=latent_frames,
        device=device,
    )


__all__ = ["COGVIDEOX", "CogVideoXTileSparseAttnProcessor", "cogvideox_rotary_emb"]
