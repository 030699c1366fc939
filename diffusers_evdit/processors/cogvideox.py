"""CogVideoX (and CogVideoX 1.5): text tokens first, then video, in one joint self-attention."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb

from ..layout import TEXT_FIRST, layout_from_latents
from .base import ModelFamily, TileSparseAttnProcessor, forward_arg


class CogVideoXTileSparseAttnProcessor(TileSparseAttnProcessor):
    """Tile-sparse version of diffusers' ``CogVideoXAttnProcessor2_0`` (same projections, QK norms and RoPE).

    Installed by :func:`~diffusers_evdit.apply_mask_plan` on the ``attn1`` of every ``CogVideoXBlock``; the joint
    self-attention sequence is the text tokens first, then the video.

    Example:
        >>> from diffusers_evdit import MaskPlan, apply_mask_plan
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = apply_mask_plan(tiny_transformer("cogvideox"), MaskPlan([2, None]))
        >>> t.transformer_blocks[0].attn1.processor
        CogVideoXTileSparseAttnProcessor(layer=0, k=2)
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        where = f"CogVideoX layer {self.layer_index}"
        layout = self.state.layout(text_seq_length, TEXT_FIRST, where)
        self.check_seq_len(layout, sequence_length, where)
        key_padding_mask = self.key_padding(attention_mask, batch_size, layout.seq_len, where)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

        hidden_states = self.tile_attention(query, key, value, layout, key_padding_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states


def _attention_modules(transformer):
    return [(f"transformer_blocks.{i}.attn1", block.attn1) for i, block in enumerate(transformer.transformer_blocks)]


def _video_layout(transformer, args, kwargs):
    latents = forward_arg(args, kwargs, "hidden_states")  # [B, F, C, H, W]
    cfg = transformer.config
    return layout_from_latents(
        (latents.shape[1], latents.shape[3], latents.shape[4]), (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)
    )


COGVIDEOX = ModelFamily(
    name="cogvideox",
    class_names=("CogVideoXTransformer3DModel",),
    attention_modules=_attention_modules,
    processor_cls=CogVideoXTileSparseAttnProcessor,
    video_layout=_video_layout,
    text_position=TEXT_FIRST,
)


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
