"""Helpers shared by the distillation modules and the training examples: parameterisation names, coefficient
broadcasting, unwrapping DDP / ``torch.compile`` wrappers and reading a pipeline's ``__call__`` defaults."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["PREDICTION_TYPES", "Predictor", "broadcast_coefficients", "call_default", "check_prediction_type", "unwrap"]

#: Model parameterisations: DDPM-style ``epsilon``, ``v_prediction``, ``sample``; ``flow`` = flow-matching velocity.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")

#: ``predict(latents, timesteps, cond) -> model output``, the abstract model call.
Predictor = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def broadcast_coefficients(coef: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` (or scalar) coefficients as float32, shaped to broadcast over ``like`` ``(B, ...)``.

    Example:
        >>> broadcast_coefficients(torch.tensor([1.0, 2.0]), torch.zeros(2, 3, 4)).shape
        torch.Size([2, 1, 1])
    """
    coef = torch.as_tensor(coef, dtype=torch.float32, device=like.device)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (like.ndim - 1)))


def check_prediction_type(prediction_type: str) -> str:
    """Return ``prediction_type`` if it is one of :data:`PREDICTION_TYPES`, else raise ``ValueError``.

    Example:
        >>> check_prediction_type("flow")
        'flow'
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
    return prediction_type


def unwrap(module: nn.Module) -> nn.Module:
    """The model under DDP / FSDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers.

    Example:
        >>> inner = nn.Linear(2, 2)
        >>> unwrap(torch.compile(inner)) is inner
        True
    """
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if inner is None or inner is module:
            return module
        module = inner


def call_default(pipe, name: str, fallback=None):
    """The default of argument ``name`` of ``type(pipe).__call__`` (``fallback`` when it has none).

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> call_default(tiny_pipeline("wan"), "num_inference_steps")
        50
    """
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        return fallback
    return param.default
