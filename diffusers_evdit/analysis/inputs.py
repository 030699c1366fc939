"""Transformer inputs: latent sizes, random latents and text embeddings, inputs recorded from a pipeline run."""

from __future__ import annotations

import contextlib
import inspect
from types import SimpleNamespace
from typing import Iterator

import torch
from torch import nn

from ..processors import family_for


def latent_size(transformer: nn.Module, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent ``(frames, height, width)`` of a ``frames x height x width`` pixel video for the supported families.

    All three use a VAE with 4x temporal (first frame kept) and 8x spatial compression; CogVideoX 1.5 pads the latent
    frames to a multiple of its temporal patch size, as its pipeline does.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> latent_size(tiny_transformer("cogvideox"), 49, 480, 720)
        (13, 60, 90)
    """
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"A video needs >= 1 frame and >= 8 x 8 pixels, got {frames} x {height} x {width}.")
    latent_frames = (frames - 1) // 4 + 1
    p_t = getattr(transformer.config, "patch_size_t", None)
    if type(transformer).__name__ == "CogVideoXTransformer3DModel" and p_t:
        latent_frames += (-latent_frames) % p_t
    return latent_frames, height // 8, width // 8


def random_inputs(
    transformer: nn.Module,
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    timestep: float = 500,
    seed: int = 0,
    text_tokens: int | None = None,
    batch_size: int = 1,
    device=None,
    dtype=None,
) -> dict:
    """Forward keyword arguments for ``transformer`` with random latents and random text embeddings.

    Documented inputs (no text encoder, no VAE): the latent ``x_t`` is standard normal noise of shape
    ``latent_frames x latent_height x latent_width`` (channels from the config), the text embeddings are standard
    normal with the model's own text length (CogVideoX ``max_text_seq_length`` = 226, Wan 512, HunyuanVideo 256; or
    ``text_tokens``) and width, all text tokens valid; HunyuanVideo gets random pooled projections and guidance 6.0
    (x1000, as its pipeline passes it), CogVideoX its pipeline's 3D RoPE. The same ``seed`` gives the same tensors on
    every device. For real prompts and trajectories, capture the calls of a pipeline run with
    :func:`record_transformer_inputs` instead.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = tiny_transformer("hunyuan_video")
        >>> sorted(random_inputs(t, 4, 8, 8, timestep=900, seed=1))[:3]
        ['encoder_attention_mask', 'encoder_hidden_states', 'guidance']
    """
    param = next(transformer.parameters())
    device = param.device if device is None else torch.device(device)
    dtype = param.dtype if dtype is None else dtype
    cfg = transformer.config
    name = type(transformer).__name__
    g = torch.Generator().manual_seed(int(seed))

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    b = batch_size
    f, h, w = latent_frames, latent_height, latent_width
    if name == "CogVideoXTransformer3DModel":
        from diffusers import CogVideoXPipeline

        inputs = dict(
            hidden_states=randn(b, f, cfg.in_channels, h, w),
            encoder_hidden_states=randn(b, text_tokens or cfg.max_text_seq_length, cfg.text_embed_dim),
            timestep=torch.full((b,), int(timestep), dtype=torch.long, device=device),
        )
        if cfg.use_rotary_positional_embeddings:
            fake_pipe = SimpleNamespace(vae_scale_factor_spatial=1, transformer=transformer)
            rope = CogVideoXPipeline._prepare_rotary_positional_embeddings(fake_pipe, h, w, f, device)
            inputs["image_rotary_emb"] = tuple(r.to(device) for r in rope)
        if getattr(transformer, "ofs_embedding", None) is not None:
            inputs["ofs"] = torch.full((b,), 2.0, device=device, dtype=dtype)
        return inputs
    if name == "WanTransformer3DModel":
        inputs = dict(
            hidden_states=randn(b, cfg.in_channels, f, h, w),
            encoder_hidden_states=randn(b, text_tokens or 512, cfg.text_dim),
            timestep=torch.full((b,), float(timestep), device=device),
        )
        if getattr(cfg, "image_dim", None):
            inputs["encoder_hidden_states_image"] = randn(b, 257, cfg.image_dim)
        return inputs
    if name == "HunyuanVideoTransformer3DModel":
        n_text = text_tokens or 256
        inputs = dict(
            hidden_states=randn(b, cfg.in_channels, f, h, w),
            encoder_hidden_states=randn(b, n_text, cfg.text_embed_dim),
            encoder_attention_mask=torch.ones(b, n_text, dtype=torch.long, device=device),
            pooled_projections=randn(b, cfg.pooled_projection_dim),
            timestep=torch.full((b,), int(timestep), dtype=torch.long, device=device),
        )
        if cfg.guidance_embeds:
            inputs["guidance"] = torch.full((b,), 6000.0, device=device, dtype=dtype)
        return inputs
    family_for(transformer)  # raises the supported-models error
    raise TypeError(f"No random inputs for {name}.")  # pragma: no cover


def input_timestep(inputs: dict) -> float | None:
    """The (first) timestep value of a forward-keyword dict, as a float (``None`` when absent).

    Example:
        >>> import torch
        >>> input_timestep({"timestep": torch.tensor([250, 250])})
        250.0
    """
    t = inputs.get("timestep")
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return float(t.flatten()[0])
    return float(t)


@contextlib.contextmanager
def record_transformer_inputs(transformer: nn.Module, device: str | torch.device | None = "cpu") -> Iterator[list]:
    """Record the keyword arguments of every ``transformer`` call inside the block (e.g. a pipeline run).

    Positional arguments are bound to their names; tensors are detached and copied (to ``device``; ``None`` keeps
    them where they are). ``return_dict`` and ``attention_kwargs`` are dropped. Each entry can be passed to
    :func:`profile_attention` or the searches as one input (a prompt at a timestep), or saved with ``torch.save``
    for ``evdit profile/search --inputs``.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> with record_transformer_inputs(t) as calls:
        ...     _ = t(**tiny_inputs(t))
        >>> len(calls), sorted(calls[0])
        (1, ['encoder_hidden_states', 'hidden_states', 'timestep'])
    """
    calls: list[dict] = []
    signature = inspect.signature(transformer.forward)

    def copy(x):
        if isinstance(x, torch.Tensor):
            x = x.detach()
            return x.to(device).clone() if device is not None else x.clone()
        if isinstance(x, (tuple, list)):
            return type(x)(copy(y) for y in x)
        return x

    def hook(module, args, kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments
        calls.append({k: copy(v) for k, v in bound.items() if k not in ("return_dict", "attention_kwargs")})

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def move_inputs(inputs: dict, device=None, dtype=None) -> dict:
    """``inputs`` with tensors moved to ``device`` and floating tensors cast to ``dtype`` (``None``: unchanged).

    Example:
        >>> import torch
        >>> move_inputs({"x": torch.zeros(1, dtype=torch.float64), "t": torch.ones(1, dtype=torch.long)},
        ...             dtype=torch.float32)["t"].dtype
        torch.int64
    """

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device=device, dtype=dtype if (dtype is not None and x.is_floating_point()) else None)
        if isinstance(x, (tuple, list)):
            return type(x)(move(y) for y in x)
        return x

    return {k: move(v) for k, v in inputs.items()}
