"""FlashAttention-4 tile kernel: a ``k:F-k`` mask as FA4 block-sparsity tensors (Hopper and Blackwell GPUs).

FlashAttention-4 (PyPI ``flash-attn-4``, module ``flash_attn.cute``, written in the CUTLASS CuTe Python DSL) takes
FlexAttention-style block sparsity: for every query block, the key blocks it computes without a mask (*full*) and
those where a ``mask_mod`` decides element by element (*partial*); every other key block is skipped. Its backward
takes the same structure transposed (for every key block, its query blocks).

The tile rule as one code per token: ``-1`` for a token that sees and is seen by every token (text, and the tokens
of the reference frames), else its frame index. A query may attend to a key exactly when
``code_q == -1 or code_k == -1 or code_q == code_k`` (:func:`code_rule`), the rule of :func:`..masks.tile_allowed`.
So one int32 tensor of codes is all the ``mask_mod`` reads, and one compiled kernel serves every layout and plan.

A (query block, key block) pair is *full* when every pair of codes present in the two blocks is allowed and both
blocks lie inside the sequence, *partial* when some but not all are (or a block is the ragged last one), else
skipped. Index lists are ascending, so the highest key block of a row (the one FA4 checks against the sequence
end) comes first in its processing order.

Everything but :func:`fa4_tile_attention` / :func:`fa4_dense_attention` is plain PyTorch and runs on the CPU.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field

import torch

from ..layout import TileLayout
from ..masks import reference_flags

GLOBAL_CODE = -1
# compute capabilities FA4 targets with block sparsity: Hopper (9.x) and Blackwell (10.x, 11.x)
SUPPORTED_MAJORS = (9, 10, 11)
# where "auto" prefers it to split on long sequences: where it was measured level or ahead forward, ahead backward
# (Hopper: H100, BENCHMARKS.md "FlashAttention-4 on an H100"); elsewhere it runs only when named, kernel="fa4"
AUTO_MAJORS = (9,)
# the largest head size FA4 takes on Hopper (its own check; on Blackwell it takes up to 128, and FA4 says so itself)
FA4_MAX_HEAD_DIM = 256


def token_codes(layout: TileLayout, k_ref: int | None, device=None) -> torch.Tensor:
    """The code of every sequence position (``[seq_len]``, int32): ``-1`` for text and reference-frame tokens, else
    the token's frame.

    Example:
        >>> token_codes(TileLayout(num_frames=3, tokens_per_frame=2), k_ref=1).tolist()   # frame 0 is the reference
        [-1, -1, 1, 1, 2, 2]
    """
    frames = layout.token_frames(device)
    is_global = reference_flags(layout.num_frames, k_ref, device)[frames] | (frames < 0)
    return torch.where(is_global, torch.full_like(frames, GLOBAL_CODE), frames).to(torch.int32)


def code_rule(code_q: torch.Tensor, code_k: torch.Tensor) -> torch.Tensor:
    """Whether a query of code ``code_q`` may attend to a key of code ``code_k`` (broadcasting): the ``mask_mod``."""
    return (code_q == GLOBAL_CODE) | (code_k == GLOBAL_CODE) | (code_q == code_k)


def _block_presence(codes: torch.Tensor, num_groups: int, block: int) -> torch.Tensor:
    """``[N]`` codes -> ``[num_blocks, G]`` bool: which code groups occur in each block (group ``G - 1`` = global)."""
    n = codes.shape[0]
    groups = torch.where(codes == GLOBAL_CODE, num_groups - 1, codes.long())
    flat = torch.arange(n, device=codes.device) // block * num_groups + groups
    counts = torch.zeros(-(-n // block) * num_groups, device=codes.device)
    counts.index_add_(0, flat, torch.ones(n, device=codes.device))
    return counts.view(-1, num_groups) > 0


def _index_lists(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool ``[R, C]`` -> (``[1, 1, R]`` count per row, ``[1, 1, R, C]`` selected columns first, ascending), int32."""
    count = select.sum(-1, dtype=torch.int32)
    order = torch.argsort((~select).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return count[None, None].contiguous(), order[None, None].contiguous()


@dataclass(frozen=True)
class FA4BlockSparsity:
    """The block-sparsity tensors of one plan entry on one layout.

    ``full`` and ``partial`` are the ``[query blocks, key blocks]`` maps; ``codes`` (int32, padded to whole blocks
    with frame codes no real token has) is the ``mask_mod``'s auxiliary tensor. :attr:`forward_lists` and
    :attr:`backward_lists` give the ``(count, index)`` pairs FA4 reads.
    """

    q_block: int
    kv_block: int
    seq_len: int
    full: torch.Tensor
    partial: torch.Tensor
    codes: torch.Tensor

    @functools.cached_property
    def forward_lists(self) -> dict:
        """Per query block: ``full_block_cnt/idx`` and ``mask_block_cnt/idx`` (``[1, 1, QB]``, ``[1, 1, QB, KB]``).
        Built on first use and kept: a call then costs no index work."""
        full_cnt, full_idx = _index_lists(self.full)
        mask_cnt, mask_idx = _index_lists(self.partial)
        return dict(full_block_cnt=full_cnt, full_block_idx=full_idx, mask_block_cnt=mask_cnt, mask_block_idx=mask_idx)

    @functools.cached_property
    def backward_lists(self) -> dict:
        """Per key block: the same four tensors over query blocks (``[1, 1, KB]``, ``[1, 1, KB, QB]``); kept too."""
        full_cnt, full_idx = _index_lists(self.full.T)
        mask_cnt, mask_idx = _index_lists(self.partial.T)
        return dict(full_block_cnt=full_cnt, full_block_idx=full_idx, mask_block_cnt=mask_cnt, mask_block_idx=mask_idx)

    @property
    def kept_block_fraction(self) -> float:
        """Share of block pairs computed (full or partial)."""
        return (self.full | self.partial).float().mean().item()

    def computed_pairs(self) -> int:
        """(query, key) pairs inside the computed blocks (a ragged last block holds fewer): the work of a kernel that
        computes whole blocks, to compare with :func:`..masks.allowed_pairs`."""
        n = self.seq_len
        rows = (n - torch.arange(self.full.shape[0]) * self.q_block).clamp(max=self.q_block)
        cols = (n - torch.arange(self.full.shape[1]) * self.kv_block).clamp(max=self.kv_block)
        return int((rows[:, None] * cols[None, :])[(self.full | self.partial).cpu()].sum())


def block_sparsity(layout: TileLayout, k_ref: int | None, q_block: int = 128, kv_block: int = 128,
                   device=None) -> FA4BlockSparsity:
    """The :class:`FA4BlockSparsity` of the ``k_ref:F-k_ref`` entry on ``layout`` for ``q_block x kv_block`` tiles.

    Example:
        >>> sp = block_sparsity(TileLayout(num_frames=4, tokens_per_frame=128), k_ref=1)
        >>> sp.full.int().tolist()          # frame 0 (the reference frame) sees and is seen by all; others themselves
        [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]
        >>> bool(sp.partial.any())          # frames align with the blocks: nothing is partial
        False
    """
    n = layout.seq_len
    codes = token_codes(layout, k_ref, device)
    g = layout.num_frames + 1  # frames, then the global group
    group_allowed = torch.eye(g, dtype=torch.bool, device=device)
    group_allowed[-1, :] = group_allowed[:, -1] = True
    q_pres = _block_presence(codes, g, q_block).float()
    k_pres = _block_presence(codes, g, kv_block).float()
    any_allowed = q_pres @ group_allowed.float() @ k_pres.T > 0
    any_blocked = q_pres @ (~group_allowed).float() @ k_pres.T > 0
    q_whole = torch.arange(q_pres.shape[0], device=device) < n // q_block
    k_whole = torch.arange(k_pres.shape[0], device=device) < n // kv_block
    full = any_allowed & ~any_blocked & q_whole[:, None] & k_whole[None, :]
    partial = any_allowed & ~full
    pad = -n % math.lcm(q_block, kv_block)
    if pad:  # whole blocks for the mask_mod's lookups; distinct codes that match no real token
        codes = torch.cat([codes, torch.arange(pad, device=device, dtype=torch.int32) + layout.num_frames + 1])
    return FA4BlockSparsity(q_block, kv_block, n, full, partial, codes)


@functools.lru_cache(maxsize=None)
def _fa4_importable() -> bool:
    try:
        return importlib.util.find_spec("flash_attn.cute.interface") is not None
    except (ImportError, ValueError):
        return False


def fa4_available(device=None) -> bool:
    """Whether FlashAttention-4 can run here: ``flash_attn.cute`` importable and a Hopper or Blackwell CUDA device.
    Never raises: False without the package, without CUDA, or on another GPU."""
    try:
        if not torch.cuda.is_available():
            return False
        dev = torch.device(device if device is not None else "cuda")
        if dev.type != "cuda":
            return False
        if torch.cuda.get_device_capability(dev)[0] not in SUPPORTED_MAJORS:
            return False
        if not _fa4_importable():
            return False
        import flash_attn.cute.interface  # noqa: F401  (fails cleanly when its CUTLASS DSL libraries are missing)
        return True
    except Exception:
        return False


def prefers_fa4(device) -> bool:
    """Whether ``auto`` tries the FA4 tile kernel first on a long sequence on ``device``: a CUDA device of a
    compute capability in :data:`AUTO_MAJORS` (the kernel's own constraints, FA4 installed among them, are checked
    after this). Never raises."""
    try:
        device = torch.device(device)
        return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] in AUTO_MAJORS
    except Exception:
        return False


