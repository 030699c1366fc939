"""The tile-sparse attention processor: the model's own processor with only its attention product replaced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import TEXT_NONE, TileLayout
from ..masks import check_k, is_dense
from . import ulysses
from .install import bind_on_first_use
from .state import TileState


_UNSET = object()


def parameter_names(processor) -> set[str]:
    """The parameter names of a processor's ``__call__`` (what diffusers' ``Attention.forward`` filters by)."""
    import inspect

    return set(inspect.signature(processor.__call__).parameters)


class TileSparseAttnProcessor:
    """Exact ``k:F-k`` tile attention in the video self-attentions of any supported diffusers transformer.

    The processor runs the model's own processor (projections, norms, RoPE, output projection, exactly as diffusers
    wrote them) and replaces only its attention product (``dispatch_attention_fn`` or
    ``F.scaled_dot_product_attention``) by tile attention; see :mod:`.intercept`. ``k=None`` keeps dense attention.

    Drop-in use, as for any diffusers processor::

        pipe.transformer.set_attn_processor(TileSparseAttnProcessor(k=2))

    On its first call the processor finds the transformer that calls it and installs the plan
    ``MaskPlan.uniform(num_plan_layers(transformer), k)`` on it (the same as :func:`~diffusers_evdit.apply_mask_plan`):
    the video self-attentions get tile processors, every other attention module (cross-attention, audio, text-only
    blocks) gets its stock processor back. Per-layer plans: :func:`~diffusers_evdit.apply_mask_plan`.

    Args:
        k: number of reference frames of this layer, or ``None`` for dense.
        state: the transformer's shared :class:`TileState` (set by ``apply_mask_plan``; ``None`` for drop-in use).
        layer_index: position of the layer in the mask plan.
        config: for drop-in use, how the plan runs (:class:`~diffusers_evdit.TileAttentionConfig`).
        plan_layers: for drop-in use, the entries of a per-layer plan to bind instead of ``k`` on every layer (see
            :func:`~diffusers_evdit.plan.mask_plan_processors`).

    Attributes:
        num_reference_frames: ``k`` of this layer (``None``: dense); ``processor.k`` is the same value.

    Example:
        >>> from diffusers_evdit import MaskPlan, TileSparseAttnProcessor, apply_mask_plan
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = apply_mask_plan(tiny_transformer("wan"), MaskPlan([1, None]))
        >>> [(p.layer_index, p.k) for p in t.attn_processors.values() if isinstance(p, TileSparseAttnProcessor)]
        [(0, 1), (1, None)]
    """

    family_name: str | None = None  # per-family subclasses accept only their family
    is_tile_processor = True
    _attention_backend = None
    _parallel_config = None

    def __init__(self, k: int | None = None, state: TileState | None = None, layer_index: int = 0, *, config=None,
                 plan_layers: list | None = None):
        check_k(k)
        self.num_reference_frames = k
        self.state = state
        self.layer_index = layer_index
        self.config = config
        self.plan_layers = None if plan_layers is None else list(plan_layers)  # drop-in: a per-layer plan to bind
        self.stock = None  # the model's own processor of this layer (else taken from the state)
        self._call = None  # (stock processor, its intercepting __call__)

    @property
    def k(self) -> int | None:
        """The plan entry of this layer (alias of :attr:`num_reference_frames`)."""
        return self.num_reference_frames

    @k.setter
    def k(self, value: int | None) -> None:
        check_k(value)
        self.num_reference_frames = value

    def __getstate__(self) -> dict:
        # the cached intercepting call is bound to this instance: a copy (copy.deepcopy, pickle) builds its own
        return {**self.__dict__, "_call": None}

    def __repr__(self) -> str:
        if self.state is None:
            return f"{type(self).__name__}(k={self.k})"
        return f"{type(self).__name__}(layer={self.layer_index}, k={self.k})"

    # ----------------------------------------------------------------------------------------------- the call

    def __call__(self, attn, hidden_states, *args, image_rotary_emb=_UNSET, temb=_UNSET, **kwargs):
        # image_rotary_emb and temb are named because diffusers' ``Attention.forward`` passes only the keyword
        # arguments that appear in the processor's signature; they reach the stock processor if its signature has them.
        if self.state is None:
            processor = bind_on_first_use(self, attn)  # a bound tile processor, or the module's stock one
            names = None if getattr(type(processor), "is_tile_processor", False) else parameter_names(processor)
            stock, call = processor, type(processor).__call__
        else:
            stock, call, names = self.prepare()
            self.state.active_processor = self  # where the shared intercepting call routes the attention product
        if image_rotary_emb is not _UNSET and (names is None or "image_rotary_emb" in names):
            kwargs["image_rotary_emb"] = image_rotary_emb
        if temb is not _UNSET and (names is None or "temb" in names):
            kwargs["temb"] = temb
        return call(stock, attn, hidden_states, *args, **kwargs)

    def prepare(self) -> tuple:
        """``(stock processor, its intercepting __call__, its parameter names)``, built once (at install, so that
        ``torch.compile`` finds it ready) and again only when the stock processor changes. The intercepting call is
        shared by every layer with the same stock processor class (:meth:`TileState.intercepting_call`)."""
        stock = self.stock if self.stock is not None else self.state.stock_processors[self.layer_index]
        cached = self._call
        if cached is None or cached[0] is not stock:
            cached = (stock, self.state.intercepting_call(stock), parameter_names(stock))
            self._call = cached
        return cached

    def _dispatch(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False, attention_kwargs=None, *, backend=None, parallel_config=None, **extra):
        """Stands in for ``dispatch_attention_fn`` inside the stock processor (``[B, N, H, D]`` tensors)."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        backend = backend if backend is not None else self._attention_backend
        parallel_config = parallel_config if parallel_config is not None else self.parallel_config

        def attend(q, k, v, mask, parallel=True):
            out = dispatch_attention_fn(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, attention_kwargs=attention_kwargs,
                backend=backend, parallel_config=parallel_config if parallel else None, **extra,
            )
            return out.transpose(1, 2)

        q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        return self._product(q, k, v, attn_mask, scale, dropout_p or is_causal or enable_gqa, attend).transpose(1, 2)

    def _sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """Stands in for ``F.scaled_dot_product_attention`` inside the stock processor (``[B, H, N, D]``)."""

        def attend(q, k, v, mask, parallel=True):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
            )

        return self._product(query, key, value, attn_mask, scale, dropout_p or is_causal or enable_gqa, attend)

    def _product(self, q, k, v, attn_mask, scale, unusual, attend) -> torch.Tensor:
        """The attention product of ``[B, H, N, D]`` tensors: tile attention for the video self-attention call,
        ``attend`` (the model's own call) for anything else the processor computes."""
        seq_len = q.shape[2]
        if k.shape[2] != seq_len:
            return attend(q, k, v, attn_mask)  # a cross-attention inside the same processor
        q, k, v = autocast_inputs(q, k, v)
        layout = self.sequence_layout(seq_len)
        dense = is_dense(layout.num_frames, self.k)
        if unusual and not dense:
            raise NotImplementedError(
                f"{self.where()}: tile-sparse attention runs without dropout, causal masking or grouped-query "
                "attention; use a dense plan entry for this layer."
            )
        config = self.context_parallel()
        key_padding, explicit = model_mask_parts(attn_mask, q.shape[0], layout.seq_len, self.state)
        if explicit is not None and not dense:
            if config is not None:
                raise NotImplementedError(f"{self.where()}: the model's own attention mask is not supported under "
                                          "context parallelism with tile-sparse attention.")
            if key_padding is None:
                return attend(q, k, v, combine_masks(explicit, self.state.tile_mask(layout, self.k, q.device)))

        def dense_fn(q_, k_, v_):
            return attend(q_, k_, v_, attn_mask)

        if explicit is not None and not dense:
            # an outer product of key padding (HunyuanVideo 1.5): the tile kernels with the padding give every valid
            # query row; the padded query rows (every key masked) come from the model's own call on those rows
            out = self.tile_attention(q, k, v, layout, key_padding, dense_fn)
            if out.requires_grad:  # the rows below are written in place: not into a tensor autograd saved (KD)
                out = out.clone()
            for b, rows in enumerate(~key_padding):
                rows = rows.nonzero().squeeze(1)
                if rows.numel():
                    out[b : b + 1, :, rows] = attend(q[b : b + 1, :, rows], k[b : b + 1], v[b : b + 1],
                                                     explicit[b : b + 1, :, rows])
            return out

        if config is not None:

            def inner(q_, k_, v_):
                mask = None if key_padding is None else key_padding[:, None, None, :]
                return attend(q_, k_, v_, mask, parallel=False)

            return ulysses.ulysses_tile_attention(self, q, k, v, layout, key_padding, dense_fn, config, inner)
        if scale is not None and not dense:
            return self.state.attention(q, k, v, layout, self.k, key_padding_mask=key_padding, scale=scale,
                                        dense_fn=dense_fn)
        return self.tile_attention(q, k, v, layout, key_padding, dense_fn)

    # ------------------------------------------------------------------------------------------------ helpers

    def where(self) -> str:
        """This layer, for error messages (only built on the way to an error: under ``torch.compile`` every value
        read here would become a per-layer guard)."""
        family = getattr(self.state, "family", None)
        return f"{family.name if family is not None else type(self).__name__} layer {self.layer_index}"

    def sequence_layout(self, seq_len: int) -> TileLayout:
        """The layout of a self-attention call of ``seq_len`` tokens: this call's video layout plus the family's
        extra tokens (``seq_len`` minus the video tokens, at the family's position; the local shard under context
        parallelism)."""
        video = self.state.video_layout
        if video is None:
            self.state.require_video_layout(self.where())  # raises, naming the layer
        config = self.context_parallel()
        num_video = video.num_video_tokens
        if config is not None:
            num_video = ulysses.local_video_tokens(video, config.context_parallel_config)
        position = self.state.family.text_position if self.state.family is not None else TEXT_NONE
        extra = seq_len - num_video
        expected = self.state.extra_tokens
        if extra < 0 or (extra > 0 and position == TEXT_NONE) or (expected is not None and extra != expected):
            raise ValueError(
                f"{self.where()} received {seq_len} tokens, but the tile layout explains {num_video} "
                f"({video.num_frames} frames x {video.tokens_per_frame} tokens"
                f"{', plus extra tokens ' + position if position != TEXT_NONE else ''}). The input does not have "
                "the frame-major layout the mask plan assumes; call the transformer with the latents the plan was "
                "applied for (the layout comes from its forward)."
            )
        return video.with_text(extra, position if extra else TEXT_NONE)

    @property
    def parallel_config(self):
        """The diffusers ``ParallelConfig`` this processor runs under, or ``None`` (set by ``enable_parallelism`` on
        the processor, or recorded in the shared state for processors installed later)."""
        if self._parallel_config is not None:
            return self._parallel_config
        return None if self.state is None else self.state.parallel_config

    def context_parallel(self):
        """The ``ParallelConfig`` when it enables context parallelism (Ulysses and/or ring), else ``None``."""
        config = self.parallel_config
        if config is None or getattr(config, "context_parallel_config", None) is None:
            return None
        return config

    def tile_attention(self, q, k, v, layout: TileLayout, key_padding_mask=None, dense_fn=None) -> torch.Tensor:
        """Exact tile attention of ``[B, H, N, D]`` tensors for this layer's plan entry (``dense_fn(q, k, v)``: the
        model's own attention call, used for dense entries)."""
        return self.state.attention(q, k, v, layout, self.k, key_padding_mask=key_padding_mask, dense_fn=dense_fn)

    def is_dense_on(self, layout: TileLayout) -> bool:
        """Whether this layer's entry is dense on ``layout`` (``k=None`` or ``k >= F``)."""
        return is_dense(layout.num_frames, self.k)


