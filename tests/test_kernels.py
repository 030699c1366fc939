import pytest
import torch
from reference import attention_f64, paper_mask

from diffusers_evdit.kernels import KernelTuner, TileAttention, tile_attention
from diffusers_evdit.kernels.flex import tile_block_mask
from diffusers_evdit.layout import TileLayout

CASES = [  # frames, tokens a frame, text tokens, text position
    (5, 12, 7, "first"),
    (6, 10, 5, "last"),
    (4, 9, 0, "none"),
    (9, 4, 3, "first"),
]


def _inputs(layout, batch, heads, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, layout.seq_len, dim, generator=g) for _ in range(3)]


@pytest.mark.parametrize("kernel", ["gathered", "split", "flex"])
@pytest.mark.parametrize("case", CASES)
def test_sparse_kernels_match_float64_reference(kernel, case):
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    for seed, k in enumerate(range(1, frames)):
        q, kk, v = _inputs(layout, 2, 3, 16, seed)
        mask = paper_mask(frames, tpf, nt, pos == "first", k)
        ref = attention_f64(q, kk, v, mask)
        out = tile_attention(q, kk, v, layout, k, kernel=kernel)
        assert out.dtype == torch.float32
        assert (out.double() - ref).abs().max().item() < 2e-6, (k, kernel)


@pytest.mark.parametrize("kernel", ["gathered", "split", "flex"])
def test_key_padding_mask_applies_on_top(kernel):
    layout = TileLayout(5, 8, 6, "last")
    q, k, v = _inputs(layout, 2, 2, 8, 3)
    keep = torch.ones(2, layout.seq_len, dtype=torch.bool)
    keep[1, -3:] = False  # padded text tokens of the second sample
    mask = paper_mask(5, 8, 6, False, 2)[None, None] & keep[:, None, None, :]
    ref = attention_f64(q, k, v, mask)
    out = tile_attention(q, k, v, layout, 2, key_padding_mask=keep, kernel=kernel)
    assert (out.double() - ref).abs().max().item() < 2e-6
    # the padding changes the answer: a test that ignores it would fail here
    unpadded = tile_attention(q, k, v, layout, 2, kernel=kernel)
    assert (unpadded[1] - out[1]).abs().max() > 1e-3


def test_dense_entry_is_plain_attention():
    layout = TileLayout(4, 6, 2, "first")
    q, k, v = _inputs(layout, 1, 2, 8, 0)
    ref = attention_f64(q, k, v)
    for k_ref in (None, 4, 9):
        assert TileAttention().choose(layout, k_ref, q.device) == "dense"
        assert (tile_attention(q, k, v, layout, k_ref).double() - ref).abs().max() < 2e-6


@pytest.mark.parametrize("block", [8, 16, 32])
@pytest.mark.parametrize("case", CASES)
def test_flex_block_mask_classifies_blocks_exactly(block, case):
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    n = layout.seq_len
    for k in (1, 2):
        elem = paper_mask(frames, tpf, nt, pos == "first", k)
        bm = tile_block_mask(layout, k, block_size=block)
        nb = -(-n // block)
        padded = torch.zeros(nb * block, nb * block, dtype=torch.bool)
        padded[:n, :n] = elem
        tiles = padded.unflatten(0, (nb, block)).unflatten(2, (nb, block))  # qb, q, kb, k
        any_allowed = tiles.any(3).any(1)
        all_allowed = tiles.all(3).all(1)
        partial = torch.zeros(nb, nb, dtype=torch.bool)
        full = torch.zeros(nb, nb, dtype=torch.bool)
        for qb in range(nb):
            partial[qb, bm.kv_indices[0, 0, qb, : bm.kv_num_blocks[0, 0, qb]].long()] = True
            full[qb, bm.full_kv_indices[0, 0, qb, : bm.full_kv_num_blocks[0, 0, qb]].long()] = True
        assert not (partial & full).any()
        assert torch.equal(partial | full, any_allowed)  # no needed block is skipped, no empty block is visited
        assert not (full & ~all_allowed).any()  # a "full" block never hides a masked pair


def test_kernel_input_errors():
    layout = TileLayout(4, 6, 2, "first")
    q, k, v = _inputs(layout, 1, 2, 8, 0)
    with pytest.raises(ValueError, match="Unknown tile-attention kernel"):
        TileAttention("fast")
    with pytest.raises(ValueError, match="received 25 tokens"):
        tile_attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], layout, 1)
    with pytest.raises(ValueError, match="key_padding_mask"):
        tile_attention(q, k, v, layout, 1, key_padding_mask=torch.ones(1, layout.seq_len))
    with pytest.raises(ValueError, match=r"\[batch, heads, tokens, head_dim\]"):
        tile_attention(q[0], k[0], v[0], layout, 1)


