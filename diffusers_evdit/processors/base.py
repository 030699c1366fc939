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
    ``parallel_config`` is the transformer's diffusers ``ParallelConfig`` (``None`` unless
    ``enable_parallelism`` ran on it), recorded by the same hook, so that processors installed after
    parallelism was enabled (a later :func:`~diffusers_evdit.apply_mask_plan`) run under it too. The layout is
    always the *global* one: diffusers' context-parallel hooks shard the sequence inside the transformer, after
    this hook has seen the whole latent.

    Example:
        >>> from diffusers_evdit import MaskPlan, apply_mask_plan
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1))
        >>> with torch.no_grad():
        ...     _ = t(**tiny_inputs(t))
        >>> t._evdit_tile_state.video_layout
        TileLayout(num_frames=6, tokens_per_frame=16, num_text_tokens=0, text_position='none')
    """

    attention: TileAttention = field(default_factory=TileAttention)
    video_layout: TileLayout | None = None
    parallel_config: object = None
    padding_cache: tuple = (None, None)  # (the model's attention-mask tensor, its key-padding form) of this forward
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

    Example:
        >>> from diffusers_evdit import MaskPlan, TileSparseAttnProcessor, apply_mask_plan
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = apply_mask_plan(tiny_transformer("wan"), MaskPlan([1, None]))
        >>> [(p.layer_index, p.k) for p in t.attn_processors.values() if isinstance(p, TileSparseAttnProcessor)]
        [(0, 1), (1, None)]
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, k: int | None, state: TileState, layer_index: int = 0):
        self.k = k
        self.state = state
        self.layer_index = layer_index

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer_index}, k={self.k})"

    @property
    def parallel_config(self):
        """The diffusers ``ParallelConfig`` this processor runs under, or ``None``.

        ``enable_parallelism`` sets ``_parallel_config`` on the processors present at that time; processors installed
        later get the transformer's config from the shared :class:`TileState`.
        """
        return self._parallel_config if self._parallel_config is not None else self.state.parallel_config

    def context_parallel(self):
        """The ``ParallelConfig`` when it enables context parallelism (Ulysses and/or ring), else ``None``."""
        config = self.parallel_config
        if config is None or getattr(config, "context_parallel_config", None) is None:
            return None
        return config

    def check_seq_len(self, layout: TileLayout, seq_len: int, where: str) -> None:
        """Check that this call's (local) self-attention sequence fits the global ``layout``.

        Single process: ``seq_len`` must be ``layout.seq_len``. Under context parallelism the video tokens are
        sharded over the ranks and the text tokens are whole on every rank (see :mod:`diffusers_evdit.parallel`).
        """
        config = self.context_parallel()
        if config is None:
            layout.check_seq_len(seq_len, where)
            return
        from ..parallel import check_local_seq_len

        check_local_seq_len(layout, seq_len, config.context_parallel_config, where)

    def tile_attention(self, q, k, v, layout: TileLayout, key_padding_mask=None, dense_fn=None) -> torch.Tensor:
        """Exact tile attention of ``[B, H, N, D]`` tensors for this layer's plan entry.

        ``layout`` and ``key_padding_mask`` describe the global sequence. In a single process ``q, k, v`` hold that
        whole sequence. Under diffusers' context parallelism they hold this rank's shard (the text segment whole,
        a slice of the video tokens) for all heads; :func:`diffusers_evdit.parallel.ulysses_tile_attention` then
        exchanges them (Ulysses all-to-all) so that the kernel sees the global sequence for this rank's heads.
        ``dense_fn(q, k, v)`` is the model's own attention call on the processor's tensors (local shards under
        context parallelism, run through diffusers' own context-parallel attention).
        """
        config = self.context_parallel()
        if config is not None:
            from ..parallel import ulysses_tile_attention

            return ulysses_tile_attention(self, q, k, v, layout, key_padding_mask, dense_fn, config)
        return self.state.attention(q, k, v, layout, self.k, key_padding_mask=key_padding_mask, dense_fn=dense_fn)

    def key_padding(self, attention_mask, batch: int, seq_len: int, where: str):
        """:func:`key_padding_from_attention_mask` of the model's mask, computed once per forward: every layer gets
        the same mask tensor, and checking it (``mask.all()``) synchronises the GPU, so later layers reuse it."""
        cached_mask, cached = self.state.padding_cache
        if attention_mask is not None and attention_mask is cached_mask:
            return cached
        result = key_padding_from_attention_mask(attention_mask, batch, seq_len, where)
        if attention_mask is not None:
            self.state.padding_cache = (attention_mask, result)
        return result

    def is_dense_on(self, layout: TileLayout) -> bool:
        """Whether this layer's entry is dense on ``layout`` (``k=None`` or ``k >= F``)."""
        return is_dense(layout.num_frames, self.k)


def dispatch_dense_fn(
    processor: TileSparseAttnProcessor, attention_mask: torch.Tensor | None, parallel: bool = True
) -> Callable:
    """The model's own dense attention call for ``[B, H, N, D]`` tensors: diffusers' ``dispatch_attention_fn`` on
    ``[B, N, H, D]`` with the processor's attention backend and parallel config (as the stock Wan and HunyuanVideo
    processors call it). ``parallel=False`` drops the parallel config (for tensors already gathered by Ulysses)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    def dense_fn(q, k, v):
        out = dispatch_attention_fn(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=processor._attention_backend,
            parallel_config=processor.parallel_config if parallel else None,
        )
        return out.transpose(1, 2)

    return dense_fn


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
        self.state.parallel_config = getattr(module, "_parallel_config", None)


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

    Example:
        >>> from diffusers_evdit.processors import family_for
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> family = family_for(tiny_transformer("cogvideox"))
        >>> family.name, family.text_position, family.processor_cls.__name__
        ('cogvideox', 'first', 'CogVideoXTileSparseAttnProcessor')
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
