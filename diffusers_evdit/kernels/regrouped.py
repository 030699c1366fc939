"""Regrouped tile attention: exact ``k:F-k`` attention in three dense calls, for short sequences.

The tokens fall into two groups: the *global* tokens (reference frames and text: their queries see every key, and
every query sees their keys) and the non-reference frames (each sees its own frame and the global keys). So

1. global queries against all keys: one dense call (no mask);
2. all non-reference queries, of every sample and frame, against the global keys: one call that also returns the
   row log-sum-exp;
3. every non-reference frame against itself: one call with the frames folded into the batch/head dimension
   (block-diagonal), also returning the row log-sum-exp;

and (2) and (3) merge exactly by their log-sum-exps (keys disjoint), ``o = o3 + (o2 - o3) * sigmoid(lse2 - lse3)``.

Why a kernel of its own: the ``split`` kernel (:mod:`.split`) runs the same partial attentions per sample and per run
of consecutive non-reference frames, and one SDPA call with the additive tile mask (``masked``) pays for the mask on
every pair. On short sequences (the demo model's 8 frames x 64 tokens on a CPU) each call costs more in launch and
bookkeeping than the pairs a mask skips, and the CPU flash kernel with a mask costs a few percent more than without
one even where the mask skips nothing. Here there are always three calls, none with a mask, whatever the batch size,
``k`` or the positions of the reference frames: the gathers of the global tokens and non-reference frames (a view
where they are consecutive) and the merge are the only extra work. It has no key-padding mask and no backward pass
(``auto`` keeps ``split`` for training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import TileLayout
from .gathered import frames_view
from .indices import Selector, TileIndices
from .lse import attention_with_lse, lse_dtype


def _take(x: torch.Tensor, dim: int, sel: Selector) -> torch.Tensor:
    """``x`` restricted to ``sel`` along ``dim``: a view for a slice, one ``index_select`` for an index tensor."""
    if isinstance(sel, slice):
        return x.narrow(dim, sel.start, sel.stop - sel.start)
    return x.index_select(dim, sel)


def _put(out: torch.Tensor, dim: int, sel: Selector, src: torch.Tensor) -> None:
    """Write ``src`` into ``out`` at ``sel`` along ``dim`` (the inverse of :func:`_take`)."""
    if isinstance(sel, slice):
        out.narrow(dim, sel.start, sel.stop - sel.start).copy_(src)
    else:
        out.index_copy_(dim, sel, src.to(out.dtype))


def _fold_frames(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, M, T, D]`` -> a 4-d batch of ``[T, D]`` blocks: ``[B, H * M, T, D]`` where that is a view (a gathered,
    contiguous input), else ``[B * M, H, T, D]`` (a view for ``[B, N, H, D]`` memory at batch 1; a copy otherwise)."""
    if x.stride(1) == x.shape[2] * x.stride(2):
        return x.flatten(1, 2)
    return x.transpose(1, 2).flatten(0, 1)


def _unfold_frames(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Undo :func:`_fold_frames` of ``like`` on a result ``y`` (leading dimensions only; a view)."""
    b, h, m = like.shape[:3]
    if like.stride(1) == m * like.stride(2):
        return y.unflatten(1, (h, m))
    return y.unflatten(0, (b, m)).transpose(1, 2)


def regrouped_tile_attention(q, k, v, layout: TileLayout, idx: TileIndices, scale: float | None = None):
    """Exact ``k:F-k`` tile attention of ``[B, H, N, D]`` inputs in three dense calls (see the module docstring).

    ``idx`` comes from :func:`.indices.tile_indices` (the global tokens: reference frames and text; the
    non-reference frames). No key-padding mask and no backward pass: for those use the ``split`` or ``gathered``
    kernels. The two partial results of the non-reference rows merge in float32 (float64 for float64 inputs).

    Example:
        >>> from diffusers_evdit.masks import tile_mask
        >>> from diffusers_evdit.kernels.indices import tile_indices
        >>> layout = TileLayout(num_frames=5, tokens_per_frame=8, num_text_tokens=3, text_position="last")
        >>> q = k = v = torch.randn(2, 2, layout.seq_len, 16)
        >>> out = regrouped_tile_attention(q, k, v, layout, tile_indices(layout, 2, q.device))
        >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=tile_mask(layout, 2))
        >>> torch.allclose(out, ref, atol=1e-5)
        True
    """
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    g = idx.global_tokens

    # (1) global rows (reference frames, text) attend to every key
    _put(out, 2, g, F.scaled_dot_product_attention(_take(q, 2, g), k, v, scale=scale))

    # the non-reference frames of every sample, [B, H, M, T, D]; a view where they are consecutive frames
    qn, kn, vn = (_take(frames_view(x, layout), 2, idx.nonref_frames) for x in (q, k, v))
    m, t = qn.shape[2:4]

    # (2) all non-reference rows against the global keys, one query sequence per sample and head
    o_shared, lse_shared = attention_with_lse(qn.flatten(2, 3), _take(k, 2, g), _take(v, 2, g), scale)
    # (3) every non-reference frame against itself, the frames folded into the batch
    o_own, lse_own = attention_with_lse(_fold_frames(qn), _fold_frames(kn), _fold_frames(vn), scale)
    o_own, lse_own = _unfold_frames(o_own, qn), _unfold_frames(lse_own.unsqueeze(-1), qn).squeeze(-1)

    acc = lse_dtype(q)
    weight = torch.sigmoid(lse_shared.unflatten(2, (m, t)) - lse_own).unsqueeze(-1).to(acc)
    merged = torch.lerp(o_own.to(acc), o_shared.unflatten(2, (m, t)).to(acc), weight)
    _put(frames_view(out, layout), 2, idx.nonref_frames, merged.to(q.dtype))
    return out
