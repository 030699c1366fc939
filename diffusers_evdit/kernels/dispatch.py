"""The dispatcher: :class:`TileAttention` picks an exact kernel per call (``auto``, ``fastest`` or a named one),
checks it against the registry's constraints (:data:`TILE_KERNELS`) and keeps its per-layout caches;
:func:`tile_attention` is the one-call form. The kernels live in the modules beside this one.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..layout import TileLayout
from ..masks import additive_tile_mask, element_sparsity, is_dense, non_reference_frames
from .dense import dense_attention
from .fa4 import FA4_MAX_HEAD_DIM, FA4TileKernel, prefers_fa4
from .flex import FlexTileKernel
from .gathered import gathered_tile_attention
from .indices import TileIndices, tile_indices
from .keysets import gather_buffer_shapes, keyset_plan, keyset_tile_attention
from .compiled import CompiledFn
from .registry import KernelRegistry, TileCall
from .split import merge_partial_attention, split_tile_attention
from .triton_merge import triton_merge_available, triton_merge_partial_attention
from .tuning import KernelTuner
from .walk import BLOCK_M as WALK_BLOCK_M
from .walk import GLOBAL_ROWS, WalkTables, walk_segments, walk_tile_attention

# the names the CLI offers
KERNELS = ("auto", "fastest", "dense", "gathered", "split", "flex", "walk", "masked", "keysets", "fa4")
# "fastest" runs dense attention for a sparse entry only when auto's kernel is slower by more than this share
FASTEST_MARGIN = 0.02
MERGES = ("auto", "eager", "compiled", "triton")

# Sequences up to SMALL_SEQ_LEN tokens are "small": there a kernel's number of calls, not the pairs it skips, decides
# its time, so "auto" picks by the measured crossovers below rather than by sparsity alone.
# CPU: keysets (two dense calls, no mask, no merge) for masks skipping more than masked_max_sparsity(threads) of the
# pairs, one SDPA call with the tile mask (masked) for lighter ones; under autograd keysets above
# SMALL_TRAIN_MIN_SPARSITY, masked below. Longer CPU layouts take split.
# CUDA: masked up to CUDA_MASKED_SEQ_LEN tokens (every call is a launch there); above it walk (one Triton launch,
# inference only, outside torch.compile tracing and CUDA-graph capture), else gathered for masks skipping more than
# CUDA_GATHERED_MIN_SPARSITY and masked for the others. Longer sequences take split.
# The measurements behind each constant (devices, dates, ratios): BENCHMARKS.md "Short sequences on the CPU" and
# "Short sequences on a GPU" (kernels-cpu-demo-keysets-t*.json, keyset-study-cpu.json, kernels-small-h100.json,
# gpu-masked-study.json).
SMALL_SEQ_LEN = {"cpu": 512, "cuda": 4608}
CUDA_MASKED_SEQ_LEN = 2048  # CUDA sequences up to this length run masked for every mask
CUDA_GATHERED_MIN_SPARSITY = 0.6  # longer small CUDA sequences run gathered above this sparsity
SMALL_MASKED_MAX_SPARSITY = 0.05  # one CPU thread
SMALL_MASKED_MAX_SPARSITY_THREADED = 0.15  # several CPU threads
SMALL_TRAIN_MIN_SPARSITY = 0.25  # under autograd: keysets above, masked below
# Long sequences: FlashAttention-4 (fa4) before split from this length, on the GPUs of prefers_fa4 where it is
# installed: level with split or ahead forward, ahead forward + backward, on every full-size shape measured;
# on mid-length sequences its host time a call lost to dense (figures: BENCHMARKS.md "FlashAttention-4 on an H100",
# kernels-fa4-h100.json)
FA4_MIN_SEQ_LEN = 16384
MAX_KEYSET_BUFFERS = 32  # pairs of kept key-set buffers a TileAttention holds (per thread, shape and inference mode)


@torch.compiler.assume_constant_result
def cpu_threads() -> int:
    """torch's CPU thread count, read as a constant under ``torch.compile`` (no graph break; a compiled graph keeps
    the kernel chosen when it was traced)."""
    return torch.get_num_threads()


def masked_max_sparsity(threads: int) -> float:
    """The sparsity up to which ``auto`` runs ``masked`` rather than ``keysets`` on a short CPU sequence, for
    ``threads`` torch CPU threads (measured crossovers above).

    Example:
        >>> masked_max_sparsity(1), masked_max_sparsity(2)
        (0.05, 0.15)
    """
    return SMALL_MASKED_MAX_SPARSITY if threads <= 1 else SMALL_MASKED_MAX_SPARSITY_THREADED


# The merge is compiled (one fused pass) only for inputs this large: each distinct run length compiles once (seconds),
# which pays off on real video models (CogVideoX-5B: 5e7 elements) but not on small ones like the demo model (1e5).
FUSED_MERGE_MIN_NUMEL = 1 << 22


def check_kernel(kernel: str) -> str:
    """Return ``kernel`` if it names a kernel, else raise ``ValueError`` listing the choices.

    Example:
        >>> check_kernel("split")
        'split'
        >>> check_kernel("fast")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: Unknown tile-attention kernel 'fast'; choose one of auto, fastest, dense, gathered, split, ...
    """
    if kernel not in KERNELS and kernel not in TILE_KERNELS:
        names = ("auto", "fastest", *TILE_KERNELS.names())
        raise ValueError(f"Unknown tile-attention kernel {kernel!r}; choose one of {', '.join(names)}.")
    return kernel


def _check_inputs(q, k, v, layout: TileLayout, key_padding_mask) -> None:
    dtype, device = q.dtype, q.device
    if k.dtype != dtype or v.dtype != dtype or k.device != device or v.device != device:
        raise ValueError(
            f"q, k, v must share one dtype and device, got {q.dtype} on {q.device}, {k.dtype} on {k.device}, "
            f"{v.dtype} on {v.device}; cast them to q's (k.to(q))."
        )
    if q.dim() != 4 or k.shape != q.shape[:3] + k.shape[3:] or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"tile attention expects q, k, v as [batch, heads, tokens, head_dim], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}."
        )
    layout.check_seq_len(q.shape[2])
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (q.shape[0], q.shape[2])
    ):
        raise ValueError(
            f"key_padding_mask must be a bool tensor [batch, tokens] = {(q.shape[0], q.shape[2])}, got "
            f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}."
        )


@dataclass
class TileAttention:
    """Runs exact ``k:F-k`` attention, choosing a kernel per call; holds the kernels' caches.

    Args:
        kernel: ``"auto"`` (default), ``"fastest"``, or a kernel of :data:`TILE_KERNELS`: ``"dense"``,
            ``"gathered"``, ``"split"``, ``"flex"``, ``"walk"``, ``"masked"``, ``"keysets"`` or ``"fa4"``.
        merge: how the ``split`` kernel merges its two partial results: ``"eager"`` (PyTorch), ``"compiled"``
            (``torch.compile``, one fused pass), ``"triton"`` (a Triton kernel; CUDA) or ``"auto"`` (default:
            compiled on CUDA for large inputs, else eager). BENCHMARKS.md compares them.
        global_chunks: the split kernel's global queries (reference frames + text) run against this many equal key
            chunks in one batched call (see :func:`.split.global_attention`); default 1 (more chunks were slower
            on almost every benchmark case, BENCHMARKS.md).
        overlap: run the split kernel's global call on a second CUDA stream, concurrently with the non-reference
            frames' calls and merges (fills the last, partial wave of each call; exact either way). Default False:
            no faster than one stream (BENCHMARKS.md).
        walk_block_m: query rows per program of the ``walk`` kernel (its key-range tables are built for it).
        walk_global: who computes the rows that see every key (text, reference frames) under the ``walk`` kernel:
            ``"sdpa"`` (one dense SDPA call, cuDNN on CUDA, at its best on long rows), ``"walk"`` (the same Triton
            launch as the other rows) or ``"auto"`` (default: ``"walk"`` on sequences up to ``small_seq_len``,
            where one launch is cheaper, else ``"sdpa"``).
        tuner: the micro-benchmark of ``kernel="fastest"`` and its cache (``tuner.choices``, ``tuner.timings``); one
            given with a ``timer`` also runs on the CPU.
        small_seq_len: sequences up to this length take ``auto``'s small-shape kernels; default per device
            (:data:`SMALL_SEQ_LEN`), 0 turns them off.

    ``kernel="fastest"`` is ``"auto"`` that is never slower than dense attention: on CUDA it times auto's kernel
    against the model's dense attention once per call signature (layout, plan entry, input shape and dtype; a
    one-time micro-benchmark, :class:`~.tuning.KernelTuner`) and runs the faster, keeping auto's kernel unless dense
    is faster by more than :data:`FASTEST_MARGIN`. ``auto`` runs the walk kernel only on mid-length CUDA sequences
    (above :data:`CUDA_MASKED_SEQ_LEN` tokens, up to ``small_seq_len``), where it was the fastest exact kernel; its
    first call per shape compiles and tunes four launch settings (seconds). Longer sequences keep ``split``, which
    walk never beat there (BENCHMARKS.md), except on Hopper GPUs where FlashAttention-4 is installed: there ``auto``
    runs ``fa4`` from :data:`FA4_MIN_SEQ_LEN` tokens: on every full-size shape measured it was level with split
    or ahead forward, and ahead forward + backward (its first call per head size, dtype and direction compiles,
    seconds; if that call fails, ``auto`` warns and runs split from then on). An entry that picks dense attention
    then computes full attention, not its tile mask: the plan becomes a licence to skip work where that pays. Under
    ``torch.compile`` tracing and CUDA-graph capture nothing is timed and auto's kernel runs. ``"auto"`` always
    applies the plan's masks (exact kernels only).

    Example:
        >>> import torch
        >>> from diffusers_evdit import TileLayout
        >>> layout = TileLayout(num_frames=4, tokens_per_frame=8, num_text_tokens=3, text_position="first")
        >>> q = k = v = torch.randn(1, 2, layout.seq_len, 16)
        >>> TileAttention()(q, k, v, layout, k_ref=1).shape
        torch.Size([1, 2, 35, 16])
    """

    kernel: str = "auto"
    merge: str = "auto"
    global_chunks: int = 1
    overlap: bool = False
    walk_block_m: int = WALK_BLOCK_M
    walk_global: str = "auto"
    small_seq_len: int | None = None
    tuner: KernelTuner = field(default_factory=KernelTuner)
    flex: FlexTileKernel = field(default_factory=FlexTileKernel)
    fa4: FA4TileKernel = field(default_factory=FA4TileKernel)
    fused_merge: CompiledFn = field(default_factory=lambda: CompiledFn(merge_partial_attention, {"dynamic": False}))
    _indices: dict = field(default_factory=dict, repr=False)
    _walk_tables: dict = field(default_factory=dict, repr=False)
    _walk_launches: dict = field(default_factory=dict, repr=False)
    _side_streams: dict = field(default_factory=dict, repr=False)
    _masks: dict = field(default_factory=dict, repr=False)
    _chosen: dict = field(default_factory=dict, repr=False)
    _keyset_plans: dict = field(default_factory=dict, repr=False)
    _keyset_buffers: dict = field(default_factory=dict, repr=False)
    _fa4_failed: bool = field(default=False, repr=False)  # auto's FA4 call raised once: auto no longer picks it

    def __post_init__(self):
        check_kernel(self.kernel)
        if self.merge not in MERGES:
            raise ValueError(f"Unknown split-kernel merge {self.merge!r}; choose one of {', '.join(MERGES)}.")
        if self.walk_global not in GLOBAL_ROWS + ("auto",):
            raise ValueError(f"walk_global must be 'auto' or one of {GLOBAL_ROWS}, got {self.walk_global!r}.")

    def merge_fn(self, q: torch.Tensor) -> Callable:
        """The ``merge(out, o1, o2, lse1, lse2)`` the split kernel uses for inputs like ``q``."""
        choice = self.merge
        if choice == "auto":
            choice = "compiled" if q.device.type == "cuda" and q.numel() >= FUSED_MERGE_MIN_NUMEL else "eager"
        if choice == "triton":
            if not triton_merge_available(q.device):
                raise RuntimeError("merge='triton' needs Triton and CUDA tensors; use merge='auto'.")
            return triton_merge_partial_attention
        return self.fused_merge if choice == "compiled" else merge_partial_attention

    def side_stream(self, q: torch.Tensor):
        """The CUDA stream the split kernel's global call overlaps on (``overlap=True``, CUDA inputs, outside
        ``torch.compile`` tracing), one per device and instance; else None."""
        if not self.overlap or q.device.type != "cuda" or torch.compiler.is_compiling():
            return None
        key = str(q.device)
        if key not in self._side_streams:
            self._side_streams[key] = torch.cuda.Stream(q.device)
        return self._side_streams[key]

    def indices(self, layout: TileLayout, k_ref: int, device: torch.device) -> TileIndices:
        """The cached :class:`TileIndices` of a sparse entry on ``layout``."""
        return cached_outside_trace(self._indices, (layout, k_ref, str(device)),
                                    lambda: tile_indices(layout, k_ref, device))

    def walk_tables(self, layout: TileLayout, k_ref: int, device: torch.device) -> WalkTables:
        """The cached key-range tables of the ``walk`` kernel for a sparse entry on ``layout``."""
        return cached_outside_trace(self._walk_tables, (layout, k_ref, str(device), self.walk_block_m),
                       lambda: walk_segments(layout, k_ref, self.walk_block_m).to(device))

    def tile_bias(self, layout: TileLayout, k_ref: int, q: torch.Tensor) -> torch.Tensor:
        """The cached ``[N, N]`` additive tile mask of a sparse entry (0 kept, -inf dropped; ``q``'s dtype and
        device), the ``masked`` kernel's (SDPA adds it as it is, where a boolean mask is converted every call)."""
        key = (layout, k_ref, q.device, q.dtype)
        bias = None if torch.compiler.is_compiling() else self._masks.get(key)  # the per-call path: one lookup
        return bias if bias is not None else cached_outside_trace(
            self._masks, key, lambda: additive_tile_mask(layout, k_ref, q.dtype, q.device))

    def is_small(self, call: TileCall) -> bool:
        """Whether ``call``'s sequence is short enough for ``auto``'s small-shape kernels."""
        limit = self.small_seq_len
        if limit is None:
            limit = SMALL_SEQ_LEN.get(call.q.device.type, 0)
        return call.layout.seq_len <= limit

    def preference(self, call: TileCall) -> tuple[str, ...]:
        """``auto``'s kernels for a sparse entry, fastest first; it runs the first that supports the call."""
        # fa4's and walk's first call per shape compiles (walk also tunes): not inside a trace or a graph capture
        tracing = torch.compiler.is_compiling() or (call.q.is_cuda and torch.cuda.is_current_stream_capturing())
        if not self.is_small(call):
            # FlashAttention-4 where it was measured level with or ahead of split (Hopper); refused without it, for
            # a key-padding mask, float32 or an odd head size, and then split runs
            long = call.layout.seq_len >= FA4_MIN_SEQ_LEN
            fa4 = ("fa4",) if long and not tracing and not self._fa4_failed and prefers_fa4(call.q.device) else ()
            return fa4 + ("split", "gathered")
        sparsity = element_sparsity(call.layout, call.k_ref)
        if call.q.device.type != "cpu":
            if call.layout.seq_len <= CUDA_MASKED_SEQ_LEN:
                return ("masked", "gathered")
            walk = () if tracing else ("walk",)  # refused under autograd, for float64 or without Triton
            if sparsity > CUDA_GATHERED_MIN_SPARSITY:
                return walk + ("gathered", "split")
            return walk + ("masked", "gathered")
        # keysets' backward is autograd's through its two calls; split takes a key-padding mask that keysets refuses
        limit = SMALL_TRAIN_MIN_SPARSITY if call.needs_grad else masked_max_sparsity(cpu_threads())
        if sparsity > limit:
            return ("keysets", "split", "gathered")
        return ("masked", "gathered")

    def choose(self, layout: TileLayout, k_ref: int | None, device: torch.device, key_padding_mask=None,
               call: TileCall | None = None) -> str:
        """The kernel this call will use (``call`` holds the inputs; without it, zero-size placeholders on
        ``device`` stand for them).

        ``auto``: dense where the mask keeps every pair (a dense entry, or ``k = F - 1``: the one non-reference
        frame sees every frame); otherwise the first kernel of :meth:`preference` whose declared constraints hold
        (:data:`TILE_KERNELS`): ``fa4`` on Hopper GPUs where FlashAttention-4 is installed, from
        :data:`FA4_MIN_SEQ_LEN` tokens (no key-padding mask; bf16/fp16), ``split`` (the fastest exact kernel on
        the shapes measured without FA4, BENCHMARKS.md; exact backward too), ``gathered`` where a key-padding mask
        covers video tokens (``split`` handles padded text only; under ``torch.compile`` any key-padding mask takes
        a kernel that handles every mask, so the check adds no graph break), and on short sequences
        (:data:`SMALL_SEQ_LEN`) one masked SDPA call (on CUDA above :data:`CUDA_MASKED_SEQ_LEN` tokens the ``walk``
        kernel where it runs, else ``gathered`` for masks skipping more than :data:`CUDA_GATHERED_MIN_SPARSITY` and
        ``masked`` for the others) or, on the CPU, ``keysets`` for masks that skip more than
        :func:`masked_max_sparsity` of the pairs (it depends on the thread count; without a key-padding mask, else
        ``split``; under autograd for masks skipping more than :data:`SMALL_TRAIN_MIN_SPARSITY`, else ``masked``).
        ``fastest``: the same, then a call may still run dense attention (see the class docs). A named kernel runs
        as named.
        """
        if is_dense(layout.num_frames, k_ref) or len(non_reference_frames(layout.num_frames, k_ref)) <= 1:
            return "dense"
        if self.kernel not in ("auto", "fastest"):
            return self.kernel
        if call is None:
            placeholder = torch.empty(1, 1, layout.seq_len, 0, device=device)
            call = TileCall(placeholder, placeholder, placeholder, layout, k_ref, key_padding_mask)
        compiling = torch.compiler.is_compiling()
        for name in self.preference(call):
            spec = TILE_KERNELS[name]
            if compiling and spec.padding != "any" and key_padding_mask is not None:
                continue  # which tokens the mask pads is data-dependent: finding out would break the graph
            if spec.supports(call):
                return name
        return "gathered"

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: TileLayout,
        k_ref: int | None,
        key_padding_mask: torch.Tensor | None = None,
        scale: float | None = None,
        dense_fn: Callable | None = None,
    ) -> torch.Tensor:
        """Attention of ``[B, H, N, D]`` inputs under the ``k_ref:F-k_ref`` mask on ``layout``.

        ``key_padding_mask`` (``[B, N]`` bool, True = keep) is applied on top of the tile mask. ``dense_fn(q, k, v)``
        replaces plain SDPA on the dense path, so a processor keeps its model's own attention backend there.
        """
        call = TileCall(q, k, v, layout, k_ref, key_padding_mask, scale, dense_fn)
        signature = self._signature(call)
        chosen = self._chosen.get(signature) if signature is not None else None
        if chosen is not None:  # this signature was checked and its kernel chosen before: skip straight to it
            return chosen[1](self, call)
        _check_inputs(q, k, v, layout, key_padding_mask)
        kernel = self.choose(layout, k_ref, q.device, key_padding_mask, call)
        if kernel != "dense" and self._tunes(q):
            timed = (str(q.device), layout, k_ref, tuple(q.shape), tuple(q.stride()), q.dtype, scale,
                     key_padding_mask is not None, dense_fn is not None)  # processors pass a new dense_fn a call
            candidates = {name: (lambda name=name: self._run(name, call)) for name in (kernel, "dense")}
            kernel = self.tuner.pick(timed, candidates, prefer=kernel, margin=FASTEST_MARGIN)
        if kernel != "dense":  # dense attention runs anything (it is also the dense entries' path)
            TILE_KERNELS[kernel].check(call)
        if signature is not None:  # only a call that passed its checks is remembered, with its kernel's function
            self._chosen[signature] = (kernel, TILE_KERNELS[kernel].fn)
        if kernel == "fa4" and self.kernel == "auto":
            return self._first_fa4_call(call)
        return TILE_KERNELS[kernel].fn(self, call)

    def _first_fa4_call(self, call: TileCall) -> torch.Tensor:
        """Run auto's first FlashAttention-4 call of a signature (it compiles there). FA4 is a pre-release package: if
        that call fails, warn, stop choosing it in this instance and run the call again with the next kernel."""
        try:
            return TILE_KERNELS["fa4"].fn(self, call)
        except Exception as err:  # a compile or launch error inside FA4 / the CuTe DSL
            warnings.warn(f"FlashAttention-4 failed on a {tuple(call.q.shape)} {call.q.dtype} call "
                          f"({type(err).__name__}: {err}); kernel='auto' runs split instead from now on. "
                          "kernel='fa4' would raise this error.", RuntimeWarning, stacklevel=3)
            self._fa4_failed = True
            self._chosen.clear()  # every signature chooses again, without fa4
            return self(call.q, call.k, call.v, call.layout, call.k_ref, call.key_padding_mask, call.scale,
                        call.dense_fn)

    def kernels_used(self) -> tuple[str, ...]:
        """The kernels this instance's calls have run so far, sorted (from its per-signature choice cache: calls under
        ``fastest``, with a key-padding mask or inside a ``torch.compile`` trace are not recorded there).

        Example:
            >>> import torch
            >>> from diffusers_evdit import TileLayout
            >>> att, layout = TileAttention("gathered"), TileLayout(num_frames=4, tokens_per_frame=8)
            >>> q = torch.randn(1, 2, layout.seq_len, 16)
            >>> _ = att(q, q, q, layout, k_ref=1)
            >>> att.kernels_used()
            ('gathered',)
        """
        return tuple(sorted({kernel for kernel, _ in self._chosen.values()}))

    def _signature(self, c: TileCall):
        """What decides a call's checks and kernel, as a key of the per-instance choice cache; None where the choice
        must be made afresh (``fastest``, which times kernels; a key-padding mask, whose padded tokens are data;
        ``torch.compile`` tracing). On short sequences a call costs a few microseconds, so the Python of checking
        and choosing is a measurable share of it (BENCHMARKS.md, "Short sequences on a GPU")."""
        if self.kernel == "fastest" or c.key_padding_mask is not None or torch.compiler.is_compiling():
            return None
        q = c.q
        device = q.device
        threads = torch.get_num_threads() if device.type == "cpu" else 0
        return (c.layout, c.k_ref, q.shape, c.k.shape, c.v.shape, q.dtype, device, c.needs_grad, threads,
                c.dense_fn is None)

    def _tunes(self, q: torch.Tensor) -> bool:
        """Whether this call may time kernels: ``fastest``, on CUDA (or a tuner with its own timer), outside
        ``torch.compile`` tracing and CUDA-graph capture."""
        if self.kernel != "fastest":
            return False
        if q.device.type == "cuda":
            return not torch.compiler.is_compiling() and not torch.cuda.is_current_stream_capturing()
        return self.tuner.timer is not None and not torch.compiler.is_compiling()

    def _run(self, kernel: str, call: TileCall) -> torch.Tensor:
        spec = TILE_KERNELS[kernel]
        if kernel != "dense":  # dense attention runs anything (it is also the dense entries' path)
            spec.check(call)
        return spec.fn(self, call)