def fa4_status(device=None) -> str:
    """One line on FlashAttention-4 here: whether ``kernel="fa4"`` runs and whether ``auto`` picks it (for
    ``evdit smoke``). Never raises.

    Example:
        >>> fa4_status("cpu").startswith("FlashAttention-4:")
        True
    """
    if fa4_available(device):
        if prefers_fa4(device if device is not None else "cuda"):
            return "FlashAttention-4: runs here; auto uses the fa4 tile kernel on long sequences"
        return "FlashAttention-4: runs here with kernel='fa4' (auto picks it on Hopper GPUs only: measured there)"
    if not _fa4_importable():
        return "FlashAttention-4: not installed (on a Hopper GPU, pip install flash-attn-4 adds the fa4 tile kernel)"
    return "FlashAttention-4: installed, but not usable here (it needs a Hopper or Blackwell GPU and its libraries)"


def fa4_block_size(device) -> tuple[int, int]:
    """Sparse (query, key) block sizes FA4 accepts on ``device``: ``(128, 128)`` on Hopper; on Blackwell its forward
    takes query tiles in pairs, ``(256, 128)``."""
    major = torch.cuda.get_device_capability(torch.device(device))[0]
    return (128, 128) if major == 9 else (256, 128)


def _require_fa4(device) -> None:
    if not fa4_available(device):
        raise RuntimeError(
            "FlashAttention-4 is not available here: it needs `pip install flash-attn-4` (CuTe DSL) and a Hopper or "
            "Blackwell CUDA device; use kernel='split' (or 'auto')."
        )


