"""Every supported transformer class (``supported_models()``), on a tiny random config: exact dense plans, exact
``k:F-k`` plans against the stock forward with an explicit boolean tile mask in float64 SDPA, exact removal, and the
drop-in processor equal to ``apply_mask_plan``. Parametrised over the registry: a family cannot be added without
a tiny config, so without these tests."""

from __future__ import annotations

import contextlib

import pytest
import torch
from reference import paper_mask

from diffusers_evdit import (
    MaskPlan,
    TileSparseAttnProcessor,
    apply_mask_plan,
    get_mask_plan,
    num_plan_layers,
    remove_mask_plan,
    supported_models,
)
from diffusers_evdit.kernels.registry import UnsupportedKernelError
from diffusers_evdit.processors import family_for
from diffusers_evdit.tiny import TINY_MODELS, TinyVideo, tiny_inputs, tiny_transformer

TOL = 1e-5
VIDEO = TinyVideo(frames=4, height=4, width=4, text_tokens=5, batch=2)
CASES = sorted(TINY_MODELS)


def _video(name: str) -> TinyVideo:
    return TinyVideo(4, 4, 4, 5, 1) if TINY_MODELS[name].batch_one else VIDEO


def _run(model, inputs):
    with torch.no_grad():
        out = model(**inputs, return_dict=False)
    return out[0]


def _modules(model):
    return [(n, m) for n, m in model.named_modules() if n and hasattr(m, "processor")]


@contextlib.contextmanager
def tile_masked_sdpa(name: str, video: TinyVideo, k: int):
    """Inside the block every SDPA call runs in float64; a self-attention call over the video (query and key length
    at least the video tokens) gets the paper's k:F-k mask AND the caller's own mask, the extra tokens (length minus
    video tokens) placed first or last as the model puts its text."""
    spec = TINY_MODELS[name]
    pt, ph, pw = spec.patch
    frames, tokens = video.frames // pt, (video.height // ph) * (video.width // pw)
    original = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        n = query.shape[-2]
        device = query.device.type  # under autocast, SDPA casts its inputs and output to the autocast dtype
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
        if n == key.shape[-2] and n >= frames * tokens:
            calls.append(n)
            tile = paper_mask(frames, tokens, n - frames * tokens, spec.text_first, k).to(query.device)
            if attn_mask is None:
                attn_mask = tile
            elif attn_mask.dtype == torch.bool:
                attn_mask = attn_mask & tile
            else:
                attn_mask = attn_mask.masked_fill(~tile, float("-inf"))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.double()
        out = original(query.double(), key.double(), value.double(), attn_mask=attn_mask, dropout_p=dropout_p,
                       is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        return out.to(dtype)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield calls
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def test_every_supported_class_has_a_tiny_config():
    assert {spec.class_name for spec in TINY_MODELS.values()} == set(supported_models())
    assert len(supported_models()) >= 18


@pytest.fixture(scope="module", params=CASES)
def case(request):
    model = tiny_transformer(request.param, num_layers=2)
    inputs = tiny_inputs(model, _video(request.param))
    return request.param, model, inputs, _run(model, inputs)


def test_stock_processor_map_names_each_modules_own_processor(case):
    _, model, _, _ = case
    family = family_for(model)
    for name, module in _modules(model):
        assert type(family.stock_processor(name, module)) is type(module.processor), name


def test_dense_plan_reproduces_stock_forward(case):
    _, model, inputs, stock = case
    apply_mask_plan(model, MaskPlan.dense(num_plan_layers(model)))
    try:
        out = _run(model, inputs)
    finally:
        remove_mask_plan(model)
    assert (out - stock).abs().max().item() <= TOL


@pytest.mark.parametrize("k", [1, 2])
def test_tile_plan_equals_stock_forward_with_explicit_tile_mask(case, k):
    name, model, inputs, stock = case
    with tile_masked_sdpa(name, _video(name), k) as calls:
        reference = _run(model, inputs)
    assert calls, "no video self-attention reached SDPA"
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), k))
    try:
        out = _run(model, inputs)
    finally:
        remove_mask_plan(model)
    assert (out - reference).abs().max().item() <= TOL
    assert (out - stock).abs().max().item() > 1e-4  # the mask really changed the output


def test_tile_plan_under_bf16_autocast_equals_the_masked_stock_forward(case):
    """Mixed precision as the distillation scripts run it (``--mixed_precision bf16``: autocast): SDPA casts query,
    key and value to bfloat16 itself, so the processor must too; CogVideoX's and HunyuanVideo's RoPE hand it float32
    query and key beside a bfloat16 value. Against the stock forward under the same autocast with the tile mask."""
    name, model, inputs, _ = case
    _check_under_bf16_autocast(name, model, inputs, "cpu")


