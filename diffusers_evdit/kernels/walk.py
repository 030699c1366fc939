"""The ``walk`` kernel: one Triton launch that walks only the tiles a ``k:F-k`` mask keeps.

The split kernel composes the mask from dense cuDNN calls (own frame; reference frames + text) and merges them by
their log-sum-exp: every call has its own launch, its own partial last wave, and the merge reads and writes the
output again. This kernel is one FlashAttention-style pass instead: each program takes a block of query rows and
runs the online softmax over a short list of key ranges, precomputed per query block on the host
(:func:`walk_segments`):

* a block of non-reference rows of one frame walks the global ranges (text and reference frames, merged where
  adjacent) and its own frame, with no element mask except at the end of a range;
* a block that straddles two non-reference frames walks the global ranges and both frames, keeping a key of either
  frame only for the rows of the same frame;
* a block with any global row (text or a reference frame) walks every key, with the paper's rule (a key counts when
  its query or the key is global or both lie in the same frame) if it also holds non-reference rows. By default
  (``global_rows="sdpa"``) the global rows run as one dense SDPA call instead, and the launch keeps only the blocks
  with a non-reference row, each walking what those rows need.

Ranges do not need to align with the kernel's blocks (CogVideoX: 226 text tokens, 1350 a frame); only the last
block of a range is bounds-checked (``group`` = -1 for global tokens, else the frame).

Triton runs it on CUDA tensors, or on the CPU under ``TRITON_INTERPRET=1`` (how the tests check it without a GPU).
Inference only (no backward); a key-padding mask drops keys on top of the tile mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import TileLayout
from ..masks import is_dense, reference_frames
from .indices import merge_ranges
from .triton_support import tl, triton, triton_runs

GLOBAL = -1  # the group of text and reference-frame tokens
GLOBAL_ROWS = ("sdpa", "walk")  # who computes the rows that see every key: one dense SDPA call, or the launch
BLOCK_M = 128  # query rows a program (CUDA); the segment tables are built for it


def walk_available(device: torch.device | str) -> bool:
    """Whether the ``walk`` kernel can run for tensors on ``device`` (CUDA with Triton, or the Triton interpreter)."""
    return triton_runs(device)


def token_groups(layout: TileLayout, k: int) -> torch.Tensor:
    """Per token: -1 for text and reference-frame tokens, else its frame (``[N]`` int32, CPU).

    Example:
        >>> token_groups(TileLayout(num_frames=3, tokens_per_frame=2, num_text_tokens=1, text_position="last"), 1)
        tensor([-1, -1,  1,  1,  2,  2, -1], dtype=torch.int32)
    """
    groups = torch.full((layout.seq_len,), GLOBAL, dtype=torch.int32)
    refs = set(reference_frames(layout.num_frames, k))
    for f in range(layout.num_frames):
        if f not in refs:
            groups[layout.frame_slice(f)] = f
    return groups


@dataclass(frozen=True)
class Walk:
    """The key ranges each query block walks in one launch.

    Attributes:
        start, stop: ``[blocks, max_segments]`` int32 key ranges, in walking order.
        masked: ``[blocks, max_segments]`` int32: 0 = every key of the range counts (up to its end), 1 = the tile
            mask's rule (a row of a block that also holds global rows), 2 = only keys of the row's own frame (the
            frames of a block that straddles frames; global keys among them are walked in their own ranges).
        count: ``[blocks]`` int32, ranges used per block.
        order: the query blocks the launch runs (int32), from the most keys walked to the fewest: programs start
            with the long blocks of every head, so no long block is left for the end of the launch.
    """

    start: torch.Tensor
    stop: torch.Tensor
    masked: torch.Tensor
    count: torch.Tensor
    order: torch.Tensor

    @property
    def max_segments(self) -> int:
        return self.start.shape[1]

    def block_keys(self) -> torch.Tensor:
        """Keys each query block walks."""
        used = torch.arange(self.max_segments, device=self.start.device) < self.count[:, None]
        return ((self.stop - self.start).clamp(min=0) * used).sum(1)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.start, self.stop, self.masked, self.count, self.order


def _walk(blocks: list[list[tuple[int, int, int]]]) -> Walk:
    """A :class:`Walk` from each block's ``(start, stop, masked)`` ranges (an empty list: a block not launched)."""
    width = max(1, max(len(b) for b in blocks))
    table = torch.zeros(len(blocks), width, 3, dtype=torch.int32)
    for i, segments in enumerate(blocks):
        if segments:
            table[i, :len(segments)] = torch.tensor(segments, dtype=torch.int32)
    count = torch.tensor([len(b) for b in blocks], dtype=torch.int32)
    walk = Walk(table[..., 0].contiguous(), table[..., 1].contiguous(), table[..., 2].contiguous(), count,
                torch.zeros(0, dtype=torch.int32))
    keys = walk.block_keys()
    order = torch.argsort(keys, descending=True, stable=True)
    return Walk(walk.start, walk.stop, walk.masked, count, order[count[order] > 0].to(torch.int32))


