"""Key-set tile attention: exact ``k:F-k`` attention in two dense SDPA calls, no mask and no merge.

Every query row of a ``k:F-k`` mask sees one of ``1 + M`` key sets (``M`` non-reference frames): the *global* rows
(reference frames and text) see every key, and the rows of non-reference frame ``f`` see the global tokens and frame
``f``. So

1. the global rows against every key: one dense call (no mask);
2. every non-reference frame against its own key set, the frames folded into the batch: one dense call over keys
   gathered once per call (``[B * M, H, L_global + T, D]``).

Each row's softmax runs over exactly its kept keys, so there is nothing to merge, and neither call carries a mask.
The price is the key gather (the global keys are copied once per non-reference frame) and writing the two results
into one output; on short sequences both cost less than the mask of one masked SDPA call, which on the CPU costs a
few percent over an unmasked call even where it skips nothing.

The queries, keys and output are gathered along the token axis of the ``[B, N, H, D]`` memory that the diffusers
processors hand over (as ``[B, H, N, D]`` views), so each gather copies whole token rows, and the output has that
memory layout too, as dense SDPA's has for such inputs. No key-padding mask; the backward pass is autograd's through
these calls (exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layout import TileLayout
from ..masks import non_reference_frames, reference_frames
from .indices import Selector, merge_ranges, selector


@dataclass(frozen=True)
class KeySetPlan:
    """Where the two calls of :func:`keyset_tile_attention` read and write, for one layout and ``k``.

    Attributes:
        global_tokens: the reference-frame and text tokens, in sequence order (a slice where consecutive, else a
            long tensor).
        nonref_tokens: the non-reference frames' tokens, in sequence order (a slice where consecutive).
        key_sets: ``[M * (L_global + T)]`` long tensor, for each non-reference frame the global tokens then its own.
        runs: the output in ``(start, stop, call, offset)`` runs of consecutive tokens: tokens ``start:stop`` are rows
            ``offset:offset + stop - start`` of the global call's result (``call`` 0) or of the frames' (``call`` 1).
        num_nonref: ``M``, the number of non-reference frames.
        tokens_per_frame: ``T``.
        num_global: ``L_global``.
    """

    global_tokens: Selector
    nonref_tokens: Selector
    key_sets: torch.Tensor
    runs: tuple[tuple[int, int, int, int], ...]
    num_nonref: int
    tokens_per_frame: int
    num_global: int


def _runs(global_ranges: list[tuple[int, int]], nonref_ranges: list[tuple[int, int]]):
    """``(start, stop, call, offset)`` for the sorted, disjoint token ranges of both calls (see :class:`KeySetPlan`)."""
    runs, offsets = [], [0, 0]
    for start, stop, call in sorted([(a, b, 0) for a, b in global_ranges] + [(a, b, 1) for a, b in nonref_ranges]):
        runs.append((start, stop, call, offsets[call]))
        offsets[call] += stop - start
    return tuple(runs)


def keyset_plan(layout: TileLayout, k: int, device) -> KeySetPlan:
    """Build the :class:`KeySetPlan` of a sparse entry ``k`` (``k < F``) on ``layout`` (cache it per layout and ``k``).

    Example:
        >>> plan = keyset_plan(TileLayout(num_frames=4, tokens_per_frame=2), 2, "cpu")
        >>> plan.global_tokens, plan.nonref_tokens, plan.key_sets.tolist()
        (tensor([0, 1, 4, 5]), tensor([2, 3, 6, 7]), [0, 1, 4, 5, 2, 3, 0, 1, 4, 5, 6, 7])
        >>> plan.runs
        ((0, 2, 0, 0), (2, 4, 1, 0), (4, 6, 0, 2), (6, 8, 1, 2))
    """
    def tokens(f: int) -> list[int]:
        return list(range(layout.frame_slice(f).start, layout.frame_slice(f).stop))

    # plain Python from the layout (no tensor is read back, so torch.compile traces it without a graph break)
    text = list(range(layout.text_slice.start, layout.text_slice.stop))
    global_list = sorted(text + [t for f in reference_frames(layout.num_frames, k) for t in tokens(f)])
    frames = [tokens(f) for f in non_reference_frames(layout.num_frames, k)]
    nonref_list = [t for frame in frames for t in frame]
    return KeySetPlan(
        global_tokens=selector(global_list, device),
        nonref_tokens=selector(nonref_list, device),
        key_sets=torch.tensor([t for frame in frames for t in global_list + frame], dtype=torch.long, device=device),
        runs=_runs(*(merge_ranges([(t, t + 1) for t in tokens]) for tokens in (global_list, nonref_list))),
        num_nonref=len(frames),
        tokens_per_frame=layout.tokens_per_frame,
        num_global=len(global_list),
    )


def _tokens(x: torch.Tensor, sel: Selector, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (``[B, H, N, D]``) restricted to the tokens ``sel`` as ``[B, L, H, D]``: a view for a slice, one
    ``index_select`` (whole token rows of ``[B, N, H, D]`` memory) for an index tensor, into ``out`` if given."""
    xt = x.transpose(1, 2)
    if isinstance(sel, slice):
        return xt[:, sel]
    return torch.index_select(xt, 1, sel, out=out) if out is not None else xt.index_select(1, sel)


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """``[B, L, H, D]`` -> ``[B, H, L, D]`` (a view)."""
    return x.transpose(1, 2)