def test_flex_block_mask_index_tensors_are_dense_row_major():
    """Compiled FlexAttention reads the index tensors as dense arrays (a strided view gave garbage on CUDA)."""
    bm = tile_block_mask(TileLayout(13, 20, 9, "first"), 1, block_size=16)
    for t in (bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices):
        assert t.is_contiguous() and t.dtype == torch.int32


@pytest.mark.parametrize("kernel", ["auto", "split", "gathered"])  # FlexAttention has no CPU backward
def test_gradients_match_the_masked_reference(kernel):
    layout = TileLayout(5, 6, 3, "first")
    q, k, v = (x.double().requires_grad_() for x in _inputs(layout, 1, 2, 8, 7))
    mask = paper_mask(5, 6, 3, True, 2)
    g = torch.randn(1, 2, layout.seq_len, 8, dtype=torch.float64)
    ref = torch.autograd.grad((attention_f64(q, k, v, mask) * g).sum(), (q, k, v))
    out = tile_attention(q, k, v, layout, 2, kernel=kernel)
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    for a, b in zip(got, ref):
        assert (a - b).abs().max() < 1e-9


def test_auto_picks_split_with_and_without_gradients():
    layout = TileLayout(5, 6, 3, "first")
    q, k, v = (x.requires_grad_() for x in _inputs(layout, 1, 2, 8, 7))
    with torch.no_grad():
        assert TileAttention(small_seq_len=0).choose(layout, 2, q.device) == "split"
    assert TileAttention(small_seq_len=0).choose(layout, 2, q.device) == "split"  # exact backward: test_backward.py
    assert tile_attention(q, k, v, layout, 2, kernel="split").requires_grad


def test_split_refuses_padding_on_video_tokens_and_auto_falls_back():
    layout = TileLayout(4, 6, 3, "last")
    q, k, v = _inputs(layout, 1, 2, 8, 5)
    keep = torch.ones(1, layout.seq_len, dtype=torch.bool)
    keep[0, 2] = False  # a video token
    with pytest.raises(ValueError, match="text tokens only"):
        tile_attention(q, k, v, layout, 1, key_padding_mask=keep, kernel="split")
    with torch.no_grad():
        assert TileAttention(small_seq_len=0).choose(layout, 1, q.device, keep) == "gathered"
        out = tile_attention(q, k, v, layout, 1, key_padding_mask=keep)
    mask = paper_mask(4, 6, 3, False, 1)[None, None] & keep[:, None, None, :]
    assert (out.double() - attention_f64(q, k, v, mask)).abs().max() < 2e-6


@pytest.mark.parametrize("head_dim", [3, 8])
def test_attention_with_lse_math_matches_float64(head_dim):
    from diffusers_evdit.kernels.split import attention_with_lse, attention_with_lse_math

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, head_dim) for _ in range(3))
    scale = 0.37
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    lse_ref = torch.logsumexp(scores, dim=-1)
    out_ref = torch.softmax(scores, dim=-1) @ v.double()
    for fn in (attention_with_lse_math, attention_with_lse):
        out, lse = fn(q, k, v, scale)
        assert out.dtype == q.dtype and lse.dtype == torch.float32
        torch.testing.assert_close(out.double(), out_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse.double(), lse_ref, atol=1e-5, rtol=1e-5)


