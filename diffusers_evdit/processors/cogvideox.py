"""CogVideoX (and CogVideoX 1.5): text tokens first, then video, in one joint self-attention."""

from __future__ import annotations

from .families import COGVIDEOX, CogVideoXTileSparseAttnProcessor


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
