"""Index sets of one ``k:F-k`` plan entry on one layout, built once and cached by the kernels.

Selectors are slices where the positions are consecutive (a view, no copy, no host-to-device transfer) and
device tensors otherwise; building them per call would cost a host-to-device copy (a stream sync) each time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import TileLayout
from ..masks import non_reference_frames, reference_frames

Selector = slice | torch.Tensor


def selector(positions: list[int], device) -> Selector:
    """A slice when ``positions`` are consecutive, else a long tensor on ``device``."""
    if positions and positions == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return torch.tensor(positions, dtype=torch.long, device=device)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The half-open ``(start, stop)`` ranges sorted, empty ones dropped and touching ones joined.

    Example:
        >>> merge_ranges([(4, 6), (0, 2), (2, 3), (5, 5)])
        [(0, 3), (4, 6)]
    """
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(r for r in ranges if r[1] > r[0]):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


@dataclass(frozen=True)
class TileIndices:
    """Where the reference frames, the other frames and the global tokens are, for one layout and ``k``.

    Attributes:
        refs, nonrefs: reference / non-reference frame numbers.
        ref_frames, nonref_frames: selectors along the frame axis.
        global_tokens: selector along the sequence of the reference-frame and text tokens, in sequence order.
        num_global: how many such tokens.
        nonref_runs: the non-reference frames as slices of consecutive frames (the gaps between reference frames).
    """

    refs: tuple[int, ...]
    nonrefs: tuple[int, ...]
    ref_frames: Selector
    nonref_frames: Selector
    global_tokens: Selector
    num_global: int
    nonref_runs: tuple[slice, ...] = ()

    def nbytes(self) -> int:
        """Device memory held by the index tensors."""
        sel = (self.ref_frames, self.nonref_frames, self.global_tokens)
        return sum(s.numel() * s.element_size() for s in sel if isinstance(s, torch.Tensor))


def tile_indices(layout: TileLayout, k: int, device) -> TileIndices:
    """Build the :class:`TileIndices` of a sparse entry ``k`` (``k < F``) on ``layout``."""
    refs = reference_frames(layout.num_frames, k)
    nonrefs = non_reference_frames(layout.num_frames, k)
    ranges = [(layout.frame_slice(f).start, layout.frame_slice(f).stop) for f in refs]
    ranges.append((layout.text_slice.start, layout.text_slice.stop))
    merged = merge_ranges(ranges)
    if len(merged) == 1:
        global_tokens: Selector = slice(*merged[0])
    else:
        global_tokens = torch.cat([torch.arange(a, b, device=device) for a, b in merged])
    return TileIndices(
        refs=refs,
        nonrefs=nonrefs,
        ref_frames=selector(list(refs), device),
        nonref_frames=selector(list(nonrefs), device),
        global_tokens=global_tokens,
        num_global=sum(b - a for a, b in merged),
        nonref_runs=tuple(slice(a, b) for a, b in merge_ranges([(f, f + 1) for f in nonrefs])),
    )
