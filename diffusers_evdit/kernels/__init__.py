"""Exact tile-sparse attention kernels and the dispatcher that picks one per call.

Kernels (all exact for the ``k:F-k`` mask, inputs ``[B, H, N, D]``):

* ``"dense"``: the model's own dense attention (no mask saved, nothing skipped);
* ``"gathered"``: dense SDPA over gathered key sets (:mod:`.gathered`);
* ``"split"``: partial dense attentions (own frame; shared reference + text context) merged by their
  log-sum-exp (:mod:`.split`);
* ``"flex"``: FlexAttention with a tile block mask (:mod:`.flex`);
* ``"walk"``: one Triton launch that walks only the kept tiles, per query block a short list of key ranges
  (:mod:`.walk`; CUDA, inference only), which ``auto`` runs on mid-length CUDA sequences;
* ``"masked"``: one SDPA call with the explicit boolean tile mask (cached per layout), for short sequences;
* ``"keysets"``: two dense calls, no mask and no merge (global rows against every key; the non-reference frames,
  batched, against their gathered key sets), for short sequences (:mod:`.keysets`; no key-padding mask);
* ``"fa4"``: FlashAttention-4's block-sparse kernel with the tile rule as its ``mask_mod`` (:mod:`.fa4`; CUDA,
  Hopper or Blackwell, ``pip install flash-attn-4``; forward and backward; no key-padding mask), which ``auto`` runs
  on long sequences on Hopper GPUs where it is installed.

Each kernel is registered in :data:`TILE_KERNELS` (:mod:`.registry`) with its constraints (devices, dtypes, head
sizes, key-padding masks, backward), checked in one place. ``"auto"`` picks dense where the mask keeps every pair
and, otherwise, the first kernel of its preference order that supports the call (:meth:`TileAttention.choose`,
in :mod:`.dispatch`).
"""

from .dense import dense_attention
from .dispatch import KERNELS, MERGES, TILE_KERNELS, TileAttention, check_kernel, tile_attention
from .flex import FlexTileKernel, tile_block_mask
from .gathered import gathered_tile_attention
from .keysets import keyset_tile_attention
from .registry import KernelRegistry, KernelSpec, TileCall, UnsupportedKernelError
from .split import split_tile_attention
from .tuning import KernelTuner
from .walk import walk_tile_attention

__all__ = [
    "KERNELS",
    "KernelRegistry",
    "KernelSpec",
    "KernelTuner",
    "MERGES",
    "FlexTileKernel",
    "TILE_KERNELS",
    "TileAttention",
    "TileCall",
    "UnsupportedKernelError",
    "check_kernel",
    "dense_attention",
    "gathered_tile_attention",
    "keyset_tile_attention",
    "split_tile_attention",
    "tile_attention",
    "tile_block_mask",
    "walk_tile_attention",
]
