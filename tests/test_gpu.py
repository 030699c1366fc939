"""CUDA checks (skipped without a GPU): every kernel in bf16 and fp32 against float64 references, and the
processors on tiny models on the GPU."""

import pytest
import torch
from reference import attention_f64, masked_sdpa, paper_mask

from diffusers_evdit import MaskPlan, TileLayout, apply_mask_plan, num_plan_layers, remove_mask_plan, tile_attention
from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_transformer

pytestmark = pytest.mark.gpu

CASES = [(13, 150, 226, "first"), (9, 256, 0, "none"), (8, 200, 56, "last")]


@pytest.fixture(autouse=True)
def _one_walk_launch_setting(request, monkeypatch):
    """The walk kernel's autotuner compiles and times four launch settings per head size and dtype (minutes over
    this file); tests other than the autotuned one in bf16 pin one setting, which checks exactness just the same."""
    params = getattr(request.node, "callspec", None)
    if "autotuned" in request.node.name and params is not None and params.params.get("dtype") == torch.bfloat16:
        return
    from diffusers_evdit.kernels import walk

    if getattr(walk, "_walk_tuned", None) is not None:
        pinned = walk.triton.autotune(configs=walk._CONFIGS[:1], key=["n_tokens", "head_dim"])(walk._walk_kernel)
        monkeypatch.setattr(walk, "_walk_tuned", pinned)


def _rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("kernel", ["gathered", "split", "flex", "walk"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-4)])
def test_kernels_on_cuda(kernel, case, dtype, tol):
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    for k in (1, 2, frames // 2):
        q, kk, v = (torch.randn(1, 4, layout.seq_len, 64, device="cuda", dtype=dtype) for _ in range(3))
        ref = attention_f64(q, kk, v, paper_mask(frames, tpf, nt, pos == "first", k).cuda())
        out = tile_attention(q, kk, v, layout, k, kernel=kernel)
        assert torch.isfinite(out).all()
        assert _rel(out, ref) < tol, (kernel, k)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-4)])
