"""How a plan runs (:class:`TileAttentionConfig`) and the per-transformer state its processors share."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from ..kernels import TileAttention, check_kernel
from ..kernels.dispatch import cached_outside_trace
from ..layout import TileLayout
from .intercept import intercepting_call


@dataclass(frozen=True)
class TileAttentionConfig:
    """How the sparse layers of a mask plan run: the kernel and its options.

    Passed to :func:`~diffusers_evdit.apply_mask_plan` (``config=``), in the style of diffusers' hook configurations
    (``FirstBlockCacheConfig`` + ``apply_first_block_cache``).

    Args:
        kernel: ``"auto"`` (default), ``"fastest"``, ``"dense"``, ``"gathered"``, ``"split"``, ``"flex"`` or
            ``"walk"`` (see :class:`~diffusers_evdit.TileAttention`).
        merge: how the split kernel merges its partial results (``"auto"``, ``"eager"``, ``"compiled"``,
            ``"triton"``).
        global_chunks: key chunks of the split kernel's global call.
        overlap: run the split kernel's global call on a second CUDA stream.

    Example:
        >>> config = TileAttentionConfig(kernel="split", merge="eager")
        >>> config.build().kernel
        'split'
    """

    kernel: str = "auto"
    merge: str = "auto"
    global_chunks: int = 1
    overlap: bool = False

    def __post_init__(self):
        check_kernel(self.kernel)
        if isinstance(self.global_chunks, bool) or not isinstance(self.global_chunks, int) or self.global_chunks < 1:
            raise ValueError(f"global_chunks must be an int >= 1, got {self.global_chunks!r}.")

    def build(self) -> TileAttention:
        """A fresh :class:`~diffusers_evdit.TileAttention` (kernel choice and caches) with these settings."""
        return TileAttention(self.kernel, merge=self.merge, global_chunks=self.global_chunks, overlap=self.overlap)


class _CallLayouts(threading.local):
    """The video layout (and the expected extra-token count, if known) of the transformer call in this thread, and
    the tile processor whose attention product this thread is computing.

    The layout is kept as its plain fields (:func:`_fields`): torch.compile can carry ints and strings out of a
    compiled forward, not a layout object created inside it."""

    def __init__(self):  # runs once per thread: the names are always in the thread's own __dict__
        self.video_layout: tuple | None = None
        self.extra_tokens: int | None = None
        self.processor = None


def _fields(layout: TileLayout | None) -> tuple | None:
    if layout is None:
        return None
    return (layout.num_frames, layout.tokens_per_frame, layout.num_text_tokens, layout.text_position)


def _layout(fields: tuple | None) -> TileLayout | None:
    return None if fields is None else TileLayout(*fields)


@dataclass
class TileState:
    """Per-transformer state shared by its tile-sparse processors (no global state).

    The layout hook (:class:`LayoutHook`) records the video layout of each transformer call *per thread*, so one
    transformer used from two threads, or with two input shapes in turn, gives every call its own layout. The last
    layout of any thread is the fallback for threads that did not run the forward (autograd's backward threads
    recomputing checkpointed blocks). ``attention`` holds the kernel choice and the kernels' caches;
    ``parallel_config`` is the transformer's diffusers ``ParallelConfig`` when ``enable_parallelism`` ran on it.

    Example:
        >>> import torch
        >>> from diffusers_evdit import MaskPlan, apply_mask_plan
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1))
        >>> with torch.no_grad():
        ...     _ = t(**tiny_inputs(t))
        >>> t._evdit_tile_state.video_layout
        TileLayout(num_frames=6, tokens_per_frame=16, num_text_tokens=0, text_position='none')
    """

    attention: TileAttention = field(default_factory=TileAttention)
    config: TileAttentionConfig = field(default_factory=TileAttentionConfig)
    family: object = None
    parallel_config: object = None
    padding_cache: tuple = (None, None)  # (a model mask tensor, its model_mask_parts) of the current forward
    original_processors: dict = field(default_factory=dict)
    stock_processors: list = field(default_factory=list)  # the model's own processor of every plan layer
    hook_handle: object = None
    metadata: dict = field(default_factory=dict)
    last_layout_fields: tuple | None = None  # the last call's layout of any thread, as :func:`_fields`
    last_extra_tokens: int | None = None
    _calls: _CallLayouts = field(default_factory=_CallLayouts, repr=False)
    _tile_masks: dict = field(default_factory=dict, repr=False)
    _intercepted: dict = field(default_factory=dict, repr=False)  # stock processor class -> its intercepting call

    def __deepcopy__(self, memo):
        import copy

        clone = TileState.__new__(TileState)
        memo[id(self)] = clone
        for name, value in vars(self).items():
            if name == "_calls":
                value = _CallLayouts()
                value.video_layout, value.extra_tokens = self._calls.video_layout, self._calls.extra_tokens
            elif name == "_intercepted":  # its calls route to *this* state: the copy builds its own
                value = {}
            else:
                value = copy.deepcopy(value, memo)
            setattr(clone, name, value)
        return clone

    def __getstate__(self):
        state = dict(vars(self))
        state["_calls"], state["_intercepted"] = None, {}
        return state

    def __setstate__(self, state):
        vars(self).update(state)
        self._calls = _CallLayouts()

    @property
    def video_layout(self) -> TileLayout | None:
        """The video layout of this thread's current transformer call (else the last one recorded)."""
        fields = self._calls.video_layout
        return _layout(fields if fields is not None else self.last_layout_fields)

    @property
    def extra_tokens(self) -> int | None:
        """The number of extra (text) tokens this thread's call puts in self-attention, when the family knows it."""
        if self._calls.video_layout is not None:
            return self._calls.extra_tokens
        return self.last_extra_tokens

    def set_video_layout(self, layout: TileLayout, extra_tokens: int | None = None) -> None:
        """Record the layout of the transformer call running in this thread."""
        fields = _fields(layout)
        self._calls.video_layout, self._calls.extra_tokens = fields, extra_tokens
        self.last_layout_fields, self.last_extra_tokens = fields, extra_tokens

    @property
    def active_processor(self):
        """The tile processor whose attention product this thread is computing (set by the processor just before it
        runs its stock processor's intercepting call; per thread, like the layout)."""
        return self._calls.processor

    @active_processor.setter
    def active_processor(self, processor) -> None:
        self._calls.processor = processor

    def intercepting_call(self, stock) -> Callable:
        """The stock processor's ``__call__`` with its attention product routed to :attr:`active_processor`
        (:func:`.intercept.intercepting_call`), one per processor class for the whole transformer.

        Every layer of a class runs the same function object, so ``torch.compile`` of repeated blocks
        (``compile_repeated_blocks``) traces it once for all layers instead of once per layer: a per-layer copy
        recompiled each block and, past dynamo's recompile limit (8), ran the remaining blocks uncompiled."""
        cls = type(stock)
        call = self._intercepted.get(cls)
        if call is None:
            call = self._intercepted[cls] = intercepting_call(stock, self._route_dispatch, self._route_sdpa)
        return call

    def _route_dispatch(self, *args, **kwargs):
        return self.active_processor._dispatch(*args, **kwargs)

    def _route_sdpa(self, *args, **kwargs):
        return self.active_processor._sdpa(*args, **kwargs)

    def require_video_layout(self, where: str) -> TileLayout:
        layout = self.video_layout
        if layout is None:
            raise RuntimeError(
                f"{where}: no tile layout is known. Tile-sparse processors get the layout from the transformer's "
                "forward; call the transformer (not an attention module alone), after apply_mask_plan()."
            )
        return layout

    def layout(self, num_text_tokens: int, text_position: str, where: str) -> TileLayout:
        """The current video layout with a text segment of ``num_text_tokens`` at ``text_position``."""
        return self.require_video_layout(where).with_text(
            num_text_tokens, text_position if num_text_tokens else "none"
        )

    def tile_mask(self, layout: TileLayout, k_ref: int, device):
        """The cached explicit ``[N, N]`` tile mask (for model masks that are not key padding)."""
        from ..masks import tile_mask

        return cached_outside_trace(self._tile_masks, (layout, k_ref, str(device)),
                                    lambda: tile_mask(layout, k_ref, device))


@dataclass
class LayoutHook:
    """Forward pre-hook recording the video layout of each transformer call in the shared state (per thread).

    An object rather than a closure, so that ``copy.deepcopy(transformer)`` gives a copy whose hook updates the
    copy's own state (EMA / teacher copies in distillation)."""

    family: object
    state: TileState

    def __call__(self, module, args, kwargs):
        self.family.check_call(module, args, kwargs)
        self.state.set_video_layout(self.family.video_layout(module, args, kwargs),
                                    self.family.extra_tokens(module, args, kwargs))
        self.state.parallel_config = getattr(module, "_parallel_config", None)
