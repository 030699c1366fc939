"""FlexAttention tile kernel: a block mask derived from tile groups, never from an ``N x N`` matrix.

Every token belongs to a *group*: its latent frame ``0..F-1``, text (``F``), or a padded key (``F + 1``, attended by
no query). The tile mask is a small ``[G, G]`` matrix over groups. A (query block, key block) pair is

* empty when no group pair present in the two blocks is allowed,
* full when every present pair is allowed (and both blocks lie inside the sequence),
* partial otherwise, where FlexAttention evaluates the element mask.

The counts come from two matrix products of block-group presence matrices, ``O(blocks^2 * G)`` work.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ..layout import TileLayout
from ..masks import frame_tile_mask
from .compiled import CompiledFn
from .fa4 import code_rule, token_codes

DEFAULT_BLOCK_SIZE = 128


def token_groups(layout: TileLayout, device=None) -> torch.Tensor:
    """Group of every sequence position: frame index, or ``F`` for text (``[N]``, int64)."""
    frames = layout.token_frames(device)
    return torch.where(frames < 0, torch.full_like(frames, layout.num_frames), frames)


def group_mask(layout: TileLayout, k: int | None, device=None) -> torch.Tensor:
    """Allowed ``[G, G]`` over groups frames, text, padded key (the padded-key column is all False)."""
    g = layout.num_frames + 2
    allowed = torch.zeros(g, g, dtype=torch.bool)
    allowed[: g - 1, : g - 1] = frame_tile_mask(layout.num_frames, k)
    return allowed.to(device)


def _block_presence(groups: torch.Tensor, num_groups: int, block: int) -> torch.Tensor:
    """``[..., N]`` groups -> ``[..., num_blocks, G]`` bool: which groups occur in each block."""
    n = groups.shape[-1]
    nb = -(-n // block)
    block_of = torch.arange(n, device=groups.device) // block
    flat = block_of * num_groups + groups
    counts = torch.zeros(*groups.shape[:-1], nb * num_groups, device=groups.device)
    counts.scatter_add_(-1, flat.expand_as(groups), torch.ones_like(groups, dtype=counts.dtype))
    return counts.unflatten(-1, (nb, num_groups)) > 0


def _indices(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool ``[B, H, QB, KB]`` -> (count per row, kv block indices with the selected ones first)."""
    num = select.sum(-1, dtype=torch.int32).contiguous()
    idx = torch.argsort((~select).to(torch.int8), dim=-1, stable=True).to(torch.int32).contiguous()
    return num, idx  # compiled FlexAttention reads these as dense row-major arrays


def tile_block_mask(
    layout: TileLayout,
    k: int | None,
    key_padding_mask: torch.Tensor | None = None,
    batch_size: int = 1,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device=None,
    token_codes_rule: bool = False,
) -> BlockMask:
    """FlexAttention :class:`BlockMask` of a ``k:F-k`` plan entry on ``layout`` (plus an optional key-padding mask).

    The element mask looks the pair's groups up in the ``[G, G]`` group mask. ``token_codes_rule=True`` (no
    key-padding mask) gives the same mask as the FA4 kernel's rule instead: one int32 code per token and three
    comparisons (:func:`.fa4.code_rule`), which FlexAttention's FlashAttention-4 backend lowers (it refuses the int64
    group lookup).

    Example:
        >>> mask = tile_block_mask(TileLayout(num_frames=4, tokens_per_frame=128), k=1)
        >>> mask.shape
        (1, 1, 512, 512)
    """
    n = layout.seq_len
    g_count = layout.num_frames + 2
    allowed = group_mask(layout, k, device)
    q_groups = token_groups(layout, device)
    k_groups = q_groups.expand(batch_size, n)
    if key_padding_mask is not None:
        k_groups = torch.where(key_padding_mask.to(device), k_groups, torch.full_like(k_groups, g_count - 1))
    q_pres = _block_presence(q_groups, g_count, block_size).float()  # QB, G
    k_pres = _block_presence(k_groups, g_count, block_size).float()  # B, KB, G
    any_allowed = torch.einsum("qg,gh,bkh->bqk", q_pres, allowed.float(), k_pres) > 0
    any_blocked = torch.einsum("qg,gh,bkh->bqk", q_pres, (~allowed).float(), k_pres) > 0
    nb = q_pres.shape[0]
    in_range = torch.ones(nb, dtype=torch.bool, device=device)
    if n % block_size:
        in_range[-1] = False  # a ragged last block is never "full"
    full = any_allowed & ~any_blocked & in_range[None, :, None] & in_range[None, None, :]
    partial = any_allowed & ~full

    if token_codes_rule:
        if key_padding_mask is not None:
            raise ValueError("token_codes_rule takes no key-padding mask.")
        codes = token_codes(layout, k, device)

        def mask_mod(b, h, q_idx, kv_idx):
            return code_rule(codes[q_idx], codes[kv_idx])

    elif key_padding_mask is None:

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed[q_groups[q_idx], q_groups[kv_idx]]

    else:

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed[q_groups[q_idx], k_groups[b, kv_idx]]

    kv_num, kv_idx = _indices(partial[:, None])
    full_num, full_idx = _indices(full[:, None])
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(n, n)
    )


