"""The split kernel's merge as one Triton kernel.

``out = o1 + (o2 - o1) * sigmoid(lse2 - lse1)``: each partial output is read once in its own dtype, the weight is
computed in the kernel from the two log-sum-exps (no weight tensor, no float32 copies), and the result is written
straight into the output view. The compiled PyTorch merge does the same arithmetic; this kernel fixes the memory
access pattern (a program per block of token rows and one head, reading whole head vectors), whatever the strides of
the partial outputs.

Triton runs it on CUDA tensors, or on the CPU under ``TRITON_INTERPRET=1`` (how the tests check it without a GPU).
"""

from __future__ import annotations

import torch

from .split import merge_partial_attention
from .triton_support import tl, triton, triton_runs


def triton_merge_available(device: torch.device | str) -> bool:
    """Whether :func:`triton_merge_partial_attention` runs its Triton kernel for tensors on ``device``."""
    return triton_runs(device)


if triton is not None:

    @triton.jit
    def _merge_kernel(out, o1, o2, l1, l2, n_rows, tokens, head_dim,
                      so_f, so_t, so_h, so_d, s1_f, s1_t, s1_h, s1_d, s2_f, s2_t, s2_h, s2_d,
                      sl1_f, sl1_t, sl1_h, sl2_f, sl2_t, sl2_h, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        h = tl.program_id(1).to(tl.int64)
        r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        f, t = r // tokens, r % tokens  # row r = token t of frame f
        d = tl.arange(0, BLOCK_D).to(tl.int64)[None, :]
        row_ok = r < n_rows
        ok = row_ok[:, None] & (d < head_dim)
        a = tl.load(l1 + f * sl1_f + t * sl1_t + h * sl1_h, mask=row_ok, other=0.0).to(tl.float32)
        b = tl.load(l2 + f * sl2_f + t * sl2_t + h * sl2_h, mask=row_ok, other=0.0).to(tl.float32)
        w = (1.0 / (1.0 + tl.exp(a - b)))[:, None]  # sigmoid(b - a); exp overflow gives the limit 0
        x1 = tl.load(o1 + (f * s1_f + t * s1_t + h * s1_h)[:, None] + d * s1_d, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(o2 + (f * s2_f + t * s2_t + h * s2_h)[:, None] + d * s2_d, mask=ok, other=0.0).to(tl.float32)
        y = x1 + (x2 - x1) * w
        tl.store(out + (f * so_f + t * so_t + h * so_h)[:, None] + d * so_d, y.to(out.dtype.element_ty), mask=ok)


def _strides(x: torch.Tensor) -> tuple[int, ...]:
    """Frame, token, head (and head-dim) strides of a ``[1, H, m, T(, D)]`` tensor, in the kernel's order."""
    return (x.stride(2), x.stride(3), x.stride(1)) + ((x.stride(4),) if x.dim() == 5 else ())


def triton_merge_partial_attention(out, o1, o2, lse1, lse2) -> None:
    """:func:`.split.merge_partial_attention` as one Triton kernel (same arguments: ``out, o1, o2`` are
    ``[1, H, m, T, D]``, ``lse1, lse2`` are ``[1, H, m, T]``, any strides). Falls back to the PyTorch merge where
    Triton cannot run.

    Example:
        >>> import torch
        >>> o1, o2 = torch.randn(2, 1, 2, 3, 4, 8).unbind(0)
        >>> l1, l2 = torch.randn(2, 1, 2, 3, 4).unbind(0)
        >>> out = torch.empty_like(o1)
        >>> triton_merge_partial_attention(out, o1, o2, l1, l2)  # PyTorch fallback without CUDA / interpreter
        >>> torch.allclose(out, o1 + (o2 - o1) * torch.sigmoid(l2 - l1)[..., None], atol=1e-6)
        True
    """
    if not triton_merge_available(out.device) or out.shape[0] != 1:
        merge_partial_attention(out, o1, o2, lse1, lse2)
        return
    _, heads, m, t, head_dim = out.shape
    block_d = triton.next_power_of_2(head_dim)
    block_r = max(1, 4096 // block_d)  # 64 rows of a 64-wide head, 32 of a 128-wide one
    grid = (triton.cdiv(m * t, block_r), heads)
    _merge_kernel[grid](out, o1, o2, lse1, lse2, m * t, t, head_dim,
                        *(s for x in (out, o1, o2, lse1, lse2) for s in _strides(x)), BLOCK_R=block_r, BLOCK_D=block_d)
