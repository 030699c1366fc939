"""Forward hooks that record each plan layer's attention and MLP outputs (the features knowledge distillation
compares); which modules those are per family is listed in :mod:`.kd`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..processors import family_for
from .common import unwrap

__all__ = ["KDLayer", "LayerOutputCapture", "LayerOutputs", "kd_layers"]


@dataclass(frozen=True)
class KDLayer:
    """One plan layer's modules whose outputs are distilled.

    Attributes:
        index: plan layer index.
        block_name: the block holding the layer (``"blocks.3"``, ``"single_transformer_blocks.0"``).
        attention_name: the self-attention module (``"blocks.3.attn1"``).
        attention: that module; its forward output (a tensor or a ``(video, text)`` tuple) is the attention output.
        mlp_names: the MLP modules (``("blocks.3.ffn",)``; HunyuanVideo double blocks and HunyuanVideo 1.5 blocks:
            ``ff`` and ``ff_context``).
        mlp: those modules; their forward outputs together are the MLP output.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> layer = kd_layers(tiny_transformer("wan"))[1]
        >>> layer.index, layer.attention_name, layer.mlp_names
        (1, 'blocks.1.attn1', ('blocks.1.ffn',))
    """

    index: int
    block_name: str
    attention_name: str
    attention: nn.Module
    mlp_names: tuple[str, ...]
    mlp: tuple[nn.Module, ...]


#: MLP attribute names of a block, tried in order (see the module docstring's table).
_MLP_ATTRIBUTES = (("ff", "ff_context"), ("ff",), ("ffn",), ("act_mlp",))


def kd_layers(transformer: nn.Module) -> list[KDLayer]:
    """The attention and MLP modules of every plan layer of a supported transformer, in plan order.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> [(l.attention_name, l.mlp_names) for l in kd_layers(tiny_transformer("hunyuan_video", num_layers=1))]
        [('transformer_blocks.0.attn', ('transformer_blocks.0.ff', 'transformer_blocks.0.ff_context')), \
('single_transformer_blocks.0.attn', ('single_transformer_blocks.0.act_mlp',))]
    """
    transformer = unwrap(transformer)
    layers = []
    for i, (name, attention) in enumerate(family_for(transformer).attention_modules(transformer)):
        block_name = name.rsplit(".", 1)[0]
        block = transformer.get_submodule(block_name)
        for attrs in _MLP_ATTRIBUTES:
            if all(isinstance(getattr(block, a, None), nn.Module) for a in attrs):
                mlp = tuple(getattr(block, a) for a in attrs)
                layers.append(KDLayer(i, block_name, name, attention, tuple(f"{block_name}.{a}" for a in attrs), mlp))
                break
        else:
            raise TypeError(
                f"{type(block).__name__} ({block_name}) has no MLP module (ff / ffn / act_mlp); knowledge distillation "
                "supports the CogVideoX, Wan, HunyuanVideo, LTX-Video and HunyuanVideo 1.5 blocks of diffusers."
            )
    return layers


# --------------------------------------------------------------------------------------------------- the capture


@dataclass
class LayerOutputs:
    """Captured outputs of one forward: per plan layer, the attention tensors and the MLP tensors.

    ``attention[l]`` / ``mlp[l]`` are tuples of tensors (one per returned stream), batch first.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> with LayerOutputCapture(t) as capture:
        ...     with torch.no_grad(), capture.recording():
        ...         _ = t(**tiny_inputs(t))
        ...     outs = capture.outputs()
        >>> outs.num_layers, outs.attention[0][0].shape, outs.mlp[0][0].shape
        (2, torch.Size([1, 96, 24]), torch.Size([1, 96, 24]))
    """

    attention: list[tuple[torch.Tensor, ...]]
    mlp: list[tuple[torch.Tensor, ...]]

    @property
    def num_layers(self) -> int:
        return len(self.attention)


def _tensors(output: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(output, torch.Tensor):
        return (output,)
    if isinstance(output, (tuple, list)):
        return tuple(t for t in output if isinstance(t, torch.Tensor))
    raise TypeError(f"Cannot capture a module output of type {type(output).__name__}.")


class LayerOutputCapture:
    """Forward hooks recording each plan layer's attention and MLP outputs of a transformer, during
    :meth:`recording` only.

    Hooks are registered on construction and stay until :meth:`remove` (or the end of a ``with`` block). Outside a
    recording the hooks do nothing, so the same transformer can run target / EMA / validation forwards, and the
    recomputation of gradient-checkpointed blocks during ``backward`` records nothing. A recording holds exactly one
    forward: a layer firing twice raises ``RuntimeError`` (batch conditional and unconditional inputs instead).
    Tensors are kept as produced (in the autograd graph when gradients are enabled).

    Args:
        transformer: a supported diffusers transformer (or a DDP / ``torch.compile`` wrapper of one; the hooks go on
            the unwrapped module's submodules).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("cogvideox")
        >>> with LayerOutputCapture(t) as capture:
        ...     with capture.recording():
        ...         _ = t(**tiny_inputs(t))
        ...     outs = capture.outputs()
        >>> outs.num_layers, [x.shape for x in outs.attention[0]], outs.mlp[0][0].shape
        (2, [torch.Size([1, 96, 32]), torch.Size([1, 7, 32])], torch.Size([1, 103, 32]))
    """

    def __init__(self, transformer: nn.Module):
        self.transformer = unwrap(transformer)
        self.layers = kd_layers(self.transformer)
        self._active = False
        self._attention: list[tuple | None] = []
        self._mlp: list[list | None] = []
        self._handles = []
        for layer in self.layers:
            self._handles.append(layer.attention.register_forward_hook(self._hook(layer.index, "attention", 0)))
            for j, module in enumerate(layer.mlp):
                self._handles.append(module.register_forward_hook(self._hook(layer.index, "mlp", j)))
        self._clear()

    def _clear(self) -> None:
        n = len(self.layers)
        self._attention = [None] * n
        self._mlp = [[None] * len(layer.mlp) for layer in self.layers]

    def _hook(self, index: int, kind: str, part: int) -> Callable:
        def hook(module, args, output):
            if not self._active:
                return
            tensors = _tensors(output)
            if kind == "attention":
                if self._attention[index] is not None:
                    raise RuntimeError(self._twice(index, "attention"))
                self._attention[index] = tensors
            else:
                if self._mlp[index][part] is not None:
                    raise RuntimeError(self._twice(index, "MLP"))
                self._mlp[index][part] = tensors

        return hook

    def _twice(self, index: int, what: str) -> str:
        return (f"Layer {index} ({self.layers[index].block_name}) produced a second {what} output in one recording; "
                "record one transformer forward per recording (batch conditional and unconditional inputs).")

    @contextlib.contextmanager
    def recording(self) -> Iterator["LayerOutputCapture"]:
        """Record the next forward's outputs (previous ones are dropped); read them with :meth:`outputs`."""
        if not self._handles:
            raise RuntimeError("This capture was removed; make a new LayerOutputCapture.")
        self._clear()
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    def outputs(self) -> LayerOutputs:
        """The recorded :class:`LayerOutputs`; ``RuntimeError`` if a layer did not run in the last recording."""
        missing = [layer.block_name for layer, a, m in zip(self.layers, self._attention, self._mlp)
                   if a is None or any(x is None for x in m)]
        if missing:
            raise RuntimeError(
                f"No attention / MLP output was recorded for {', '.join(missing)}; run one full transformer forward "
                "inside capture.recording()."
            )
        return LayerOutputs(list(self._attention), [sum(m, ()) for m in self._mlp])

    def remove(self) -> None:
        """Remove the hooks and drop recorded tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._clear()

    def __enter__(self) -> "LayerOutputCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