def test_split_kernel_with_triton_merge_on_cuda(case, dtype, tol):
    pytest.importorskip("triton")
    from diffusers_evdit.kernels import TileAttention

    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    att = TileAttention("split", merge="triton")
    for k in (1, 2, frames // 2):
        # [B, N, H, D] viewed as [B, H, N, D], as the processors pass them
        q, kk, v = (torch.randn(1, layout.seq_len, 4, 64, device="cuda", dtype=dtype).transpose(1, 2) for _ in range(3))
        ref = attention_f64(q, kk, v, paper_mask(frames, tpf, nt, pos == "first", k).cuda())
        out = att(q, kk, v, layout, k)
        assert torch.isfinite(out).all()
        assert _rel(out, ref) < tol, k


@pytest.mark.parametrize("case", CASES)
def test_split_kernel_overlapping_the_global_call_on_cuda(case):
    """overlap=True: the global call on a side stream, the rest on the current one; exact, also when calls follow
    one another without a synchronisation (a race on ``out`` or on freed memory would show here)."""
    from diffusers_evdit.kernels import TileAttention

    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    att = TileAttention("split", overlap=True)
    inputs, outs = [], []
    for k in (1, 2, frames // 2, 1, 2):
        q, kk, v = (torch.randn(2, layout.seq_len, 4, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                    for _ in range(3))
        keep = torch.ones(2, layout.seq_len, dtype=torch.bool, device="cuda")
        if nt:
            keep[1, layout.text_slice.stop - 5: layout.text_slice.stop] = False  # padded text of the second sample
        inputs.append((q, kk, v, keep, k))
        outs.append(att(q, kk, v, layout, k, key_padding_mask=keep))
    torch.cuda.synchronize()
    assert len(att._side_streams) == 1
    for (q, kk, v, keep, k), out in zip(inputs, outs):
        mask = paper_mask(frames, tpf, nt, pos == "first", k).cuda()[None, None] & keep[:, None, None, :]
        assert _rel(out, attention_f64(q, kk, v, mask)) < 1e-2, k


@torch.no_grad()
def test_fastest_kernel_times_once_and_runs_autos_kernel_or_dense_on_cuda():
    from diffusers_evdit.kernels import TileAttention

    layout = TileLayout(13, 150, 226, "first")
    q, kk, v = (torch.randn(1, layout.seq_len, 4, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                for _ in range(3))
    att = TileAttention("fastest")
    for k in (1, 6):
        out = att(q, kk, v, layout, k)
        signature = next(s for s in att.tuner.choices if s[2] == k)
        choice = att.tuner.choices[signature]
        mask = paper_mask(13, 150, 226, True, k).cuda() if choice != "dense" else None
        assert _rel(out, attention_f64(q, kk, v, mask)) < 1e-2, (k, choice)
        # the candidates: auto's kernel for this call, against the model's dense attention
        assert set(att.tuner.timings[signature]) == {TileAttention("auto").choose(layout, k, q.device), "dense"}
    assert len(att.tuner.choices) == 2


def test_auto_runs_walk_on_mid_length_sequences_and_another_kernel_under_autograd_on_cuda():
    """auto's CUDA rule: above 2048 tokens (here 2304) walk for inference, exact; under autograd walk has no backward,
    so auto takes masked (or gathered for the sparsest masks), exact in both passes."""
    from diffusers_evdit.kernels import TileAttention

    layout = TileLayout(9, 256)
    att = TileAttention()
    for k, trained in ((1, "gathered"), (4, "masked")):
        q, kk, v = (torch.randn(1, 2, layout.seq_len, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        mask = paper_mask(9, 256, 0, False, k).cuda()
        with torch.no_grad():
            out = att(q, kk, v, layout, k)
        assert _rel(out, attention_f64(q, kk, v, mask)) < 1e-2, k
        qg = q.float().requires_grad_()
        out = att(qg, kk.float(), v.float(), layout, k)
        out.square().sum().backward()
        qr = q.double().requires_grad_()
        ref = attention_f64(qr, kk, v, mask)
        ref.square().sum().backward()
        assert _rel(out, ref.detach()) < 1e-4 and _rel(qg.grad, qr.grad) < 1e-3, k
        assert sorted(kernel for kernel, _ in att._chosen.values()) == sorted(["walk", trained]), k
        att._chosen.clear()


def test_walk_launches_with_the_tuned_setting_after_its_first_call_on_cuda(monkeypatch):
    """After the first call per (N, D, dtype, key padding) TileAttention keeps the autotuner's setting and launches
    with it directly: the autotuner is not called again, and the output is the same to the bit."""
    from diffusers_evdit.kernels import TileAttention, walk

    layout = TileLayout(9, 256)
    att = TileAttention("walk")
    q, kk, v = (torch.randn(1, 2, layout.seq_len, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    first = att(q, kk, v, layout, 2)
    assert list(att._walk_launches.values()) == [walk._walk_tuned.best_config.all_kwargs()]

    class Refuses:
        def __getitem__(self, grid):
            raise AssertionError("the autotuner ran again for a pinned setting")

    monkeypatch.setattr(walk, "_walk_tuned", Refuses())
    assert torch.equal(att(q, kk, v, layout, 2), first)
    assert torch.equal(att(q, kk, v, layout, 1), walk.walk_tile_attention(  # another mask, the same setting
        q, kk, v, walk.walk_segments(layout, 1).to("cuda"), config=next(iter(att._walk_launches.values()))))
    keep = torch.ones(1, layout.seq_len, dtype=torch.bool, device="cuda")
    with pytest.raises(AssertionError, match="autotuner ran again"):  # key padding: a key of its own, tuned anew
        att(q, kk, v, layout, 2, key_padding_mask=keep)


@pytest.mark.parametrize("head_dim", [64, 96, 128])  # 96 (Open-Sora-Plan): lanes masked up to 128
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 1e-2), (torch.float32, 1e-4)])
def test_walk_kernel_autotuned_on_cuda_with_strided_batched_inputs(head_dim, dtype, tol):
    """The walk kernel (its autotuned launch in bf16) on [B, N, H, D] projections viewed as [B, H, N, D], batch 2,
    frames of 1350 tokens after 226 text tokens (CogVideoX's alignment: nothing lines up with its 128-row blocks)."""
    layout = TileLayout(4, 1350, 226, "first")
    q, k, v = (torch.randn(2, layout.seq_len, 3, head_dim, device="cuda", dtype=dtype).transpose(1, 2)
               for _ in range(3))
    for k_ref in (1, 2):
        ref = attention_f64(q, k, v, paper_mask(4, 1350, 226, True, k_ref).cuda())
        out = tile_attention(q, k, v, layout, k_ref, kernel="walk")
        assert torch.isfinite(out).all() and _rel(out, ref) < tol, k_ref


@pytest.mark.parametrize("head_dim", [12, 20])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-4)])
def test_split_kernel_on_cuda_with_unaligned_head_dim(head_dim, dtype, tol):
    """cuDNN needs head_dim % 8 == 0; other head dimensions (tiny models) must still run, exactly."""
    layout = TileLayout(6, 40, 10, "first")
    q, k, v = (torch.randn(1, 2, layout.seq_len, head_dim, device="cuda", dtype=dtype) for _ in range(3))
    ref = attention_f64(q, k, v, paper_mask(6, 40, 10, True, 2).cuda())
    assert _rel(tile_attention(q, k, v, layout, 2, kernel="split"), ref) < tol


@pytest.mark.parametrize("kernel", ["gathered", "split", "flex", "walk"])
def test_text_padding_on_cuda(kernel):
    layout = TileLayout(6, 128, 64, "last")
    q, k, v = (torch.randn(2, 2, layout.seq_len, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    keep = torch.ones(2, layout.seq_len, dtype=torch.bool, device="cuda")
    keep[1, -20:] = False
    mask = paper_mask(6, 128, 64, False, 2).cuda()[None, None] & keep[:, None, None, :]
    ref = attention_f64(q, k, v, mask)
    assert _rel(tile_attention(q, k, v, layout, 2, key_padding_mask=keep, kernel=kernel), ref) < 1e-2


@pytest.mark.parametrize("family,kernel", [(f, k) for f in ("cogvideox", "wan", "hunyuan_video")
                                            for k in ("auto", "gathered", "split", "flex")]
                         + [(f, "walk") for f in ("cogvideox", "wan", "hunyuan_video")])
def test_processors_on_cuda(family, kernel):
    model = tiny_transformer(family).cuda()
    if kernel == "flex" and model.config.attention_head_dim % 16:
        with pytest.raises(ValueError, match="multiple of 16"):
            tile_attention(*(torch.randn(1, 2, 40, 12, device="cuda") for _ in range(3)), TileLayout(4, 10), 1,
                           kernel="flex")
        return
    video = TinyVideo(frames=6, batch=2)
    inputs = {k: (v.cuda() if torch.is_tensor(v) else tuple(t.cuda() for t in v) if isinstance(v, tuple) else v)
              for k, v in tiny_inputs(model, video).items()}
    name = type(model).__name__
    num_text = 0 if name == "WanTransformer3DModel" else video.text_tokens
    mask = paper_mask(6, 16, num_text, name == "CogVideoXTransformer3DModel", 2)
    with torch.no_grad(), masked_sdpa(mask):
        ref = model(**inputs).sample
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 2), kernel=kernel)
    with torch.no_grad():
        out = model(**inputs).sample
    remove_mask_plan(model)
    assert (out - ref).abs().max().item() < 1e-3  # fp32 with TF32-free SDPA backends vs float64 attention
