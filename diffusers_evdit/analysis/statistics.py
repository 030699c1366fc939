"""Statistics of attention maps on a tile layout, streamed per head and query chunk (an ``N x N`` map is never held).

Per layer: the tile-averaged ``F x F`` map ``M[i, j]`` and its diagonal / off-diagonal ratio, the locality curve
``c(d)`` against reference frame 0, the attention by temporal distance ``m(d)``, the attention mass on text tokens,
and data independence (Jaccard overlap of the key sets holding 90 / 95 / 99 % of each query's mass between two
inputs). The definitions are in docs/design.md, "Attention diagnostics".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..layout import TileLayout

DEFAULT_LEVELS = (0.9, 0.95, 0.99)


def query_rows(layout: TileLayout, max_queries: int | None, device) -> torch.Tensor:
    """Video query positions to evaluate: all, or ``max_queries`` evenly spaced ones."""
    nv = layout.num_video_tokens
    if max_queries is None or max_queries >= nv:
        local = torch.arange(nv, device=device)
    else:
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1 (or None for all queries), got {max_queries}.")
        local = torch.linspace(0, nv - 1, max_queries, device=device).round().long().unique()
    return local + layout.video_start


def attention_probabilities(q, k, layout, rows, key_padding_mask, scale, query_chunk,
                            gathered: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(row_positions [c], P [B, c, N])`` (float32; float64 for float64 inputs) for every head and query
    chunk of ``rows``.

    With ``gathered``, ``q`` holds only the rows (``q[:, :, i]`` is position ``rows[i]``)."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q and k must both be [batch, heads, tokens, head_dim], got {tuple(q.shape)}, {tuple(k.shape)}."
        )
    layout.check_seq_len(k.shape[2], "attention statistics")
    if not gathered:
        layout.check_seq_len(q.shape[2], "attention statistics")
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}.")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    pad = None if key_padding_mask is None else ~key_padding_mask.to(q.device)[:, None, :]
    dtype = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    for h in range(q.shape[1]):
        k_h = k[:, h].to(dtype)
        for start in range(0, rows.numel(), query_chunk):
            r = rows[start : start + query_chunk]
            q_h = q[:, h, start : start + query_chunk] if gathered else q[:, h, r]
            scores = (q_h.to(dtype) @ k_h.transpose(-1, -2)) * scale
            if pad is not None:
                scores = scores.masked_fill(pad, float("-inf"))
            yield r, torch.softmax(scores, dim=-1)


def _membership(p: torch.Tensor, levels) -> list[torch.Tensor]:
    """For each level, bool ``[..., N]``: the smallest key set (largest probabilities first) holding that mass."""
    vals, idx = p.sort(dim=-1, descending=True)
    csum = vals.cumsum(-1)
    ranks = torch.arange(p.shape[-1], device=p.device)
    out = []
    for level in levels:
        n_keep = (csum < level * csum[..., -1:]).sum(-1, keepdim=True) + 1
        keep_sorted = ranks < n_keep
        out.append(torch.zeros_like(keep_sorted).scatter_(-1, idx, keep_sorted))
    return out


@dataclass
class TileAccumulator:
    """Running sums of the tile statistics of one layer over heads, query chunks, batch and inputs.

    Feed it probabilities with :meth:`add` (or whole q, k with :meth:`add_qk`), read :meth:`summary`.

    Example:
        >>> import torch
        >>> from diffusers_evdit import TileLayout
        >>> layout = TileLayout(num_frames=3, tokens_per_frame=2)
        >>> acc = TileAccumulator(layout)
        >>> acc.add_qk(torch.zeros(1, 1, 6, 4), torch.zeros(1, 1, 6, 4))   # uniform attention
        >>> acc.summary()["diag_offdiag_ratio"]
        1.0
    """

    layout: TileLayout
    tile_sum: torch.Tensor = field(default=None, repr=False)  # [F, F] attention mass from frame-i rows to frame j
    rows: torch.Tensor = field(default=None, repr=False)  # [F] (batch, head, query) rows of frame i
    text_mass: float = 0.0
    diff2: torch.Tensor = field(default=None, repr=False)  # [F, F] sum (P[q, j, t] - P[q, 0, t])^2 over frame-i rows
    norm2: torch.Tensor = field(default=None, repr=False)  # [F] sum P[q, 0, t]^2 over frame-i rows
    overlap_sum: dict = field(default_factory=dict)
    overlap_rows: int = 0

    def __post_init__(self):
        f = self.layout.num_frames
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.tile_sum = zeros(f, f) if self.tile_sum is None else self.tile_sum
        self.rows = zeros(f) if self.rows is None else self.rows
        self.diff2 = zeros(f, f) if self.diff2 is None else self.diff2
        self.norm2 = zeros(f) if self.norm2 is None else self.norm2

    def add(self, row_positions: torch.Tensor, p: torch.Tensor) -> None:
        """Add attention probabilities ``p`` (``[B, c, N]``) of the video queries at ``row_positions`` (``[c]``)."""
        layout = self.layout
        f, t = layout.num_frames, layout.tokens_per_frame
        frames = layout.token_frames(p.device)[row_positions]
        if (frames < 0).any():
            raise ValueError("TileAccumulator.add takes video query rows only.")
        onehot = torch.nn.functional.one_hot(frames, f).to(torch.float64)  # c, F
        pv = p[..., layout.video_slice].unflatten(-1, (f, t))  # B, c, F, T (per-row sums in p's dtype)
        per_row = lambda x: x.sum(-1).to(torch.float64).sum(0)  # noqa: E731  [B, c, ...] -> [c, ...] float64
        self.tile_sum += (onehot.T @ per_row(pv)).cpu()
        self.rows += (onehot.sum(0) * p.shape[0]).cpu()
        if layout.num_text_tokens:
            self.text_mass += float(p[..., layout.text_slice].to(torch.float64).sum())
        self.diff2 += (onehot.T @ per_row((pv - pv[:, :, :1]) ** 2)).cpu()
        self.norm2 += (onehot.T @ per_row(pv[:, :, 0] ** 2)).cpu()

    def add_qk(self, q, k, key_padding_mask=None, scale=None, max_queries=None, query_chunk: int = 1024) -> None:
        """Add the attention of ``[B, H, N, D]`` q and k (all heads; video queries, optionally sampled)."""
        rows = query_rows(self.layout, max_queries, q.device)
        for r, p in attention_probabilities(q, k, self.layout, rows, key_padding_mask, scale, query_chunk):
            self.add(r, p)

    def add_overlap(self, p_a: torch.Tensor, p_b: torch.Tensor, levels=DEFAULT_LEVELS) -> None:
        """Add the per-row Jaccard overlaps of the top-mass key sets of two ``[B, c, N]`` probability blocks."""
        for level, ma, mb in zip(levels, _membership(p_a, levels), _membership(p_b, levels)):
            inter = (ma & mb).sum(-1).double()
            union = (ma | mb).sum(-1).double()
            self.overlap_sum[level] = self.overlap_sum.get(level, 0.0) + float((inter / union).sum())
        self.overlap_rows += p_a.shape[0] * p_a.shape[1]

    def tile_map(self) -> torch.Tensor:
        """``[F, F]`` mean attention probability of a (frame-i query, frame-j key) pair."""
        return self.tile_sum / (self.rows[:, None].clamp_min(1) * self.layout.tokens_per_frame)

    def summary(self) -> dict:
        """JSON-ready statistics (definitions: docs/design.md, "Attention diagnostics")."""
        f = self.layout.num_frames
        m = self.tile_map()
        diag = torch.diagonal(m)
        out: dict = {"tile_map": m.tolist()}
        off = ~torch.eye(f, dtype=torch.bool)
        out["diag_offdiag_ratio"] = float(diag.mean() / m[off].mean()) if f > 1 and m[off].mean() > 0 else None
        idx = torch.arange(f)
        dist = (idx[:, None] - idx[None, :]).abs()
        out["mass_by_distance"] = [float(m[dist == d].mean() / diag.mean()) for d in range(f)]
        curve = []
        for d in range(1, f):
            qs = [i for i in range(f) if i not in (0, d) and self.norm2[i] > 0]
            curve.append(float(sum(math.sqrt(self.diff2[i, d] / self.norm2[i]) for i in qs) / len(qs)) if qs else None)
        out["locality_curve"] = curve
        total_rows = float(self.rows.sum())
        out["text_mass"] = self.text_mass / total_rows if self.layout.num_text_tokens and total_rows else None
        if self.overlap_rows:
            out["overlap"] = {f"{lvl:g}": s / self.overlap_rows for lvl, s in sorted(self.overlap_sum.items())}
        return out


def tile_statistics(q, k, layout: TileLayout, key_padding_mask=None, scale=None, max_queries=None,
                    query_chunk: int = 1024) -> dict:
    """Tile statistics of the attention ``softmax(q k^T * scale)`` of ``[B, H, N, D]`` tensors on ``layout``.

    Returns a dict with ``tile_map`` (``F x F``), ``diag_offdiag_ratio``, ``mass_by_distance``, ``locality_curve``
    and ``text_mass`` (definitions: docs/design.md); computed per head and query chunk.

    Example:
        >>> import torch
        >>> from diffusers_evdit import TileLayout
        >>> layout = TileLayout(num_frames=2, tokens_per_frame=1)
        >>> q = k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])   # each token prefers itself: score 1 vs 0
        >>> round(tile_statistics(q, k, layout, scale=1.0)["diag_offdiag_ratio"], 4)   # e^1
        2.7183
    """
    acc = TileAccumulator(layout)
    acc.add_qk(q, k, key_padding_mask, scale, max_queries, query_chunk)
    return acc.summary()


def attention_mass_overlap(q_a, k_a, q_b, k_b, layout: TileLayout, levels=DEFAULT_LEVELS, key_padding_mask_a=None,
                           key_padding_mask_b=None, scale=None, max_queries=None, query_chunk: int = 1024) -> dict:
    """Data independence of two attentions on one layout: mean Jaccard overlap of the key sets holding each level of
    every video query's attention mass (``{"0.9": ..., "0.95": ..., "0.99": ...}``; 1 = same positions).

    Example:
        >>> import torch
        >>> from diffusers_evdit import TileLayout
        >>> layout = TileLayout(num_frames=2, tokens_per_frame=2)
        >>> q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
        >>> attention_mass_overlap(q, k, q, k, layout)["0.9"]
        1.0
    """
    if q_a.shape != q_b.shape:
        raise ValueError(f"The two inputs must have the same shape, got {tuple(q_a.shape)} and {tuple(q_b.shape)}.")
    levels = check_levels(levels)
    acc = TileAccumulator(layout)
    rows = query_rows(layout, max_queries, q_a.device)
    gen_a = attention_probabilities(q_a, k_a, layout, rows, key_padding_mask_a, scale, query_chunk)
    gen_b = attention_probabilities(q_b, k_b, layout, rows, key_padding_mask_b, scale, query_chunk)
    for (_, pa), (_, pb) in zip(gen_a, gen_b):
        acc.add_overlap(pa, pb, levels)
    return acc.summary()["overlap"]


def check_levels(levels) -> tuple[float, ...]:
    """The attention-mass levels as floats in ``(0, 1]`` (``ValueError`` otherwise)."""
    levels = tuple(float(x) for x in levels)
    if not levels or any(not 0.0 < x <= 1.0 for x in levels):
        raise ValueError(f"Mass levels must be in (0, 1], got {levels}.")
    return levels
