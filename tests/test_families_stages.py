"""The other stages on new families: greedy search and the pipeline's save / load round trip (LTX-Video, HunyuanVideo
1.5) on tiny random models."""

from __future__ import annotations

import pytest
import torch

from diffusers_evdit import EfficientVDiTPipeline, MaskPlan, apply_mask_plan, greedy_search, num_plan_layers
from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_pipeline, tiny_pipeline_inputs, tiny_transformer

VIDEO = TinyVideo(frames=4, height=4, width=4, text_tokens=5, batch=1)


def _mse_to_dense(model, plan, inputs) -> float:
    with torch.no_grad():
        dense = [model(**x, return_dict=False)[0] for x in inputs]
        apply_mask_plan(model, plan)
        try:
            sparse = [model(**x, return_dict=False)[0] for x in inputs]
        finally:
            from diffusers_evdit import remove_mask_plan

            remove_mask_plan(model)
    return max(float(((a - b) ** 2).mean()) for a, b in zip(dense, sparse))


@pytest.mark.parametrize("name", ["ltx_video", "hunyuan_video15"])
def test_greedy_search_on_new_families(name):
    model = tiny_transformer(name, num_layers=2)
    inputs = [tiny_inputs(model, VIDEO, seed=s) for s in range(2)]
    n = num_plan_layers(model)
    assert greedy_search(model, inputs, threshold=1e-30, progress=False).layers == [None] * n
    assert greedy_search(model, inputs, threshold=1e9, progress=False).layers == [1] * n
    sparsest = _mse_to_dense(model, MaskPlan.uniform(n, 1), inputs)
    threshold = sparsest * 0.5  # between "all dense" and "all 1:F-1": the search must stop somewhere in between
    cached = greedy_search(model, inputs, threshold=threshold, progress=False)
    full = greedy_search(model, inputs, threshold=threshold, progress=False, prefix_cache=False)
    assert cached.layers == full.layers
    assert _mse_to_dense(model, cached, inputs) < threshold


@pytest.mark.parametrize("name, transformer_class", [
    ("ltx_video", "LTXVideoTransformer3DModel"),
    # 1000 + 256 text and 729 (zero, masked) image tokens beside 64 video tokens; classifier-free guidance via a guider
    ("hunyuan_video15", "HunyuanVideo15Transformer3DModel"),
])
def test_pipeline_save_load_round_trip_on_new_families(tmp_path, name, transformer_class):
    base = tiny_pipeline(name)
    n = num_plan_layers(base.transformer)
    plan = MaskPlan([1] * (n - 1) + [None], metadata={"source": "test"})
    dense = base(**tiny_pipeline_inputs(base)).frames
    pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=plan)  # shares base's transformer
    out = pipe(**tiny_pipeline_inputs(pipe)).frames
    pipe.save_pretrained(tmp_path)
    loaded = EfficientVDiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.transformer).__name__ == transformer_class
    assert loaded.mask_plan == plan
    again = loaded(**tiny_pipeline_inputs(loaded)).frames
    assert torch.allclose(again, out, atol=1e-4, rtol=1e-4)  # weights re-read from safetensors: ~1e-6 rounding
    assert (out - dense).abs().max() > 1e-4  # the plan changed the output


def test_work_estimate_of_hunyuan_video15_counts_its_guider_calls_and_fixed_text_length():
    """``evdit generate``'s work line on a pipeline whose guidance is a component and whose text length is fixed:
    checked against the transformer calls of a real run and the text length they carry."""
    from diffusers_evdit.generation import estimate_work

    pipe = tiny_pipeline("hunyuan_video15")
    texts = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: texts.append(kwargs["encoder_hidden_states"].shape[1]), with_kwargs=True)
    call = tiny_pipeline_inputs(pipe)
    pipe(**call)
    work = estimate_work(pipe, {k: call[k] for k in ("num_frames", "height", "width", "num_inference_steps")})
    assert work.transformer_calls == len(texts) == 4  # 2 steps x (conditional + unconditional)
    assert work.text_tokens == texts[0] == 1000
    assert (work.latent_frames, work.tokens_per_frame) == (4, 16)


def test_work_estimate_of_ltx_video_reads_its_vae_compression():
    """LTX-Video's pipeline names its VAE factors ``vae_*_compression_ratio`` (the others ``vae_scale_factor_*``):
    the work line's tokens a call are those the transformer of a real run receives."""
    from diffusers_evdit.generation import estimate_work

    pipe = tiny_pipeline("ltx_video")
    tokens = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: tokens.append(kwargs["hidden_states"].shape[1]), with_kwargs=True)
    call = tiny_pipeline_inputs(pipe)
    pipe(**call, guidance_scale=1.0)
    work = estimate_work(pipe, {k: call[k] for k in ("num_frames", "height", "width", "num_inference_steps")})
    assert work.latent_frames * work.tokens_per_frame == tokens[0] == 4 * 8 * 8
    assert work.transformer_calls == len(tokens) == 2


def test_generate_guidance_scale_goes_onto_the_guider_of_hunyuan_video15(tmp_path, capsys):
    """``evdit generate --guidance-scale`` on a pipeline whose guidance is a component: the scale reaches the guider
    (1.0 turns classifier-free guidance off: one transformer call a step, as the work line says)."""
    from diffusers_evdit.cli import main
    from diffusers_evdit.generation import call_arguments, estimate_work, resolve_call

    pipe = tiny_pipeline("hunyuan_video15")
    settings, sources = resolve_call(pipe)
    assert (settings["guidance_scale"], sources["guidance_scale"]) == (6.0, "pipeline")
    settings = resolve_call(pipe, num_frames=13, height=32, width=32, num_inference_steps=2, guidance_scale=1.0)[0]
    call = call_arguments(pipe, settings)
    assert "guidance_scale" not in call and "fps" not in call and pipe.guider.guidance_scale == 1.0
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    pipe(prompt="a red panda", output_type="latent", **call)
    assert len(calls) == estimate_work(pipe, settings).transformer_calls == 2  # guidance off: one call a step

    EfficientVDiTPipeline.from_pipe(tiny_pipeline("hunyuan_video15")).save_pretrained(tmp_path / "model")
    argv = ["generate", "--model", str(tmp_path / "model"), "--prompt", "a red panda", "--frames", "13", "--height",
            "32", "--width", "32", "--steps", "2", "--out", str(tmp_path / "v.gif")]
    assert main([*argv, "--guidance-scale", "1.0"]) == 0
    printed = capsys.readouterr().out
    assert "guidance_scale=1.0 (flag)" in printed and "2 steps x 1 = 2 transformer calls" in printed
    assert main(argv) == 0
    assert "2 steps x 2 = 4 transformer calls" in capsys.readouterr().out
