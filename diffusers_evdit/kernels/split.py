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

    Uses cuDNN (bf16/fp16) or memory-efficient attention (fp32) on CUDA, the fused CPU kernel elsewhere.
    """
    if q.device.type == "cuda":
        if q.dtype in (torch.bfloat16, torch.float16):
            out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, scale=scale)[:2]
        else:  # memory-efficient attention pads the LSE rows to a multiple of 32
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
    return out, lse.reshape(*q.shape[:2], -1)[..., : q.shape[2]].float()


def merge_partial_attention(out, o1, lse1, o2, lse2) -> None:
    """Write into ``out`` the exact softmax attention over the union of two disjoint key sets, from the two partial
    results ``(o, lse)``: ``o1 + (o2 - o1) * sigmoid(lse2 - lse1)``, computed in float32."""
    weight = torch.sigmoid(lse2 - lse1).unsqueeze(-1)
    out.copy_(torch.lerp(o1.float(), o2.float(), weight))


def _tile_attention_one(q, k, v, layout: TileLayout, idx: TileIndices, text_keep, scale, merge):
    """Split attention for inputs whose keys need no mask (``text_keep`` selects the valid text keys, or None)."""
    b, h, n, d = q.shape
    tpf, m = layout.tokens_per_frame, len(idx.nonrefs)
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

    # Own frame, batched over non-reference frames: [B*M, H, T, D].
    qn, kn, vn = (x[:, :, idx.nonref_frames] for x in (qv, kv, vv))  # B, H, M, T, D
    o_own, lse_own = attention_with_lse(*(x.transpose(1, 2).reshape(b * m, h, tpf, d) for x in (qn, kn, vn)), scale)
    o_own = o_own.unflatten(0, (b, m)).transpose(1, 2).flatten(2, 3)  # B, H, M*T, D
    lse_own = lse_own.unflatten(0, (b, m)).transpose(1, 2).flatten(2, 3)
    # Shared context for all non-reference queries at once.
    o_shared, lse_shared = attention_with_lse(qn.flatten(2, 3), k_shared, v_shared, scale)

    out = torch.empty_like(q)
    out_frames = frames_view(out, layout)
    parts = [x.unflatten(2, (m, tpf)) for x in (o_own, lse_own, o_shared, lse_shared)]  # per frame: [B, H, M, T, ...]
    if isinstance(idx.nonref_frames, slice):  # merge straight into the output (a view)
        merge(out_frames[:, :, idx.nonref_frames], *parts)
    else:
        merged = torch.empty_like(parts[0])
        merge(merged, *parts)
        out_frames[:, :, idx.nonref_frames] = merged
    # Global queries: reference frames and text, against every (valid) key.
    out[:, :, idx.global_tokens] = F.scaled_dot_product_attention(q[:, :, idx.global_tokens], k_all, v_all, scale=scale)
    return out


def split_tile_attention(
    q, k, v, layout: TileLayout, idx: TileIndices, key_padding_mask=None, scale=None, merge=merge_partial_attention
):
    """Exact ``k:F-k`` tile attention of ``[B, H, N, D]`` inputs by LSE-merged partial dense attentions.

    ``idx`` comes from :func:`.indices.tile_indices`. ``key_padding_mask`` (``[B, N]`` bool, True = keep) may only
    mask text tokens; samples are then processed one by one with their padded keys dropped. ``merge`` may be a
    compiled version of :func:`merge_partial_attention` (one fused pass on GPU).
    """
    if key_padding_mask is None:
        return _tile_attention_one(q, k, v, layout, idx, None, scale, merge)
    if not bool(key_padding_mask[:, layout.video_slice].all()):
        raise ValueError("The split kernel supports key-padding masks on text tokens only; use kernel='gathered'.")
    text_keep = key_padding_mask[:, layout.text_slice]
    outs = [
        _tile_attention_one(q[i : i + 1], k[i : i + 1], v[i : i + 1], layout, idx, text_keep[i], scale, merge)
        for i in range(q.shape[0])
    ]
    return torch.cat(outs, dim=0)
