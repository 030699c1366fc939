"""Per-mask attention runtimes for the latency-budget search: measured on the current device, or supplied."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from ..analysis.capture import attention_shapes
from ..kernels import TileAttention
from .options import check_masks


def measure_mask_runtimes(
    transformer: nn.Module,
    inputs: dict,
    masks: list[int] | None = None,
    kernel: str = "auto",
    repeats: int = 5,
    warmup: int = 2,
) -> list[dict]:
    """Time the tile-attention kernel of every mask (and dense) for each layer's attention shape on ``inputs``.

    Runs :class:`~diffusers_evdit.TileAttention` on random ``[B, H, N, D]`` tensors of the layer's shape, dtype and
    device (layers of one shape are timed once); the median of ``repeats`` calls after ``warmup``. Only the attention
    product is timed: projections and MLPs do not depend on the mask.

    Returns:
        per layer, ``{None: dense seconds, k: seconds}``.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan", num_layers=2)
        >>> rt = measure_mask_runtimes(t, tiny_inputs(t), masks=[1], repeats=1, warmup=0)
        >>> sorted(rt[0], key=str)
        [1, None]
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"Need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    shapes = attention_shapes(transformer, inputs)
    masks = check_masks(masks, shapes[0]["layout"].num_frames)
    attention = TileAttention(kernel)
    timed: dict = {}
    result = []
    for info in shapes:
        key = (info["layout"], info["shape"], info["dtype"], str(info["device"]))
        if key not in timed:
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(*info["shape"], generator=g).to(info["device"], info["dtype"]) for _ in range(3))
            timed[key] = {m: time_call(lambda m=m: attention(q, k, v, info["layout"], m), q.device, repeats, warmup)
                          for m in [None, *masks]}
        result.append(dict(timed[key]))
    return result


def time_call(fn, device, repeats, warmup) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def per_layer_runtimes(runtimes, num_layers: int, masks: list[int]) -> list[dict]:
    """Normalise runtimes to one ``{None|k: seconds}`` dict per layer ("dense"/str keys accepted)."""
    if isinstance(runtimes, dict):
        runtimes = [runtimes] * num_layers
    if len(runtimes) != num_layers:
        raise ValueError(f"Got runtimes for {len(runtimes)} layers, the model has {num_layers}.")
    out = []
    for i, layer in enumerate(runtimes):
        norm = {}
        for key, value in layer.items():
            k = None if key in (None, "dense", "None") else int(key)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"Layer {i}: runtime of mask {key!r} must be a finite number >= 0, got {value!r}.")
            norm[k] = float(value)
        missing = [k for k in [None, *masks] if k not in norm]
        if missing:
            names = ", ".join("dense" if k is None else str(k) for k in missing)
            raise ValueError(f"Layer {i}: no runtime for mask(s) {names}; supply one for dense and every mask.")
        out.append(norm)
    return out


def runtimes_metadata(runtimes) -> list | None:
    """Per-layer runtimes as JSON-ready dicts (``"dense"`` and string keys)."""
    if runtimes is None:
        return None
    return [{("dense" if k is None else str(k)): float(v) for k, v in layer.items()} for layer in runtimes]
