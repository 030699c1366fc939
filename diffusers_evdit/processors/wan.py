"""Wan 2.x: self-attention over video tokens only; cross-attention to text is left untouched."""

from __future__ import annotations

import torch

from ..layout import TEXT_NONE, layout_from_latents
from .base import (
    ModelFamily,
    TileSparseAttnProcessor,
    dispatch_dense_fn,
    forward_arg,
)


def _apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor):
    """Wan's interleaved RoPE, as in diffusers' ``WanAttnProcessor``."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class WanTileSparseAttnProcessor(TileSparseAttnProcessor):
    """Tile-sparse version of diffusers' ``WanAttnProcessor`` for the self-attention ``attn1`` of each block.

    Wan attends to the text by cross-attention (``attn2``), which keeps its stock processor; the self-attention
    sequence is video only.

    Example:
        >>> from diffusers_evdit import MaskPlan, apply_mask_plan
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1))
        >>> t.blocks[0].attn1.processor, type(t.blocks[0].attn2.processor).__name__
        (WanTileSparseAttnProcessor(layer=0, k=1), 'WanAttnProcessor')
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        where = f"Wan layer {self.layer_index}"
        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise ValueError(f"{where}: tile-sparse processors only replace Wan's self-attention (attn1).")
        batch_size, sequence_length, _ = hidden_states.shape
        layout = self.state.layout(0, TEXT_NONE, where)
        self.check_seq_len(layout, sequence_length, where)
        key_padding_mask = self.key_padding(attention_mask, batch_size, layout.seq_len, where)

        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        dense_fn = dispatch_dense_fn(self, attention_mask)
        out = self.tile_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), layout, key_padding_mask, dense_fn
        )
        hidden_states = out.transpose(1, 2).flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _attention_modules(transformer):
    return [(f"blocks.{i}.attn1", block.attn1) for i, block in enumerate(transformer.blocks)]


def _video_layout(transformer, args, kwargs):
    latents = forward_arg(args, kwargs, "hidden_states")  # [B, C, F, H, W]
    return layout_from_latents(tuple(latents.shape[2:]), tuple(transformer.config.patch_size))


WAN = ModelFamily(
    name="wan",
    class_names=("WanTransformer3DModel",),
    attention_modules=_attention_modules,
    processor_cls=WanTileSparseAttnProcessor,
    video_layout=_video_layout,
    text_position=TEXT_NONE,
)
