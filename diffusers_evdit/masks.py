"""The paper's ``k:F-k`` Attention Tile masks, as tiny pure functions.

Of ``F`` latent frames, ``k`` *reference frames* are chosen uniformly: frame ``floor(i * F / k)`` for
``i = 0 .. k-1`` (frame 0 is always one). A query may attend to a key when

* both are in the same frame (the diagonal tile), or
* the key's frame is a reference frame, or
* the query's frame is a reference frame, or
* either token is a text token that takes part in self-attention.

``k >= F`` (or ``None``) is the dense mask. Everything here works on frame indices, where text tokens carry frame
``-1``; nothing materialises an ``N x N`` matrix except :func:`tile_mask`, the explicit reference used by tests.
"""

from __future__ import annotations

import torch

from .layout import TileLayout


def check_k(k: int | None) -> None:
    """Raise ``ValueError`` unless ``k`` is ``None`` (dense) or an integer >= 1.

    Example:
        >>> check_k(None), check_k(2)
        (None, None)
        >>> check_k(0)
        Traceback (most recent call last):
            ...
        ValueError: A mask needs k >= 1 reference frames (frame 0 is always one), got k=0. Use None for a dense layer.
    """
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"A mask entry must be None (dense) or an int number of reference frames, got {k!r}.")
    if k < 1:
        raise ValueError(
            f"A mask needs k >= 1 reference frames (frame 0 is always one), got k={k}. Use None for a dense layer."
        )


def is_dense(num_frames: int, k: int | None) -> bool:
    """True when ``k`` keeps every tile: ``None`` or ``k >= F``.

    Example:
        >>> is_dense(13, None), is_dense(13, 13), is_dense(13, 2)
        (True, True, False)
    """
    check_k(k)
    return k is None or k >= num_frames


def reference_frames(num_frames: int, k: int | None) -> tuple[int, ...]:
    """The ``k`` reference frames ``floor(i * F / k)``; all frames when the mask is dense.

    Example:
        >>> reference_frames(13, 3)
        (0, 4, 8)
        >>> reference_frames(8, 8)
        (0, 1, 2, 3, 4, 5, 6, 7)
    """
    if is_dense(num_frames, k):
        return tuple(range(num_frames))
    return tuple((i * num_frames) // k for i in range(k))


def non_reference_frames(num_frames: int, k: int | None) -> tuple[int, ...]:
    """Frames that are not reference frames, in order.

    Example:
        >>> non_reference_frames(6, 2)
        (1, 2, 4, 5)
    """
    refs = set(reference_frames(num_frames, k))
    return tuple(f for f in range(num_frames) if f not in refs)


def tile_allowed(q_frame, k_frame, q_is_ref, k_is_ref):
    """Elementwise mask rule on frame indices (text = -1). Works on Python ints and on tensors alike.

    Example:
        >>> tile_allowed(3, 5, False, False)
        False
        >>> tile_allowed(3, 0, False, True)
        True
    """
    q_text = q_frame < 0
    k_text = k_frame < 0
    return (q_frame == k_frame) | k_is_ref | q_is_ref | q_text | k_text


def reference_flags(num_frames: int, k: int | None, device=None) -> torch.Tensor:
    """Boolean tensor ``[F + 1]``: entry ``f`` says whether frame ``f`` is a reference frame; the last entry
    (index ``-1``, used by text tokens) is ``False``.

    Example:
        >>> reference_flags(4, 2).tolist()        # frames 0 and 2, then the text slot
        [True, False, True, False, False]
    """
    flags = torch.zeros(num_frames + 1, dtype=torch.bool, device=device)
    flags[list(reference_frames(num_frames, k))] = True
    return flags


def frame_tile_mask(num_frames: int, k: int | None) -> torch.Tensor:
    """Tile-level mask ``[F + 1, F + 1]`` over groups (frames ``0..F-1``, then text at index ``F``).

    Entry ``[a, b]`` says whether queries of group ``a`` attend to keys of group ``b``.

    Example:
        >>> frame_tile_mask(3, 1).int()           # frames 0..2, then text
        tensor([[1, 1, 1, 1],
                [1, 1, 0, 1],
                [1, 0, 1, 1],
                [1, 1, 1, 1]], dtype=torch.int32)
    """
    groups = torch.arange(num_frames + 1)
    groups[-1] = -1
    flags = reference_flags(num_frames, k)
    return tile_allowed(groups[:, None], groups[None, :], flags[groups][:, None], flags[groups][None, :])


def tile_mask(layout: TileLayout, k: int | None, device=None) -> torch.Tensor:
    """The explicit boolean ``[N, N]`` mask of a ``k:F-k`` plan entry (``True`` = attend).

    Meant for references and small inputs; kernels never build it.

    Example:
        >>> from diffusers_evdit.layout import TileLayout
        >>> tile_mask(TileLayout(num_frames=3, tokens_per_frame=1), k=1).int()   # frame 0 is the reference frame
        tensor([[1, 1, 1],
                [1, 1, 0],
                [1, 0, 1]], dtype=torch.int32)
    """
    frames = layout.token_frames(device)
    flags = reference_flags(layout.num_frames, k, device)[frames]
    return tile_allowed(frames[:, None], frames[None, :], flags[:, None], flags[None, :])


def additive_tile_mask(layout: TileLayout, k: int | None, dtype: torch.dtype, device=None) -> torch.Tensor:
    """:func:`tile_mask` as the additive ``[N, N]`` mask SDPA adds to the scores as it is (0 = attend, -inf = skip).

    Example:
        >>> from diffusers_evdit.layout import TileLayout
        >>> additive_tile_mask(TileLayout(num_frames=3, tokens_per_frame=1), k=1, dtype=torch.float32)[1]
        tensor([0., 0., -inf])
    """
    keep = tile_mask(layout, k, device)
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, -torch.inf)


def allowed_pairs(layout: TileLayout, k: int | None) -> int:
    """Number of (query, key) pairs the mask keeps, from the closed form (no mask is built).

    Example:
        >>> layout = TileLayout(num_frames=4, tokens_per_frame=8, num_text_tokens=3, text_position="first")
        >>> allowed_pairs(layout, 1) == int(tile_mask(layout, 1).sum())
        True
    """
    n = layout.seq_len
    if is_dense(layout.num_frames, k):
        return n * n
    t = layout.tokens_per_frame
    n_ref = len(reference_frames(layout.num_frames, k))
    n_nonref = layout.num_frames - n_ref
    global_queries = n_ref * t + layout.num_text_tokens
    return global_queries * n + n_nonref * t * (t + n_ref * t + layout.num_text_tokens)


def element_sparsity(layout: TileLayout, k: int | None) -> float:
    """Fraction of (query, key) pairs the mask skips: ``1 - allowed / N^2``.

    Example:
        >>> from diffusers_evdit.layout import TileLayout
        >>> round(element_sparsity(TileLayout(8, 3600), 1), 4)
        0.6562
    """
    n = layout.seq_len
    return 1.0 - allowed_pairs(layout, k) / (n * n)


def format_mask(num_frames: int, k: int | None) -> str:
    """The paper's name of a mask, ``"k:F-k"``; ``"dense"`` for a dense entry.

    Example:
        >>> format_mask(13, 2), format_mask(13, None), format_mask(13, 13)
        ('2:11', 'dense', 'dense')
    """
    if is_dense(num_frames, k):
        return "dense"
    return f"{k}:{num_frames - k}"
