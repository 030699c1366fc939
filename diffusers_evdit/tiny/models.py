"""Tiny random configurations of every supported diffusers video transformer, and matching forward inputs.

Used by the tests and by ``evdit smoke``: the real model classes, shrunk so that a forward takes milliseconds on a
CPU. Random weights say nothing about quality; they only check that the plumbing computes the right function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..processors.cogvideox import cogvideox_rotary_emb

TINY_FAMILIES = ("cogvideox", "wan", "hunyuan_video")  # the families with tiny pipelines too


@dataclass(frozen=True)
class TinyVideo:
    """Latent video size of a tiny input: ``frames`` latent frames of ``height x width`` latent pixels.

    Example:
        >>> t = tiny_transformer("cogvideox")
        >>> tiny_inputs(t, TinyVideo(frames=4, batch=2))["hidden_states"].shape   # CogVideoX: (B, F, C, H, W)
        torch.Size([2, 4, 4, 8, 8])
    """

    frames: int = 6
    height: int = 8
    width: int = 8
    text_tokens: int = 7
    batch: int = 1


@dataclass(frozen=True)
class TinyModel:
    """A tiny configuration: the diffusers class, its config (``num_layers`` filled in by ``layers``), the patch
    size ``(t, h, w)`` the tests check layouts against, and the extra tokens self-attention sees.

    Example:
        >>> TINY_MODELS["ltx_video"].class_name, TINY_MODELS["ltx_video"].patch
        ('LTXVideoTransformer3DModel', (1, 1, 1))
    """

    class_name: str
    config: Callable[[int], dict]
    inputs: Callable  # (model, video, randn, padded_text) -> forward kwargs
    patch: tuple[int, int, int] = (1, 2, 2)
    extra_tokens: Callable[[TinyVideo, int], int] = lambda video, padded: 0  # per sample 0 of the batch
    text_first: bool = False
    batch_one: bool = False  # the model takes one sample a call
    zero_init: bool = False  # the class zero-initialises layers that would hide the attention: fill them randomly


def _mask(video: TinyVideo, padded: int) -> torch.Tensor:
    mask = torch.ones(video.batch, video.text_tokens, dtype=torch.long)
    if padded:
        mask[-1, -padded:] = 0
    return mask


def _timestep(video: TinyVideo) -> torch.Tensor:
    return torch.full((video.batch,), 500, dtype=torch.long)


def _wan_config(**extra):
    def config(layers: int) -> dict:
        base = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                    text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
        return {**base, **extra}

    return config


def _wan_inputs(model, v, randn, padded):  # channels and text width from the config: full-size configs too
    c = model.config
    return dict(hidden_states=randn(v.batch, c.in_channels, v.frames, v.height, v.width),
                encoder_hidden_states=randn(v.batch, v.text_tokens, c.text_dim), timestep=_timestep(v))


def _cogvideox_inputs(model, v, randn, padded):
    c = model.config
    return dict(hidden_states=randn(v.batch, v.frames, c.in_channels, v.height, v.width),
                encoder_hidden_states=randn(v.batch, v.text_tokens, c.text_embed_dim), timestep=_timestep(v),
                image_rotary_emb=cogvideox_rotary_emb(model, v.frames, v.height, v.width, "cpu"))


def _hunyuan_config(**extra):
    def config(layers: int) -> dict:
        return dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=layers,
                    num_single_layers=layers, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
                    pooled_projection_dim=8, rope_axes_dim=(4, 6, 6), **extra)

    return config


def _hunyuan_inputs(model, v, randn, padded):
    x = dict(hidden_states=randn(v.batch, 4, v.frames, v.height, v.width),
             encoder_hidden_states=randn(v.batch, v.text_tokens, 16), encoder_attention_mask=_mask(v, padded),
             pooled_projections=randn(v.batch, 8), timestep=_timestep(v))
    if model.config.guidance_embeds:
        x["guidance"] = torch.full((v.batch,), 3500.0)
    return x


def _skyreels_df_inputs(model, v, randn, padded):
    per_frame = torch.linspace(900, 100, v.frames).round().long()
    return dict(_wan_inputs(model, v, randn, padded), timestep=per_frame.expand(v.batch, -1).contiguous(),
                enable_diffusion_forcing=True)


def _vace_inputs(model, v, randn, padded):
    control = randn(v.batch, 6, v.frames, v.height, v.width)
    return dict(_wan_inputs(model, v, randn, padded), control_hidden_states=control,
                control_hidden_states_scale=torch.ones(len(model.config.vace_layers)))


def _animate_inputs(model, v, randn, padded):
    return dict(hidden_states=randn(v.batch, 12, v.frames, v.height, v.width), timestep=_timestep(v),
                encoder_hidden_states=randn(v.batch, v.text_tokens, 16),
                encoder_hidden_states_image=randn(v.batch, 3, 8),
                pose_hidden_states=randn(v.batch, 4, v.frames - 1, v.height, v.width),
                face_pixel_values=randn(v.batch, 3, 4 * (v.frames - 1) - 3, 16, 16))


def _anyflow_inputs(model, v, randn, padded):
    return dict(hidden_states=randn(v.batch, 4, v.frames, v.height, v.width),
                timestep=torch.full((v.batch, v.frames), 500.0), r_timestep=torch.full((v.batch, v.frames), 250.0),
                encoder_hidden_states=randn(v.batch, v.text_tokens, 16))


def _ltx_inputs(model, v, randn, padded):
    return dict(hidden_states=randn(v.batch, v.frames * v.height * v.width, 4),
                encoder_hidden_states=randn(v.batch, v.text_tokens, 16), timestep=_timestep(v),
                encoder_attention_mask=_mask(v, padded), num_frames=v.frames, height=v.height, width=v.width)


def _ltx2_inputs(model, v, randn, padded):
    return dict(hidden_states=randn(v.batch, v.frames * v.height * v.width, 4),
                audio_hidden_states=randn(v.batch, 6, 4),
                encoder_hidden_states=randn(v.batch, v.text_tokens, 16),
                audio_encoder_hidden_states=randn(v.batch, v.text_tokens, 16), timestep=_timestep(v),
                num_frames=v.frames, height=v.height, width=v.width, audio_num_frames=6)


def _hunyuan15_inputs(model, v, randn, padded):
    channels = model.config.in_channels  # 9 = 4 latent + 4 condition + 1 mask channels (the T2V pipeline)
    return dict(hidden_states=randn(v.batch, channels, v.frames, v.height, v.width), timestep=_timestep(v).float(),
                encoder_hidden_states=randn(v.batch, v.text_tokens, 16), encoder_attention_mask=_mask(v, padded),
                encoder_hidden_states_2=randn(v.batch, 3, 8), encoder_attention_mask_2=torch.ones(v.batch, 3),
                image_embeds=randn(v.batch, 4, 12))


def _cosmos_inputs(model, v, randn, padded):
    return dict(hidden_states=randn(v.batch, 4, v.frames, v.height, v.width), timestep=_timestep(v),
                encoder_hidden_states=randn(v.batch, v.text_tokens, 16))


def _text_video_inputs(frames_first: bool):
    def inputs(model, v, randn, padded):
        shape = (v.batch, v.frames, 4, v.height, v.width) if frames_first else (v.batch, 4, v.frames, v.height, v.width)
        return dict(hidden_states=randn(*shape), encoder_hidden_states=randn(v.batch, v.text_tokens, 16),
                    timestep=_timestep(v))

    return inputs


def _mochi_inputs(model, v, randn, padded):
    return dict(_text_video_inputs(False)(model, v, randn, padded), encoder_attention_mask=_mask(v, padded))


def _motif_inputs(model, v, randn, padded):
    return dict(hidden_states=randn(v.batch, 4, v.frames, v.height, v.width), timestep=_timestep(v),
                encoder_hidden_states=randn(v.batch, v.text_tokens, 16), encoder_attention_mask=_mask(v, padded),
                image_embeds=randn(v.batch, 3, 12))


def _kandinsky_inputs(model, v, randn, padded):
    return dict(hidden_states=randn(1, v.frames, v.height, v.width, 4),
                encoder_hidden_states=randn(1, v.text_tokens, 16),
                timestep=torch.tensor([500.0]), pooled_projections=randn(1, 8),
                visual_rope_pos=[torch.arange(v.frames), torch.arange(v.height // 2), torch.arange(v.width // 2)],
                text_rope_pos=torch.arange(v.text_tokens))


def _text(video: TinyVideo, padded: int) -> int:
    return video.text_tokens


TINY_MODELS: dict[str, TinyModel] = {
    "cogvideox": TinyModel("CogVideoXTransformer3DModel", lambda n: dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=n, sample_width=8, sample_height=8, sample_frames=21, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=7, use_rotary_positional_embeddings=True),
        _cogvideox_inputs, extra_tokens=_text, text_first=True),
    "wan": TinyModel("WanTransformer3DModel", _wan_config(), _wan_inputs),
    "hunyuan_video": TinyModel("HunyuanVideoTransformer3DModel", _hunyuan_config(guidance_embeds=True),
                               _hunyuan_inputs, extra_tokens=_text),
    "hunyuan_video_i2v": TinyModel("HunyuanVideoTransformer3DModel",
                                   _hunyuan_config(guidance_embeds=False, image_condition_type="token_replace"),
                                   _hunyuan_inputs, extra_tokens=_text),
    "ltx_video": TinyModel("LTXVideoTransformer3DModel", lambda n: dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=n, caption_channels=16), _ltx_inputs, patch=(1, 1, 1)),
    "ltx2_video": TinyModel("LTX2VideoTransformer3DModel", lambda n: dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=8,
        audio_cross_attention_dim=16, num_layers=n, caption_channels=16), _ltx2_inputs, patch=(1, 1, 1)),
    "hunyuan_video15": TinyModel("HunyuanVideo15Transformer3DModel", lambda n: dict(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=n,
        num_refiner_layers=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(4, 6, 6),
        target_size=64, task_type="t2v"), _hunyuan15_inputs, patch=(1, 1, 1),
        extra_tokens=lambda v, padded: 4 + 3 + v.text_tokens),
    "skyreels_v2": TinyModel("SkyReelsV2Transformer3DModel", _wan_config(), _wan_inputs),
    "skyreels_v2_df": TinyModel("SkyReelsV2Transformer3DModel", _wan_config(num_frame_per_block=2),
                                _skyreels_df_inputs),
    "wan_vace": TinyModel("WanVACETransformer3DModel", lambda n: _wan_config(
        vace_layers=list(range(n)), vace_in_channels=6)(n), _vace_inputs),
    "wan_animate": TinyModel("WanAnimateTransformer3DModel", _wan_config(
        in_channels=12, latent_channels=4, image_dim=8, motion_encoder_size=16, motion_style_dim=8, motion_dim=4,
        motion_encoder_dim=8, face_encoder_hidden_dim=8, face_encoder_num_heads=2, inject_face_latents_blocks=1,
        motion_encoder_batch_size=2), _animate_inputs),
    "chronoedit": TinyModel("ChronoEditTransformer3DModel", _wan_config(rope_temporal_skip_len=2), _wan_inputs),
    "anyflow": TinyModel("AnyFlowTransformer3DModel", lambda n: {
        k: v for k, v in _wan_config()(n).items() if k != "qk_norm"}, _anyflow_inputs),
    "cosmos": TinyModel("CosmosTransformer3DModel", lambda n: dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=n, text_embed_dim=16,
        adaln_lora_dim=4, max_size=(8, 16, 16), patch_size=(1, 2, 2), concat_padding_mask=False,
        extra_pos_embed_type="learnable"), _cosmos_inputs),
    "consisid": TinyModel("ConsisIDTransformer3DModel", lambda n: dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=n, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=7, cross_attn_interval=1, is_train_face=False, use_rotary_positional_embeddings=True),
        _cogvideox_inputs, extra_tokens=_text, text_first=True),
    "mochi": TinyModel("MochiTransformer3DModel", lambda n: dict(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=n, pooled_projection_dim=8,
        in_channels=4, text_embed_dim=16, time_embed_dim=4, max_sequence_length=7), _mochi_inputs,
        extra_tokens=_text),
    "easyanimate": TinyModel("EasyAnimateTransformer3DModel", lambda n: dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, sample_width=8,
        sample_height=8, time_embed_dim=8, num_layers=n, mmdit_layers=n, text_embed_dim=16),
        _text_video_inputs(False), extra_tokens=_text, text_first=True),
    "allegro": TinyModel("AllegroTransformer3DModel", lambda n: dict(
        patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        num_layers=n, cross_attention_dim=16, sample_height=8, sample_width=8, sample_frames=8, caption_channels=16),
        _text_video_inputs(False)),
    "motif_video": TinyModel("MotifVideoTransformer3DModel", lambda n: dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=max(1, n // 2),
        num_single_layers=max(1, n // 2), patch_size=2, text_embed_dim=16, image_embed_dim=12,
        rope_axes_dim=(4, 6, 6)), _motif_inputs, extra_tokens=lambda v, padded: 3 + v.text_tokens),
    "kandinsky5": TinyModel("Kandinsky5Transformer3DModel", lambda n: dict(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=n, axes_dims=(4, 6, 6)), _kandinsky_inputs,
        batch_one=True, zero_init=True),
}


def tiny_transformer(family: str, num_layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A tiny random transformer named by a key of :data:`TINY_MODELS` (``"cogvideox"``, ``"wan"``,
    ``"hunyuan_video"``, ``"ltx_video"``, ...), float32, eval.

    Example:
        >>> t = tiny_transformer("wan")
        >>> type(t).__name__
        'WanTransformer3DModel'
    """
    import diffusers

    if family not in TINY_MODELS:
        raise ValueError(f"Unknown tiny family {family!r}; choose one of {', '.join(TINY_MODELS)}.")
    spec = TINY_MODELS[family]
    torch.manual_seed(seed)
    model = getattr(diffusers, spec.class_name)(**spec.config(num_layers))
    if spec.zero_init:
        with torch.no_grad():
            for param in model.parameters():
                if not param.any():
                    param.normal_(0.0, 0.2)
    model._evdit_tiny_name = family
    return model.eval()