@dataclass(frozen=True)
class WalkTables:
    """What the walk kernel needs for one layout, ``k`` and block size (see :func:`walk_segments`).

    Attributes:
        group: ``[N]`` int32, :func:`token_groups`.
        full: the walk of every query block (``global_rows="walk"`` of :func:`walk_tile_attention`): a block with a
            global row walks all keys.
        local: the walk of the blocks with a non-reference row only, each walking just what those rows need (its
            global rows, if any, get partial results that the dense call for the global rows then replaces;
            ``global_rows="sdpa"``).
        block_m: query rows a block.
    """

    group: torch.Tensor
    full: Walk
    local: Walk
    block_m: int

    def walk(self, global_rows: str) -> Walk:
        return self.local if global_rows == "sdpa" else self.full

    def to(self, device) -> "WalkTables":
        move = lambda w: Walk(*(t.to(device) for t in w.tensors()))  # noqa: E731
        return WalkTables(self.group.to(device), move(self.full), move(self.local), self.block_m)

    def nbytes(self) -> int:
        tensors = (self.group, *self.full.tensors(), *self.local.tensors())
        return sum(t.numel() * t.element_size() for t in tensors)

    def keys_walked(self, global_rows: str = "walk") -> int:
        """Query-row x key pairs the launch computes (at least the mask's kept pairs of the rows it owns: a block's
        rows count in full), for cost estimates."""
        return int(self.walk(global_rows).block_keys().sum()) * self.block_m


def _local_ranges(layout: TileLayout, global_ranges, first: int, last: int) -> list[tuple[int, int, int]]:
    """The ranges non-reference rows of frames ``first..last`` walk: the global ranges and their frames (each row
    keeping its own frame's keys when they are more than one), adjacent unmasked ranges merged."""
    own = (layout.frame_slice(first).start, layout.frame_slice(last).stop, 2 if first != last else 0)
    merged: list[tuple[int, int, int]] = []
    for a, b, m in sorted([(a, b, 0) for a, b in global_ranges] + [own]):
        if merged and merged[-1][1] == a and not m and not merged[-1][2]:
            merged[-1] = (merged[-1][0], b, 0)
        else:
            merged.append((a, b, m))
    return merged


