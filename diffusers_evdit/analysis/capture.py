"""Capturing the self-attention inside a model: observable tile processors, early stops, per-layer shapes.

:func:`instrument` installs a dense mask plan whose processors first hand the post-RoPE q, k, v and the layout to an
observer (why this way: docs/design.md, "Attention diagnostics").
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from ..layout import TileLayout
from ..plan import MaskPlan, apply_mask_plan, get_mask_plan, remove_mask_plan
from ..processors import family_for

Observer = Callable[..., None]


class _ObservedMixin:
    """Mixed in front of a family's processor class: report q, k, v and the layout, then attend as usual."""

    _evdit_observer: Observer | None = None

    def tile_attention(self, q, k, v, layout: TileLayout, key_padding_mask=None, dense_fn=None):
        if self._evdit_observer is not None:
            self._evdit_observer(self, q, k, v, layout, key_padding_mask)
        return super().tile_attention(q, k, v, layout, key_padding_mask, dense_fn)


_OBSERVED_CLASSES: dict[type, type] = {}


def _observed_class(cls: type) -> type:
    if cls not in _OBSERVED_CLASSES:
        _OBSERVED_CLASSES[cls] = type(f"Observed{cls.__name__}", (_ObservedMixin, cls), {})
    return _OBSERVED_CLASSES[cls]


class StopForward(Exception):
    """Raised by an observer or hook to end a transformer forward early; :func:`run_until_stopped` catches it.

    Example:
        >>> try:
        ...     raise StopForward("done")
        ... except StopForward as stop:
        ...     stop.value
        'done'
    """

    def __init__(self, value=None):
        super().__init__("forward stopped early")
        self.value = value


def run_until_stopped(transformer: nn.Module, inputs: dict):
    """Call ``transformer(**inputs)``; return the model output, or the value of a :class:`StopForward` raised inside.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> run_until_stopped(t, tiny_inputs(t)).shape
        torch.Size([1, 4, 6, 8, 8])
    """
    try:
        out = transformer(**inputs)
    except StopForward as stop:
        return stop.value
    return model_output(out)


def model_output(out) -> torch.Tensor:
    """The sample tensor of a diffusers transformer output (``.sample``, a tuple's first entry, or a tensor).

    Example:
        >>> import torch
        >>> model_output((torch.zeros(2),)).shape
        torch.Size([2])
    """
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


@contextlib.contextmanager
def instrument(transformer: nn.Module, observer: Observer | None = None, kernel: str = "auto") -> Iterator[list]:
    """Run ``transformer`` with observable tile processors inside the block; restore the previous plan on exit.

    Installs a dense mask plan and replaces every processor by an observing subclass of the family's processor. The
    observer is called as ``observer(processor, q, k, v, layout, key_padding_mask)`` before every self-attention,
    with post-RoPE ``[B, H, N, D]`` tensors; ``processor.layer_index`` and ``processor.k`` say which layer and mask.
    Setting ``processor.k`` on a yielded processor sparsifies that layer (used by the search).

    Yields:
        the processors in plan order.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("cogvideox")
        >>> seen = []
        >>> with instrument(t, lambda p, q, k, v, layout, kpm: seen.append((p.layer_index, tuple(q.shape)))):
        ...     _ = t(**tiny_inputs(t))
        >>> seen
        [(0, (1, 2, 103, 16)), (1, (1, 2, 103, 16))]
    """
    family = family_for(transformer)
    previous = get_mask_plan(transformer)
    previous_kernel = transformer._evdit_tile_state.attention.kernel if previous is not None else None
    modules = family.attention_modules(transformer)
    apply_mask_plan(transformer, MaskPlan.dense(len(modules)), kernel=kernel)
    state = transformer._evdit_tile_state
    cls = _observed_class(family.processor_cls)
    processors = []
    for i, (_, module) in enumerate(modules):
        proc = cls(None, state, layer_index=i)
        proc._evdit_observer = observer
        module.set_processor(proc)
        processors.append(proc)
    try:
        yield processors
    finally:
        if previous is not None:
            apply_mask_plan(transformer, previous, kernel=previous_kernel)
        else:
            remove_mask_plan(transformer)


def check_layers(layers, num_layers: int, what: str = "layer") -> list[int]:
    """Validate a list of plan-layer indices (``None`` = all); ``ValueError`` naming the valid range otherwise.

    Example:
        >>> check_layers([2, 0, 2], 4)
        [0, 2]
        >>> check_layers(None, 3)
        [0, 1, 2]
    """
    if layers is None:
        return list(range(num_layers))
    layers = list(layers)
    if not layers:
        raise ValueError(f"The list of {what}s is empty; pass None for all {num_layers} layers.")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
            raise ValueError(
                f"Unknown {what} index {layer!r}: the model has {num_layers} self-attention layers, indices 0.."
                f"{num_layers - 1} (in mask-plan order)."
            )
    return sorted(set(layers))


def attention_shapes(transformer: nn.Module, inputs: dict) -> list[dict]:
    """Per plan layer: the ``TileLayout``, ``[B, H, N, D]`` shape, dtype and device of its self-attention on ``inputs``.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> attention_shapes(t, tiny_inputs(t))[0]["shape"]
        (1, 2, 96, 12)
    """
    shapes: dict[int, dict] = {}
    num_layers = len(family_for(transformer).attention_modules(transformer))

    def observer(proc, q, k, v, layout, key_padding_mask):
        shapes[proc.layer_index] = dict(layout=layout, shape=tuple(q.shape), dtype=q.dtype, device=q.device)
        if proc.layer_index == num_layers - 1:
            raise StopForward()

    with torch.no_grad(), instrument(transformer, observer):
        run_until_stopped(transformer, inputs)
    return [shapes[i] for i in range(num_layers)]
