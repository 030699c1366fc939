"""The split kernel's exact backward, without differentiating through its log-sum-exp merge.

Each query row of the split kernel attends to one or two disjoint key sets (own frame; reference frames + text; or
every key for the global rows). Given the row's *final* output ``O`` and log-sum-exp ``L``, the gradient of
softmax attention over the union splits into one term per key set, and each term is exactly what that set's dense
attention backward computes when handed ``O`` and ``L`` instead of its own partial ones
(``P = exp(S - L)``, ``dS = P * (dO V^T - rowsum(dO * O))``): the identity ring attention uses. So the backward
runs the same dense calls as the forward, through the fused backward kernels (:func:`.lse.attention_backward`),
and adds their key and value gradients where the keys came from.
"""

from __future__ import annotations

import torch

from ..layout import TileLayout
from .gathered import frames_view
from .indices import Selector, TileIndices
from .lse import attention_backward, lse_dtype


def frames_lse(lse: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """``[B, H, N]`` -> the video part as ``[B, H, F, T]`` (a view)."""
    return lse[:, :, layout.video_slice].unflatten(2, (layout.num_frames, layout.tokens_per_frame))


def _take(x: torch.Tensor, positions: Selector | None) -> torch.Tensor:
    return x if positions is None else x[:, :, positions]


def _add_at(acc: torch.Tensor, positions: Selector | None, grad: torch.Tensor) -> None:
    """``acc[:, :, positions] += grad`` along the sequence (``None``: every position)."""
    if positions is None:
        acc += grad
    elif isinstance(positions, slice):
        acc[:, :, positions] += grad
    else:
        acc.index_add_(2, positions, grad.to(acc.dtype))


def _key_positions(layout: TileLayout, idx: TileIndices, text_keep, device):
    """Positions of (every key, the shared context's keys) of one sample: ``None`` means every position."""
    if text_keep is None:
        return None, idx.global_tokens
    text = torch.arange(layout.text_slice.start, layout.text_slice.stop, device=device)[text_keep]
    video = torch.arange(layout.video_slice.start, layout.video_slice.stop, device=device)
    refs = torch.cat([torch.arange(layout.frame_slice(f).start, layout.frame_slice(f).stop, device=device)
                      for f in idx.refs])
    return torch.cat([video, text]), torch.cat([refs, text])


def _backward_one(grad_out, q, k, v, out, lse, layout: TileLayout, idx: TileIndices, text_keep, scale, dq, dk, dv):
    """Accumulate into ``dq, dk, dv`` the gradients of one sample (``[1, H, N, D]``)."""
    all_keys, shared_keys = _key_positions(layout, idx, text_keep, q.device)
    rows = idx.global_tokens  # reference frames and text: one key set, every (valid) key
    g = attention_backward(grad_out[:, :, rows], q[:, :, rows], _take(k, all_keys), _take(v, all_keys),
                           out[:, :, rows], lse[:, :, rows], scale)
    dq[:, :, rows] += g[0]
    _add_at(dk, all_keys, g[1])
    _add_at(dv, all_keys, g[2])

    # every run's shared-context call reads the same keys: one dense copy (the fused kernels want dense inputs)
    k_shared, v_shared = _take(k, shared_keys).contiguous(), _take(v, shared_keys).contiguous()
    tpf = layout.tokens_per_frame
    views = [frames_view(x, layout) for x in (grad_out, q, k, v, out)]
    dqv, dkv, dvv = (frames_view(x, layout) for x in (dq, dk, dv))
    lse_frames = frames_lse(lse, layout)
    for run in idx.nonref_runs:
        m = run.stop - run.start
        do_r, q_r, k_r, v_r, o_r = (x[:, :, run] for x in views)  # [1, H, m, T, D]
        l_r = lse_frames[:, :, run]  # [1, H, m, T]
        # own frame: the run's frames as a batch [m, H, T, D]
        g = attention_backward(*(x[0].transpose(0, 1) for x in (do_r, q_r, k_r, v_r, o_r, l_r)), scale)
        for acc, grad in zip((dqv, dkv, dvv), g):
            acc[:, :, run] += grad.transpose(0, 1)[None]
        # shared context: the run as one query sequence
        g = attention_backward(do_r.flatten(2, 3), q_r.flatten(2, 3), k_shared, v_shared, o_r.flatten(2, 3),
                               l_r.flatten(2, 3), scale)
        dqv[:, :, run] += g[0].unflatten(2, (m, tpf))
        _add_at(dk, shared_keys, g[1])
        _add_at(dv, shared_keys, g[2])


def split_backward(grad_out, q, k, v, out, lse, layout: TileLayout, idx: TileIndices, text_keep=None, scale=None):
    """Gradients ``(dq, dk, dv)`` of the split kernel (:func:`.split.split_tile_attention`) from its output ``out``
    and final row log-sum-exp ``lse`` (``[B, H, N]``); ``text_keep`` (``[B, text tokens]`` bool or None) marks the
    valid text keys."""
    acc = lse_dtype(q)
    dq, dk, dv = (torch.zeros(x.shape, dtype=acc, device=x.device) for x in (q, k, v))
    for i in range(q.shape[0]):
        s = slice(i, i + 1)
        keep = None if text_keep is None else text_keep[i]
        _backward_one(grad_out[s], q[s], k[s], v[s], out[s], lse[s], layout, idx, keep, scale, dq[s], dk[s], dv[s])
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