def walk_segments(layout: TileLayout, k: int, block_m: int = BLOCK_M) -> WalkTables:
    """Build the :class:`WalkTables` of a sparse entry ``k`` (``k < F``) on ``layout`` for query blocks of
    ``block_m`` rows (CPU tensors; move them with :meth:`WalkTables.to`).

    Example:
        >>> layout = TileLayout(num_frames=4, tokens_per_frame=4, num_text_tokens=2, text_position="first")
        >>> t = walk_segments(layout, 1, block_m=4)  # reference frame 0 = tokens 2-5, right after the text
        >>> def ranges(w):
        ...     return [list(zip(w.start[b, :n].tolist(), w.stop[b, :n].tolist(), w.masked[b, :n].tolist()))
        ...             for b, n in enumerate(w.count.tolist())]
        >>> ranges(t.full)  # doctest: +NORMALIZE_WHITESPACE
        [[(0, 18, 0)], [(0, 18, 1)], [(0, 6, 0), (6, 14, 2)], [(0, 6, 0), (10, 18, 2)], [(0, 6, 0), (14, 18, 0)]]
        >>> ranges(t.local)  # block 0 is text + reference rows only; block 1's non-reference rows are frame 1
        [[], [(0, 10, 0)], [(0, 6, 0), (6, 14, 2)], [(0, 6, 0), (10, 18, 2)], [(0, 6, 0), (14, 18, 0)]]
    """
    if is_dense(layout.num_frames, k):
        raise ValueError(f"walk_segments needs a sparse entry (k < {layout.num_frames}), got k={k}.")
    if block_m < 1:
        raise ValueError(f"block_m must be positive, got {block_m}.")
    group = token_groups(layout, k)
    n = layout.seq_len
    refs = reference_frames(layout.num_frames, k)
    global_ranges = merge_ranges([(layout.frame_slice(f).start, layout.frame_slice(f).stop) for f in refs]
                                  + [(layout.text_slice.start, layout.text_slice.stop)])
    full: list[list[tuple[int, int, int]]] = []
    local: list[list[tuple[int, int, int]]] = []
    for lo in range(0, n, block_m):
        present = set(group[lo:min(n, lo + block_m)].tolist())
        frames = present - {GLOBAL}
        local.append(_local_ranges(layout, global_ranges, min(frames), max(frames)) if frames else [])
        if GLOBAL in present:  # global rows see every key; non-reference rows beside them need the rule
            full.append([(0, n, int(len(present) > 1))])
        else:
            full.append(local[-1])
    return WalkTables(group, _walk(full), _walk(local), block_m)


