"""Gathered dense tile attention: exact ``k:F-k`` attention from dense SDPA calls on gathered key sets.

* Every non-reference query frame attends to its own frame, the reference frames and the text: its keys are
  gathered into one contiguous set, and all such frames run as one batched SDPA call.
* Reference-frame queries and text queries attend to every key: one dense SDPA call.

Both calls are dense, so the fastest dense backend (cuDNN, FlashAttention) runs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import TileLayout
from .dense import padding_attn_mask


def _frames(t: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """``[B, H, N, D]`` -> video part as ``[B, H, F, T, D]`` (a view)."""
    return t[:, :, layout.video_slice].unflatten(2, (layout.num_frames, layout.tokens_per_frame))


def _shared_context(t: torch.Tensor, layout: TileLayout, refs: torch.Tensor) -> torch.Tensor:
    """Reference frames then text, along the sequence: ``[B, H, R*T + text, ...]``."""
    ref_part = _frames(t, layout)[:, :, refs].flatten(2, 3)
    return torch.cat([ref_part, t[:, :, layout.text_slice]], dim=2)


def _frame_key_sets(t: torch.Tensor, layout: TileLayout, refs, nonrefs) -> torch.Tensor:
    """For each non-reference frame ``f``: [frame f, reference frames, text] -> ``[B*M, H, T + L_shared, D]``."""
    own = _frames(t, layout)[:, :, nonrefs].transpose(1, 2)  # B, M, H, T, D
    shared = _shared_context(t, layout, refs)  # B, H, L, D
    b, m, h, tpf, d = own.shape
    out = t.new_empty(b, m, h, tpf + shared.shape[2], d)
    out[:, :, :, :tpf] = own
    out[:, :, :, tpf:] = shared.unsqueeze(1)
    return out.flatten(0, 1)


def _frame_key_masks(key_padding_mask: torch.Tensor, layout: TileLayout, refs, nonrefs) -> torch.Tensor:
    """The key-padding mask gathered like :func:`_frame_key_sets`: ``[B*M, 1, 1, T + L_shared]``."""
    kpm = key_padding_mask[:, None, :, None]  # B, 1(H), N, 1(D)
    keys = _frame_key_sets(kpm, layout, refs, nonrefs)  # B*M, 1, L, 1
    return keys[:, :, None, :, 0]


def gathered_tile_attention(q, k, v, layout: TileLayout, refs: tuple[int, ...], key_padding_mask=None, scale=None):
    """Exact ``k:F-k`` tile attention of ``[B, H, N, D]`` inputs, reference frames ``refs`` (not all frames)."""
    b, h, n, d = q.shape
    num_frames, tpf = layout.num_frames, layout.tokens_per_frame
    ref_set = set(refs)
    nonref_list = [f for f in range(num_frames) if f not in ref_set]
    ref_idx = torch.tensor(refs, device=q.device)
    nonref_idx = torch.tensor(nonref_list, device=q.device)
    m = len(nonref_list)

    # Non-reference query frames: own frame + reference frames + text, batched over frames.
    q_nonref = _frames(q, layout)[:, :, nonref_idx].transpose(1, 2).flatten(0, 1)  # B*M, H, T, D
    frame_mask = None
    if key_padding_mask is not None:
        frame_mask = _frame_key_masks(key_padding_mask, layout, ref_idx, nonref_idx)
    out_nonref = F.scaled_dot_product_attention(
        q_nonref,
        _frame_key_sets(k, layout, ref_idx, nonref_idx),
        _frame_key_sets(v, layout, ref_idx, nonref_idx),
        attn_mask=frame_mask,
        scale=scale,
    )

    # Global queries (reference frames, then text) attend to everything.
    q_global = _shared_context(q, layout, ref_idx)
    out_global = F.scaled_dot_product_attention(
        q_global, k, v, attn_mask=padding_attn_mask(key_padding_mask), scale=scale
    )

    out = torch.empty_like(q)
    out_frames = _frames(out, layout)
    out_frames[:, :, nonref_idx] = out_nonref.unflatten(0, (b, m)).transpose(1, 2)
    n_ref_tokens = len(refs) * tpf
    out_frames[:, :, ref_idx] = out_global[:, :, :n_ref_tokens].unflatten(2, (len(refs), tpf))
    out[:, :, layout.text_slice] = out_global[:, :, n_ref_tokens:]
    return out