def autocast_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """``q, k, v`` as SDPA itself would take them under autocast: in the autocast dtype.

    The processor receives the model's call before autocast's cast, and some models hand SDPA mixed dtypes under
    mixed precision (CogVideoX's and HunyuanVideo's RoPE return float32 query and key beside a bfloat16 value), which
    autocast casts to its dtype. Outside autocast the tensors are returned as they are."""
    device = q.device.type
    if not torch.is_autocast_enabled(device):
        return q, k, v
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in (q, k, v))


def model_mask_parts(mask, batch: int, seq_len: int, state: TileState | None = None):
    """Split a model's self-attention mask into ``(key_padding [B, N] bool or None, explicit mask or None)``.

    Boolean key-padding masks (``[B, N]``, ``[B, 1, 1, N]``) combine with every tile kernel; an all-True mask is
    dropped (checked once per mask tensor, outside ``torch.compile`` graphs, where the check would need the values).
    A boolean ``[B, 1, N, N]`` mask that is the outer product ``keep_i & keep_j`` of a key padding (HunyuanVideo 1.5)
    gives both: ``(keep, mask)``. Any other mask (block-causal masks, additive biases; any mask inside a
    ``torch.compile`` graph) is returned as explicit only, to be AND-ed with the tile mask.

    Example:
        >>> keep = torch.tensor([[True, True, False]])
        >>> model_mask_parts(keep[:, None, None, :], 1, 3)[0].tolist(), model_mask_parts(None, 1, 3)
        ([[True, True, False]], (None, None))
    """
    if mask is None:
        return None, None
    compiling = torch.compiler.is_compiling()
    cache = None if state is None or compiling else state.padding_cache
    if cache is not None and cache[0] is mask:
        return cache[1]
    padding = mask[:, 0, 0] if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1 else mask
    is_padding = padding.dim() == 2 and padding.shape[1] == seq_len and padding.shape[0] in (1, batch)
    if mask.dtype == torch.bool and is_padding:
        result = (padding.expand(batch, seq_len), None)
    elif not compiling and (keep := outer_product_padding(mask)) is not None:
        result = (keep, mask)
    else:
        result = (None, mask)
    if not compiling and mask.dtype == torch.bool and bool(mask.all()):
        result = (None, None)
    if state is not None and not compiling:
        state.padding_cache = (mask, result)
    return result


def outer_product_padding(mask: torch.Tensor) -> torch.Tensor | None:
    """``keep [B, N]`` when the boolean ``[B, 1, N, N]`` mask is ``keep_i & keep_j``, else ``None``.

    Example:
        >>> keep = torch.tensor([[True, True, False]])
        >>> outer_product_padding((keep[:, :, None] & keep[:, None, :])[:, None]).tolist()
        [[True, True, False]]
    """
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != mask.shape[3]:
        return None
    keep = mask[:, 0].any(dim=1)
    if not keep.any(dim=1).all() or not torch.equal(mask[:, 0], keep[:, :, None] & keep[:, None, :]):
        return None
    return keep


def combine_masks(model_mask: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
    """The model's mask AND the tile mask (boolean masks), or the model's additive bias with ``-inf`` outside the
    tiles."""
    if model_mask.dtype == torch.bool:
        return model_mask & tile
    return model_mask.masked_fill(~tile, float("-inf"))
