"""Independent references for the tests: the paper's mask rule written out token by token, and float64 attention."""

from __future__ import annotations

import contextlib

import torch


def paper_reference_frames(num_frames: int, k: int) -> set[int]:
    """floor(i * F / k) for i in 0..k-1 (all frames when k >= F)."""
    if k >= num_frames:
        return set(range(num_frames))
    return {(i * num_frames) // k for i in range(k)}


def paper_token_frames(num_frames, tokens_per_frame, num_text, text_first):
    """Frame of every position, None for text, in sequence order."""
    video = [f for f in range(num_frames) for _ in range(tokens_per_frame)]
    text = [None] * num_text
    return text + video if text_first else video + text


def paper_mask_loop(num_frames, tokens_per_frame, num_text, text_first, k) -> torch.Tensor:
    """The k:F-k rule evaluated pair by pair (slow, explicit, independent of the package)."""
    frames = paper_token_frames(num_frames, tokens_per_frame, num_text, text_first)
    refs = paper_reference_frames(num_frames, k)
    n = len(frames)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, fq in enumerate(frames):
        for j, fk in enumerate(frames):
            mask[i, j] = fq is None or fk is None or fq == fk or fq in refs or fk in refs
    return mask


def paper_mask(num_frames, tokens_per_frame, num_text, text_first, k) -> torch.Tensor:
    """The same rule, broadcast over all pairs (checked against :func:`paper_mask_loop` in the tests)."""
    frames = torch.tensor([-1 if f is None else f for f in paper_token_frames(num_frames, tokens_per_frame, num_text,
                                                                           text_first)])
    refs = paper_reference_frames(num_frames, k)
    is_ref = torch.tensor([f in refs for f in frames.tolist()])
    text = frames < 0
    return (
        text[:, None] | text[None, :] | (frames[:, None] == frames[None, :]) | is_ref[:, None] | is_ref[None, :]
    )


def attention_f64(q, k, v, mask=None, scale=None):
    """softmax(q k^T * scale + mask) v in float64, written out (no SDPA)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.double()
    return torch.softmax(scores, dim=-1) @ v.double()


@contextlib.contextmanager
def masked_sdpa(tile_mask: torch.Tensor, per_call: list | None = None):
    """Within the block, every SDPA call whose query and key length equal the tile mask's size (the video
    self-attention) runs as float64 attention under ``tile_mask`` AND the caller's own mask; other calls (cross
    attention, text refiners) run as float64 attention unchanged. With ``per_call`` (one bool per self-attention
    call, in order), only the calls marked True get the tile mask. Yields the list of self-attention calls seen."""
    original = torch.nn.functional.scaled_dot_product_attention
    n = tile_mask.shape[0]
    calls = []

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        assert dropout_p == 0.0 and not is_causal
        mask = attn_mask
        if query.shape[-2] == n and key.shape[-2] == n:
            calls.append(1)
            masked = per_call is None or per_call[len(calls) - 1]
            tm = tile_mask.to(query.device) if masked else torch.ones_like(tile_mask)
            if mask is None:
                mask = tm
            elif mask.dtype == torch.bool:
                mask = mask & tm
            else:
                mask = mask.masked_fill(~tm, float("-inf"))
        return attention_f64(query, key, value, mask, scale).to(query.dtype)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield calls
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
