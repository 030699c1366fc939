"""The drop-in processor, per-call layouts (threads, shapes in turn), torch.compile, and the private things the
interception relies on (pinned here so that a torch or diffusers upgrade that changes them fails loudly)."""

from __future__ import annotations

import threading

import pytest
import torch

from diffusers_evdit import MaskPlan, TileSparseAttnProcessor, apply_mask_plan, num_plan_layers, remove_mask_plan
from diffusers_evdit.processors import FAMILIES, family_for
from diffusers_evdit.processors.base import model_mask_parts
from diffusers_evdit.processors.intercept import attention_call_names, intercepting_call
from diffusers_evdit.tiny import TINY_MODELS, TinyVideo, tiny_inputs, tiny_transformer

SMALL, LARGE = TinyVideo(frames=3, height=4, width=4, batch=1), TinyVideo(frames=5, height=8, width=4, batch=2)


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _fresh_output(family, video, k=1):
    model = apply_mask_plan(tiny_transformer(family), MaskPlan.uniform(2 if family != "hunyuan_video" else 4, k))
    return _run(model, tiny_inputs(model, video))


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_two_threads_inside_one_transformer_each_get_their_own_layout(family):
    """Both threads are inside the forward at once (a barrier in the first block): a layout shared between calls
    would give one of them the other's shape, and a running layer shared between them the other's plan entry."""
    plan = MaskPlan([1, None])
    model = apply_mask_plan(tiny_transformer(family), plan)
    expected = {video: _run(apply_mask_plan(tiny_transformer(family), plan), tiny_inputs(model, video))
                for video in (SMALL, LARGE)}
    barrier = threading.Barrier(2, timeout=30)
    first_block = (model.blocks if family == "wan" else model.transformer_blocks)[0]
    def wait_for_the_other_thread(module, args):
        barrier.wait()

    handle = first_block.register_forward_pre_hook(wait_for_the_other_thread)
    results, errors = {}, []

    def call(video):
        try:
            results[video] = _run(model, tiny_inputs(model, video))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=call, args=(video,)) for video in (SMALL, LARGE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handle.remove()
    assert not errors, errors
    for video in (SMALL, LARGE):
        assert torch.equal(results[video], expected[video])


def test_the_running_layer_is_kept_per_thread():
    """The shared intercepting call finds the running layer's processor in the state, per thread: another thread's
    layer never answers for this one."""
    model = apply_mask_plan(tiny_transformer("wan"), MaskPlan([1, None]))
    state = model._evdit_tile_state
    state.active_processor = "layer 0 of this thread"
    seen = []
    thread = threading.Thread(target=lambda: seen.append(state.active_processor))
    thread.start()
    thread.join()
    assert seen == [None] and state.active_processor == "layer 0 of this thread"


@pytest.mark.parametrize("family", ["wan", "hunyuan_video"])
def test_shapes_in_turn_cfg_batches_and_resolutions(family):
    model = apply_mask_plan(tiny_transformer(family), MaskPlan.uniform(num_plan_layers(tiny_transformer(family)), 1))
    for video in (LARGE, SMALL, TinyVideo(frames=5, height=8, width=4, batch=1), LARGE):
        assert torch.equal(_run(model, tiny_inputs(model, video)), _fresh_output(family, video))


def test_drop_in_on_a_second_thread_and_shape_after_binding():
    model = tiny_transformer("wan")
    model.set_attn_processor(TileSparseAttnProcessor(k=1))
    first = _run(model, tiny_inputs(model, LARGE))
    assert torch.equal(first, _fresh_output("wan", LARGE))
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("small", _run(model, tiny_inputs(model, SMALL))))
    thread.start()
    thread.join()
    assert torch.equal(out["small"], _fresh_output("wan", SMALL))


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video", "ltx_video"])
def test_plan_compiles_with_fullgraph_and_matches_eager(family):
    torch._dynamo.reset()
    model = tiny_transformer(family)
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1), kernel="gathered")
    inputs = tiny_inputs(model, TinyVideo(frames=4, height=4, width=4), padded_text=0)
    eager = _run(model, inputs)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert (_run(compiled, inputs) - eager).abs().max().item() <= 1e-6


def test_key_padding_check_does_not_break_a_fullgraph_graph():
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., -2:] = False

    def parts(m):
        padding, explicit = model_mask_parts(m, 2, 6)
        return padding.float().sum() if explicit is None else explicit.float().sum()

    torch._dynamo.reset()
    assert torch.compile(parts, backend="eager", fullgraph=True)(mask).item() == 10.0


def test_unbound_drop_in_under_compile_names_the_line_to_use():
    torch._dynamo.reset()
    model = tiny_transformer("wan")
    model.set_attn_processor(TileSparseAttnProcessor(k=1))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="apply_mask_plan"):
        _run(compiled, tiny_inputs(model, SMALL))


def test_drop_in_outside_a_transformer_call_names_the_line_to_use():
    model = tiny_transformer("wan")
    attn = model.blocks[0].attn1
    attn.set_processor(TileSparseAttnProcessor(k=1))
    with pytest.raises(RuntimeError, match=r"apply_mask_plan\(transformer, MaskPlan.uniform"):
        attn(torch.randn(1, 16, 24))