def tiny_name(model: torch.nn.Module) -> str:
    """The :data:`TINY_MODELS` key of a model built by :func:`tiny_transformer` (else the first key of its class).

    Example:
        >>> tiny_name(tiny_transformer("hunyuan_video_i2v"))
        'hunyuan_video_i2v'
    """
    name = getattr(model, "_evdit_tiny_name", None)
    if name is not None:
        return name
    for key, spec in TINY_MODELS.items():
        if spec.class_name == type(model).__name__:
            return key
    raise ValueError(f"No tiny inputs for {type(model).__name__}.")


def tiny_inputs(model: torch.nn.Module, video: TinyVideo = TinyVideo(), seed: int = 0, padded_text: int = 2) -> dict:
    """Forward keyword arguments for ``model`` (from :func:`tiny_transformer`) on a random latent ``video``.

    Where the model takes a text mask, the last ``padded_text`` text tokens of the last batch element are padding.

    Example:
        >>> t = tiny_transformer("hunyuan_video")
        >>> x = tiny_inputs(t, TinyVideo(batch=2))
        >>> x["hidden_states"].shape, x["encoder_attention_mask"][-1].tolist()
        (torch.Size([2, 4, 6, 8, 8]), [1, 1, 1, 1, 1, 0, 0])
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    return TINY_MODELS[tiny_name(model)].inputs(model, video, randn, padded_text)