TILE_KERNELS = KernelRegistry()
"""The tile kernels by name, with their declared constraints (see :class:`.registry.KernelSpec`)."""


@TILE_KERNELS.register("dense")
def _dense(attention: TileAttention, c: TileCall) -> torch.Tensor:
    if c.dense_fn is not None:
        return c.dense_fn(c.q, c.k, c.v)
    return dense_attention(c.q, c.k, c.v, c.key_padding_mask, c.scale)


@TILE_KERNELS.register("gathered")
def _gathered(attention: TileAttention, c: TileCall) -> torch.Tensor:
    idx = attention.indices(c.layout, c.k_ref, c.q.device)
    return gathered_tile_attention(c.q, c.k, c.v, c.layout, idx, c.key_padding_mask, c.scale)


@TILE_KERNELS.register("split", padding="text", fix="use kernel='gathered'")
def _split(attention: TileAttention, c: TileCall) -> torch.Tensor:
    idx = attention.indices(c.layout, c.k_ref, c.q.device)
    return split_tile_attention(c.q, c.k, c.v, c.layout, idx, c.key_padding_mask, c.scale, attention.merge_fn(c.q),
                                attention.global_chunks, attention.side_stream(c.q))


@TILE_KERNELS.register("flex", head_dim_multiple=16, head_dim_devices=("cuda",), backward=("cuda",),
                       dtypes=(torch.float16, torch.bfloat16, torch.float32), dtype_devices=("cuda",),
                       fix="use kernel='split'")
