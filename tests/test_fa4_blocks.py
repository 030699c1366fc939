"""FlashAttention-4 block-sparsity tensors of a ``k:F-k`` layout, checked on the CPU against the explicit mask.

Every (query block, key block) pair is compared with the paper's mask written out (tests/reference.py): a full block
must be all allowed, a skipped block all blocked, a partial block mixed (or ragged). The index lists FA4 reads are
decoded back into maps, and an emulation of FA4's block-sparse loop (full blocks unmasked, partial blocks through the
code rule, the rest skipped) must equal float64 masked attention.
"""

import pytest
import torch
from reference import attention_f64, paper_mask

from diffusers_evdit import TileLayout
from diffusers_evdit.kernels.fa4 import (
    FA4TileKernel,
    block_sparsity,
    code_rule,
    fa4_available,
    fa4_tile_attention,
    token_codes,
)

LAYOUTS = [  # (frames, tokens per frame, text tokens, text position)
    (4, 16, 0, "none"),      # frames align with 16-token blocks
    (5, 20, 0, "none"),      # unaligned frames
    (6, 12, 7, "first"),     # text first, unaligned
    (7, 10, 9, "last"),      # text last, ragged last block
    (13, 9, 5, "first"),     # many frames inside one block
]
BLOCKS = [(16, 16), (32, 16), (8, 24)]


def _layout(frames, tpf, text, pos):
    return TileLayout(frames, tpf, text, pos)


def _explicit(layout, k):
    return paper_mask(layout.num_frames, layout.tokens_per_frame, layout.num_text_tokens,
                      layout.text_position == "first", k)


def _decode(count, index, rows, cols):
    """``[1, 1, R]`` counts and ``[1, 1, R, C]`` index lists -> bool ``[R, C]`` map."""
    out = torch.zeros(rows, cols, dtype=torch.bool)
    for r in range(rows):
        chosen = index[0, 0, r, : count[0, 0, r]].long()
        assert chosen.tolist() == sorted(chosen.tolist())  # ascending: the last block is processed first
        out[r, chosen] = True
    return out


