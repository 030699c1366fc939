"""Split tile attention: exact ``k:F-k`` attention as partial dense attentions merged by their log-sum-exp.

For the non-reference query frames, the allowed keys are two disjoint sets: the query's own frame, and the shared
context (reference frames + text), the same for every such frame. So

* ``own``: one batched dense call, each non-reference frame against itself (block-diagonal);
* ``shared``: all non-reference queries as one long sequence against the shared context (no per-frame K/V copies);
* the two partial results merge exactly: ``o = o_own + (o_shared - o_own) * sigmoid(lse_shared - lse_own)``;
* reference-frame and text queries attend to every key: one dense call (a view, not a copy, where they are adjacent).

Every call is dense, so the fastest dense backend runs it. The work done equals the mask's allowed pairs.
A key-padding mask is supported where only text tokens are padded (HunyuanVideo): padded keys are dropped per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import TileLayout
from .gathered import frames_view
from .indices import TileIndices
from .lse import attention_with_lse, attention_with_lse_math, lse_dtype  # noqa: F401 (old import path)
from .split_backward import frames_lse, split_backward


def merge_weight(out: torch.Tensor, lse1: torch.Tensor, lse2: torch.Tensor) -> torch.Tensor:
    """``sigmoid(lse2 - lse1)``, the weight of the second partial result, laid out like ``out`` without its last
    dimension, so that the merge reads it in the same order as it writes ``out`` (coalesced)."""
    weight = torch.sigmoid(lse2 - lse1)
    if out.stride(-1) != 1 or any(s % out.shape[-1] for s in out.stride()[:-1]):
        return weight
    order = sorted(range(weight.dim()), key=lambda i: -out.stride(i))  # outermost first
    dense = weight.permute(order).contiguous()
    return dense.permute([order.index(i) for i in range(weight.dim())])


def merge_partial_attention(out, o1, o2, lse1, lse2) -> None:
    """Write into ``out`` the exact softmax attention over the union of two disjoint key sets, from the partial
    results ``o1, o2`` (``[..., D]``) and their row log-sum-exps ``lse1, lse2`` (``[...]``, float32):
    ``o1 + (o2 - o1) * sigmoid(lse2 - lse1)``, computed in float32 (float64 for float64 inputs)."""
    weight = merge_weight(out, lse1, lse2)
    acc = lse_dtype(o1)
    out.copy_(torch.lerp(o1.to(acc), o2.to(acc), weight.unsqueeze(-1).to(acc)))


def global_attention(q, k, v, scale=None, chunks: int = 1, return_lse: bool = False):
    """Dense attention of the few global queries (reference frames + text, ``[1, H, L, D]``) against all keys.

    With ``chunks > 1`` (and a key count divisible by it) the keys split into equal chunks that run as one batched
    call, merged exactly by their log-sum-exps: ``chunks`` times the thread blocks of a single call, for GPUs that a
    short query sequence would leave partly idle. ``return_lse``: also return the rows' log-sum-exp ``[1, H, L]``.

    Example:
        >>> q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
        >>> k, v = torch.randn(2, 1, 2, 40, 8).unbind(0)
        >>> torch.allclose(global_attention(q, k, v, chunks=4), F.scaled_dot_product_attention(q, k, v), atol=1e-5)
        True
    """
    n = k.shape[2]
    if chunks <= 1 or n % chunks:
        if return_lse:
            return attention_with_lse(q, k, v, scale)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def as_batch(x):  # [1, H, n, D] -> [chunks, H, n / chunks, D], a view
        return x[0].unflatten(1, (chunks, n // chunks)).transpose(0, 1)

    o, lse = attention_with_lse(q.expand(chunks, *q.shape[1:]).contiguous(), as_batch(k), as_batch(v), scale)
    weight = torch.softmax(lse, dim=0).unsqueeze(-1)  # each chunk's share of the softmax mass, [chunks, H, L, 1]
    out = (o.to(lse.dtype) * weight).sum(0, keepdim=True).to(q.dtype)
    return (out, torch.logsumexp(lse, dim=0, keepdim=True)) if return_lse else out


def _tile_attention_one(q, k, v, layout: TileLayout, idx: TileIndices, text_keep, scale, merge, out,
                        global_chunks: int = 1, side_stream=None, lse=None):
    """Split attention of one sample (``[1, H, N, D]``) into ``out``; ``text_keep`` selects the valid text keys.

    Non-reference frames are processed run by run (consecutive frames between two reference frames), so every
    query, key and value tensor of the two partial calls is a view of the input: nothing is gathered or copied, and
    each run's merge writes straight into the output. With a ``side_stream`` (CUDA), the global call runs on it,
    concurrently with the non-reference frames' calls and merges on the current stream (disjoint rows of ``out``);
    the current stream waits for it before returning. With ``lse`` (``[1, H, N]``), the rows' final log-sum-exp is
    written into it too (for the backward, :mod:`.split_backward`).
    """
    tpf = layout.tokens_per_frame
    qv, kv, vv = (frames_view(x, layout) for x in (q, k, v))
    if text_keep is None:  # reference frames + text, in sequence order (a view where adjacent)
        k_shared, v_shared = k[:, :, idx.global_tokens], v[:, :, idx.global_tokens]
        k_all, v_all = k, v
    else:
        ts, vs = layout.text_slice, layout.video_slice
        k_text, v_text = k[:, :, ts][:, :, text_keep], v[:, :, ts][:, :, text_keep]
        k_shared = torch.cat([kv[:, :, idx.ref_frames].flatten(2, 3), k_text], dim=2)
        v_shared = torch.cat([vv[:, :, idx.ref_frames].flatten(2, 3), v_text], dim=2)
        k_all, v_all = torch.cat([k[:, :, vs], k_text], dim=2), torch.cat([v[:, :, vs], v_text], dim=2)

    def global_part():  # reference frames and text, against every (valid) key
        rows = idx.global_tokens
        if lse is None:
            out[:, :, rows] = global_attention(q[:, :, rows], k_all, v_all, scale, global_chunks)
        else:
            out[:, :, rows], lse[:, :, rows] = global_attention(q[:, :, rows], k_all, v_all, scale, global_chunks,
                                                                return_lse=True)

    if side_stream is None:
        global_part()
    else:  # tensors made here stay referenced until the join below, so no other stream reuses their memory early
        main_stream = torch.cuda.current_stream(q.device)
        side_stream.wait_stream(main_stream)
        with torch.cuda.stream(side_stream):
            global_part()
    out_frames = frames_view(out, layout)
    for run in idx.nonref_runs:
        m = run.stop - run.start
        qr, kr, vr = qv[:, :, run], kv[:, :, run], vv[:, :, run]  # [1, H, m, T, D] views
        # own frame: the run's frames as a batch [m, H, T, D]; shared context: the run as one query sequence
        o_own, lse_own = attention_with_lse(qr[0].transpose(0, 1), kr[0].transpose(0, 1), vr[0].transpose(0, 1), scale)
        o_sh, lse_sh = attention_with_lse(qr.flatten(2, 3), k_shared, v_shared, scale)
        lse_own, lse_sh = lse_own.transpose(0, 1)[None], lse_sh.unflatten(2, (m, tpf))
        merge(out_frames[:, :, run], o_own.transpose(0, 1)[None], o_sh.unflatten(2, (m, tpf)), lse_own, lse_sh)
        if lse is not None:
            frames_lse(lse, layout)[:, :, run] = torch.logaddexp(lse_own, lse_sh)
    if side_stream is not None:
        main_stream.wait_stream(side_stream)


def text_keep_of(key_padding_mask, layout: TileLayout):
    """The text part of a key-padding mask, after checking that it pads text tokens only (``None`` stays ``None``)."""
    if key_padding_mask is None:
        return None
    if not bool(key_padding_mask[:, layout.video_slice].all()):
        raise ValueError("The split kernel supports key-padding masks on text tokens only; use kernel='gathered'.")
    return key_padding_mask[:, layout.text_slice]


def split_tile_attention(
    q, k, v, layout: TileLayout, idx: TileIndices, key_padding_mask=None, scale=None, merge=merge_partial_attention,
    global_chunks: int = 1, side_stream=None,
):
    """Exact ``k:F-k`` tile attention of ``[B, H, N, D]`` inputs by LSE-merged partial dense attentions.

    ``idx`` comes from :func:`.indices.tile_indices`. ``key_padding_mask`` (``[B, N]`` bool, True = keep) may only
    mask text tokens; samples are then processed one by one with their padded keys dropped. ``merge(out, o1, o2,
    lse1, lse2)`` combines two partial results into ``out``: :func:`merge_partial_attention`, a compiled version of it
    (one fused pass on GPU) or :func:`.triton_merge.triton_merge_partial_attention`. ``global_chunks``: see
    :func:`global_attention`. ``side_stream`` (a ``torch.cuda.Stream``, CUDA inputs only): the global queries' call
    runs on it, overlapping the other calls (exact either way).

    Differentiable: where gradients are needed it runs :class:`SplitTileAttentionFunction`, whose backward reuses
    each key set's dense backward with the rows' final output and log-sum-exp (:mod:`.split_backward`).

    Example:
        >>> from diffusers_evdit.masks import tile_mask
        >>> from diffusers_evdit.kernels.indices import tile_indices
        >>> layout = TileLayout(num_frames=4, tokens_per_frame=8, num_text_tokens=3, text_position="first")
        >>> q = k = v = torch.randn(1, 2, layout.seq_len, 16)
        >>> out = split_tile_attention(q, k, v, layout, tile_indices(layout, 2, q.device))
        >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=tile_mask(layout, 2))
        >>> torch.allclose(out, ref, atol=1e-5)
        True
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return SplitTileAttentionFunction.apply(q, k, v, layout, idx, key_padding_mask, scale, merge, global_chunks,
                                                side_stream)
    return split_forward(q, k, v, layout, idx, key_padding_mask, scale, merge, global_chunks, side_stream)[0]