@functools.lru_cache(maxsize=None)
def _tile_mask_mod():
    """The CuTe ``mask_mod`` of :func:`code_rule`, reading the token codes from ``aux_tensors[0]``."""
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import utils

    @cute.jit
    def tile_mask_mod(batch: cute.TensorSSA, head: cute.TensorSSA, m_idx: cute.TensorSSA, n_idx: cute.TensorSSA,
                      seqlen_info, aux_tensors) -> cute.TensorSSA:
        codes = aux_tensors[0]
        code_q = utils.scalar_to_ssa(codes[m_idx[0]], cutlass.Int32)
        code_k = utils.scalar_to_ssa(codes[n_idx[0]], cutlass.Int32)
        glob = utils.scalar_to_ssa(GLOBAL_CODE, cutlass.Int32)
        return (code_q == glob) | (code_k == glob) | (code_q == code_k)

    return tile_mask_mod


def _first(result):
    return result[0] if isinstance(result, (tuple, list)) else result


def fa4_dense_attention(q, k, v, scale=None) -> torch.Tensor:
    """Dense attention of ``[B, H, N, D]`` inputs with FlashAttention-4 (CUDA, Hopper or Blackwell)."""
    _require_fa4(q.device)
    from flash_attn.cute.interface import flash_attn_func

    out = _first(flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale))
    return out.transpose(1, 2)