@pytest.mark.parametrize("frames,tpf,text,pos", LAYOUTS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_code_rule_is_the_tile_mask(frames, tpf, text, pos, k):
    layout = _layout(frames, tpf, text, pos)
    codes = token_codes(layout, k)
    assert torch.equal(code_rule(codes[:, None], codes[None, :]), _explicit(layout, k))


@pytest.mark.parametrize("frames,tpf,text,pos", LAYOUTS)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("q_block,kv_block", BLOCKS)
def test_blocks_match_the_explicit_mask_pair_by_pair(frames, tpf, text, pos, k, q_block, kv_block):
    layout = _layout(frames, tpf, text, pos)
    mask = _explicit(layout, k)
    n = layout.seq_len
    sp = block_sparsity(layout, k, q_block, kv_block)
    qb, kb = -(-n // q_block), -(-n // kv_block)
    assert sp.full.shape == sp.partial.shape == (qb, kb)
    assert not (sp.full & sp.partial).any()
    for i in range(qb):
        for j in range(kb):
            tile = mask[i * q_block:(i + 1) * q_block, j * kv_block:(j + 1) * kv_block]
            ragged = (i + 1) * q_block > n or (j + 1) * kv_block > n
            if sp.full[i, j]:
                assert bool(tile.all()) and not ragged, (i, j)
            elif sp.partial[i, j]:
                assert bool(tile.any()) and (ragged or not bool(tile.all())), (i, j)
            else:
                assert not bool(tile.any()), (i, j)
    fwd, bwd = sp.forward_lists, sp.backward_lists
    assert torch.equal(_decode(fwd["full_block_cnt"], fwd["full_block_idx"], qb, kb), sp.full)
    assert torch.equal(_decode(fwd["mask_block_cnt"], fwd["mask_block_idx"], qb, kb), sp.partial)
    assert torch.equal(_decode(bwd["full_block_cnt"], bwd["full_block_idx"], kb, qb), sp.full.T)
    assert torch.equal(_decode(bwd["mask_block_cnt"], bwd["mask_block_idx"], kb, qb), sp.partial.T)
    for t in (*fwd.values(), *bwd.values()):
        assert t.dtype == torch.int32 and t.is_contiguous()
    # the mask_mod's lookups stay inside the codes for every position of every block
    assert sp.codes.shape[0] % q_block == 0 and sp.codes.shape[0] % kv_block == 0
    assert torch.equal(sp.codes[:n], token_codes(layout, k))


def test_aligned_frames_leave_no_partial_block():
    sp = block_sparsity(TileLayout(6, 32), 2, 16, 16)
    assert not sp.partial.any() and sp.full.any()


def _emulate_fa4(q, k, v, sp):
    """FA4's block-sparse forward loop in float64: per query block, full key blocks unmasked, partial ones through
    the code rule (and the sequence end), others skipped."""
    n, scale = q.shape[2], q.shape[-1] ** -0.5
    out = torch.empty(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    fwd = sp.forward_lists
    for i in range(sp.full.shape[0]):
        rows = torch.arange(i * sp.q_block, min((i + 1) * sp.q_block, n))
        cols, keep = [], []
        for kind in ("full", "mask"):
            for j in fwd[f"{kind}_block_idx"][0, 0, i, : fwd[f"{kind}_block_cnt"][0, 0, i]].tolist():
                c = torch.arange(j * sp.kv_block, min((j + 1) * sp.kv_block, n))
                cols.append(c)
                keep.append(torch.ones(len(rows), len(c), dtype=torch.bool) if kind == "full"
                            else code_rule(sp.codes[rows][:, None], sp.codes[c][None, :]))
        cols, keep = torch.cat(cols), torch.cat(keep, dim=1)
        s = q[:, :, rows].double() @ k[:, :, cols].double().transpose(-1, -2) * scale
        out[:, :, rows] = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v[:, :, cols].double()
    return out


@pytest.mark.parametrize("frames,tpf,text,pos", LAYOUTS[1:4])
def test_block_sparse_loop_is_exact_attention(frames, tpf, text, pos):
    layout = _layout(frames, tpf, text, pos)
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, layout.seq_len, 8, generator=g).unbind(0)
    for k_ref in (1, 2):
        sp = block_sparsity(layout, k_ref, 16, 8)
        ref = attention_f64(q, k, v, _explicit(layout, k_ref))
        assert torch.allclose(_emulate_fa4(q, k, v, sp), ref, atol=1e-12)


def test_fa4_degrades_cleanly_without_its_gpu():
    if fa4_available():
        pytest.skip("FlashAttention-4 runs here")
    assert fa4_available("cpu") is False
    layout = TileLayout(3, 8)
    q = torch.randn(1, 1, layout.seq_len, 16)
    with pytest.raises(RuntimeError, match="flash-attn-4"):
        fa4_tile_attention(q, q, q, block_sparsity(layout, 1))
    kernel = FA4TileKernel()
    for _ in range(2):  # a failed check is not remembered as a pass
        with pytest.raises(RuntimeError, match="flash-attn-4"):
            kernel(q, q, q, layout, 1)


@pytest.mark.gpu
@pytest.mark.needs_fa4
@pytest.mark.parametrize("frames,tpf,text,pos,head_dim", [(13, 330, 226, "first", 64), (9, 390, 0, "none", 128),
                                                         (8, 256, 0, "none", 64), (5, 300, 40, "last", 128)])
def test_fa4_tile_attention_matches_float64_forward_and_backward(frames, tpf, text, pos, head_dim):
    layout = _layout(frames, tpf, text, pos)
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, layout.seq_len, 4, head_dim, generator=g).cuda().bfloat16().transpose(1, 2)
                   for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    kernel = FA4TileKernel()
    for k_ref in (1, 3):
        out = kernel(q, k, v, layout, k_ref)
        grads = torch.autograd.grad(out, (q, k, v), do)
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = attention_f64(qd, kd, vd, _explicit(layout, k_ref).cuda())
        ref_grads = torch.autograd.grad(ref, (qd, kd, vd), do.double())
        assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2
        for got, want in zip(grads, ref_grads):
            assert ((got.double() - want).norm() / want.norm()).item() < 2e-2


@pytest.mark.parametrize("frames,tpf,text,pos", LAYOUTS)
def test_computed_pairs_count_the_kept_blocks_elementwise(frames, tpf, text, pos):
    layout = _layout(frames, tpf, text, pos)
    n = layout.seq_len
    sp = block_sparsity(layout, 2, 16, 8)
    covered = sp.full | sp.partial
    expand = covered.repeat_interleave(16, 0)[:n].repeat_interleave(8, 1)[:, :n]  # block map -> element map
    assert sp.computed_pairs() == int(expand.sum())
    assert bool(expand[_explicit(layout, 2)].all())  # every kept pair lies in a computed block


def test_fa4_status_says_what_runs_and_what_to_do(monkeypatch):
    """The line `evdit smoke` prints, in each of its four cases."""
    import diffusers_evdit.kernels.fa4 as fa4

    monkeypatch.setattr(fa4, "fa4_available", lambda device=None: False)
    monkeypatch.setattr(fa4, "_fa4_importable", lambda: False)
    assert "not installed" in fa4.fa4_status() and "pip install flash-attn-4" in fa4.fa4_status()
    monkeypatch.setattr(fa4, "_fa4_importable", lambda: True)
    assert "not usable here" in fa4.fa4_status()
    monkeypatch.setattr(fa4, "fa4_available", lambda device=None: True)
    monkeypatch.setattr(fa4, "prefers_fa4", lambda device: True)
    assert "auto uses the fa4 tile kernel" in fa4.fa4_status()
    monkeypatch.setattr(fa4, "prefers_fa4", lambda device: False)
    assert "kernel='fa4'" in fa4.fa4_status() and "Hopper GPUs only" in fa4.fa4_status()


@pytest.mark.gpu
@pytest.mark.needs_fa4
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_flex_flash_backend_fa4_matches_float64(backward):
    """FlexAttention's experimental FlashAttention-4 backend (``FlexTileKernel(backend="FLASH")``, compiled) on the
    tile block mask, against float64 masked attention: forward, and the gradients where it has a backward."""
    from diffusers_evdit.kernels.flex import FlexTileKernel

    layout = _layout(13, 330, 226, "first")
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, layout.seq_len, 4, 64, generator=g).cuda().bfloat16().transpose(1, 2)
                   for _ in range(4))
    q, k, v = (t.requires_grad_(backward) for t in (q, k, v))
    out = FlexTileKernel(backend="FLASH")(q, k, v, layout, 3)
    qd, kd, vd = (t.detach().double().requires_grad_(backward) for t in (q, k, v))
    ref = attention_f64(qd, kd, vd, _explicit(layout, 3).cuda())
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2
    if backward:
        grads = torch.autograd.grad(out, (q, k, v), do)
        ref_grads = torch.autograd.grad(ref, (qd, kd, vd), do.double())
        for got, want in zip(grads, ref_grads):
            assert ((got.double() - want).norm() / want.norm()).item() < 2e-2
