"""Gathered dense tile attention: exact ``k:F-k`` attention from dense SDPA calls on gathered key sets.

* Every non-reference query frame attends to its own frame, the reference frames and the text: its keys are
  gathered into one contiguous set, and all such frames run as one batched SDPA call.
* Reference-frame queries and text queries attend to every key: one dense SDPA call.

Both calls are dense, so the fastest dense backend (cuDNN, FlashAttention) runs them. The price is a copy of the
shared keys/values per non-reference frame; :mod:`.split` avoids it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import TileLayout
from .dense import padding_attn_mask
from .indices import TileIndices


def frames_view(t: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """``[B, H, N, D]`` -> the video part as ``[B, H, F, T, D]`` (a view)."""
    return t[:, :, layout.video_slice].unflatten(2, (layout.num_frames, layout.tokens_per_frame))


def _frame_key_sets(t: torch.Tensor, layout: TileLayout, idx: TileIndices) -> torch.Tensor:
    """For each non-reference frame ``f``: [frame f, reference frames + text] -> ``[B*M, H, T + L_global, D]``."""
    own = frames_view(t, layout)[:, :, idx.nonref_frames].transpose(1, 2)  # B, M, H, T, D
    shared = t[:, :, idx.global_tokens]  # B, H, L, D
    b, m, h, tpf, d = own.shape
    out = t.new_empty(b, m, h, tpf + shared.shape[2], d)
    out[:, :, :, :tpf] = own
    out[:, :, :, tpf:] = shared.unsqueeze(1)
    return out.flatten(0, 1)


def gathered_tile_attention(q, k, v, layout: TileLayout, idx: TileIndices, key_padding_mask=None, scale=None):
    """Exact ``k:F-k`` tile attention of ``[B, H, N, D]`` inputs (``idx`` from :func:`.indices.tile_indices`).

    Example:
        >>> from diffusers_evdit.masks import tile_mask
        >>> from diffusers_evdit.kernels.indices import tile_indices
        >>> layout = TileLayout(num_frames=4, tokens_per_frame=8)
        >>> q = k = v = torch.randn(1, 2, layout.seq_len, 16)
        >>> out = gathered_tile_attention(q, k, v, layout, tile_indices(layout, 1, q.device))
        >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=tile_mask(layout, 1))
        >>> torch.allclose(out, ref, atol=1e-5)
        True
    """
    b = q.shape[0]
    m = len(idx.nonrefs)

    # Non-reference query frames: own frame + reference frames + text, batched over frames.
    q_nonref = frames_view(q, layout)[:, :, idx.nonref_frames].transpose(1, 2).flatten(0, 1)  # B*M, H, T, D
    frame_mask = None
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :, None]  # B, 1(H), N, 1(D)
        frame_mask = _frame_key_sets(keep, layout, idx)[:, :, None, :, 0]  # B*M, 1, 1, L
    out_nonref = F.scaled_dot_product_attention(
        q_nonref, _frame_key_sets(k, layout, idx), _frame_key_sets(v, layout, idx), attn_mask=frame_mask, scale=scale
    )

    # Global queries (reference frames and text) attend to everything.
    out_global = F.scaled_dot_product_attention(
        q[:, :, idx.global_tokens], k, v, attn_mask=padding_attn_mask(key_padding_mask), scale=scale
    )

    out = torch.empty_like(q)
    frames_view(out, layout)[:, :, idx.nonref_frames] = out_nonref.unflatten(0, (b, m)).transpose(1, 2)
    out[:, :, idx.global_tokens] = out_global
    return out
