"""The split kernel's exact backward: gradients against float64 masked attention, per kernel call and through whole
tiny transformers (with gradient checkpointing, bf16 autocast and torch.compile)."""

import pytest
import torch
from reference import attention_f64, masked_sdpa, paper_mask

from diffusers_evdit import MaskPlan, apply_mask_plan, num_plan_layers, remove_mask_plan
from diffusers_evdit.kernels import TileAttention, tile_attention
from diffusers_evdit.kernels.lse import (
    attention_backward,
    attention_backward_math,
    attention_with_lse,
    attention_with_lse_math,
)
from diffusers_evdit.layout import TileLayout
from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_transformer

CASES = [  # frames, tokens a frame (unaligned to any block), text tokens, text position
    (5, 12, 7, "first"),
    (6, 10, 5, "last"),
    (4, 9, 0, "none"),
    (9, 4, 3, "first"),
]
TOL = 1e-5


def _inputs(layout, batch, heads, dim, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, layout.seq_len, dim, generator=g, dtype=dtype) for _ in range(4)]


def _grads(fn, q, k, v, grad_out):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    return torch.autograd.grad((fn(q, k, v) * grad_out).sum(), (q, k, v))


def _assert_close(got, ref, tol):
    for name, a, b in zip("qkv", got, ref):
        err = (a.double() - b.double()).abs().max().item()
        assert err < tol, (name, err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_split_gradients_match_float64_reference(case, dtype):
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    for k_ref in range(1, frames):
        q, k, v, g = _inputs(layout, 2, 3, 16, k_ref, dtype)
        mask = paper_mask(frames, tpf, nt, pos == "first", k_ref)
        ref = _grads(lambda *x: attention_f64(*x, mask), q, k, v, g)
        got = _grads(lambda *x: tile_attention(*x, layout, k_ref, kernel="split"), q, k, v, g)
        assert all(x.dtype == dtype for x in got)
        _assert_close(got, ref, TOL if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("pos", ["first", "last"])
def test_split_gradients_with_padded_text_match_float64_reference(pos):
    layout = TileLayout(5, 8, 6, pos)
    q, k, v, g = _inputs(layout, 3, 2, 8, 3)
    keep = torch.ones(3, layout.seq_len, dtype=torch.bool)
    text = torch.arange(layout.seq_len)[layout.text_slice]
    keep[1, text[-3:]] = False  # the second sample pads three text tokens, the third all of them
    keep[2, text] = False
    mask = paper_mask(5, 8, 6, pos == "first", 2)[None, None] & keep[:, None, None, :]
    ref = _grads(lambda *x: attention_f64(*x, mask), q, k, v, g)
    got = _grads(lambda *x: tile_attention(*x, layout, 2, key_padding_mask=keep, kernel="split"), q, k, v, g)
    _assert_close(got, ref, TOL)
    unpadded = _grads(lambda *x: tile_attention(*x, layout, 2, kernel="split"), q, k, v, g)
    assert (unpadded[1][1] - got[1][1]).abs().max() > 1e-3  # the padding changes the gradient


@pytest.mark.parametrize("chunks", [2, 4])
def test_split_gradients_with_chunked_global_queries(chunks):
    layout = TileLayout(6, 10, 4, "last")  # 64 keys: divisible by the chunk counts
    q, k, v, g = _inputs(layout, 2, 2, 8, 1)
    ref = _grads(lambda *x: attention_f64(*x, paper_mask(6, 10, 4, False, 2)), q, k, v, g)
    att = TileAttention("split", global_chunks=chunks)
    _assert_close(_grads(lambda *x: att(*x, layout, 2), q, k, v, g), ref, TOL)


def test_auto_trains_with_split_and_padding_on_video_falls_back_to_gathered():
    layout = TileLayout(5, 6, 3, "first")
    q, k, v, g = _inputs(layout, 2, 2, 8, 7)
    att = TileAttention(small_seq_len=0)  # not the small-shape kernels
    assert att.choose(layout, 2, q.device) == "split"  # grad enabled: split has an exact backward
    keep = torch.ones(2, layout.seq_len, dtype=torch.bool)
    keep[1, layout.video_slice.start + 2] = False  # a video token: split does not take it
    assert att.choose(layout, 2, q.device, keep) == "gathered"
    mask = paper_mask(5, 6, 3, True, 2)[None, None] & keep[:, None, None, :]
    ref = _grads(lambda *x: attention_f64(*x, mask), q, k, v, g)
    _assert_close(_grads(lambda *x: att(*x, layout, 2, key_padding_mask=keep), q, k, v, g), ref, TOL)


@pytest.mark.parametrize("head_dim", [3, 8])
def test_dense_backward_with_final_lse_matches_autograd(head_dim):
    """The building block: each key set's dense backward, given the *final* output and log-sum-exp of the rows,
    returns that set's share of the gradient of attention over the union (ring-attention identity)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, head_dim, generator=g, dtype=torch.float64) for n in (7, 11, 11))
    grad_out = torch.randn(2, 3, 7, head_dim, generator=g, dtype=torch.float64)
    ref = _grads(lambda a, b, c: attention_f64(a, b, c, scale=0.4), q, k, v, grad_out)
    for forward, backward in ((attention_with_lse, attention_backward), (attention_with_lse_math,
                                                                         attention_backward_math)):
        o1, l1 = forward(q, k[:, :, :4], v[:, :, :4], 0.4)
        o2, l2 = forward(q, k[:, :, 4:], v[:, :, 4:], 0.4)
        lse = torch.logaddexp(l1, l2)
        out = o1 * torch.exp(l1 - lse)[..., None] + o2 * torch.exp(l2 - lse)[..., None]
        g1 = backward(grad_out, q, k[:, :, :4], v[:, :, :4], out, lse, 0.4)
        g2 = backward(grad_out, q, k[:, :, 4:], v[:, :, 4:], out, lse, 0.4)
        got = (g1[0] + g2[0], torch.cat([g1[1], g2[1]], 2), torch.cat([g1[2], g2[2]], 2))
        _assert_close(got, ref, 1e-12)


# --- through whole tiny transformers ------------------------------------------------------------------------------

VIDEO = TinyVideo(frames=6, height=8, width=8, text_tokens=7, batch=2)


def _tile_mask(model, k):
    p = model.config.patch_size
    pt = getattr(model.config, "patch_size_t", None) or (p[0] if isinstance(p, (tuple, list)) else 1)
    ph = p[1] if isinstance(p, (tuple, list)) else p
    frames, tpf = VIDEO.frames // pt, (VIDEO.height // ph) * (VIDEO.width // ph)
    name = type(model).__name__
    num_text = 0 if name == "WanTransformer3DModel" else VIDEO.text_tokens
    return paper_mask(frames, tpf, num_text, name == "CogVideoXTransformer3DModel", k)


def _model_grads(model, inputs, seed=1):
    model.zero_grad(set_to_none=True)
    x = inputs["hidden_states"].detach().requires_grad_()
    out = model(**{**inputs, "hidden_states": x}).sample
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * g).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters() if p.grad is not None]


def _double(inputs):
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}


def _reference_and_split_grads(model, inputs, k_ref=2):
    """Gradients of the stock model with the tile mask given to float64 attention, then with a plan on split."""
    with masked_sdpa(_tile_mask(model, k_ref)):
        ref = _model_grads(model, inputs)
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), k_ref), kernel="split")
    try:
        return ref, _model_grads(model, inputs)
    finally:
        remove_mask_plan(model)


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video"])
def test_transformer_gradients_with_split_match_float64_masked_reference(family):
    model = tiny_transformer(family, num_layers=2).double().train()
    inputs = _double(tiny_inputs(model, VIDEO))  # HunyuanVideo: the last sample pads two text tokens
    ref, got = _reference_and_split_grads(model, inputs)
    assert len(got) == len(ref) > 2
    assert max((a - b).abs().max().item() for a, b in zip(got, ref)) < TOL
    dense = _model_grads(model, inputs)
    assert max((a - b).abs().max().item() for a, b in zip(dense, ref)) > 1e-4  # the mask changes the gradients


def test_hunyuan_video15_gradients_through_its_padded_text_match_masked_sdpa():
    """HunyuanVideo 1.5 pads its text with an outer-product mask: the processor fills the padded query rows from the
    model's own call after the tile kernel (in place, so into a copy when autograd saved the kernel's output, as
    split's backward does). Gradients with split equal those of one masked SDPA call (float64), padded rows
    included. (The float64 softmax reference of the test above gives NaN on rows whose keys are all masked.)"""
    model = tiny_transformer("hunyuan_video15", num_layers=2).double().train()
    inputs = _double(tiny_inputs(model, VIDEO))
    assert not bool(inputs["encoder_attention_mask"].bool().all())  # some text is padded
    grads = {}
    for kernel in ("masked", "split"):
        apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 2), kernel=kernel)
        try:
            grads[kernel] = _model_grads(model, inputs)
        finally:
            remove_mask_plan(model)
    assert len(grads["split"]) == len(grads["masked"]) > 2
    assert all(bool(torch.isfinite(g).all()) for g in grads["split"])
    assert max((a - b).abs().max().item() for a, b in zip(grads["split"], grads["masked"])) < TOL
    dense = _model_grads(model, inputs)
    assert max((a - b).abs().max().item() for a, b in zip(dense, grads["masked"])) > 1e-4


def test_gradient_checkpointing_and_bf16_autocast_train_with_split():
    model = tiny_transformer("wan", num_layers=2).train()
    inputs = tiny_inputs(model, VIDEO)
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 2))  # "auto": split, also under autograd
    try:
        plain = _model_grads(model, inputs)
        model.enable_gradient_checkpointing()
        checkpointed = _model_grads(model, inputs)
        model.disable_gradient_checkpointing()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = _model_grads(model, inputs)
        state = next(m.processor.state for m in model.modules() if hasattr(getattr(m, "processor", None), "state"))
        state.attention.kernel = "gathered"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed_gathered = _model_grads(model, inputs)
    finally:
        remove_mask_plan(model)
    assert max((a - b).abs().max().item() for a, b in zip(checkpointed, plain)) < 1e-6
    for a, b in zip(mixed, plain):  # bf16: the same gradients up to bf16 rounding
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        assert (a - b).norm() <= 0.05 * b.norm() + 1e-6
    for a, b in zip(mixed, mixed_gathered):  # and as close to another exact kernel's as bf16 allows
        assert (a - b).norm() <= 0.05 * b.norm() + 1e-6


def test_split_backward_compiles():
    layout = TileLayout(4, 8, 3, "last")
    q, k, v, g = _inputs(layout, 1, 2, 8, 2)
    att = TileAttention("split")

    def loss(q, k, v):
        return (att(q, k, v, layout, 1) * g).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    qc, kc, vc = (x.clone().requires_grad_() for x in (q, k, v))
    got = torch.autograd.grad(compiled(qc, kc, vc), (qc, kc, vc))
    ref = _grads(lambda *x: attention_f64(*x, paper_mask(4, 8, 3, False, 1)), q, k, v, g)
    _assert_close(got, ref, TOL)


# --- CUDA: the fused backward kernels (cuDNN for bf16/fp16, memory-efficient for fp32, math for odd head sizes) ---


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, head_dim, tol", [(torch.bfloat16, 64, 3e-2), (torch.float16, 128, 5e-3),
                                                  (torch.float32, 64, 2e-3), (torch.float32, 12, 2e-3)])
@pytest.mark.parametrize("case", [(6, 130, 17, "first"), (7, 96, 0, "none"), (5, 64, 30, "last")])
def test_split_gradients_on_cuda_match_float64_reference(case, dtype, head_dim, tol):
    frames, tpf, nt, pos = case
    layout = TileLayout(frames, tpf, nt, pos)
    q, k, v, g = (x.cuda() for x in _inputs(layout, 2, 4, head_dim, 0, dtype))
    keep = torch.ones(2, layout.seq_len, dtype=torch.bool, device="cuda")
    if nt:
        keep[1, torch.arange(layout.seq_len)[layout.text_slice][-5:]] = False
    mask = paper_mask(frames, tpf, nt, pos == "first", 2).cuda()[None, None] & keep[:, None, None, :]
    ref = _grads(lambda *x: attention_f64(*x, mask), q, k, v, g)
    got = _grads(lambda *x: tile_attention(*x, layout, 2, key_padding_mask=keep, kernel="split"), q, k, v, g)
    for a, b in zip(got, ref):
        assert a.dtype == dtype
        assert ((a.double() - b).norm() / b.norm()).item() < tol


@pytest.mark.gpu
def test_split_backward_compiles_with_inductor_on_cuda():
    layout = TileLayout(5, 64, 16, "last")
    q, k, v, g = (x.cuda() for x in _inputs(layout, 1, 2, 64, 3, torch.bfloat16))
    att = TileAttention("split")
    compiled = torch.compile(lambda q, k, v: (att(q, k, v, layout, 2) * g).sum(), fullgraph=True)
    qc, kc, vc = (x.clone().requires_grad_() for x in (q, k, v))
    got = torch.autograd.grad(compiled(qc, kc, vc), (qc, kc, vc))
    ref = _grads(lambda *x: attention_f64(*x, paper_mask(5, 64, 16, False, 2).cuda()), q, k, v, g)
    for a, b in zip(got, ref):
        assert ((a.double() - b).norm() / b.norm()).item() < 3e-2


def test_peft_lora_gradients_with_split_match_float64_masked_reference():
    from peft import LoraConfig

    model = tiny_transformer("wan", num_layers=2).double()
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    inputs = _double(tiny_inputs(model, VIDEO))
    ref, got = _reference_and_split_grads(model, inputs)
    trained = [name for name, p in model.named_parameters() if p.grad is not None]
    assert len(got) == len(ref) == len(trained) + 1 > 3 and all("lora_" in name for name in trained)
    assert max((a - b).abs().max().item() for a, b in zip(got, ref)) < TOL