@dataclass
class FlexTileKernel:
    """FlexAttention with cached block masks (per layout, ``k``, batch size and device).

    ``compile=None`` compiles on CUDA and runs eagerly elsewhere (eager FlexAttention is a slow reference path).
    ``backend``: FlexAttention's own kernel choice for compiled calls (its ``kernel_options["BACKEND"]``): ``None``
    leaves torch's default (Triton); ``"FLASH"`` asks for its FlashAttention-4 (CuTe DSL) path, experimental in torch
    and needing ``flash-attn-4`` (BENCHMARKS.md compares it with the ``fa4`` tile kernel).

    Example:
        >>> from diffusers_evdit import TileLayout, tile_attention
        >>> layout = TileLayout(num_frames=4, tokens_per_frame=8)
        >>> q = k = v = torch.randn(1, 2, layout.seq_len, 16)
        >>> out = FlexTileKernel()(q, k, v, layout, 1)     # eager on a CPU, compiled on CUDA
        >>> torch.allclose(out, tile_attention(q, k, v, layout, 1, kernel="gathered"), atol=1e-5)
        True
    """

    block_size: int = DEFAULT_BLOCK_SIZE
    compile: bool | None = None
    backend: str | None = None
    _masks: dict = field(default_factory=dict, repr=False)
    _compiled: CompiledFn = field(default_factory=lambda: CompiledFn(flex_attention, {"dynamic": False}), repr=False)

    def block_mask(self, layout, k, batch_size, device, key_padding_mask=None) -> BlockMask:
        if key_padding_mask is not None:  # data-dependent: not cached
            return tile_block_mask(layout, k, key_padding_mask, batch_size, self.block_size, device)
        key = (layout, k, str(device))
        if key not in self._masks:  # batch-independent: one mask broadcasts over the batch
            self._masks[key] = tile_block_mask(layout, k, None, 1, self.block_size, device,
                                               token_codes_rule=self.backend == "FLASH")
        return self._masks[key]

    def __call__(self, q, k, v, layout: TileLayout, k_ref: int, key_padding_mask=None, scale=None):
        use_compile = self.compile if self.compile is not None else q.device.type == "cuda"
        if use_compile and self.backend == "FLASH" and key_padding_mask is not None:
            raise NotImplementedError(
                "FlexTileKernel(backend='FLASH') runs the tile mask without a key-padding mask (its element rule reads "
                "one code per token); use backend=None, or kernel='gathered' for padded keys."
            )
        mask = self.block_mask(layout, k_ref, q.shape[0], q.device, key_padding_mask)
        if use_compile:
            if q.shape[-1] % 16:  # measured: 64, 96, 128 compile; 12 fails inside inductor
                raise ValueError(
                    f"Compiled FlexAttention needs a head_dim that is a multiple of 16, got {q.shape[-1]}; "
                    "use kernel='split'."
                )
            if self.backend is None:
                return self._compiled(q, k, v, block_mask=mask, scale=scale)
            return self._compiled(q, k, v, block_mask=mask, scale=scale, kernel_options={"BACKEND": self.backend})
        with warnings.catch_warnings():  # eager FlexAttention is the intended (reference-speed) path off CUDA
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, block_mask=mask, scale=scale)