def _flex(attention: TileAttention, c: TileCall) -> torch.Tensor:
    return attention.flex(c.q, c.k, c.v, c.layout, c.k_ref, c.key_padding_mask, c.scale)


@TILE_KERNELS.register("walk", needs_triton=True, backward=False, dtypes=(torch.float16, torch.bfloat16, torch.float32),
                       fix="use kernel='split'")
def _walk(attention: TileAttention, c: TileCall) -> torch.Tensor:
    global_rows = attention.walk_global
    if global_rows == "auto":
        global_rows = "walk" if attention.is_small(c) else "sdpa"
    tokens = attention.indices(c.layout, c.k_ref, c.q.device).global_tokens if global_rows == "sdpa" else None
    return walk_tile_attention(c.q, c.k, c.v, attention.walk_tables(c.layout, c.k_ref, c.q.device), c.scale,
                               global_rows=global_rows, global_tokens=tokens, key_padding_mask=c.key_padding_mask,
                               launch_settings=None if torch.compiler.is_compiling() else attention._walk_launches)


def cached_outside_trace(store: dict, key, build):
    """``store[key]``, built once; inside a torch.compile trace built inline instead (a dict keyed by layout objects
    made in the trace would break the graph, and the compiled graph holds the result as a constant anyway)."""
    if torch.compiler.is_compiling():
        return build()
    if key not in store:
        store[key] = build()
    return store[key]