def _check_under_bf16_autocast(name, model, inputs, device, kernel="auto"):
    with torch.autocast(device, dtype=torch.bfloat16):
        stock = _run(model, inputs).float()
        with tile_masked_sdpa(name, _video(name), 1):
            reference = _run(model, inputs).float()
        apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1), kernel=kernel)
        try:
            out = _run(model, inputs).float()
        finally:
            remove_mask_plan(model)
    error = ((out - reference).norm() / reference.norm()).item()
    assert error < 0.01, error  # bf16 rounding; the mask itself moves the output 3x as far or more (below)
    assert ((stock - reference).norm() / reference.norm()).item() > 3 * error


def test_remove_restores_the_stock_output_exactly(case):
    _, model, inputs, stock = case
    before = {name: m.processor for name, m in _modules(model)}
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1))
    remove_mask_plan(model)
    assert {name: m.processor for name, m in _modules(model)} == before
    assert get_mask_plan(model) is None and not model._forward_pre_hooks
    assert torch.equal(_run(model, inputs), stock)


def test_drop_in_processor_equals_uniform_plan(case):
    """``set_attn_processor(TileSparseAttnProcessor(k=1))`` alone (or, for classes without ``AttentionMixin``, the
    same processor on every attention module), then a normal forward: the output of ``MaskPlan.uniform(L, 1)``, and
    every attention module that is not a video self-attention runs its stock processor class again."""
    _, model, inputs, _ = case
    stock_classes = {name: type(m.processor) for name, m in _modules(model)}
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1))
    planned = _run(model, inputs)
    remove_mask_plan(model)
    processor = TileSparseAttnProcessor(k=1)
    if hasattr(model, "set_attn_processor"):
        model.set_attn_processor(processor)
    else:
        for _, module in _modules(model):
            module.processor = processor
    try:
        assert torch.equal(_run(model, inputs), planned)
        video = {name for name, _ in family_for(model).attention_modules(model)}
        for name, module in _modules(model):
            if name in video:
                assert isinstance(module.processor, TileSparseAttnProcessor) and module.processor.k == 1
            else:
                assert type(module.processor) is stock_classes[name], name
        assert get_mask_plan(model).layers == [1] * num_plan_layers(model)
    finally:
        remove_mask_plan(model)
    assert {name: type(m.processor) for name, m in _modules(model)} == stock_classes


def test_readme_table_is_generated_from_the_registry():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("supported_models_doc", root / "docs" / "supported_models.py")
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    text = (root / "README.md").read_text(encoding="utf-8")
    assert doc.updated_readme(text) == text, "run python docs/supported_models.py"
    for name in supported_models():
        assert f"`{name}`" in doc.render()


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["split", "flex", "gathered"])
@pytest.mark.parametrize("name", CASES)
def test_every_family_on_cuda(name, kernel):
    """The same comparison on CUDA with each fast kernel (float32; float64 reference)."""
    model = tiny_transformer(name, num_layers=2).cuda()
    inputs = _cuda_inputs(model, name)
    with tile_masked_sdpa(name, _video(name), 1):
        reference = _run(model, inputs)
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1), kernel=kernel)
    try:
        out = _run(model, inputs)
    except UnsupportedKernelError as err:  # flex's declared constraint on CUDA; refused with the fix, not miscomputed
        head_dim = model.config.get("attention_head_dim")
        assert kernel == "flex" and (head_dim or 16) % 16 and "multiple of 16" in str(err), err
        pytest.skip(f"the tiny {name} has head_dim {head_dim}: flex refuses it on CUDA ({err})")
    assert (out - reference).abs().max().item() <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["split", "gathered"])
@pytest.mark.parametrize("name", CASES)
def test_every_family_under_bf16_autocast_on_cuda(name, kernel):
    """The bf16 autocast comparison above on CUDA, where the distillation scripts run mixed precision."""
    model = tiny_transformer(name, num_layers=2).cuda()
    _check_under_bf16_autocast(name, model, _cuda_inputs(model, name), "cuda", kernel)


def _cuda_inputs(model, name):
    inputs = {key: value.cuda() if torch.is_tensor(value) else value
              for key, value in tiny_inputs(model, _video(name)).items()}
    if isinstance(inputs.get("image_rotary_emb"), tuple):
        inputs["image_rotary_emb"] = tuple(t.cuda() for t in inputs["image_rotary_emb"])
    if isinstance(inputs.get("visual_rope_pos"), list):
        inputs["visual_rope_pos"] = [t.cuda() for t in inputs["visual_rope_pos"]]
    return inputs