if triton is not None:

    @triton.jit
    def _load_keys(k_ptr, v_ptr, cols, skn, skd, svn, svd, col_ok, head_dim, OFF: tl.constexpr, WIDTH: tl.constexpr,
                   CHECK_COLS: tl.constexpr, CHECK_LANES: tl.constexpr):
        """Head lanes ``OFF..OFF+WIDTH`` of a key block: K transposed ``[WIDTH, BLOCK_N]`` and V ``[BLOCK_N, WIDTH]``;
        columns past a range's end and lanes past the head dimension read as 0 (checked only where flagged)."""
        d = OFF + tl.arange(0, WIDTH)
        k_ptrs = k_ptr + cols[None, :].to(tl.int64) * skn + d[:, None] * skd
        v_ptrs = v_ptr + cols[:, None].to(tl.int64) * svn + d[None, :] * svd
        if CHECK_COLS:
            if CHECK_LANES:
                kt = tl.load(k_ptrs, mask=col_ok[None, :] & (d[:, None] < head_dim), other=0.0)
                v = tl.load(v_ptrs, mask=col_ok[:, None] & (d[None, :] < head_dim), other=0.0)
            else:
                kt = tl.load(k_ptrs, mask=col_ok[None, :], other=0.0)
                v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
        else:
            if CHECK_LANES:
                kt = tl.load(k_ptrs, mask=d[:, None] < head_dim, other=0.0)
                v = tl.load(v_ptrs, mask=d[None, :] < head_dim, other=0.0)
            else:  # the hot path: whole key blocks of whole lanes, no mask at all
                kt = tl.load(k_ptrs)
                v = tl.load(v_ptrs)
        return kt, v

    @triton.jit
    def _dot(a, b, acc, IEEE: tl.constexpr):
        if IEEE:
            return tl.dot(a, b, acc, input_precision="ieee")
        return tl.dot(a, b, acc)

    @triton.jit
    def _walk_range(acc0, acc1, l_i, m_i, q0, q1, gq, k_ptr, v_ptr, group, keep_ptr, skn, skd, svn, svd, lo, hi,
                    stop, qk_scale, head_dim, BLOCK_N: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
                    LANES0: tl.constexpr, LANES1: tl.constexpr, MODE: tl.constexpr, IEEE: tl.constexpr,
                    HAS_KEEP: tl.constexpr):
        """Online softmax of the query block over keys ``lo..hi`` (step BLOCK_N). MODE 0: every key valid; 1: keys
        below ``stop`` valid; 2: also the element rule of the tile mask; 3: only keys of the row's own frame.
        ``HAS_KEEP``: keys whose byte at
        ``keep_ptr`` is 0 (a key-padding mask) are dropped in every mode. The head splits into lanes ``0..D0`` (a
        power of two) and ``D0..D0+D1`` (D1 = 0 or a power of two; ``LANES0`` / ``LANES1``: some lanes of that group
        lie past the head dim), so a head of 96 runs as 64 + 32 lanes instead of a padded 128."""
        for n0 in range(lo, hi, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < stop
            kt0, v0 = _load_keys(k_ptr, v_ptr, cols, skn, skd, svn, svd, col_ok, head_dim, 0, D0, MODE != 0, LANES0)
            s = _dot(q0, kt0, tl.zeros([q0.shape[0], BLOCK_N], dtype=tl.float32), IEEE)
            if D1 > 0:
                kt1, v1 = _load_keys(k_ptr, v_ptr, cols, skn, skd, svn, svd, col_ok, head_dim, D0, D1, MODE != 0,
                                     LANES1)
                s = _dot(q1, kt1, s, IEEE)
            s = s * qk_scale
            if MODE == 1:
                s = tl.where(col_ok[None, :], s, float("-inf"))
            if MODE == 2:
                gk = tl.load(group + cols, mask=col_ok, other=-3)
                keep = col_ok[None, :] & ((gq[:, None] == -1) | (gk[None, :] == -1) | (gq[:, None] == gk[None, :]))
                s = tl.where(keep, s, float("-inf"))
            if MODE == 3:
                gk = tl.load(group + cols, mask=col_ok, other=-3)
                s = tl.where(col_ok[None, :] & (gq[:, None] == gk[None, :]), s, float("-inf"))
            if HAS_KEEP:
                kept = tl.load(keep_ptr + cols, mask=col_ok, other=0)
                s = tl.where(kept[None, :] != 0, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            if MODE == 0 and not HAS_KEEP:  # every key of the block counts: the row maximum is finite
                m_safe = m_new
            else:  # rows with no key yet: nothing to rescale
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc0 = _dot(p.to(v0.dtype), v0, acc0 * alpha[:, None], IEEE)
            if D1 > 0:
                acc1 = _dot(p.to(v1.dtype), v1, acc1 * alpha[:, None], IEEE)
            m_i = m_new
        return acc0, acc1, l_i, m_i

    @triton.jit
    def _walk_kernel(q_ptr, k_ptr, v_ptr, o_ptr, group, seg_start, seg_stop, seg_masked, seg_count, block_order,
                     keep_ptr, sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, s_keep,
                     heads, n_tokens, head_dim, qk_scale, max_seg, n_blocks, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, LANES0: tl.constexpr,
                     LANES1: tl.constexpr, IEEE: tl.constexpr, HAS_KEEP: tl.constexpr):
        pid = tl.program_id(0)  # longest query blocks first, every (batch, head) of a block side by side
        batch_heads = tl.num_programs(0) // n_blocks
        block = tl.load(block_order + pid // batch_heads)
        bh = pid % batch_heads
        b = (bh // heads).to(tl.int64)
        h = (bh % heads).to(tl.int64)
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_tokens
        q_rows = q_ptr + b * sqb + h * sqh + rows[:, None].to(tl.int64) * sqn
        o_rows = o_ptr + b * sob + h * soh + rows[:, None].to(tl.int64) * son
        d0 = tl.arange(0, D0)
        d1 = D0 + tl.arange(0, D1 if D1 > 0 else 16)
        q0 = tl.load(q_rows + d0[None, :] * sqd, mask=row_ok[:, None] & (d0[None, :] < head_dim), other=0.0)
        q1 = tl.load(q_rows + d1[None, :] * sqd, mask=row_ok[:, None] & (d1[None, :] < head_dim), other=0.0)
        gq = tl.load(group + rows, mask=row_ok, other=-2)
        k_base = k_ptr + b * skb + h * skh
        v_base = v_ptr + b * svb + h * svh
        keep_base = keep_ptr + b * s_keep
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
        acc0 = tl.full([BLOCK_M, D0], 0.0, dtype=tl.float32)
        acc1 = tl.full([BLOCK_M, D1 if D1 > 0 else 16], 0.0, dtype=tl.float32)
        for s in range(0, tl.load(seg_count + block)):
            lo = tl.load(seg_start + block * max_seg + s)
            stop = tl.load(seg_stop + block * max_seg + s)
            rule = tl.load(seg_masked + block * max_seg + s)
            if rule == 1:
                acc0, acc1, l_i, m_i = _walk_range(
                    acc0, acc1, l_i, m_i, q0, q1, gq, k_base, v_base, group, keep_base, skn, skd, svn, svd, lo, stop,
                    stop, qk_scale, head_dim, BLOCK_N, D0, D1, LANES0, LANES1, 2, IEEE, HAS_KEEP)
            elif rule == 2:
                acc0, acc1, l_i, m_i = _walk_range(
                    acc0, acc1, l_i, m_i, q0, q1, gq, k_base, v_base, group, keep_base, skn, skd, svn, svd, lo, stop,
                    stop, qk_scale, head_dim, BLOCK_N, D0, D1, LANES0, LANES1, 3, IEEE, HAS_KEEP)
            else:
                full = lo + ((stop - lo) // BLOCK_N) * BLOCK_N  # whole blocks unchecked, then the tail
                acc0, acc1, l_i, m_i = _walk_range(
                    acc0, acc1, l_i, m_i, q0, q1, gq, k_base, v_base, group, keep_base, skn, skd, svn, svd, lo, full,
                    stop, qk_scale, head_dim, BLOCK_N, D0, D1, LANES0, LANES1, 0, IEEE, HAS_KEEP)
                acc0, acc1, l_i, m_i = _walk_range(
                    acc0, acc1, l_i, m_i, q0, q1, gq, k_base, v_base, group, keep_base, skn, skd, svn, svd, full, stop,
                    stop, qk_scale, head_dim, BLOCK_N, D0, D1, LANES0, LANES1, 1, IEEE, HAS_KEEP)
        inv = 1.0 / l_i[:, None]
        tl.store(o_rows + d0[None, :] * sod, (acc0 * inv).to(o_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (d0[None, :] < head_dim))
        if D1 > 0:
            tl.store(o_rows + d1[None, :] * sod, (acc1 * inv).to(o_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & (d1[None, :] < head_dim))

    # tuned once per (sequence length, head dim): one compile per config and head size, not per mask; four settings
    # keep the first call short (benchmarks/profile_walk.py times 24)
    _CONFIGS = [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=st)
                for bn, w, st in ((64, 4, 3), (64, 8, 3), (128, 8, 3), (128, 4, 2))]
    _walk_tuned = triton.autotune(configs=_CONFIGS, key=["n_tokens", "head_dim"])(_walk_kernel)


def head_lanes(head_dim: int) -> tuple[int, int]:
    """The kernel's two lane groups of a head: ``D0``, the largest power of two ``<= head_dim`` (at least 16, the
    smallest matrix-multiply width), and ``D1``, 0 or a power of two >= 16 covering the rest, so that few lanes are
    padded.

    Example:
        >>> [head_lanes(d) for d in (64, 96, 128, 80, 24, 12)]
        [(64, 0), (64, 32), (128, 0), (64, 16), (16, 16), (16, 0)]
    """
    d0 = max(16, 1 << (head_dim.bit_length() - 1))
    rest = max(0, head_dim - d0)
    return d0, (0 if rest == 0 else max(16, 1 << (rest - 1).bit_length()))


LOG2E = 1.4426950408889634


def walk_tile_attention(q, k, v, tables: WalkTables, scale: float | None = None, config: dict | None = None,
                        global_rows: str = "walk", global_tokens=None, key_padding_mask=None,
                        launch_settings: dict | None = None):
    """Exact ``k:F-k`` tile attention of ``[B, H, N, D]`` inputs in one Triton launch (see the module docs).

    ``key_padding_mask`` (``[B, N]`` bool, True = keep) drops keys on top of the tile mask, anywhere in the sequence
    (HunyuanVideo's padded text).

    ``global_rows="sdpa"``: the launch skips the query blocks of global rows only, and the global rows
    (``global_tokens``, a slice or index tensor of the text and reference-frame positions, e.g.
    :attr:`.indices.TileIndices.global_tokens`) run as one dense SDPA call over all keys (cuDNN on CUDA), which is
    at its best on such long rows; the Triton launch keeps the short, partial rows, where it needs no merge.

    ``tables`` comes from :func:`walk_segments` (on the inputs' device). On CUDA the key block size and the launch
    settings are autotuned once per (N, D); ``config`` fixes them instead: ``{"BLOCK_N": 64, "num_warps": 8,
    "num_stages": 3}`` (any subset; the interpreter's default is ``{"BLOCK_N": 16}``). ``launch_settings``, a dict
    the caller keeps, pins the autotuner's choice: the first call per (N, D, dtype, key padding) stores it there and
    later calls launch with it directly, without the autotuner's per-call work on the host (BENCHMARKS.md, "Pinning
    walk's launch setting").

    Example:
        >>> import torch
        >>> from diffusers_evdit.masks import tile_mask
        >>> layout = TileLayout(num_frames=4, tokens_per_frame=8, num_text_tokens=3, text_position="first")
        >>> q, k, v = torch.randn(3, 1, 2, layout.seq_len, 16).unbind(0)
        >>> if walk_available("cpu"):  # under TRITON_INTERPRET=1
        ...     out = walk_tile_attention(q, k, v, walk_segments(layout, 2, block_m=16))
        ...     ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=tile_mask(layout, 2))
        ...     assert torch.allclose(out, ref, atol=1e-4)
    """
    if not walk_available(q.device):
        raise RuntimeError("The walk kernel needs Triton and CUDA tensors (or TRITON_INTERPRET=1); use kernel='split'.")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError("The walk tile kernel is inference-only (no backward); train with kernel='gathered'.")
    batch, heads, n, head_dim = q.shape
    if tables.group.shape[0] != n:
        raise ValueError(f"walk tables for {tables.group.shape[0]} tokens, inputs have {n}.")
    scale = head_dim ** -0.5 if scale is None else scale
    if global_rows not in GLOBAL_ROWS:
        raise ValueError(f"global_rows must be one of {GLOBAL_ROWS}, got {global_rows!r}.")
    if global_rows == "sdpa" and global_tokens is None:
        raise ValueError("global_rows='sdpa' needs global_tokens (the text and reference-frame positions).")
    out = torch.empty_like(q)
    walk = tables.walk(global_rows)
    n_blocks = walk.order.shape[0]
    grid = (n_blocks * batch * heads,)
    keep = None if key_padding_mask is None else key_padding_mask.to(device=q.device, dtype=torch.uint8).contiguous()
    args = (q, k, v, out, tables.group, *walk.tensors(), tables.group if keep is None else keep,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), 0 if keep is None else keep.stride(0),
            heads, n, head_dim, scale * LOG2E, walk.max_segments, n_blocks)
    d0, d1 = head_lanes(head_dim)
    common = {"BLOCK_M": tables.block_m, "D0": d0, "D1": d1, "LANES0": d0 > head_dim, "LANES1": d0 + d1 > head_dim,
              "IEEE": q.dtype == torch.float32, "HAS_KEEP": keep is not None}
    if q.device.type == "cuda" and config is None:
        key = (n, head_dim, q.dtype, keep is not None)
        pinned = None if launch_settings is None else launch_settings.get(key)
        if pinned is None:
            _walk_tuned[grid](*args, **common)
            if launch_settings is not None:  # the setting the autotuner just ran (one it tuned for this key)
                launch_settings[key] = _walk_tuned.best_config.all_kwargs()
        else:
            _walk_kernel[grid](*args, **common, **pinned)
    else:
        _walk_kernel[grid](*args, **common, **{"BLOCK_N": 16, **(config or {})})
    if global_rows == "sdpa":  # rows of blocks the launch also covered (beside local rows) are written again, equal
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].to(q.device)
        out[:, :, global_tokens] = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, global_tokens], k, v, attn_mask=mask, scale=scale)
    return out
