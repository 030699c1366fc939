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


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None):
    """Dense attention of ``[B, H, L, D]`` inputs that also returns the row log-sum-exp ``[B, H, L]`` (float32).

    Uses cuDNN (bf16/fp16) or memory-efficient attention (fp32) on CUDA, the fused CPU kernel elsewhere. The fused
    CUDA kernels need a head dimension that is a multiple of 8; other head dimensions (tiny test models) take
    :func:`attention_with_lse_math`.

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 8)
        >>> out, lse = attention_with_lse(q, k, v)
        >>> out.shape, lse.shape
        (torch.Size([1, 2, 5, 8]), torch.Size([1, 2, 5]))
    """
    if q.device.type == "cuda":
        if q.shape[-1] % 8:
            return attention_with_lse_math(q, k, v, scale)
        if q.dtype in (torch.bfloat16, torch.float16):
            out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, scale=scale)[:2]
        else:  # memory-efficient attention pads the LSE rows to a multiple of 32
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
    return out, lse.reshape(*q.shape[:2], -1)[..., : q.shape[2]].float()


def attention_with_lse_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None):
    """:func:`attention_with_lse` from explicit scores in float32 (any device and head dimension; memory grows with
    ``L x S``, so it is only the fallback where no fused kernel applies).

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 3)
        >>> out, lse = attention_with_lse_math(q, k, v)
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
        True
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v.float())
    return out.to(q.dtype), lse


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
    ``o1 + (o2 - o1) * sigmoid(lse2 - lse1)``, computed in float32."""
    weight = merge_weight(out, lse1, lse2)
    out.copy_(torch.lerp(o1.float(), o2.float(), weight.unsqueeze(-1)))


def global_attention(q, k, v, scale=None, chunks: int = 1) -> torch.Tensor:
    """Dense attention of the few global queries (reference frames + text, ``[1, H, L, D]``) against all keys.

    With ``chunks > 1`` (and a key count divisible by it) the keys split into equal chunks that run as one batched
    call, merged exactly by their log-sum-exps: ``chunks`` times the thread blocks of a single call, for GPUs that a
    short query sequence would leave partly idle.

    Example:
        >>> q, k, v = torch.randn(3, 1, 2, 6, 8).unbind(0)
        >>> k, v = torch.randn(2, 1, 2, 40, 8).unbind(0)
        >>> torch.allclose(global_attention(q, k, v, chunks=4), F.scaled_dot_product_attention(q, k, v), atol=1e-5)
        True
    """
    n = k.shape[2]
    if chunks <= 1 or n % chunks:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def as_batch(x):  # [1, H, n, D] -> [chunks, H, n / chunks, D], a view
        return x[0].unflatten(1, (chunks, n // chunks)).transpose(0, 1)

    o, lse = attention_with_lse(q.expand(chunks, *q.shape[1:]).contiguous(), as_batch(k), as_batch(v), scale)
    weight = torch.softmax(lse, dim=0).unsqueeze(-1)  # each chunk's share of the softmax mass, [chunks, H, L, 1]
    return (o.float() * weight).sum(0, keepdim=True).to(q.dtype)


def _tile_attention_one(q, k, v, layout: TileLayout, idx: TileIndices, text_keep, scale, merge, out,
                        global_chunks: int = 1, side_stream=None):
    """Split attention of one sample (``[1, H, N, D]``) into ``out``; ``text_keep`` selects the valid text keys.

    Non-reference frames are processed run by run (consecutive frames between two reference frames), so every
    query, key and value tensor of the two partial calls is a view of the input: nothing is gathered or copied, and
    each run's merge writes straight into the output. With a ``side_stream`` (CUDA), the global call runs on it,
    concurrently with the non-reference frames' calls and merges on the current stream (disjoint rows of ``out``);
    the current stream waits for it before returning.
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
        out[:, :, idx.global_tokens] = global_attention(q[:, :, idx.global_tokens], k_all, v_all, scale, global_chunks)

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
        merge(out_frames[:, :, run], o_own.transpose(0, 1)[None], o_sh.unflatten(2, (m, tpf)),
              lse_own.transpose(0, 1)[None], lse_sh.unflatten(2, (m, tpf)))
    if side_stream is not None:
        main_stream.wait_stream(side_stream)


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
    text_keep = None
    if key_padding_mask is not None:
        if not bool(key_padding_mask[:, layout.video_slice].all()):
            raise ValueError("The split kernel supports key-padding masks on text tokens only; use kernel='gathered'.")
        text_keep = key_padding_mask[:, layout.text_slice]
    out = torch.empty_like(q)
    for i in range(q.shape[0]):
        sample = slice(i, i + 1)
        keep = None if text_keep is None else text_keep[i]
        _tile_attention_one(q[sample], k[sample], v[sample], layout, idx, keep, scale, merge, out[sample],
                            global_chunks, side_stream)
    return out
