"""Tiny random configurations of the supported diffusers transformers, and matching inputs.

Used by the tests and by ``evdit smoke``: the real model classes, shrunk so that a forward takes milliseconds on a
CPU. Random weights say nothing about quality; they only check that the plumbing computes the right function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel

from .processors.cogvideox import cogvideox_rotary_emb

TINY_FAMILIES = ("cogvideox", "wan", "hunyuan_video")


@dataclass(frozen=True)
class TinyVideo:
    """Latent video size of a tiny input: ``frames`` latent frames of ``height x width`` latent pixels."""

    frames: int = 6
    height: int = 8
    width: int = 8
    text_tokens: int = 7
    batch: int = 1


def tiny_transformer(family: str, num_layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A tiny random transformer of ``family`` (``"cogvideox"``, ``"wan"`` or ``"hunyuan_video"``), float32, eval.

    Example:
        >>> t = tiny_transformer("wan")
        >>> type(t).__name__
        'WanTransformer3DModel'
    """
    torch.manual_seed(seed)
    if family == "cogvideox":
        model = CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            time_embed_dim=8,
            text_embed_dim=16,
            num_layers=num_layers,
            sample_width=8,
            sample_height=8,
            sample_frames=21,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=7,
            use_rotary_positional_embeddings=True,
        )
    elif family == "wan":
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=16,
            ffn_dim=32,
            num_layers=num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
    elif family == "hunyuan_video":
        model = HunyuanVideoTransformer3DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=num_layers,
            num_single_layers=num_layers,
            num_refiner_layers=1,
            patch_size=2,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(4, 6, 6),
        )
    else:
        raise ValueError(f"Unknown tiny family {family!r}; choose one of {', '.join(TINY_FAMILIES)}.")
    return model.eval()


def tiny_inputs(model: torch.nn.Module, video: TinyVideo = TinyVideo(), seed: int = 0, padded_text: int = 2) -> dict:
    """Forward keyword arguments for ``model`` (from :func:`tiny_transformer`) on a random latent ``video``.

    For HunyuanVideo the last ``padded_text`` text tokens of the last batch element are padding (masked out).
    """
    g = torch.Generator().manual_seed(seed)
    b, c = video.batch, model.config.in_channels
    name = type(model).__name__

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    if name == "CogVideoXTransformer3DModel":
        return dict(
            hidden_states=randn(b, video.frames, c, video.height, video.width),
            encoder_hidden_states=randn(b, video.text_tokens, model.config.text_embed_dim),
            timestep=torch.full((b,), 500, dtype=torch.long),
            image_rotary_emb=cogvideox_rotary_emb(model, video.frames, video.height, video.width, "cpu"),
        )
    if name == "WanTransformer3DModel":
        return dict(
            hidden_states=randn(b, c, video.frames, video.height, video.width),
            encoder_hidden_states=randn(b, video.text_tokens, model.config.text_dim),
            timestep=torch.full((b,), 500, dtype=torch.long),
        )
    if name == "HunyuanVideoTransformer3DModel":
        mask = torch.ones(b, video.text_tokens, dtype=torch.long)
        if padded_text:
            mask[-1, -padded_text:] = 0
        return dict(
            hidden_states=randn(b, c, video.frames, video.height, video.width),
            encoder_hidden_states=randn(b, video.text_tokens, model.config.text_embed_dim),
            encoder_attention_mask=mask,
            pooled_projections=randn(b, model.config.pooled_projection_dim),
            timestep=torch.full((b,), 500, dtype=torch.long),
            guidance=torch.full((b,), 3500.0),
        )
    raise ValueError(f"No tiny inputs for {name}.")
