"""Ship a distilled student as a compact weight delta from its base model.

A student of MLCD or KD differs from its base transformer by a small, full-rank change (a LoRA of useful rank would
be as large as the change itself), so it is stored as ``student - base``: matrices in signed 4-bit groups with one
float16 scale per group, every other tensor in float16. Loading adds the delta to the base weights in place, so a
package that already ships the base model ships each student in about a quarter of its float16 size.

Example:
    >>> import torch
    >>> from torch import nn
    >>> base, student = nn.Linear(128, 64), nn.Linear(128, 64)
    >>> change = (student.weight - base.weight).abs().max()
    >>> _ = apply_delta(base, compress_delta(student.state_dict(), base.state_dict()))
    >>> bool((base.weight - student.weight).abs().max() <= change / 14 + 1e-6)  # half a 4-bit step of the change
    True
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["DELTA_FILE", "apply_delta", "compress_delta", "load_delta", "save_delta"]

DELTA_FILE = "transformer_delta.safetensors"
GROUP = 64  # input features per 4-bit group (one float16 scale each)
_QMAX = 7  # signed 4-bit levels -7..7


def _quantize(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (uint8 [out, in/2] two nibbles per byte, float16 scales [out, in/GROUP])."""
    out_f, in_f = delta.shape
    groups = delta.float().reshape(out_f, in_f // GROUP, GROUP)
    scale = groups.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / _QMAX
    scale = scale.half().float()  # quantize against the scale that is stored
    q = torch.round(groups / scale).clamp(-_QMAX, _QMAX).to(torch.int16).reshape(out_f, in_f) + 8
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    return packed, scale.squeeze(-1).half()


def _dequantize(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    low = (packed & 0x0F).to(torch.int16) - 8
    high = (packed >> 4).to(torch.int16) - 8
    q = torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1).float()
    out_f, in_f = q.shape
    return (q.reshape(out_f, in_f // GROUP, GROUP) * scale.float().unsqueeze(-1)).reshape(out_f, in_f)


def compress_delta(student: dict, base: dict) -> dict[str, torch.Tensor]:
    """``student - base`` as a flat tensor dict: ``NAME.q4`` / ``NAME.scale`` for matrices whose input size is a
    multiple of 64, ``NAME.f16`` for everything else. Raises ``ValueError`` if the two state dicts differ in keys
    or shapes (the student must come from this base)."""
    if student.keys() != base.keys():
        missing = sorted(set(student) ^ set(base))[:5]
        raise ValueError(f"student and base have different parameters (e.g. {missing}); distil from this base model")
    out = {}
    for name, weight in student.items():
        if weight.shape != base[name].shape:
            raise ValueError(f"{name}: student {tuple(weight.shape)} vs base {tuple(base[name].shape)}")
        delta = weight.float() - base[name].float()
        if delta.ndim == 2 and delta.shape[1] % GROUP == 0:
            out[f"{name}.q4"], out[f"{name}.scale"] = _quantize(delta)
        else:
            out[f"{name}.f16"] = delta.half()
    return out


@torch.no_grad()
def apply_delta(model: nn.Module, delta: dict[str, torch.Tensor]) -> nn.Module:
    """Add a :func:`compress_delta` result to ``model``'s weights in place; returns ``model``.

    Checks every name and shape before changing anything, so a delta for another model leaves ``model`` as it was.
    """
    params = dict(model.state_dict(keep_vars=True))
    updates = {}
    for key in delta:
        name, kind = key.rsplit(".", 1)
        if kind == "scale":
            continue
        if name not in params:
            raise ValueError(f"the delta names {name!r}, which this {type(model).__name__} lacks: load it onto its "
                             "own base model")
        value = _dequantize(delta[key], delta[f"{name}.scale"]) if kind == "q4" else delta[key].float()
        if value.shape != params[name].shape:
            raise ValueError(f"{name}: delta {tuple(value.shape)} vs model {tuple(params[name].shape)}")
        updates[name] = value
    if len(updates) != len(params):
        raise ValueError(f"the delta covers {len(updates)} of the model's {len(params)} tensors: it belongs to "
                         "another model")
    for name, value in updates.items():
        target = params[name]
        target.copy_((target.float() + value.to(target.device)).to(target.dtype))
    return model


def save_delta(student: nn.Module, base: nn.Module, folder: str) -> str:
    """Write ``student - base`` to ``folder/transformer_delta.safetensors``; returns the file's path."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, DELTA_FILE)
    tensors = compress_delta(student.state_dict(), base.state_dict())
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


def load_delta(model: nn.Module, folder: str) -> nn.Module:
    """Apply ``folder/transformer_delta.safetensors`` to ``model`` (its base transformer) in place."""
    from safetensors.torch import load_file

    path = os.path.join(folder, DELTA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {DELTA_FILE} in {folder}: a student folder holds its weights as a delta "
                                "from the base model (diffusers_evdit.weight_delta.save_delta)")
    return apply_delta(model, load_file(path))