def test_fused_cuda_attention_is_not_given_float64_or_unaligned_heads():
    """cuDNN and memory-efficient attention refuse float64 and head sizes off multiples of 8; such inputs take the
    math path (float64 reached memory-efficient attention through split on an H100; the CUDA fuzz cases found it)."""
    from types import SimpleNamespace

    from diffusers_evdit.kernels.lse import _fused_cuda

    def inputs(dtype, head_dim, device="cuda"):  # a stand-in: only device, shape and dtype are read
        return SimpleNamespace(device=torch.device(device), shape=(1, 2, 16, head_dim), dtype=dtype)

    assert _fused_cuda(inputs(torch.float32, 64)) and _fused_cuda(inputs(torch.bfloat16, 8))
    assert not _fused_cuda(inputs(torch.float64, 64))
    assert not _fused_cuda(inputs(torch.float32, 12))
    assert not _fused_cuda(inputs(torch.float32, 64, "cpu"))


@torch.no_grad()
@pytest.mark.parametrize("faster", ["dense", "split"])
def test_fastest_times_split_against_dense_once_per_signature(monkeypatch, faster):
    """kernel='fastest' with a tuner: split and dense are timed once per call signature, the faster one runs, and
    later calls reuse the choice; 'auto' and forced kernels never time and always apply the mask."""
    import diffusers_evdit.kernels.dispatch as kernels

    ran = []
    real_split, real_dense = kernels.split_tile_attention, kernels.dense_attention
    monkeypatch.setattr(kernels, "split_tile_attention", lambda *a, **kw: ran.append("split") or real_split(*a, **kw))
    monkeypatch.setattr(kernels, "dense_attention", lambda *a, **kw: ran.append("dense") or real_dense(*a, **kw))
    seconds = {"split": 1.0, "dense": 2.0} if faster == "split" else {"split": 2.0, "dense": 1.0}

    def timer(fn):
        n = len(ran)
        fn()
        return seconds[ran[n]]

    att = TileAttention("fastest", small_seq_len=0, tuner=kernels.KernelTuner(reps=2, warmup=1, timer=timer))
    layout = TileLayout(5, 12, 7, "first")
    q, k, v = _inputs(layout, 1, 2, 16, 0)
    masked = attention_f64(q, k, v, paper_mask(5, 12, 7, True, 2))
    full = attention_f64(q, k, v, torch.ones(layout.seq_len, layout.seq_len, dtype=torch.bool))
    out = att(q, k, v, layout, 2)
    assert (out.double() - (masked if faster == "split" else full)).abs().max().item() < 2e-6
    assert ran == ["split"] * 3 + ["dense"] * 3 + [faster]  # warm-up + 2 timed each, then the call itself
    assert list(att.tuner.choices.values()) == [faster]
    ran.clear()
    att(q, k, v, layout, 2)  # same signature: no timing
    assert ran == [faster]
    att(q, k, v, layout, 1)  # another plan entry: timed again
    assert len(ran) == 1 + 7 and len(att.tuner.choices) == 2
    for other in ("auto", "split"):
        forced = TileAttention(other, small_seq_len=0, tuner=kernels.KernelTuner(timer=timer))
        ran.clear()
        forced(q, k, v, layout, 2)
        assert ran == ["split"] and not forced.tuner.choices


def test_tuner_keeps_the_preferred_kernel_within_the_margin():
    seconds = {"split": 1.015, "dense": 1.0}
    tuner = KernelTuner(reps=1, warmup=0, timer=lambda fn: seconds[fn()])
    calls = {"split": lambda: "split", "dense": lambda: "dense"}
    assert tuner.pick("a", calls, prefer="split", margin=0.02) == "split"  # 1.5% slower: a tie, keep split
    seconds["split"] = 1.05
    assert tuner.pick("b", calls, prefer="split", margin=0.02) == "dense"  # 5% slower: dense
    assert tuner.pick("a", calls, prefer="split", margin=0.02) == "split"  # cached, not re-timed
    assert tuner.timings["a"] == {"split": 1.015, "dense": 1.0}


def test_tuner_skips_a_candidate_that_raises_but_not_the_preferred_one():
    def broken():
        raise RuntimeError("no kernel for this GPU")

    tuner = KernelTuner(reps=1, warmup=0, timer=lambda fn: fn())
    calls = {"split": lambda: 2.0, "dense": lambda: 3.0, "walk": broken}
    with pytest.warns(UserWarning, match="skipped walk .*no kernel for this GPU"):
        assert tuner.pick("a", calls, prefer="split") == "split"
    assert tuner.timings["a"]["walk"] == float("inf") and "RuntimeError" in tuner.errors["a"]["walk"]
    with pytest.raises(RuntimeError, match="no kernel"):  # the preferred kernel failing is a real error
        tuner.pick("b", calls, prefer="walk")