def fa4_tile_attention(q, k, v, sparsity: FA4BlockSparsity, scale=None) -> torch.Tensor:
    """Exact tile attention of ``[B, H, N, D]`` inputs through FA4's block sparsity (forward, and backward where
    the inputs need gradients). ``sparsity`` from :func:`block_sparsity` on the inputs' device."""
    _require_fa4(q.device)
    return _block_sparse_attention(q, k, v, sparsity, scale)


def _block_sparse_attention(q, k, v, sparsity: FA4BlockSparsity, scale=None) -> torch.Tensor:
    """:func:`fa4_tile_attention` once FA4 is known to run here (the kernel's per-call path checks that once)."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    from flash_attn.cute.interface import flash_attn_func

    if q.shape[2] != sparsity.seq_len:
        raise ValueError(f"The block sparsity was built for {sparsity.seq_len} tokens, got {q.shape[2]}.")
    size = (sparsity.q_block, sparsity.kv_block)
    forward = BlockSparseTensorsTorch(**sparsity.forward_lists, block_size=size)
    backward = None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        backward = BlockSparseTensorsTorch(**sparsity.backward_lists, block_size=size)
    out = _first(flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                                 mask_mod=_tile_mask_mod(), aux_tensors=[sparsity.codes],
                                 block_sparse_tensors=forward, block_sparse_tensors_bwd=backward))
    return out.transpose(1, 2)


@dataclass
class FA4TileKernel:
    """FA4 tile attention with its block-sparsity tensors cached per (layout, ``k``, device); called like the other
    tile kernels. Refuses key-padding masks (the dispatcher keeps today's kernels for those).

    ``block_size``: sparse (query, key) block sizes; default :func:`fa4_block_size` of the device. Smaller key blocks
    (Hopper takes 64) waste less of the tiles that straddle frames, at some cost per tile.

    Example:
        >>> kernel = FA4TileKernel(block_size=(128, 64))
        >>> kernel.sparsity(TileLayout(num_frames=4, tokens_per_frame=96), k_ref=1, device="cpu").partial.shape
        torch.Size([3, 6])
    """

    block_size: tuple[int, int] | None = None
    _sparsity: dict = field(default_factory=dict, repr=False)
    _checked_devices: set = field(default_factory=set, repr=False)

    def sparsity(self, layout: TileLayout, k_ref: int | None, device) -> FA4BlockSparsity:
        """The cached :class:`FA4BlockSparsity` of a plan entry on ``layout``."""
        q_block, kv_block = self.block_size or fa4_block_size(device)
        key = (layout, k_ref, str(device), q_block, kv_block)
        if key not in self._sparsity:
            self._sparsity[key] = block_sparsity(layout, k_ref, q_block, kv_block, device)
        return self._sparsity[key]

    def __call__(self, q, k, v, layout: TileLayout, k_ref: int | None, key_padding_mask=None, scale=None):
        if key_padding_mask is not None:
            raise NotImplementedError("The FA4 tile kernel takes no key-padding mask; use kernel='gathered'.")
        if q.device not in self._checked_devices:  # FA4's availability is a property of the device: check it once
            _require_fa4(q.device)
            self._checked_devices.add(q.device)
        return _block_sparse_attention(q, k, v, self.sparsity(layout, k_ref, q.device), scale)
