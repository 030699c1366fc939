"""The key-set kernel (global rows dense; non-reference frames batched over their gathered key sets) against float64
masked SDPA, for several layouts, every k, batch sizes, memory layouts and a scale."""

import pytest
import torch
import torch.nn.functional as F
from reference import attention_f64, paper_mask

from diffusers_evdit.kernels import TileAttention, UnsupportedKernelError, tile_attention
from diffusers_evdit.kernels.dispatch import SMALL_TRAIN_MIN_SPARSITY, masked_max_sparsity
from diffusers_evdit.kernels.keysets import keyset_plan, keyset_tile_attention
from diffusers_evdit.layout import TileLayout
from diffusers_evdit.masks import element_sparsity

DEMO = TileLayout(8, 64)  # the demo model's self-attention: 8 latent frames x 64 tokens, no text

LAYOUTS = [  # frames, tokens a frame, text tokens, text position
    (8, 64, 0, "none"),  # the demo model's self-attention
    (5, 12, 7, "first"),
    (6, 10, 5, "last"),
    (7, 5, 0, "none"),
    (9, 4, 3, "first"),
    (11, 3, 13, "last"),
]


def _inputs(layout, batch, heads, dim, seed, stride="contiguous", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if stride == "transposed":  # [B, N, H, D] memory seen as [B, H, N, D], as the diffusers processors pass it
        return [torch.randn(batch, layout.seq_len, heads, dim, generator=g, dtype=dtype).transpose(1, 2)
                for _ in range(3)]
    if stride == "sliced":  # every second element of the last dimension
        return [torch.randn(batch, heads, layout.seq_len, 2 * dim, generator=g, dtype=dtype)[..., ::2]
                for _ in range(3)]
    return [torch.randn(batch, heads, layout.seq_len, dim, generator=g, dtype=dtype) for _ in range(3)]


def _reference(q, k, v, mask, scale=None):
    """Masked SDPA in float64 (the boolean tile mask)."""
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, scale=scale)


@pytest.mark.parametrize("stride", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("case", LAYOUTS)
def test_keysets_matches_float64_masked_sdpa_for_every_k(case, stride):
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    for k_ref in range(1, frames):
        plan = keyset_plan(layout, k_ref, "cpu")
        mask = paper_mask(frames, tpf, nt, pos == "first", k_ref)
        for batch in (1, 3):
            q, k, v = _inputs(layout, batch, 3, 16, seed=k_ref + 10 * batch, stride=stride)
            with torch.no_grad():
                out = keyset_tile_attention(q, k, v, plan)
            assert out.shape == q.shape and out.dtype == torch.float32
            assert (out.double() - _reference(q, k, v, mask)).abs().max().item() < 2e-6, (k_ref, batch)


@pytest.mark.parametrize("case", LAYOUTS[1:4])
def test_keysets_in_float64_with_a_scale(case):
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    for k_ref in range(1, frames):
        q, k, v = _inputs(layout, 2, 2, 8, seed=k_ref, stride="transposed", dtype=torch.float64)
        out = keyset_tile_attention(q, k, v, keyset_plan(layout, k_ref, "cpu"), scale=0.3)
        ref = _reference(q, k, v, paper_mask(frames, tpf, nt, pos == "first", k_ref), scale=0.3)
        assert out.dtype == torch.float64
        assert (out - ref).abs().max().item() < 1e-12, k_ref


def test_keysets_output_is_token_major_like_dense_sdpa():
    layout = TileLayout(8, 64)
    q, k, v = _inputs(layout, 1, 4, 64, seed=0, stride="transposed")
    out = keyset_tile_attention(q, k, v, keyset_plan(layout, 6, "cpu"))
    assert out.stride() == F.scaled_dot_product_attention(q, k, v).stride()


def test_keyset_plan_runs_cover_the_sequence_once():
    layout = TileLayout(9, 4, 3, "last")
    for k_ref in range(1, 9):
        plan = keyset_plan(layout, k_ref, "cpu")
        covered = [t for start, stop, _, _ in plan.runs for t in range(start, stop)]
        assert covered == list(range(layout.seq_len))
        assert plan.num_global + plan.num_nonref * plan.tokens_per_frame == layout.seq_len
        assert plan.key_sets.numel() == plan.num_nonref * (plan.num_global + plan.tokens_per_frame)


@pytest.mark.parametrize("k_ref", [1, 3, 5])
def test_keysets_gradients_match_float64_masked_attention(k_ref):
    """Every step (index_select, SDPA, cat) is differentiable, so autograd's backward is exact too."""
    layout = TileLayout(*LAYOUTS[2])
    q, k, v = (x.requires_grad_() for x in _inputs(layout, 2, 2, 8, seed=k_ref, stride="transposed"))
    mask = paper_mask(layout.num_frames, layout.tokens_per_frame, layout.num_text_tokens, False, k_ref)
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    ref = torch.autograd.grad((F.scaled_dot_product_attention(*(x.double() for x in (q, k, v)), attn_mask=mask)
                               * g).sum(), (q, k, v))
    out = keyset_tile_attention(q, k, v, keyset_plan(layout, k_ref, q.device))
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    assert max((a.double() - b).abs().max().item() for a, b in zip(got, ref)) < 1e-5


def test_auto_on_the_demo_layout_picks_by_sparsity_and_falls_back():
    """CPU, no gradients: keysets for the sparser masks, masked for the light ones (the crossover depends on the
    thread count), dense where k = F - 1 keeps every pair; under autograd keysets for the sparse masks and masked for
    the lighter ones, with exact gradients; with a key-padding mask a kernel that takes it."""
    limit = masked_max_sparsity(torch.get_num_threads())
    q, k, v = _inputs(DEMO, 1, 2, 8, seed=1)
    att = TileAttention()
    seen = set()
    for k_ref in range(1, 9):
        with torch.no_grad():
            got = att.choose(DEMO, k_ref, q.device)
        if k_ref >= 7:
            expected = "dense"
        elif element_sparsity(DEMO, k_ref) > limit:
            expected = "keysets"
        else:
            expected = "masked"
        assert got == expected, k_ref
        seen.add(got)
    assert seen == {"dense", "keysets", "masked"}
    assert [att.choose(DEMO, k_ref, q.device) for k_ref in (1, 6)] == ["keysets", "masked"]

    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    from diffusers_evdit.kernels import TileCall

    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(7))
    for k_ref in (1, 2, 3, 4):
        trains = "keysets" if element_sparsity(DEMO, k_ref) > SMALL_TRAIN_MIN_SPARSITY else "masked"
        assert att.choose(DEMO, k_ref, q.device, call=TileCall(qg, kg, vg, DEMO, k_ref)) == trains, k_ref
        out = att(qg, kg, vg, DEMO, k_ref)
        mask = paper_mask(8, 64, 0, False, k_ref)
        assert (out.double() - attention_f64(q, k, v, mask)).abs().max() < 2e-6
        got = torch.autograd.grad((out * g).sum(), (qg, kg, vg))
        ref = torch.autograd.grad((attention_f64(qg, kg, vg, mask) * g).sum(), (qg, kg, vg))
        assert max((a.double() - b).abs().max().item() for a, b in zip(got, ref)) < 1e-5, k_ref

    keep = torch.ones(1, DEMO.seq_len, dtype=torch.bool)
    keep[0, 5] = False  # a video token: split refuses it too
    with torch.no_grad():
        assert att.choose(DEMO, 2, q.device, keep) == "gathered"
        out = att(q, k, v, DEMO, 2, key_padding_mask=keep)
    mask = paper_mask(8, 64, 0, False, 2)[None, None] & keep[:, None, None, :]
    assert (out.double() - attention_f64(q, k, v, mask)).abs().max() < 2e-6