def split_forward(q, k, v, layout: TileLayout, idx: TileIndices, key_padding_mask=None, scale=None,
                  merge=merge_partial_attention, global_chunks: int = 1, side_stream=None, return_lse: bool = False):
    """The split kernel's forward (no autograd): ``(out, lse)``, ``lse`` the rows' final log-sum-exp ``[B, H, N]``
    with ``return_lse``, else None."""
    text_keep = text_keep_of(key_padding_mask, layout)
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=lse_dtype(q)) if return_lse else None
    for i in range(q.shape[0]):
        sample = slice(i, i + 1)
        keep = None if text_keep is None else text_keep[i]
        _tile_attention_one(q[sample], k[sample], v[sample], layout, idx, keep, scale, merge, out[sample],
                            global_chunks, side_stream, None if lse is None else lse[sample])
    return out, lse


class SplitTileAttentionFunction(torch.autograd.Function):
    """The split kernel as an autograd function: forward :func:`split_forward` (also keeping the rows' log-sum-exp),
    backward :func:`.split_backward.split_backward`.

    ``apply(q, k, v, layout, idx, key_padding_mask, scale, merge, global_chunks, side_stream)``.
    """

    @staticmethod
    def forward(ctx, q, k, v, layout, idx, key_padding_mask, scale, merge, global_chunks, side_stream):
        out, lse = split_forward(q, k, v, layout, idx, key_padding_mask, scale, merge, global_chunks, side_stream,
                                 return_lse=True)
        text_keep = None if key_padding_mask is None else key_padding_mask[:, layout.text_slice]
        ctx.save_for_backward(q, k, v, out, lse, text_keep)
        ctx.layout, ctx.idx, ctx.scale = layout, idx, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, text_keep = ctx.saved_tensors
        grads = split_backward(grad_out, q, k, v, out, lse, ctx.layout, ctx.idx, text_keep, ctx.scale)
        return (*grads, None, None, None, None, None, None, None)
