"""Tile layout: where each latent frame and the text tokens sit in a self-attention sequence.

A video transformer flattens its latent video into patches frame by frame ("frame-major"), so the sequence seen by
self-attention is a run of ``num_frames * tokens_per_frame`` video tokens, possibly with text tokens before it
(CogVideoX) or after it (HunyuanVideo). The :class:`TileLayout` records exactly that, and is all the mask and the
kernels need to know about the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEXT_FIRST = "first"
TEXT_LAST = "last"
TEXT_NONE = "none"


@dataclass(frozen=True)
class TileLayout:
    """Token layout of one self-attention sequence.

    Args:
        num_frames: number of latent frames ``F`` after temporal patching.
        tokens_per_frame: video tokens in one latent frame (``H/p * W/p``).
        num_text_tokens: text tokens that take part in self-attention (0 for models with cross-attention only).
        text_position: ``"first"`` (text, then video), ``"last"`` (video, then text) or ``"none"``.

    Example:
        >>> layout = TileLayout(num_frames=13, tokens_per_frame=1350, num_text_tokens=226, text_position="first")
        >>> layout.seq_len
        17776
        >>> layout.video_slice
        slice(226, 17776, None)
    """

    num_frames: int
    tokens_per_frame: int
    num_text_tokens: int = 0
    text_position: str = TEXT_NONE

    def __post_init__(self):
        if self.num_frames < 1 or self.tokens_per_frame < 1:
            raise ValueError(
                f"TileLayout needs at least one frame and one token per frame, got num_frames={self.num_frames}, "
                f"tokens_per_frame={self.tokens_per_frame}."
            )
        if self.num_text_tokens < 0:
            raise ValueError(f"num_text_tokens must be >= 0, got {self.num_text_tokens}.")
        if self.text_position not in (TEXT_FIRST, TEXT_LAST, TEXT_NONE):
            raise ValueError(f"text_position must be 'first', 'last' or 'none', got {self.text_position!r}.")
        if (self.text_position == TEXT_NONE) != (self.num_text_tokens == 0):
            raise ValueError(
                f"text_position={self.text_position!r} does not fit num_text_tokens={self.num_text_tokens}: use "
                "'none' exactly when no text tokens take part in self-attention."
            )

    @property
    def num_video_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        return self.num_video_tokens + self.num_text_tokens

    @property
    def video_start(self) -> int:
        return self.num_text_tokens if self.text_position == TEXT_FIRST else 0

    @property
    def video_slice(self) -> slice:
        return slice(self.video_start, self.video_start + self.num_video_tokens)

    @property
    def text_slice(self) -> slice:
        if self.text_position == TEXT_FIRST:
            return slice(0, self.num_text_tokens)
        return slice(self.num_video_tokens, self.num_video_tokens + self.num_text_tokens)

    def frame_slice(self, frame: int) -> slice:
        """Sequence positions of latent frame ``frame``."""
        start = self.video_start + frame * self.tokens_per_frame
        return slice(start, start + self.tokens_per_frame)

    def token_frames(self, device=None) -> torch.Tensor:
        """Frame index of every sequence position, ``-1`` for text tokens (shape ``[seq_len]``, int64)."""
        frames = torch.full((self.seq_len,), -1, dtype=torch.long, device=device)
        frames[self.video_slice] = torch.arange(self.num_video_tokens, device=device) // self.tokens_per_frame
        return frames

    def check_seq_len(self, seq_len: int, where: str = "self-attention") -> None:
        """Raise a clear error when a sequence of ``seq_len`` tokens is not explained by this layout."""
        if seq_len != self.seq_len:
            raise ValueError(
                f"{where} received {seq_len} tokens, but the tile layout explains {self.seq_len} "
                f"({self.num_frames} frames x {self.tokens_per_frame} tokens + {self.num_text_tokens} text tokens "
                f"{self.text_position}). The input does not have the frame-major layout the mask plan assumes; "
                "call the transformer with the latents the plan was applied for (the layout comes from its forward)."
            )

    def with_text(self, num_text_tokens: int, text_position: str) -> "TileLayout":
        """The same video layout with another text segment."""
        return TileLayout(self.num_frames, self.tokens_per_frame, num_text_tokens, text_position)


def _as_tuple3(patch_t: int | None, patch_h: int, patch_w: int | None = None) -> tuple[int, int, int]:
    return (patch_t or 1, patch_h, patch_w if patch_w is not None else patch_h)


def video_grid(latent_shape: tuple[int, int, int], patch_size: tuple[int, int, int]) -> tuple[int, int]:
    """Latent frames and tokens per frame after patching a ``(frames, height, width)`` latent.

    Raises ``ValueError`` when the latent does not divide into whole patches.

    Example:
        >>> video_grid((21, 60, 104), (1, 2, 2))
        (21, 1560)
    """
    frames, height, width = latent_shape
    pt, ph, pw = patch_size
    if frames % pt or height % ph or width % pw:
        raise ValueError(
            f"Latent of {frames} frames x {height} x {width} does not divide into patches of {pt} x {ph} x {pw}; "
            "use a height / width / frame count divisible by the patch size."
        )
    return frames // pt, (height // ph) * (width // pw)


def layout_from_latents(
    latent_shape: tuple[int, int, int],
    patch_size: tuple[int | None, int, int | None] | int,
    num_text_tokens: int = 0,
    text_position: str = TEXT_NONE,
) -> TileLayout:
    """Build a :class:`TileLayout` from the latent ``(frames, height, width)``, the patch size and the text segment.

    Example:
        >>> layout_from_latents((13, 60, 90), (1, 2, 2), num_text_tokens=226, text_position="first").tokens_per_frame
        1350
    """
    if isinstance(patch_size, int):
        patch_size = (1, patch_size, patch_size)
    frames, tokens = video_grid(latent_shape, _as_tuple3(*patch_size))
    return TileLayout(frames, tokens, num_text_tokens, text_position if num_text_tokens else TEXT_NONE)