def test_family_subclass_refuses_another_family():
    from diffusers_evdit import CogVideoXTileSparseAttnProcessor

    model = tiny_transformer("wan")
    model.set_attn_processor(CogVideoXTileSparseAttnProcessor(k=1))
    with pytest.raises(TypeError, match="for cogvideox models, not WanTransformer3DModel"):
        _run(model, tiny_inputs(model, SMALL))


# ----------------------------------------------------------------------------------------- pinned private details


def test_every_video_self_attention_processor_reaches_an_interceptable_call():
    """Each family's stock video self-attention processor calls dispatch_attention_fn or F.sdpa through its module
    globals; the re-bound copy leaves the original function and module untouched."""
    seen = set()
    for name, spec in TINY_MODELS.items():
        if spec.class_name in seen:
            continue
        seen.add(spec.class_name)
        model = tiny_transformer(name, num_layers=1)
        for _, module in family_for(model).attention_modules(model):
            func = type(module.processor).__call__
            assert any(attention_call_names(func)), type(module.processor).__name__
            before = dict(func.__globals__)
            call = intercepting_call(module.processor, lambda *a, **k: None, lambda *a, **k: None)
            assert "__name__" not in call.__globals__ and "__package__" in call.__globals__
            assert func.__globals__ == before
    assert len(seen) == len(FAMILIES)


def test_torch_call_impl_frame_keeps_the_call_arguments():
    """The drop-in binding reads ``args`` / ``kwargs`` from torch's ``Module._call_impl`` frame."""
    import inspect

    from torch.nn import Module

    params = inspect.signature(Module._call_impl).parameters
    assert list(params)[:1] == ["self"] and "args" in params and "kwargs" in params


def test_remove_uses_the_hook_handle_and_leaves_other_hooks():
    model = tiny_transformer("wan")
    other = model.register_forward_pre_hook(lambda module, args: None)
    apply_mask_plan(model, MaskPlan.uniform(2, 1))
    apply_mask_plan(model, MaskPlan.uniform(2, 2))
    assert len(model._forward_pre_hooks) == 2
    remove_mask_plan(model)
    assert list(model._forward_pre_hooks) == [other.id]


def test_a_per_layer_plan_as_a_processor_dict():
    from diffusers_evdit.plan import mask_plan_processors

    model = tiny_transformer("hunyuan_video")
    plan = MaskPlan([1, None, 2, None])
    expected = _run(apply_mask_plan(tiny_transformer("hunyuan_video"), plan), tiny_inputs(model, LARGE))
    model.set_attn_processor(mask_plan_processors(model, plan))
    assert torch.equal(_run(model, tiny_inputs(model, LARGE)), expected)
    from diffusers_evdit import get_mask_plan

    assert get_mask_plan(model).layers == plan.layers
    with pytest.raises(ValueError, match="3 layers but HunyuanVideoTransformer3DModel has 4"):
        mask_plan_processors(model, MaskPlan([1, 1, 1]))


def test_a_deep_copy_made_after_a_forward_runs_its_own_processors():
    import copy

    model = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, 1))
    _run(model, tiny_inputs(model, LARGE))  # caches the intercepting calls
    twin = copy.deepcopy(model)
    apply_mask_plan(model, MaskPlan.uniform(2, 2))
    _run(model, tiny_inputs(model, LARGE))
    assert torch.equal(_run(twin, tiny_inputs(twin, SMALL)), _fresh_output("wan", SMALL, k=1))


def test_each_intercepting_call_has_code_objects_of_its_own():
    """torch.compile caches compiled frames per code object: copies must not share one (nor a nested def's) with
    the stock processor or with each other (regional compilation of one model, then another, relies on it)."""
    import types

    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    def codes(code):
        yield code
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                yield from codes(const)

    stock = list(codes(WanAttnProcessor.__call__.__code__))
    assert len(stock) > 1  # Wan's processor defines apply_rotary_emb inside __call__
    first, second = (list(codes(intercepting_call(WanAttnProcessor(), None, None).__code__)) for _ in range(2))
    assert not {id(c) for c in first} & ({id(c) for c in stock} | {id(c) for c in second})
    assert [c.co_code for c in first] == [c.co_code for c in stock]


def test_hunyuan_video15_padding_outer_product_runs_the_tile_kernels():
    """HunyuanVideo 1.5 builds a [B, 1, N, N] outer product of its text padding: it is recognised as key padding, so
    the tile kernels run (the float64 comparison in test_families.py checks the values, padded rows included)."""
    from diffusers_evdit.processors.base import outer_product_padding

    keep = torch.tensor([[True, True, True], [True, False, True]])
    assert torch.equal(outer_product_padding((keep[:, :, None] & keep[:, None, :])[:, None]), keep)
    causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    assert outer_product_padding(causal) is None
    model = tiny_transformer("hunyuan_video15")
    apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1))
    state = model._evdit_tile_state
    calls, kernel = [], state.attention

    def counted(q, k, v, layout, k_ref, key_padding_mask=None, **kwargs):
        calls.append(key_padding_mask is not None and not bool(key_padding_mask.all()))
        return kernel(q, k, v, layout, k_ref, key_padding_mask=key_padding_mask, **kwargs)

    state.attention = counted
    _run(model, tiny_inputs(model, TinyVideo(frames=4, height=4, width=4, text_tokens=5, batch=2), padded_text=2))
    assert calls == [True] * num_plan_layers(model)
