"""HunyuanVideo 1.5 text-to-video (``HunyuanVideo15Pipeline``) for distillation: the transformer input, text
conditioning and guidance scale its pipeline uses (:mod:`.predictors` calls them)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["guider_guidance_scale", "hunyuan_video15_inputs", "hunyuan_video15_prompts"]

#: ``HunyuanVideo15Pipeline.vision_num_semantic_tokens``: the tokens of its all-zero text-to-video ``image_embeds``.
VISION_TOKENS = 729


def hunyuan_video15_inputs(module: nn.Module, latents: torch.Tensor,
                           vision_tokens: int = VISION_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hidden_states, image_embeds)`` of ``HunyuanVideo15Pipeline``'s text-to-video transformer call on latents
    ``(B, C, F, H, W)``: the latents followed by the zero condition latents and zero mask of
    ``prepare_cond_latents_and_mask`` (``2 C + 1`` channels, the transformer's ``in_channels``), and all-zero
    ``image_embeds`` ``(B, vision_tokens, image_embed_dim)`` (the transformer masks their tokens out).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> x, image = hunyuan_video15_inputs(tiny_transformer("hunyuan_video15"), torch.randn(2, 4, 3, 4, 4))
        >>> x.shape, image.shape, bool(x[:, 4:].eq(0).all())
        (torch.Size([2, 9, 3, 4, 4]), torch.Size([2, 729, 12]), True)
    """
    from diffusers import HunyuanVideo15Pipeline

    cond_latents, mask = HunyuanVideo15Pipeline.prepare_cond_latents_and_mask(None, latents, latents.dtype,
                                                                              latents.device)
    hidden_states = torch.cat([latents, cond_latents, mask], dim=1)
    if hidden_states.shape[1] != module.config.in_channels:
        raise ValueError(
            f"HunyuanVideo 1.5 text-to-video input has {hidden_states.shape[1]} channels (latents, zero condition "
            f"latents, zero mask) but the transformer takes {module.config.in_channels}; pass latents with the VAE's "
            f"{(module.config.in_channels - 1) // 2} channels."
        )
    image_embeds = torch.zeros(latents.shape[0], vision_tokens, module.config.image_embed_dim, dtype=latents.dtype,
                               device=latents.device)
    return hidden_states, image_embeds


def hunyuan_video15_prompts(pipe, prompts: list[str], device=None, dtype=None) -> dict:
    """``HunyuanVideo15Pipeline.encode_prompt`` of ``prompts`` (the Qwen2.5-VL embedding of the chat template and the
    ByT5 embedding of quoted glyph text, with their masks) as the transformer's keyword arguments:
    ``encoder_hidden_states``, ``encoder_attention_mask``, ``encoder_hidden_states_2``, ``encoder_attention_mask_2``.
    ``dtype`` defaults to the transformer's, as the pipeline passes it.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> sorted(hunyuan_video15_prompts(tiny_pipeline("hunyuan_video15"), ["a dog"]))
        ['encoder_attention_mask', 'encoder_attention_mask_2', 'encoder_hidden_states', 'encoder_hidden_states_2']
    """
    embeds, mask, embeds_2, mask_2 = pipe.encode_prompt(prompt=list(prompts), device=device,
                                                        dtype=dtype or pipe.transformer.dtype,
                                                        batch_size=len(prompts))
    return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "encoder_hidden_states_2": embeds_2,
            "encoder_attention_mask_2": mask_2}


def guider_guidance_scale(guider) -> float:
    """The scale ``w`` of ``uncond + w (cond - uncond)`` (the MLCD teacher's guidance, see
    :func:`~.mlcd.guided_prediction`) that a ``ClassifierFreeGuidance`` guider (``pipe.guider``) applies at every step:
    1 when it is disabled or at scale 1, ``guidance_scale + 1`` with ``use_original_formulation``
    (``cond + s (cond - uncond)``). Guiders that are not the same formula at every step (``guidance_rescale``,
    ``start`` / ``stop`` windows, other guidance methods) raise ``NotImplementedError``.

    Example:
        >>> from diffusers.guiders import ClassifierFreeGuidance
        >>> guider_guidance_scale(ClassifierFreeGuidance(guidance_scale=6.0))
        6.0
        >>> guider_guidance_scale(ClassifierFreeGuidance(guidance_scale=6.0, use_original_formulation=True))
        7.0
    """
    from diffusers.guiders import ClassifierFreeGuidance

    if type(guider) is not ClassifierFreeGuidance:
        raise NotImplementedError(
            f"The MLCD teacher guides as ClassifierFreeGuidance does (uncond + w (cond - uncond)), not as "
            f"{type(guider).__name__}; give the pipeline a ClassifierFreeGuidance guider."
        )
    config = guider.config
    if not config.get("enabled", True):
        return 1.0
    if config.get("guidance_rescale", 0.0) > 0 or config.get("start", 0.0) > 0 or config.get("stop", 1.0) < 1:
        raise NotImplementedError(
            "The MLCD teacher guides every step as uncond + w (cond - uncond): guiders with guidance_rescale > 0 or a "
            f"start / stop window are not reproduced (got {dict(config)}); pass --guidance_scale to override."
        )
    scale = float(guider.guidance_scale)
    if config.get("use_original_formulation", False):
        return 1.0 if math.isclose(scale, 0.0) else scale + 1.0
    return scale
