"""HunyuanVideo: video tokens first, then text (with a text padding mask), in double- and single-stream blocks."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import apply_rotary_emb

from ..layout import TEXT_LAST, layout_from_latents
from .base import (
    ModelFamily,
    TileSparseAttnProcessor,
    dispatch_dense_fn,
    forward_arg,
)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(2, (heads, -1))


class HunyuanVideoTileSparseAttnProcessor(TileSparseAttnProcessor):
    """Tile-sparse version of diffusers' ``HunyuanVideoAttnProcessor2_0``; the text padding mask still applies.

    Installed on the ``attn`` of the double-stream blocks, then of the single-stream blocks (plan order); the
    self-attention sequence is the video, then the text.

    Example:
        >>> from diffusers_evdit import MaskPlan, apply_mask_plan, num_plan_layers
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = tiny_transformer("hunyuan_video")            # 2 double-stream + 2 single-stream blocks
        >>> t = apply_mask_plan(t, MaskPlan.uniform(num_plan_layers(t), k=1))
        >>> t.single_transformer_blocks[1].attn.processor
        HunyuanVideoTileSparseAttnProcessor(layer=3, k=1)
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        where = f"HunyuanVideo layer {self.layer_index}"
        num_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        joint_in_processor = attn.add_q_proj is None and encoder_hidden_states is not None
        if joint_in_processor:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        query = _heads(attn.to_q(hidden_states), attn.heads)
        key = _heads(attn.to_k(hidden_states), attn.heads)
        value = _heads(attn.to_v(hidden_states), attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if image_rotary_emb is not None:
            if joint_in_processor:
                query = torch.cat(
                    [apply_rotary_emb(query[:, :-num_text], image_rotary_emb, sequence_dim=1), query[:, -num_text:]],
                    dim=1,
                )
                key = torch.cat(
                    [apply_rotary_emb(key[:, :-num_text], image_rotary_emb, sequence_dim=1), key[:, -num_text:]], dim=1
                )
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            encoder_query = _heads(attn.add_q_proj(encoder_hidden_states), attn.heads)
            encoder_key = _heads(attn.add_k_proj(encoder_hidden_states), attn.heads)
            encoder_value = _heads(attn.add_v_proj(encoder_hidden_states), attn.heads)
            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        batch_size, sequence_length = query.shape[:2]
        layout = self.state.layout(num_text, TEXT_LAST, where)
        self.check_seq_len(layout, sequence_length, where)
        key_padding_mask = self.key_padding(attention_mask, batch_size, layout.seq_len, where)

        dense_fn = dispatch_dense_fn(self, None if key_padding_mask is None else attention_mask)
        out = self.tile_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), layout, key_padding_mask, dense_fn
        )
        hidden_states = out.transpose(1, 2).flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :-num_text], hidden_states[:, -num_text:]
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _attention_modules(transformer):
    double = [(f"transformer_blocks.{i}.attn", b.attn) for i, b in enumerate(transformer.transformer_blocks)]
    single = [(f"single_transformer_blocks.{i}.attn", b.attn) for i, b in enumerate(transformer.single_transformer_blocks)]
    return double + single


def _video_layout(transformer, args, kwargs):
    latents = forward_arg(args, kwargs, "hidden_states")  # [B, C, F, H, W]
    cfg = transformer.config
    return layout_from_latents(tuple(latents.shape[2:]), (cfg.patch_size_t, cfg.patch_size, cfg.patch_size))


HUNYUAN_VIDEO = ModelFamily(
    name="hunyuan_video",
    class_names=("HunyuanVideoTransformer3DModel",),
    attention_modules=_attention_modules,
    processor_cls=HunyuanVideoTileSparseAttnProcessor,
    video_layout=_video_layout,
    text_position=TEXT_LAST,
)
