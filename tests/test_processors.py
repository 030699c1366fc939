"""Tile-sparse processors on tiny random configs of the real diffusers transformer classes."""

import pytest
import torch
from reference import masked_sdpa, paper_mask

from diffusers_evdit import MaskPlan, apply_mask_plan, get_mask_plan, num_plan_layers, remove_mask_plan
from diffusers_evdit.processors import TileSparseAttnProcessor, family_for
from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_transformer

FAMILIES = ["cogvideox", "wan", "hunyuan_video"]
VIDEO = TinyVideo(frames=6, height=8, width=8, text_tokens=7, batch=2)
TOL = 1e-5


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


def _tile_mask(model, video, k):
    """The explicit k:F-k mask of this model's self-attention sequence, from the paper's rule."""
    pt = getattr(model.config, "patch_size_t", None) or 1
    p = model.config.patch_size
    ph = p[1] if isinstance(p, (tuple, list)) else p
    frames, tpf = video.frames // pt, (video.height // ph) * (video.width // ph)
    name = type(model).__name__
    num_text = 0 if name == "WanTransformer3DModel" else video.text_tokens
    return paper_mask(frames, tpf, num_text, name == "CogVideoXTransformer3DModel", k)


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_transformer(request.param, num_layers=2)


def test_dense_plan_reproduces_stock_forward(model):
    inputs = tiny_inputs(model, VIDEO)
    stock = _run(model, inputs)
    apply_mask_plan(model, MaskPlan.dense(num_plan_layers(model)))
    try:
        assert all(isinstance(m.processor, TileSparseAttnProcessor) for _, m in family_for(model).attention_modules(model))
        assert (_run(model, inputs) - stock).abs().max().item() <= TOL
    finally:
        remove_mask_plan(model)


@pytest.mark.parametrize("kernel", ["gathered", "split", "flex"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_tile_plan_equals_masked_stock_forward(model, kernel, k):
    inputs = tiny_inputs(model, VIDEO)
    with masked_sdpa(_tile_mask(model, VIDEO, k)):
        reference = _run(model, inputs)
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), k), kernel=kernel)
    try:
        out = _run(model, inputs)
    finally:
        remove_mask_plan(model)
    assert (out - reference).abs().max().item() <= TOL
    assert (out - _run(model, inputs)).abs().max().item() > 1e-3  # the mask really changed the output


def test_mixed_plan_masks_only_its_layers(model):
    """Layer 0 sparse, the rest dense: the reference masks only the first self-attention call."""
    inputs = tiny_inputs(model, VIDEO)
    n = num_plan_layers(model)
    with masked_sdpa(_tile_mask(model, VIDEO, 1), per_call=[True] + [False] * (n - 1)) as calls:
        reference = _run(model, inputs)
    assert len(calls) == n
    apply_mask_plan(model, MaskPlan([1] + [None] * (n - 1)))
    try:
        assert get_mask_plan(model).layers == [1] + [None] * (n - 1)
        assert (_run(model, inputs) - reference).abs().max().item() <= TOL
    finally:
        remove_mask_plan(model)


def test_remove_restores_stock_processors_exactly(model):
    inputs = tiny_inputs(model, VIDEO)
    before = {name: p for name, p in model.attn_processors.items()}
    stock = _run(model, inputs)
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1))
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 2))  # re-apply replaces, keeps the originals
    remove_mask_plan(model)
    assert {name: p for name, p in model.attn_processors.items()} == before
    assert get_mask_plan(model) is None
    assert torch.equal(_run(model, inputs), stock)
    assert not model._forward_pre_hooks


def test_plan_layer_count_is_checked_and_nothing_changes(model):
    n = num_plan_layers(model)
    before = dict(model.attn_processors)
    with pytest.raises(ValueError, match=rf"{n + 1} layers but .* has {n} self-attention layers"):
        apply_mask_plan(model, MaskPlan.uniform(n + 1, 1))
    with pytest.raises(ValueError, match="made for"):
        apply_mask_plan(model, MaskPlan.uniform(n, 1, model_class="SomeOtherModel"))
    with pytest.raises(ValueError, match="Unknown tile-attention kernel"):
        apply_mask_plan(model, MaskPlan.uniform(n, 1), kernel="nope")
    assert dict(model.attn_processors) == before and not model._forward_pre_hooks


def test_unexplained_sequence_length_is_refused(model):
    """A layout that does not match the tokens reaching attention raises instead of masking the wrong pairs."""
    inputs = tiny_inputs(model, VIDEO)
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1))
    state = model._evdit_tile_state
    try:
        state.hook_handle.remove()  # simulate a layout from another input
        from diffusers_evdit.layout import TileLayout

        state.set_video_layout(TileLayout(3, 16), family_for(model).extra_tokens(model, (), inputs))
        with pytest.raises(ValueError, match="tokens, but the tile layout explains"):
            _run(model, inputs)
    finally:
        remove_mask_plan(model)


def test_hunyuan_padding_mask_still_applies():
    model = tiny_transformer("hunyuan_video")
    video = TinyVideo(frames=4, batch=2, text_tokens=7)
    padded = tiny_inputs(model, video, padded_text=3)
    unpadded = tiny_inputs(model, video, padded_text=0)
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1))
    out_p, out_u = _run(model, padded), _run(model, unpadded)
    # sample 0 has no padding in either (equal up to rounding: auto may pick another exact kernel for a padded batch)
    assert torch.allclose(out_p[0], out_u[0], atol=1e-5, rtol=1e-5)
    assert (out_p[1] - out_u[1]).abs().max() > 1e-4


def test_unsupported_transformer_lists_supported_ones():
    from diffusers import SD3Transformer2DModel

    other = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                  pooled_projection_dim=8, out_channels=4)
    with pytest.raises(TypeError, match="SD3Transformer2DModel is not supported.*CogVideoXTransformer3DModel"):
        apply_mask_plan(other, MaskPlan.uniform(1, 1))


def test_refused_video_transformer_names_the_reason():
    from diffusers import LatteTransformer3DModel

    latte = LatteTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                    num_layers=1, sample_size=8, patch_size=2, caption_channels=16,
                                    cross_attention_dim=16)
    with pytest.raises(TypeError, match="LatteTransformer3DModel is not supported by diffusers-evdit: factorised"):
        apply_mask_plan(latte, MaskPlan.uniform(1, 1))


def test_deepcopy_keeps_an_independent_working_plan():
    import copy

    model = tiny_transformer("wan")
    inputs = tiny_inputs(model, VIDEO)
    plan = MaskPlan.uniform(num_plan_layers(model), 1)
    plan.metadata["source"] = "test"
    apply_mask_plan(model, plan)
    twin = copy.deepcopy(model)
    assert torch.equal(_run(twin, inputs), _run(model, inputs))
    assert get_mask_plan(twin).metadata == {"source": "test"}
    remove_mask_plan(model)
    assert get_mask_plan(twin).layers == plan.layers  # the copy keeps its plan
    small = TinyVideo(frames=4, batch=1)
    _run(twin, tiny_inputs(twin, small))  # the copy's hook updates the copy's own layout
    assert twin._evdit_tile_state.video_layout.num_frames == 4
