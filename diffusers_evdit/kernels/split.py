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


def merge_partial_attention(o1, lse1, o2, lse2) -> torch.Tensor:
    """Exact softmax attention over the union of two disjoint key sets from the two partial results."""
    weight = torch.sigmoid(lse2 - lse1).unsqueeze(-1)
    return torch.lerp(o1.float(), o2.float(), weight).to(o1.dtype)


def _contiguous_range(positions: list[int]) -> slice | None:
    """``slice`` covering ``positions`` when they are consecutive, else ``None``."""
    if positions and positions == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return None


def global_positions(layout: TileLayout, refs) -> list[int]:
    """Sequence positions of the reference frames and the text, in sequence order."""
    pos = [p for f in refs for p in range(layout.frame_slice(f).start, layout.frame_slice(f).stop)]
    pos += list(range(layout.text_slice.start, layout.text_slice.stop))
    return sorted(pos)


def _select_frames(x: torch.Tensor, frames: tuple[int, ...]) -> torch.Tensor:
    """``[B, H, F, T, D]`` -> the listed frames, a view when they are consecutive."""
    if frames == tuple(range(frames[0], frames[0] + len(frames))):
        return x[:, :, frames[0] : frames[0] + len(frames)]
    return x[:, :, list(frames)]


def _tile_attention_one(q, k, v, layout: TileLayout, refs, nonrefs, text_keep, scale, merge=merge_partial_attention):
    """Split attention for inputs whose keys need no mask (``text_keep`` selects the valid text keys, or None)."""
    b, h, n, d = q.shape
    tpf, m = layout.tokens_per_frame, len(nonrefs)
    vs, ts = layout.video_slice, layout.text_slice
    qv, kv, vv = (x[:, :, vs].unflatten(2, (layout.num_frames, tpf)) for x in (q, k, v))

    # Reference frames + text: one slice of the sequence when they are adjacent (CogVideoX with k=1), else gathered.
    glob = global_positions(layout, refs)
    glob_slice = _contiguous_range(glob) if text_keep is None else None
    if glob_slice is not None:
        q_glob, k_shared, v_shared = q[:, :, glob_slice], k[:, :, glob_slice], v[:, :, glob_slice]
    else:
        idx = torch.tensor(glob, device=q.device)
        q_glob = q[:, :, idx]
        k_text, v_text = k[:, :, ts], v[:, :, ts]
        if text_keep is not None:
            k_text, v_text = k_text[:, :, text_keep], v_text[:, :, text_keep]
        k_shared = torch.cat([_select_frames(kv, refs).flatten(2, 3), k_text], dim=2)
        v_shared = torch.cat([_select_frames(vv, refs).flatten(2, 3), v_text], dim=2)

    # Own frame, batched over non-reference frames: [B*M, H, T, D].
    qn, kn, vn = (_select_frames(x, nonrefs) for x in (qv, kv, vv))  # B, H, M, T, D
    o_own, lse_own = attention_with_lse(*(x.transpose(1, 2).reshape(b * m, h, tpf, d) for x in (qn, kn, vn)), scale)
    o_own = o_own.unflatten(0, (b, m)).transpose(1, 2).flatten(2, 3)  # B, H, M*T, D
    lse_own = lse_own.unflatten(0, (b, m)).transpose(1, 2).flatten(2, 3)
    # Shared context (reference frames + text) for all non-reference queries at once.
    o_shared, lse_shared = attention_with_lse(qn.flatten(2, 3), k_shared, v_shared, scale)

    out = torch.empty_like(q)
    out_v = out[:, :, vs].unflatten(2, (layout.num_frames, tpf))
    merged = merge(o_own, lse_own, o_shared, lse_shared).unflatten(2, (m, tpf))
    nonref_slice = _contiguous_range(list(nonrefs))
    if nonref_slice is not None:
        out_v[:, :, nonref_slice] = merged
    else:
        out_v[:, :, list(nonrefs)] = merged

    # Global queries: reference frames and text, against every (valid) key.
    k_all, v_all = k, v
    if text_keep is not None:
        k_all = torch.cat([k[:, :, vs], k[:, :, ts][:, :, text_keep]], dim=2)
        v_all = torch.cat([v[:, :, vs], v[:, :, ts][:, :, text_keep]], dim=2)
    o_glob = F.scaled_dot_product_attention(q_glob, k_all, v_all, scale=scale)
    if glob_slice is not None:
        out[:, :, glob_slice] = o_glob
    else:
        out[:, :, idx] = o_glob
    return out


def split_tile_attention(
    q, k, v, layout: TileLayout, refs: tuple[int, ...], key_padding_mask=None, scale=None, merge=merge_partial_attention
):
    """Exact ``k:F-k`` tile attention of ``[B, H, N, D]`` inputs by LSE-merged partial dense attentions.

    ``refs`` are the reference frames (not all frames). ``key_padding_mask`` (``[B, N]`` bool, True = keep) may
    only mask text tokens; samples are then processed one by one with their padded keys dropped. ``merge`` may be
    a compiled version of :func:`merge_partial_attention` (one fused pass on GPU).
    """
    refs = tuple(refs)
    ref_set = set(refs)
    nonrefs = tuple(f for f in range(layout.num_frames) if f not in ref_set)
    if key_padding_mask is None:
        return _tile_attention_one(q, k, v, layout, refs, nonrefs, None, scale, merge)
    if not bool(key_padding_mask[:, layout.video_slice].all()):
        raise ValueError("The split kernel supports key-padding masks on text tokens only; use kernel='gathered'.")
    text_keep = key_padding_mask[:, layout.text_slice]
    outs = [
        _tile_attention_one(q[i : i + 1], k[i : i + 1], v[i : i + 1], layout, refs, nonrefs, text_keep[i], scale, merge)
        for i in range(q.shape[0])
    ]
    return torch.cat(outs, dim=0)
