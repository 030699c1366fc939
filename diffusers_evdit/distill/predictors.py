"""Model calls for distillation: a diffusers transformer as a predictor ``(latents, timesteps, cond) -> output``,
and the conditioning and clean latents a pipeline's own encoders give."""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from ..generation import guider_scale, token_patch, vae_compression
from ..processors import family_for
from .common import call_default, unwrap
from .grid import DiffusionGrid, pipeline_mu, pipeline_sigmas
from .hunyuan_video15 import guider_guidance_scale, hunyuan_video15_inputs, hunyuan_video15_prompts

__all__ = [
    "PREDICTOR_FAMILIES",
    "TransformerPredictor",
    "check_predictor_family",
    "adapters_disabled",
    "clip_size_error",
    "draw_posterior",
    "encode_prompts",
    "encode_video_posteriors",
    "encode_videos",
    "num_frames_error",
    "pipeline_grid",
    "pipeline_guidance_scale",
]


#: Transformer families whose pipeline calls, text conditioning and latent scaling the distillation code reproduces.
PREDICTOR_FAMILIES = ("cogvideox", "wan", "hunyuan_video", "skyreels_v2", "ltx_video", "hunyuan_video15")
#: Families called, conditioned and scaled as Wan is (SkyReels-V2 text-to-video: a Wan transformer and VAE).
WAN_LIKE = ("wan", "skyreels_v2")


def check_predictor_family(transformer: nn.Module) -> str:
    """The family name of ``transformer`` (possibly wrapped) if distillation supports it, else ``NotImplementedError``.

    Every supported transformer takes mask plans for inference; MLCD and KD also need the way its pipeline calls it,
    encodes prompts and scales latents, written here for :data:`PREDICTOR_FAMILIES` only.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> check_predictor_family(tiny_transformer("wan"))
        'wan'
    """
    module = unwrap(transformer)
    family = family_for(module).name
    if family == "skyreels_v2" and (module.config.get("num_frame_per_block") or 1) > 1:
        raise NotImplementedError(
            "Distillation of diffusion-forcing SkyReels-V2 transformers (num_frame_per_block > 1: per-frame "
            "timesteps) is not supported; distil a text-to-video SkyReels-V2 model. Mask plans still work on it."
        )
    if family not in PREDICTOR_FAMILIES:
        raise NotImplementedError(
            "Distillation (MLCD, KD) supports CogVideoX, Wan, HunyuanVideo, SkyReels-V2, LTX-Video and HunyuanVideo "
            f"1.5 transformers, not {type(module).__name__}; mask plans (apply_mask_plan, EfficientVDiTPipeline) "
            "still work on it, undistilled."
        )
    return family