def test_auto_with_padded_text_on_a_short_sequence_takes_split():
    layout = TileLayout(8, 6, 5, "last")
    q, k, v = _inputs(layout, 2, 2, 8, seed=2)
    keep = torch.ones(2, layout.seq_len, dtype=torch.bool)
    keep[1, -2:] = False
    att = TileAttention()
    assert element_sparsity(layout, 1) > masked_max_sparsity(torch.get_num_threads())
    with torch.no_grad():
        assert att.choose(layout, 1, q.device) == "keysets"
        assert att.choose(layout, 1, q.device, keep) == "split"
        out = att(q, k, v, layout, 1, key_padding_mask=keep)
    mask = paper_mask(8, 6, 5, False, 1)[None, None] & keep[:, None, None, :]
    assert (out.double() - attention_f64(q, k, v, mask)).abs().max() < 2e-6


def test_auto_keeps_masked_off_the_cpu_and_split_on_long_sequences():
    """Off the CPU (a meta tensor stands for CUDA here) short sequences keep the masked kernel for every sparse k;
    long sequences and small_seq_len=0 take split."""
    meta = torch.device("meta")
    assert {TileAttention(small_seq_len=4096).choose(DEMO, k_ref, meta) for k_ref in range(1, 7)} == {"masked"}
    assert {TileAttention(small_seq_len=0).choose(DEMO, k_ref, "cpu") for k_ref in range(1, 7)} == {"split"}
    assert TileAttention().choose(TileLayout(8, 128), 1, torch.device("cpu")) == "split"


def test_keysets_refuses_padding_with_the_fix():
    layout = TileLayout(5, 6, 3, "first")
    q, k, v = _inputs(layout, 1, 2, 8, seed=4)
    keep = torch.ones(1, layout.seq_len, dtype=torch.bool)
    keep[0, 0] = False  # a text token
    with pytest.raises(UnsupportedKernelError,
                       match="'keysets' tile kernel takes no key-padding mask; use kernel='split' or kernel='auto'"):
        tile_attention(q, k, v, layout, 1, key_padding_mask=keep, kernel="keysets")
    out = tile_attention(q, k, v, layout, 1, kernel="keysets")
    assert (out.double() - attention_f64(q, k, v, paper_mask(5, 6, 3, True, 1))).abs().max() < 2e-6