@pytest.mark.parametrize("chunks", [2, 3, 5])
@pytest.mark.parametrize("case", [(6, 10, 4, "last"), (4, 9, 0, "none")])  # N = 64 and 36 keys: chunked where the
def test_split_kernel_with_chunked_global_queries_matches_float64_reference(chunks, case):  # count divides, else not
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    att = TileAttention("split", global_chunks=chunks)
    for k in (1, 2):
        q, kk, v = _inputs(layout, 2, 3, 16, k)
        ref = attention_f64(q, kk, v, paper_mask(frames, tpf, nt, pos == "first", k))
        with torch.no_grad():
            out = att(q, kk, v, layout, k)
        assert (out.double() - ref).abs().max().item() < 2e-6, (chunks, k)


def test_global_attention_in_key_chunks_matches_float64():
    from diffusers_evdit.kernels.split import global_attention

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 3, n, 16, generator=g) for n in (7, 48, 48))
    ref = attention_f64(q, k, v)
    for chunks in (1, 2, 4, 6):
        assert (global_attention(q, k, v, chunks=chunks).double() - ref).abs().max().item() < 2e-6, chunks


def test_overlap_is_a_cuda_option_the_cpu_ignores():
    """overlap=True asks for a CUDA side stream; on CPU tensors none is made and the result is the exact one."""
    layout = TileLayout(6, 10, 4, "last")
    att = TileAttention("split", overlap=True)
    q, kk, v = _inputs(layout, 2, 3, 16, 2)
    assert att.side_stream(q) is None and TileAttention("split").side_stream(q) is None
    ref = attention_f64(q, kk, v, paper_mask(6, 10, 4, False, 2))
    with torch.no_grad():
        out = att(q, kk, v, layout, 2)
    assert (out.double() - ref).abs().max().item() < 2e-6 and att._side_streams == {}


@pytest.mark.parametrize("layout,k", [(TileLayout(13, 20, 9, "first"), 1), (TileLayout(7, 10, 9, "last"), 3),
                                      (TileLayout(5, 12), 2)])
def test_token_codes_rule_gives_the_same_flex_mask(layout, k):
    """The FA4-style code rule (for FlexAttention's FLASH backend) masks exactly the pairs of the group lookup."""
    by_groups = tile_block_mask(layout, k, block_size=16)
    by_codes = tile_block_mask(layout, k, block_size=16, token_codes_rule=True)
    n = layout.seq_len
    q_idx, kv_idx = torch.arange(n)[:, None], torch.arange(n)[None, :]
    expected = paper_mask(layout.num_frames, layout.tokens_per_frame, layout.num_text_tokens,
                          layout.text_position == "first", k)
    assert torch.equal(by_codes.mask_mod(0, 0, q_idx, kv_idx), expected)
    assert torch.equal(by_groups.mask_mod(0, 0, q_idx, kv_idx), expected)
    assert torch.equal(by_codes.to_dense(), by_groups.to_dense())


def test_flex_flash_backend_refuses_a_key_padding_mask_by_name():
    """The FLASH backend's element rule has no padded-key code: a key-padding mask is refused before any compile."""
    from diffusers_evdit.kernels.flex import FlexTileKernel

    layout = TileLayout(4, 16)
    q = torch.randn(1, 2, layout.seq_len, 16)
    keep = torch.ones(1, layout.seq_len, dtype=torch.bool)
    with pytest.raises(NotImplementedError, match="key-padding mask"):
        FlexTileKernel(compile=True, backend="FLASH")(q, q, q, layout, 1, keep)
    out = FlexTileKernel(backend="FLASH")(q, q, q, layout, 1, keep)  # eager on the CPU: the backend does not apply
    assert torch.allclose(out, tile_attention(q, q, q, layout, 1, keep, kernel="gathered"), atol=1e-5)