class TransformerPredictor:
    """``predict(latents, timesteps, cond)`` for a diffusers CogVideoX, Wan, HunyuanVideo, SkyReels-V2, LTX-Video or
    HunyuanVideo 1.5 transformer.

    Calls the transformer with the keyword arguments its pipeline uses:

    * CogVideoX: latents ``(B, F, C, H, W)``, ``cond = {"encoder_hidden_states"}``; ``image_rotary_emb`` is computed
      as ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` does (1.0 and 1.5 layouts) and cached;
      integer timesteps.
    * Wan and SkyReels-V2 (text-to-video): latents ``(B, C, F, H, W)``, ``cond = {"encoder_hidden_states"}``. With
      ``expand_timesteps`` (Wan 2.2 TI2V-5B run text-to-video by ``WanPipeline(expand_timesteps=True)``) the
      timestep is per token, ``(B, seq_len)``, each sample's timestep repeated over its
      ``F / p_t * H / p_h * W / p_w`` tokens (the transformer's ``patch_size``), as the pipeline builds it from a
      mask of ones (``(mask[0][0][:, ::2, ::2] * t).flatten()``, the same for Wan 2.2's ``(1, 2, 2)`` patches).
    * HunyuanVideo: latents ``(B, C, F, H, W)``, ``cond = {"encoder_hidden_states", "encoder_attention_mask",
      "pooled_projections"}``; ``guidance = embedded_guidance_scale * 1000`` (the pipeline's ``guidance_scale``,
      default 6.0) when the transformer has guidance embeddings.
    * LTX-Video: latents ``(B, C, F, H, W)``, packed into tokens with ``LTXPipeline._pack_latents`` (the transformer's
      ``patch_size`` / ``patch_size_t``) and the output unpacked back with ``_unpack_latents``;
      ``cond = {"encoder_hidden_states", "encoder_attention_mask"}``; the latent grid size (``num_frames``,
      ``height``, ``width``) and ``rope_interpolation_scale`` are passed as ``LTXPipeline`` passes them.
    * HunyuanVideo 1.5 (text-to-video): latents ``(B, C, F, H, W)``, concatenated with the zero condition latents and
      zero mask of ``HunyuanVideo15Pipeline`` (``2 C + 1`` channels) and called with all-zero ``image_embeds``
      (:func:`~.hunyuan_video15.hunyuan_video15_inputs`); ``cond = {"encoder_hidden_states",
      "encoder_attention_mask", "encoder_hidden_states_2", "encoder_attention_mask_2"}`` (Qwen2.5-VL and ByT5);
      float timesteps. The output is the ``C``-channel velocity.

    Latents and conditioning tensors are cast to the transformer's dtype, as the pipelines do; the output is in the
    transformer's dtype. ``transformer`` may be wrapped (DDP, ``torch.compile``): it is called as given and its
    config is read from the unwrapped module.

    Args:
        transformer: the transformer (or a wrapper of it).
        embedded_guidance_scale: HunyuanVideo's embedded guidance.
        vae_scale_factor_spatial: CogVideoX: the VAE's spatial factor (8), for the RoPE crop region.
        attention_kwargs: passed to the transformer (e.g. LoRA scale).
        rope_interpolation_scale: LTX-Video: ``(temporal / frame_rate, spatial, spatial)`` with the VAE's
            compression ratios, as ``LTXPipeline`` computes it (:meth:`from_pipeline` reads them from the pipeline's
            VAE, at its default ``frame_rate`` 25); ``None``: LTXPipeline's values without a VAE, ``(8 / 25, 32, 32)``.
        expand_timesteps: Wan: per-token timesteps, as ``WanPipeline`` passes them when its config has
            ``expand_timesteps`` (Wan 2.2 TI2V-5B; :meth:`from_pipeline` reads it). Text-to-video only: the image
            conditioning of TI2V's image-to-video mode (clean first-frame latents at timestep 0) is not reproduced.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> predict = TransformerPredictor(tiny_transformer("wan"))
        >>> cond = {"encoder_hidden_states": torch.randn(1, 7, 16)}
        >>> predict(torch.randn(1, 4, 2, 8, 8), torch.tensor([500.0]), cond).shape
        torch.Size([1, 4, 2, 8, 8])
        >>> per_token = TransformerPredictor(tiny_transformer("wan"), expand_timesteps=True)
        >>> per_token.wan_timestep(torch.randn(2, 4, 2, 8, 8), torch.tensor([900.0, 100.0])).shape  # 2 x 4 x 4 tokens
        torch.Size([2, 32])
    """

    def __init__(self, transformer: nn.Module, embedded_guidance_scale: float = 6.0,
                 vae_scale_factor_spatial: int = 8, attention_kwargs: dict | None = None,
                 rope_interpolation_scale: tuple[float, float, float] | None = None, expand_timesteps: bool = False):
        self.transformer = transformer
        self.family = check_predictor_family(transformer)
        if expand_timesteps and self.family != "wan":
            raise NotImplementedError(
                f"expand_timesteps (per-token timesteps of WanPipeline, Wan 2.2 TI2V) is for Wan transformers, not "
                f"{type(self.module).__name__}."
            )
        self.expand_timesteps = bool(expand_timesteps)
        self.embedded_guidance_scale = float(embedded_guidance_scale)
        self.vae_scale_factor_spatial = int(vae_scale_factor_spatial)
        self.attention_kwargs = attention_kwargs
        if rope_interpolation_scale is None:
            rope_interpolation_scale = (8 / 25, 32, 32)
        self.rope_interpolation_scale = tuple(rope_interpolation_scale)
        self._rope_cache: dict = {}

    @property
    def module(self) -> nn.Module:
        """The unwrapped transformer."""
        return unwrap(self.transformer)

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's weight dtype (adapter weights, e.g. fp32 LoRA on a bf16 model, are skipped)."""
        for name, param in self.module.named_parameters():
            if "lora_" not in name and torch.is_floating_point(param):
                return param.dtype
        return next(self.module.parameters()).dtype

    def with_transformer(self, transformer: nn.Module) -> "TransformerPredictor":
        """The same settings on another transformer of the same family (student / target / teacher)."""
        other = TransformerPredictor(transformer, self.embedded_guidance_scale, self.vae_scale_factor_spatial,
                                     self.attention_kwargs, self.rope_interpolation_scale, self.expand_timesteps)
        if other.family != self.family:
            raise TypeError(f"Expected a {self.family} transformer, got a {other.family} one.")
        return other

    def _cogvideox_rope(self, frames: int, height: int, width: int, device):
        key = (frames, height, width, str(device))
        if key not in self._rope_cache:
            from diffusers.models.embeddings import get_3d_rotary_pos_embed
            from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

            config = self.module.config
            p, p_t = config.patch_size, config.patch_size_t
            grid_h, grid_w = height // p, width // p
            base_w, base_h = config.sample_width // p, config.sample_height // p
            if p_t is None:
                crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
                rope = get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops,
                                               grid_size=(grid_h, grid_w), temporal_size=frames, device=device)
            else:
                rope = get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=None,
                                               grid_size=(grid_h, grid_w), temporal_size=(frames + p_t - 1) // p_t,
                                               grid_type="slice", max_size=(base_h, base_w), device=device)
            self._rope_cache = {key: rope}
        return self._rope_cache[key]

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
        if not isinstance(cond, dict) or "encoder_hidden_states" not in cond:
            raise TypeError("cond must be a dict with 'encoder_hidden_states' (see encode_prompts).")
        dtype = self.dtype
        b = latents.shape[0]
        timesteps = torch.as_tensor(timesteps, device=latents.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        kwargs = {k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in cond.items()
                  if isinstance(v, torch.Tensor)}
        if self.family == "cogvideox":
            _, f, _, h, w = latents.shape
            config = self.module.config
            if config.use_rotary_positional_embeddings:
                kwargs["image_rotary_emb"] = self._cogvideox_rope(f, h, w, latents.device)
            timestep = timesteps.long()
        elif self.family in WAN_LIKE:
            timestep = self.wan_timestep(latents, timesteps)
        elif self.family == "ltx_video":
            return self._ltx_video(latents.to(dtype), timesteps.float(), kwargs)
        elif self.family == "hunyuan_video15":
            missing = {"encoder_attention_mask", "encoder_hidden_states_2", "encoder_attention_mask_2"} - set(kwargs)
            if missing:
                raise TypeError(f"HunyuanVideo 1.5 needs cond[{sorted(missing)}] (see encode_prompts).")
            latents, kwargs["image_embeds"] = hunyuan_video15_inputs(self.module, latents.to(dtype))
            timestep = timesteps.to(dtype)
        else:  # hunyuan_video
            timestep = timesteps.float()
            if "encoder_attention_mask" not in kwargs or "pooled_projections" not in kwargs:
                raise TypeError("HunyuanVideo needs cond['encoder_attention_mask'] and cond['pooled_projections'].")
            if self.module.config.guidance_embeds:
                kwargs["guidance"] = torch.full((b,), self.embedded_guidance_scale * 1000.0, dtype=dtype,
                                                device=latents.device)
        return self.transformer(hidden_states=latents.to(dtype), timestep=timestep,
                                attention_kwargs=self.attention_kwargs, return_dict=False, **kwargs)[0]

    def wan_timestep(self, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Wan: the ``timestep`` argument its pipeline passes for ``(B,)`` timesteps on latents ``(B, C, F, H, W)``:
        float ``(B,)``, or with ``expand_timesteps`` float ``(B, seq_len)``, each sample's timestep on each of its
        ``(F // p_t) * (H // p_h) * (W // p_w)`` tokens."""
        timesteps = torch.as_tensor(timesteps, device=latents.device).float()
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        if not self.expand_timesteps:
            return timesteps
        p_t, p_h, p_w = self.module.config.patch_size
        _, _, f, h, w = latents.shape
        return timesteps[:, None].expand(-1, (f // p_t) * (h // p_h) * (w // p_w))

    def _ltx_video(self, latents: torch.Tensor, timestep: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """LTXPipeline's transformer call on 5-D latents: packed to tokens, unpacked back to ``(B, C, F, H, W)``."""
        from diffusers import LTXPipeline

        if "encoder_attention_mask" not in kwargs:
            raise TypeError("LTX-Video needs cond['encoder_attention_mask'] (see encode_prompts).")
        config = self.module.config
        p, p_t = config.patch_size, config.patch_size_t
        _, _, f, h, w = latents.shape
        frames, height, width = f // p_t, h // p, w // p  # the token grid (LTX-Video: patch size 1, the latent's)
        out = self.transformer(hidden_states=LTXPipeline._pack_latents(latents, p, p_t), timestep=timestep,
                               num_frames=frames, height=height, width=width,
                               rope_interpolation_scale=self.rope_interpolation_scale,
                               attention_kwargs=self.attention_kwargs, return_dict=False, **kwargs)[0]
        return LTXPipeline._unpack_latents(out, frames, height, width, p, p_t)

    @classmethod
    def from_pipeline(cls, pipe, transformer: nn.Module | None = None, **kwargs) -> "TransformerPredictor":
        """A predictor for ``pipe.transformer`` (or ``transformer``) with the pipeline's settings (LTX-Video: the
        ``rope_interpolation_scale`` of the pipeline's VAE at its default ``frame_rate``; Wan: the pipeline's
        ``expand_timesteps``, Wan 2.2 TI2V-5B run text-to-video, unless given).

        Refuses pipelines this adapter cannot reproduce: Wan 2.2 with two experts (``transformer_2``).

        Example:
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> TransformerPredictor.from_pipeline(tiny_pipeline("wan", expand_timesteps=True)).expand_timesteps
            True
        """
        if getattr(pipe, "transformer_2", None) is not None:
            raise NotImplementedError(
                "Pipelines with two transformers (Wan 2.2 A14B: transformer_2 below boundary_ratio) are not "
                "supported by MLCD yet; distil a single-transformer pipeline."
            )
        kwargs.setdefault("expand_timesteps", bool(pipe.config.get("expand_timesteps", False)))
        temporal, spatial = vae_compression(pipe)
        predictor = cls(transformer if transformer is not None else pipe.transformer,
                        vae_scale_factor_spatial=spatial, **kwargs)
        if predictor.family == "ltx_video" and kwargs.get("rope_interpolation_scale") is None:
            predictor.rope_interpolation_scale = (temporal / call_default(pipe, "frame_rate", 25), spatial, spatial)
        return predictor


def pipeline_grid(pipe, num_steps: int, num_frames: int, height: int, width: int, scheduler=None) -> DiffusionGrid:
    """The grid ``pipe`` samples on with ``num_steps`` steps of ``scheduler`` (default: ``pipe.scheduler``) for videos
    of ``num_frames x height x width`` pixels: :meth:`DiffusionGrid.from_scheduler` with the pipeline's
    :func:`pipeline_sigmas` and :func:`pipeline_mu`.

    Only LTX-Video's grid depends on the size: its ``mu`` is computed from the latent video's
    ``frames x height x width`` as ``LTXPipeline`` computes them (``(num_frames - 1) // temporal compression + 1``,
    ``height // spatial compression``, ``width // spatial compression``), so a student distilled on this grid samples
    on the teacher's timesteps at that resolution.

    Example:
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("ltx_video")
        >>> sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
        ...                                         base_image_seq_len=1024, max_image_seq_len=4096)
        >>> [round(s, 3) for s in pipeline_grid(pipe, 2, 13, 32, 32, sched).sigmas.tolist()]  # 4 x 8 x 8 latent
        [1.0, 0.663, 0.0]
    """
    family = check_predictor_family(pipe.transformer)
    scheduler = scheduler if scheduler is not None else pipe.scheduler
    mu = None
    if family == "ltx_video":
        temporal, spatial = vae_compression(pipe)
        frames = (num_frames - 1) // temporal + 1
        mu = pipeline_mu(family, scheduler, frames * (height // spatial) * (width // spatial))
    return DiffusionGrid.from_scheduler(scheduler, int(num_steps), sigmas=pipeline_sigmas(family, int(num_steps)),
                                        mu=mu)


def pipeline_guidance_scale(pipe, fallback: float = 1.0) -> float:
    """The classifier-free guidance scale ``w`` of ``uncond + w (cond - uncond)`` that ``pipe`` samples with by
    default (the MLCD teacher's guidance, :func:`~.mlcd.guided_prediction`): the default ``guidance_scale`` of its
    ``__call__`` (``fallback`` without one), or for a pipeline that guides with a component (``pipe.guider``:
    HunyuanVideo 1.5) the scale of that guider (:func:`~.hunyuan_video15.guider_guidance_scale`, which refuses guiders
    of another formula). HunyuanVideo's default ``guidance_scale`` (returned as the others') is embedded guidance.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipeline_guidance_scale(tiny_pipeline("wan")), pipeline_guidance_scale(tiny_pipeline("hunyuan_video15"))
        (5.0, 6.0)
    """
    if guider_scale(pipe) is not None:
        return guider_guidance_scale(pipe.guider)
    return float(call_default(pipe, "guidance_scale", fallback))


def encode_prompts(pipe, prompts: Sequence[str], device=None, dtype=None, max_sequence_length: int | None = None,
                   prompt_template: dict | None = None) -> dict:
    """Text conditioning for :class:`TransformerPredictor` with the pipeline's own text encoder(s).

    Uses ``pipe.encode_prompt`` with the pipeline's default ``max_sequence_length`` (and, for HunyuanVideo, its
    default ``prompt_template``) unless given. Returns ``{"encoder_hidden_states": ...}`` (CogVideoX, Wan) plus
    ``"encoder_attention_mask"`` (LTX-Video: the tokenizer's boolean mask) and ``"pooled_projections"``
    (HunyuanVideo); HunyuanVideo 1.5 also ``"encoder_hidden_states_2"`` and ``"encoder_attention_mask_2"`` (ByT5 of
    quoted text), at its fixed text lengths (``max_sequence_length`` is not used). Runs without gradients.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("wan")
        >>> encode_prompts(pipe, ["a red circle", "a dog"], max_sequence_length=8)["encoder_hidden_states"].shape
        torch.Size([2, 8, 16])
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    family = check_predictor_family(pipe.transformer)
    device = device if device is not None else pipe._execution_device
    msl = max_sequence_length or call_default(pipe, "max_sequence_length", 226)
    with torch.no_grad():
        if family == "hunyuan_video":
            template = prompt_template if prompt_template is not None else call_default(pipe, "prompt_template")
            kwargs = {"prompt_template": template} if template is not None else {}
            embeds, pooled, mask = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device, dtype=dtype,
                                                      max_sequence_length=msl, **kwargs)
            return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "pooled_projections": pooled}
        if family == "hunyuan_video15":
            return hunyuan_video15_prompts(pipe, prompts, device=device, dtype=dtype)
        if family == "ltx_video":
            embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                                    max_sequence_length=msl, device=device, dtype=dtype)
            return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}
        embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=msl,
                                       device=device, dtype=dtype)
        return {"encoder_hidden_states": embeds}


def num_frames_error(pipe, num_frames: int) -> str | None:
    """Why ``pipe``'s VAE cannot encode clips of ``num_frames`` frames, with the nearest count that works below it;
    ``None`` where it can. The video VAEs take ``k n + 1`` frames, ``k`` their temporal compression
    (:func:`~diffusers_evdit.generation.vae_compression`): 4, LTX-Video's 8.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> num_frames_error(tiny_pipeline("wan"), 9), num_frames_error(tiny_pipeline("wan"), 8)
        (None, 'The video VAEs need 4k + 1 frames, got 8; use e.g. 5.')
    """
    check_predictor_family(pipe.transformer)
    k = vae_compression(pipe)[0]
    if (num_frames - 1) % k == 0:
        return None
    return f"The video VAEs need {k}k + 1 frames, got {num_frames}; use e.g. {k * ((num_frames - 1) // k) + 1}."


def clip_size_error(pipe, num_frames: int, height: int, width: int) -> str | None:
    """Why ``pipe`` cannot be trained on clips of ``num_frames x height x width`` pixels (``None`` where it can): the
    frame count of :func:`num_frames_error`, and a height and width in whole transformer patches of the VAE's latent
    (multiples of the VAE's spatial compression times the patch size: 16 for CogVideoX, Wan 2.1 and HunyuanVideo, 32
    for LTX-Video and Wan 2.2 TI2V).

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> ti2v = tiny_pipeline("wan", expand_timesteps=True)  # Wan 2.2's VAE compresses 16x
        >>> clip_size_error(ti2v, 9, 64, 96), clip_size_error(ti2v, 9, 48, 64).split(", got ")[1]
        (None, '48x64; use e.g. 32x64.')
    """
    frames = num_frames_error(pipe, num_frames)
    if frames:
        return frames
    vae = vae_compression(pipe)[1]
    patch = token_patch(unwrap(pipe.transformer).config)[2]
    step = vae * patch
    if height % step == 0 and width % step == 0:
        return None
    return (f"Clips for {type(pipe).__name__} need a height and width in multiples of {step} pixels (the VAE "
            f"compresses {vae}x, the transformer patches {patch}x{patch}), got {height}x{width}; use e.g. "
            f"{max(step, height // step * step)}x{max(step, width // step * step)}.")


def encode_video_posteriors(pipe, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior ``(mean, std)`` of pixel videos ``(B, 3, T, H, W)`` in [-1, 1], in the transformer's layout
    and scale, so that ``mean + std * eps`` is a clean latent ``x0`` (see :func:`encode_videos`).

    Keeping these two tensors instead of the videos lets a training loop encode each clip once and still draw a fresh
    posterior sample every epoch (``--cache_latents`` of the distillation examples). Runs without gradients, in the
    VAE's dtype.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> mean, std = encode_video_posteriors(tiny_pipeline("wan"), torch.zeros(1, 3, 9, 32, 32))
        >>> mean.shape == std.shape
        True
    """
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"videos must be (B, 3, T, H, W) in [-1, 1], got shape {tuple(videos.shape)}.")
    family = check_predictor_family(pipe.transformer)
    vae = pipe.vae
    problem = num_frames_error(pipe, videos.shape[2])
    if problem:
        raise ValueError(problem)
    param = next(vae.parameters())
    videos = videos.to(device=param.device, dtype=param.dtype)
    with torch.no_grad():
        # HunyuanVideo 1.5: one clip at a time (its VAE's causal attention mask takes no batch)
        dists = [vae.encode(v).latent_dist for v in (videos.split(1) if family == "hunyuan_video15" else [videos])]
        mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
        if family == "cogvideox":
            scale = vae.config.scaling_factor
            return ((mean * scale).permute(0, 2, 1, 3, 4).contiguous(),
                    (std * scale).permute(0, 2, 1, 3, 4).contiguous())
        if family in WAN_LIKE:
            shift = torch.tensor(vae.config.latents_mean, device=mean.device, dtype=mean.dtype).view(1, -1, 1, 1, 1)
            scale = torch.tensor(vae.config.latents_std, device=mean.device, dtype=mean.dtype).view(1, -1, 1, 1, 1)
            return (mean - shift) / scale, std / scale
        if family == "ltx_video":  # LTXPipeline._normalize_latents: (z - mean) * scaling_factor / std
            from diffusers import LTXPipeline

            sf = vae.config.scaling_factor
            return (LTXPipeline._normalize_latents(mean, vae.latents_mean, vae.latents_std, sf),
                    LTXPipeline._normalize_latents(std, torch.zeros_like(vae.latents_mean), vae.latents_std, sf))
        return mean * vae.config.scaling_factor, std * vae.config.scaling_factor


def draw_posterior(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A draw ``mean + std * eps`` of the posterior :func:`encode_video_posteriors` returns, with ``eps`` drawn as
    diffusers' ``DiagonalGaussianDistribution.sample`` draws it (so a seeded generator gives the same latents).

    Example:
        >>> draw_posterior(torch.zeros(2, 3), torch.zeros(2, 3)).abs().sum().item()
        0.0
    """
    from diffusers.utils.torch_utils import randn_tensor

    return mean + std * randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


def encode_videos(pipe, videos: torch.Tensor, generator: torch.Generator | None = None,
                  sample_posterior: bool = True) -> torch.Tensor:
    """Clean latents ``x0`` of pixel videos ``(B, 3, T, H, W)`` in [-1, 1], in the transformer's layout and scale.

    The inverse of each pipeline's decoding: CogVideoX ``z * scaling_factor`` permuted to ``(B, F, C, H, W)``; Wan
    ``(z - latents_mean) / latents_std``; HunyuanVideo ``z * scaling_factor``; LTX-Video
    ``(z - latents_mean) * scaling_factor / latents_std`` (``LTXPipeline._normalize_latents``, unpacked
    ``(B, C, F, H, W)``); HunyuanVideo 1.5 ``z * scaling_factor`` (the pipeline decodes ``latents / scaling_factor``;
    clips are encoded one at a time, as its VAE takes no batch). ``T`` must be ``4 k + 1`` for these VAEs
    (LTX-Video: ``k`` is the VAE's temporal compression, 8). ``sample_posterior=False`` uses the posterior mode. Runs
    without gradients, in the VAE's dtype.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("cogvideox")
        >>> encode_videos(pipe, torch.zeros(1, 3, 9, 32, 32)).shape
        torch.Size([1, 3, 4, 4, 4])
    """
    mean, std = encode_video_posteriors(pipe, videos)
    if not sample_posterior:
        return mean
    return draw_posterior(mean, std, generator)


@contextlib.contextmanager
def adapters_disabled(transformer: nn.Module):
    """Run a peft-adapted diffusers transformer without its adapters (the LoRA student's teacher).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> from peft import LoraConfig
        >>> t = tiny_transformer("wan"); t.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
        >>> with adapters_disabled(t):
        ...     pass
    """
    module = unwrap(transformer)
    module.disable_adapters()
    try:
        yield module
    finally:
        module.enable_adapters()