def test_keysets_compiles_without_graph_breaks():
    layout = TileLayout(6, 10, 4, "last")
    q, k, v = _inputs(layout, 2, 2, 8, seed=5)
    att = TileAttention("keysets")
    torch._dynamo.reset()
    run = torch.compile(lambda q, k, v: att(q, k, v, layout, 2), backend="eager", fullgraph=True)
    with torch.no_grad():
        out = run(q, k, v)
    assert (out.double() - attention_f64(q, k, v, paper_mask(6, 10, 4, False, 2))).abs().max().item() < 2e-6


def test_inference_reuses_the_key_set_buffers_without_changing_a_result():
    """Without autograd the key and value sets go into buffers kept between calls (per thread, shape and
    inference mode); every output still matches float64 masked SDPA and is not touched by the next call."""
    layout = TileLayout(6, 10, 5, "last")
    att = TileAttention("keysets")
    q, k, v = (torch.randn(2, layout.seq_len, 3, 16).transpose(1, 2) for _ in range(3))  # processors' memory
    with torch.no_grad():
        first = att(q, k, v, layout, 2)
        kept = first.clone()
        second = att(2 * q, k.flip(2), v + 1, layout, 2)
    assert len(att._keyset_buffers) == 1
    assert torch.equal(first, kept)  # the second call wrote its key sets into the same buffers, not into `first`
    for out, (qq, kk, vv) in ((first, (q, k, v)), (second, (2 * q, k.flip(2), v + 1))):
        assert (out.double() - _reference(qq, kk, vv, paper_mask(6, 10, 5, False, 2))).abs().max().item() < 2e-6
    with torch.no_grad():  # another k: another key-set size, another pair of buffers
        att(q, k, v, layout, 3)
    with torch.inference_mode():  # buffers made here cannot be written outside inference mode: kept apart
        att(q, k, v, layout, 2)
    with torch.no_grad():
        att(q, k, v, layout, 2)
    assert len(att._keyset_buffers) == 3
    qg = q.clone().requires_grad_(True)
    fresh = TileAttention("keysets")
    fresh(qg, k, v, layout, 2).sum().backward()  # under autograd: new tensors (the frames' call saves them)
    assert not fresh._keyset_buffers and qg.grad is not None


def test_kept_key_set_buffers_are_bounded(monkeypatch):
    import diffusers_evdit.kernels.dispatch as kernels

    monkeypatch.setattr(kernels, "MAX_KEYSET_BUFFERS", 2)
    layout = TileLayout(7, 5)
    att = TileAttention("keysets")
    q, k, v = (torch.randn(1, 2, layout.seq_len, 8) for _ in range(3))
    with torch.no_grad():
        for k_ref in (1, 2, 3, 4):  # four key-set sizes
            out = att(q, k, v, layout, k_ref)
            assert (out.double() - _reference(q, k, v, paper_mask(7, 5, 0, False, k_ref))).abs().max() < 2e-6
            assert len(att._keyset_buffers) <= 2


def _keyset_stages_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "keyset_stages.py"
    spec = importlib.util.spec_from_file_location("keyset_stages", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("fresh", [False, True])
def test_keyset_stages_benchmark_times_the_kernel_it_claims(fresh):
    """benchmarks/keyset_stages.py times a copy of keyset_tile_attention's body with timers between its stages: the
    copy must give the kernel's result (float64 reference) on every layout and k, fill every stage, and the script
    must put the stock kernel back when it is done."""
    import diffusers_evdit.kernels.dispatch as kernels

    script = _keyset_stages_script()
    for case in LAYOUTS:
        frames, tpf, nt, pos = case
        layout = TileLayout(frames, tpf, nt, pos)
        q, k, v = _inputs(layout, 2, 3, 16, seed=frames, stride="transposed")
        for k_ref in range(1, frames - 1):
            plan = keyset_plan(layout, k_ref, q.device)
            totals = {name: [0.0, 0] for name in script.STAGES}
            buffers = None
            if not fresh:
                buffers = tuple(torch.empty(s) for s in (kernels.gather_buffer_shapes(k, v, plan)))
            out = script.staged_keysets(totals, fresh)(q, k, v, plan, 0.3, buffers)
            assert torch.equal(out, keyset_tile_attention(q, k, v, plan, 0.3)), (case, k_ref)
            ref = _reference(q, k, v, paper_mask(frames, tpf, nt, pos == "first", k_ref), scale=0.3)
            assert (out.double() - ref).abs().max() < 2e-6, (case, k_ref)
            assert all(seconds > 0 for seconds, _ in totals.values()), totals
    stock = kernels.keyset_tile_attention
    result = script.main(["--k", "4", "--threads", str(torch.get_num_threads()), "--rounds", "1", "--round-s",
                          "0.01", "--json"] + (["--fresh-gathers"] if fresh else []))
    assert kernels.keyset_tile_attention is stock
    assert set(result["stage_us"]) == set(script.STAGES) and result["keysets_vs_dense"] > 0
