"""Dense attention: plain SDPA, with an optional key-padding mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def padding_attn_mask(key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, N]`` keep-mask -> ``[B, 1, 1, N]`` boolean SDPA mask (``None`` stays ``None``)."""
    if key_padding_mask is None:
        return None
    return key_padding_mask[:, None, None, :]


def dense_attention(q, k, v, key_padding_mask=None, scale=None):
    """Full attention over ``[B, H, N, D]`` inputs; keys where ``key_padding_mask`` is False are ignored.

    Example:
        >>> q = k = v = torch.randn(1, 2, 6, 8)
        >>> keep = torch.tensor([[True] * 5 + [False]])          # the last key is padding
        >>> torch.allclose(dense_attention(q, k, v, keep), dense_attention(q, k[:, :, :5], v[:, :, :5]), atol=1e-6)
        True
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=padding_attn_mask(key_padding_mask), scale=scale)