@TILE_KERNELS.register("masked")
def _masked(attention: TileAttention, c: TileCall) -> torch.Tensor:
    mask = attention.tile_bias(c.layout, c.k_ref, c.q)
    if c.key_padding_mask is not None:
        mask = mask.masked_fill(~c.key_padding_mask[:, None, None, :], -torch.inf)
    return torch.nn.functional.scaled_dot_product_attention(c.q, c.k, c.v, attn_mask=mask, scale=c.scale)


@TILE_KERNELS.register("keysets", padding="none", fix="use kernel='split' or kernel='auto'")
def _keysets(attention: TileAttention, c: TileCall) -> torch.Tensor:
    plan = cached_outside_trace(attention._keyset_plans, (c.layout, c.k_ref, c.q.device),
                                lambda: keyset_plan(c.layout, c.k_ref, c.q.device))
    buffers = None
    if c.q.device.type == "cpu" and not c.needs_grad and attention.is_small(c) and not torch.compiler.is_compiling():
        # CPU inference on a short sequence: the key sets go into buffers kept per thread and shape; new ones each
        # call made some processes fault in fresh pages every call (BENCHMARKS.md, "Short sequences on the CPU").
        # Inference tensors (made under inference_mode) cannot be written outside it, so that is in the key too.
        shapes = gather_buffer_shapes(c.k, c.v, plan)
        key = (threading.get_ident(), torch.is_inference_mode_enabled(), c.k.dtype, c.v.dtype, shapes)
        buffers = attention._keyset_buffers.get(key)
        if buffers is None:
            if len(attention._keyset_buffers) >= MAX_KEYSET_BUFFERS:  # many threads or shapes: start afresh
                attention._keyset_buffers.clear()
            buffers = attention._keyset_buffers[key] = (torch.empty(shapes[0], dtype=c.k.dtype, device=c.k.device),
                                                        torch.empty(shapes[1], dtype=c.v.dtype, device=c.v.device))
    return keyset_tile_attention(c.q, c.k, c.v, plan, c.scale, gather_buffers=buffers)


@TILE_KERNELS.register("fa4", devices=("cuda",), dtypes=(torch.float16, torch.bfloat16), head_dim_multiple=8,
                       max_head_dim=FA4_MAX_HEAD_DIM, padding="none", backward=("cuda",), needs_fa4=True,
                       fix="use kernel='split'")
def _fa4(attention: TileAttention, c: TileCall) -> torch.Tensor:
    return attention.fa4(c.q, c.k, c.v, c.layout, c.k_ref, scale=c.scale)


def tile_attention(q, k, v, layout: TileLayout, k_ref: int | None, key_padding_mask=None, kernel="auto", scale=None):
    """One-off exact tile attention (see :class:`TileAttention`; reuse an instance to keep its caches).

    Example:
        >>> import torch
        >>> from diffusers_evdit import TileLayout
        >>> layout = TileLayout(num_frames=4, tokens_per_frame=8)
        >>> q = k = v = torch.randn(1, 2, layout.seq_len, 16)
        >>> tile_attention(q, k, v, layout, k_ref=2, kernel="gathered").shape
        torch.Size([1, 2, 32, 16])
    """
    return TileAttention(kernel)(q, k, v, layout, k_ref, key_padding_mask, scale)