def gather_buffer_shapes(k: torch.Tensor, v: torch.Tensor, plan: KeySetPlan) -> tuple[tuple[int, ...], ...]:
    """The shapes of the key and value sets of ``[B, H, N, D]`` keys and values (``gather_buffers`` of
    :func:`keyset_tile_attention`).

    Example:
        >>> plan = keyset_plan(TileLayout(num_frames=4, tokens_per_frame=2), 2, "cpu")
        >>> gather_buffer_shapes(torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 16), plan)
        ((1, 12, 3, 16), (1, 12, 3, 16))
    """
    return tuple((x.shape[0], plan.key_sets.numel(), x.shape[1], x.shape[3]) for x in (k, v))


def keyset_tile_attention(q, k, v, plan: KeySetPlan, scale: float | None = None,
                          gather_buffers: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Exact ``k:F-k`` tile attention of ``[B, H, N, D]`` inputs in two dense SDPA calls (see the module docstring).

    ``plan`` comes from :func:`keyset_plan`. The output is a ``[B, H, N, D]`` view of ``[B, N, H, D]`` memory (what
    dense SDPA returns for the processors' inputs, so merging the heads afterwards is a view); it is put together
    by one ``torch.cat`` of the runs of consecutive tokens of the two results (measured faster than a slice copy per
    run or ``index_copy_``). No key-padding mask; differentiable.

    ``gather_buffers``: two ``[B, M * (L_global + T), H, D]`` tensors (:func:`gather_buffer_shapes`) that receive
    the key and value sets instead of new tensors, for inference (not under autograd: the frames' call would save
    them for backward). Kept between calls, they spare the allocator fresh pages every call.

    Example:
        >>> from diffusers_evdit.masks import tile_mask
        >>> layout = TileLayout(num_frames=5, tokens_per_frame=8, num_text_tokens=3, text_position="last")
        >>> q = k = v = torch.randn(2, 2, layout.seq_len, 16)
        >>> out = keyset_tile_attention(q, k, v, keyset_plan(layout, 2, q.device))
        >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=tile_mask(layout, 2))
        >>> torch.allclose(out, ref, atol=1e-5)
        True
    """
    b, h, _, d = q.shape
    m, t, lg = plan.num_nonref, plan.tokens_per_frame, plan.num_global

    # (1) global rows (reference frames, text) against every key
    o_global = F.scaled_dot_product_attention(_heads_first(_tokens(q, plan.global_tokens)), k, v, scale=scale)

    # (2) each non-reference frame against the global tokens and itself, the frames folded into the batch
    qn = _tokens(q, plan.nonref_tokens).reshape(b * m, t, h, d)
    kn, vn = (_tokens(x, plan.key_sets, out).reshape(b * m, lg + t, x.shape[1], x.shape[3])
              for x, out in zip((k, v), gather_buffers or (None, None)))
    o_frames = F.scaled_dot_product_attention(*(_heads_first(x) for x in (qn, kn, vn)), scale=scale)

    # the results, [B, L, H, D] each, put together in sequence order by one cat of their runs
    results = (o_global.transpose(1, 2), o_frames.transpose(1, 2).reshape(b, m * t, h, d))
    pieces = [results[call][:, offset:offset + stop - start] for start, stop, call, offset in plan.runs]
    return torch.cat(pieces, dim=1).transpose(1, 2)
