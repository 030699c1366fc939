"""What every tile-sparse attention processor shares: the per-transformer state and the family description."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..kernels import TileAttention
from ..layout import TEXT_NONE, TileLayout
from ..masks import is_dense


@dataclass
class TileState:
    """Per-transformer state shared by its processors (no global state).

    ``video_layout`` is set by a forward pre-hook on the transformer from the latent shape of each call; the
    processors add their own text segment to it. ``attention`` holds the kernel choice and the kernels' caches.
    """

    attention: TileAttention = field(default_factory=TileAttention)
    video_layout: TileLayout | None = None
    original_processors: dict = field(default_factory=dict)
    hook_id: int | None = None
    metadata: dict = field(default_factory=dict)

    def layout(self, num_text_tokens: int, text_position: str, where: str) -> TileLayout:
        """The current video layout with this call's text segment."""
        if self.video_layout is None:
            raise RuntimeError(
                f"{where}: no tile layout is known. Tile-sparse processors get the layout from the transformer's "
                "forward; call the transformer (not an attention module alone), after apply_mask_plan()."
            )
        return self.video_layout.with_text(num_text_tokens, text_position if num_text_tokens else TEXT_NONE)


class TileSparseAttnProcessor:
    """Base class of the tile-sparse attention processors.

    A processor keeps its model's stock math (projections, norms, RoPE, output projection) and replaces only the
    attention product by the exact ``k:F-k`` tile attention of its plan entry. ``k=None`` runs the model's own
    dense attention. Install them with :func:`diffusers_evdit.apply_mask_plan`, not one by one.

    Attributes:
        k: number of reference frames of this layer, or ``None`` for dense.
        layer_index: position of the layer in the mask plan.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, k: int | None, state: TileState, layer_index: int = 0):
        self.k = k
        self.state = state
        self.layer_index = layer_index

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer_index}, k={self.k})"

    def tile_attention(self, q, k, v, layout: TileLayout, key_padding_mask=None, dense_fn=None) -> torch.Tensor:
        """Exact tile attention of ``[B, H, N, D]`` tensors for this layer's plan entry."""
        if self._parallel_config is not None and not is_dense(layout.num_frames, self.k):
            raise NotImplementedError(
                f"Layer {self.layer_index}: tile-sparse attention does not run under diffusers' context parallelism "
                "yet; use a dense plan (or no plan) while parallelism is enabled."
            )
        return self.state.attention(q, k, v, layout, self.k, key_padding_mask=key_padding_mask, dense_fn=dense_fn)


def key_padding_from_attention_mask(mask: torch.Tensor | None, batch: int, seq_len: int, where: str):
    """Turn a model's key-padding attention mask (``[B, N]`` or ``[B, 1, 1, N]``, bool) into ``[B, N]`` bool.

    An all-True mask is returned as ``None``: it changes nothing, and unmasked calls run the fastest kernels. Any
    other mask form cannot be combined with the tile mask exactly, so it is refused.
    """
    if mask is None:
        return None
    if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
        mask = mask[:, 0, 0]
    if mask.dim() != 2 or tuple(mask.shape) != (batch, seq_len) or mask.dtype != torch.bool:
        raise NotImplementedError(
            f"{where}: tile-sparse attention combines with boolean key-padding masks of shape [batch, 1, 1, tokens] "
            f"= [{batch}, 1, 1, {seq_len}], got {mask.dtype} {tuple(mask.shape)}. Use a dense plan entry for this layer."
        )
    return None if bool(mask.all()) else mask


@dataclass
class LayoutHook:
    """Forward pre-hook that records the video layout of each transformer call in the shared state.

    An object rather than a closure, so that ``copy.deepcopy(transformer)`` gives a copy whose hook updates the
    copy's own state (EMA / teacher copies in distillation)."""

    family: "ModelFamily"
    state: TileState

    def __call__(self, module, args, kwargs):
        self.state.video_layout = self.family.video_layout(module, args, kwargs)


@dataclass(frozen=True)
class ModelFamily:
    """How one diffusers transformer class is made tile-sparse.

    Attributes:
        name: short family name (``"cogvideox"``).
        class_names: transformer class names of this family.
        attention_modules: ``transformer -> [(name, attention module)]``, the video self-attentions in execution order.
        processor_cls: the :class:`TileSparseAttnProcessor` subclass.
        video_layout: ``(transformer, forward args, forward kwargs) -> TileLayout`` of the video tokens.
        text_position: where text tokens sit in self-attention (``"first"``, ``"last"`` or ``"none"``).
    """

    name: str
    class_names: tuple[str, ...]
    attention_modules: Callable[[nn.Module], list[tuple[str, nn.Module]]]
    processor_cls: type
    video_layout: Callable[[nn.Module, tuple, dict], TileLayout]
    text_position: str


def forward_arg(args: tuple, kwargs: dict, name: str, index: int = 0):
    """A forward argument given by position or by keyword."""
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    raise ValueError(f"The transformer was called without {name!r}; the tile layout cannot be derived.")
