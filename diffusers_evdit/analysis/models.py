"""Loading a supported video transformer: tiny random models, full-size random shapes, or a diffusers checkpoint."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..processors import family_for
from ..students import base_folder, is_delta_student, student_transformer

# Full-size configurations (random weights, no download) for timing on a GPU: the class, and the arguments that differ
# from its diffusers defaults (the defaults are CogVideoX-2B's and Wan2.1-14B's).
MODEL_SHAPES: dict[str, tuple[str, dict]] = {
    "cogvideox-5b": (
        "CogVideoXTransformer3DModel",
        dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True),
    ),
    "wan2.1-1.3b": ("WanTransformer3DModel", dict(num_attention_heads=12, ffn_dim=8960, num_layers=30)),
}


def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _cast(model: nn.Module, device, dtype: torch.dtype) -> nn.Module:
    """Move to ``device`` and ``dtype``, keeping the class's ``_keep_in_fp32_modules`` in float32 as
    ``from_pretrained`` does."""
    nn.Module.to(model, device=device, dtype=dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32 and keep:
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point() and any(m in name.split(".") for m in keep):
                tensor.data = tensor.data.float()
    return model


def load_transformer(
    spec: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_layers: int | None = None,
) -> nn.Module:
    """Load a supported video transformer in eval mode.

    Args:
        spec: ``"tiny:<family>"`` (``cogvideox``, ``wan``, ``hunyuan_video``: a tiny random transformer from
            :mod:`diffusers_evdit.tiny`), ``"shape:<name>"`` (a full-size random transformer of a known architecture,
            :data:`MODEL_SHAPES`, for timing; built directly on ``device``), or a diffusers model path / Hub id: a
            pipeline folder (its ``transformer`` subfolder is used), a transformer folder, or a student folder
            shipped as a weight delta inside its base pipeline's folder (:mod:`diffusers_evdit.students`).
        device, dtype: where and in which precision the weights live.
        num_layers: tiny and shape models only: number of transformer blocks (tiny default 2, shape default: full).

    Example:
        >>> type(load_transformer("tiny:wan")).__name__
        'WanTransformer3DModel'
    """
    if spec.startswith("tiny:"):
        from ..tiny import tiny_transformer

        return _cast(tiny_transformer(spec[5:], num_layers=num_layers or 2), device, dtype).eval()
    if spec.startswith("shape:"):
        name = spec[6:]
        if name not in MODEL_SHAPES:
            raise ValueError(f"Unknown model shape {name!r}; choose one of {', '.join(MODEL_SHAPES)}.")
        cls_name, config = MODEL_SHAPES[name]
        config = dict(config)
        if num_layers:
            config["num_layers"] = num_layers
        with torch.device(device):
            model = _diffusers_class(cls_name)(**config)
        return _cast(model, device, dtype).eval()
    from diffusers import AutoModel

    subfolder = None
    if is_delta_student(spec):  # a distilled student shipped as a weight delta inside its base pipeline's folder
        model = student_transformer(AutoModel, base_folder(spec), spec, dtype)
    elif os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "transformer", "config.json")):
            subfolder = "transformer"
        elif not os.path.isfile(os.path.join(spec, "config.json")):
            raise FileNotFoundError(f"{spec}: neither a transformer folder (config.json) nor a pipeline folder.")
        model = AutoModel.from_pretrained(spec, subfolder=subfolder, torch_dtype=dtype)
    else:
        try:
            model = AutoModel.from_pretrained(spec, subfolder="transformer", torch_dtype=dtype)
        except (OSError, EnvironmentError):
            model = AutoModel.from_pretrained(spec, torch_dtype=dtype)
    family_for(model)  # clear error for unsupported classes
    return model.to(device).eval()
