"""The split kernel's Triton merge, run by Triton's interpreter on the CPU (skipped where Triton is not installed):
against the merge formula in float64, inside the split kernel against a float64 masked reference, and the
TileAttention merge option."""

import importlib

import pytest
import torch
from reference import attention_f64, paper_mask

from diffusers_evdit.kernels import TileAttention
from diffusers_evdit.kernels.indices import tile_indices
from diffusers_evdit.kernels.split import split_tile_attention
from diffusers_evdit.layout import TileLayout

pytest.importorskip("triton")


@pytest.fixture
def interpreted(monkeypatch):
    """The triton_merge module re-imported with TRITON_INTERPRET=1 (its kernel then runs on the CPU)."""
    import diffusers_evdit.kernels.triton_merge as tm

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield importlib.reload(tm)
    monkeypatch.delenv("TRITON_INTERPRET")
    importlib.reload(tm)


def _formula(o1, o2, l1, l2):
    w = torch.sigmoid(l2.double() - l1.double())[..., None]
    return o1.double() + (o2.double() - o1.double()) * w


@pytest.mark.parametrize("head_dim", [8, 12])  # 12: a head dimension that is not a power of two (masked lanes)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_merge_matches_formula_with_any_strides(interpreted, head_dim, dtype, tol):
    g = torch.Generator().manual_seed(0)
    heads, m, t = 3, 2, 37  # 74 rows: not a multiple of the row block
    # o1 laid out [m, T, H, D] (a cuDNN output of frames as a batch), o2 [H, m*T, D], out [m*T, H, D]
    o1 = torch.randn(m, t, heads, head_dim, generator=g).permute(2, 0, 1, 3)[None]
    o2 = torch.randn(heads, m * t, head_dim, generator=g).unflatten(1, (m, t))[None]
    l1 = torch.randn(m, heads, t, generator=g).transpose(0, 1)[None] * 3
    l2 = torch.randn(heads, m * t, generator=g).unflatten(1, (m, t))[None] * 3
    o1, o2 = o1.to(dtype), o2.to(dtype)
    out = torch.full((m * t, heads, head_dim), float("nan"), dtype=dtype).unflatten(0, (m, t)).permute(2, 0, 1, 3)[None]
    interpreted.triton_merge_partial_attention(out, o1, o2, l1, l2)
    ref = _formula(o1, o2, l1, l2)
    assert out.dtype == dtype
    assert ((out.double() - ref).norm() / ref.norm()).item() < tol
    # the weight matters: merging with the weights swapped gives another answer
    swapped = torch.empty_like(out)
    interpreted.triton_merge_partial_attention(swapped, o1, o2, l2, l1)
    assert (swapped - out).abs().max().item() > 1e-2


@pytest.mark.parametrize("case", [(5, 12, 7, "first"), (6, 10, 5, "last"), (4, 9, 0, "none")])
def test_split_kernel_with_triton_merge_matches_float64_reference(interpreted, case):
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    g = torch.Generator().manual_seed(1)
    for k in range(1, frames):
        q, kk, v = (torch.randn(1, layout.seq_len, 2, 16, generator=g).transpose(1, 2) for _ in range(3))
        ref = attention_f64(q, kk, v, paper_mask(frames, tpf, nt, pos == "first", k))
        out = split_tile_attention(q, kk, v, layout, tile_indices(layout, k, q.device),
                                   merge=interpreted.triton_merge_partial_attention)
        assert (out.double() - ref).abs().max().item() < 2e-6, k


def test_merge_option_of_tile_attention():
    with pytest.raises(ValueError, match="Unknown split-kernel merge"):
        TileAttention("split", merge="fast")
    q = torch.randn(1, 2, 40, 8)
    with pytest.raises(RuntimeError, match="needs Triton and CUDA"):
        TileAttention("split", merge="triton").merge_fn(q)
