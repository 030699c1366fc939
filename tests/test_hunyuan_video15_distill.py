"""Distillation of HunyuanVideo 1.5 text-to-video (``HunyuanVideo15Pipeline``): the predictor (zero condition latents
and mask, zero image embeddings), the Qwen2.5-VL + ByT5 text conditioning, the guider's CFG scale, the latent scale
and the teacher grid reproduce the pipeline's own sampling and decoding; examples/train_mlcd.py and train_kd.py run
on it."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance
from example_scripts import run_example

from diffusers_evdit import EfficientVDiTPipeline
from diffusers_evdit.data import SyntheticVideoDataset
from diffusers_evdit.distill import predictors
from diffusers_evdit.mlcd import (
    MLCDSchedule,
    TransformerPredictor,
    encode_prompts,
    encode_video_posteriors,
    encode_videos,
    pipeline_grid,
    pipeline_guidance_scale,
)
from diffusers_evdit.tiny import tiny_pipeline, tiny_pipeline_inputs


@pytest.mark.parametrize("guider, scale", [
    (ClassifierFreeGuidance(guidance_scale=1.0), 1.0),  # guidance off: one conditional call a step
    (ClassifierFreeGuidance(guidance_scale=6.0), 6.0),  # the tiny pipeline's own guider
    (ClassifierFreeGuidance(guidance_scale=2.5, use_original_formulation=True), 3.5),  # cond + s (cond - uncond)
])
def test_predictor_and_grid_reproduce_the_pipelines_sampling(guider, scale, monkeypatch):
    """N jumps of TransformerPredictor on pipeline_grid, guided with pipeline_guidance_scale on a doubled batch, give
    HunyuanVideo15Pipeline's own latents (its guider calls cond and uncond separately): zero condition latents and
    mask, zero image embeddings, both text encoders and their masks, float timesteps, the pipeline's sigmas and
    shift. Another channel layout, or dropping the ByT5 glyph text, does not reproduce them."""
    pipe = tiny_pipeline("hunyuan_video15")
    pipe.guider = guider
    kw = tiny_pipeline_inputs(pipe, steps=3)  # 13 frames of 32 x 32: a 4 x 4 x 4 latent; a quoted glyph text
    noise = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = pipe(**{**kw, "latents": noise}).frames
    assert ref.shape == noise.shape

    cond, uncond = encode_prompts(pipe, [kw["prompt"]]), encode_prompts(pipe, [""])  # negative_prompt None: ""
    assert sorted(cond) == ["encoder_attention_mask", "encoder_attention_mask_2", "encoder_hidden_states",
                            "encoder_hidden_states_2"]
    assert 0 < cond["encoder_attention_mask_2"].sum() < cond["encoder_attention_mask_2"].numel()  # ByT5 ran
    assert pipeline_guidance_scale(pipe) == scale
    predict = TransformerPredictor.from_pipeline(pipe)
    grid = pipeline_grid(pipe, 3, 13, 32, 32)
    torch.testing.assert_close(grid.timesteps[:-1], pipe.scheduler.timesteps.float())  # the pipeline's own call
    schedule = MLCDSchedule(grid, 3)
    with torch.no_grad():
        torch.testing.assert_close(schedule.sample(predict, noise, cond, uncond, scale), ref, rtol=1e-5, atol=1e-5)
        if scale == 1.0:  # no glyph text: the ByT5 tokens are conditioning the predictor passes
            no_glyph = {**cond, "encoder_attention_mask_2": torch.zeros_like(cond["encoder_attention_mask_2"])}
            assert not torch.allclose(schedule.sample(predict, noise, no_glyph, uncond, scale), ref, atol=1e-3)
            with pytest.raises(TypeError, match="encoder_hidden_states_2"):
                predict(noise, grid.timesteps[:1], {"encoder_hidden_states": cond["encoder_hidden_states"],
                                                    "encoder_attention_mask": cond["encoder_attention_mask"]})
            layout = predictors.hunyuan_video15_inputs  # the latents in the condition slot too (I2V-like input)

            def wrong(module, latents):
                x, image = layout(module, latents)
                return torch.cat([latents, latents, x[:, -1:]], dim=1), image

            monkeypatch.setattr(predictors, "hunyuan_video15_inputs", wrong)
            assert not torch.allclose(schedule.sample(predict, noise, cond, uncond, scale), ref, atol=1e-3)


def test_guiders_the_teacher_cannot_reproduce_are_refused():
    """guidance_rescale and start / stop windows are not uncond + w (cond - uncond) at every step: refused; a
    disabled guider is w = 1."""
    pipe = tiny_pipeline("hunyuan_video15")
    for guider in (ClassifierFreeGuidance(guidance_rescale=0.7), ClassifierFreeGuidance(start=0.2)):
        pipe.guider = guider
        with pytest.raises(NotImplementedError, match="guidance_rescale > 0 or a start / stop window"):
            pipeline_guidance_scale(pipe)
    pipe.guider = ClassifierFreeGuidance(guidance_scale=6.0, enabled=False)
    assert pipeline_guidance_scale(pipe) == 1.0


def test_posteriors_are_in_the_scale_the_pipeline_decodes():
    """encode_video_posteriors is the inverse of HunyuanVideo15Pipeline's decoding (latents / scaling_factor): its
    mean, and a draw with the VAE's own noise, decoded by the pipeline itself (a transformer predicting zero
    velocity leaves the latents as given) are what the VAE decodes from the raw posterior mean and sample."""
    pipe = tiny_pipeline("hunyuan_video15")
    pipe.guider = pipe.guider.new(guidance_scale=1.0)
    vae = pipe.vae
    vae.register_to_config(scaling_factor=0.7)
    videos = SyntheticVideoDataset(1, num_frames=9, height=32, width=32)[0]["video"][None]
    with torch.no_grad():  # one clip at a time: diffusers' HunyuanVideo 1.5 VAE does not take batches (its mask)
        dist = vae.encode(videos).latent_dist
        raw = [dist.mean, dist.sample(torch.Generator().manual_seed(1))]
        reference = [pipe.video_processor.postprocess_video(vae.decode(z).sample, output_type="pt") for z in raw]
    mean, std = encode_video_posteriors(pipe, videos)
    assert mean.shape == std.shape == dist.mean.shape and bool((std > 0).all())
    x0 = encode_videos(pipe, videos, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(encode_videos(pipe, videos, sample_posterior=False), mean)

    pipe.transformer.forward = lambda hidden_states, **kwargs: (torch.zeros_like(hidden_states[:, :4]),)
    call = dict(prompt="a dog", num_frames=9, height=32, width=32, num_inference_steps=1, output_type="pt")
    for latents, expected in zip((mean, x0), reference):
        torch.testing.assert_close(pipe(latents=latents, **call).frames, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(AssertionError):  # the scale matters: unscaled latents decode to something else
        torch.testing.assert_close(pipe(latents=dist.mean, **call).frames, reference[0])


def test_posteriors_of_a_batch_are_those_of_each_clip():
    """diffusers' HunyuanVideo 1.5 VAE cannot encode a batch (its causal attention mask does not broadcast):
    encode_video_posteriors encodes the clips one at a time, each as alone."""
    pipe = tiny_pipeline("hunyuan_video15")
    videos = torch.rand(2, 3, 9, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.raises(RuntimeError):
        pipe.vae.encode(videos)
    mean, std = encode_video_posteriors(pipe, videos)
    for i in range(2):
        one = encode_video_posteriors(pipe, videos[i:i + 1])
        torch.testing.assert_close((mean[i:i + 1], std[i:i + 1]), one)


def test_frame_counts_and_clip_sizes_follow_the_vae():
    """The HunyuanVideo 1.5 VAE compresses time 4x (4k + 1 frames) and space by its spatial ratio (the tiny one 8x,
    16x released), the transformer patches 1x1."""
    from diffusers_evdit.mlcd import clip_size_error, num_frames_error

    pipe = tiny_pipeline("hunyuan_video15")
    assert num_frames_error(pipe, 13) is None and num_frames_error(pipe, 11).startswith("The video VAEs need 4k + 1")
    assert clip_size_error(pipe, 9, 32, 40) is None
    assert "multiples of 8 pixels (the VAE compresses 8x, the transformer patches 1x1), got 32x36" in clip_size_error(
        pipe, 9, 32, 36)


def test_validation_videos_put_the_guidance_on_the_guider():
    """The training scripts' validation videos of a guider pipeline: the scale goes onto the generating pipeline's
    guider (not the run's pipeline), arguments HunyuanVideo15Pipeline lacks (max_sequence_length) are dropped, and
    the video is the pipeline's own at that guidance."""
    from diffusers_evdit.distill.training import ValidationVideos

    pipe = tiny_pipeline("hunyuan_video15")
    accelerator = SimpleNamespace(autocast=lambda: torch.autocast("cpu", enabled=False), trackers=[])
    call = dict(num_frames=9, height=32, width=32, output_type="np")
    videos = ValidationVideos(pipe, accelerator, ["a dog"], "unused", {**call, "max_sequence_length": 8},
                              family="hunyuan_video15")
    got = videos.generate(pipe.transformer, pipe.scheduler, steps=1, guidance_scale=3.0, seed=0)
    assert pipe.guider.guidance_scale == 6.0
    pipe.guider = pipe.guider.new(guidance_scale=3.0)
    ref = pipe(prompt=["a dog"], negative_prompt=[""], num_inference_steps=1,
               generator=torch.Generator().manual_seed(0), **call).frames
    np.testing.assert_allclose(got, np.asarray(ref, dtype=np.float32), atol=1e-5)


def test_kd_captures_the_attention_and_both_mlps_of_every_hunyuan_video15_block():
    """KD on HunyuanVideo 1.5 through the predictor: each block's joint attention and its video and text MLPs (ff,
    ff_context) are captured; a dense student matches the teacher exactly, a sparse one differs in every layer."""
    from diffusers_evdit import MaskPlan
    from diffusers_evdit.kd import LayerOutputCapture, kd_layers, kd_loss, make_sparse_student

    pipe = tiny_pipeline("hunyuan_video15")
    teacher = pipe.transformer
    assert [(layer.attention_name, layer.mlp_names) for layer in kd_layers(teacher)] == [
        (f"transformer_blocks.{i}.attn", (f"transformer_blocks.{i}.ff", f"transformer_blocks.{i}.ff_context"))
        for i in range(2)]
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 4, 3, 4, 4, generator=g), torch.tensor([900.0, 300.0]),
              encode_prompts(pipe, ['a red panda by a sign that says "hi"', "a dog"]))
    teach = TransformerPredictor.from_pipeline(pipe)
    for plan, differs in ((MaskPlan.dense(2), False), (MaskPlan.uniform(2, k=1), True)):
        student = make_sparse_student(teacher, plan)
        with torch.no_grad(), LayerOutputCapture(student) as s_cap, LayerOutputCapture(teacher) as t_cap:
            out = kd_loss(teach.with_transformer(student), teach, inputs, student_capture=s_cap,
                          teacher_capture=t_cap, task="output")
        assert bool((out.attention_losses > 0).all()) == differs and bool((out.mlp_losses > 0).all()) == differs
        assert (out.task_loss > 0) == differs


# ------------------------------------------------------------------------------------------- the example scripts


SIZE = ["--num_frames", 9, "--height", 32, "--width", 32, "--report_to", "none", "--learning_rate", 1e-3,
        "--checkpointing_steps", 0, "--validation_steps", 0, "--no_final_validation", "--max_train_steps", 2,
        "--train_batch_size", 1]


def mlcd_student(tmp_path):
    """Two MLCD steps of examples/train_mlcd.py on the tiny HunyuanVideo 1.5 teacher: ``(run, folder)``."""
    mlcd = tmp_path / "mlcd"
    return run_example("train_mlcd", ["--teacher", "tiny:hunyuan_video15", *SIZE, "--teacher_steps", 4,
                                      "--num_segments", 2, "--seed", 3, "--output_dir", mlcd]), mlcd


def test_train_mlcd_distils_a_hunyuan_video15_pipeline(tmp_path):
    """Two MLCD steps on a (tiny) HunyuanVideo 1.5 teacher, guided by its guider's scale, save a student that loads
    and samples in S steps (its saved guider at 1: one call a step) on the teacher pipeline's own timesteps."""
    teacher = tiny_pipeline("hunyuan_video15")
    teacher(prompt="a dog", num_frames=9, height=32, width=32, num_inference_steps=4, output_type="latent")
    teacher_timesteps = teacher.scheduler.timesteps.clone()  # what HunyuanVideo15Pipeline itself samples on

    run, mlcd = mlcd_student(tmp_path)
    assert len(run["losses"]) == 2 and all(math.isfinite(row["loss"]) for row in run["losses"])
    config = json.loads((mlcd / "mlcd_config.json").read_text())
    assert config["family"] == "hunyuan_video15" and config["milestones"] == [0, 2, 4]
    assert config["teacher_guidance_scale"] == 6.0  # the guider's
    torch.testing.assert_close(torch.tensor(config["milestone_timesteps"]), teacher_timesteps[[0, 2]])
    pipe = EfficientVDiTPipeline.from_pretrained(mlcd)
    assert type(pipe.transformer).__name__ == "HunyuanVideo15Transformer3DModel"
    assert pipe.scheduler.mlcd_num_steps == 2 and pipe.generation_defaults.guidance_scale == 1.0
    assert pipe.guider.guidance_scale == 1.0  # saved without CFG: a plain call samples as distilled
    calls = []
    pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    kw = tiny_pipeline_inputs(pipe, num_frames=9)
    kw.pop("num_inference_steps")  # the pipeline's default (50 steps, its sigmas) must give S = 2 steps
    pipe(**kw)
    assert len(calls) == 2
    torch.testing.assert_close(pipe.scheduler.timesteps, teacher_timesteps[[0, 2]])


def test_train_kd_distils_a_hunyuan_video15_pipeline(tmp_path):
    """Two KD steps (diffusion task on the teacher, MLCD task on an MLCD student) save sparse students with their
    plan and the generation settings of each task (the teacher's guider scale; S steps)."""
    _, mlcd = mlcd_student(tmp_path)
    common = ["--plan", "uniform:1", *SIZE, "--seed", 5]
    diffusion = run_example("train_kd", ["--teacher", "tiny:hunyuan_video15", *common, "--output_dir",
                                         tmp_path / "kd"])
    few_step = run_example("train_kd", ["--teacher", mlcd, *common, "--output_dir", tmp_path / "kd-mlcd"])
    assert (diffusion["task_loss"], few_step["task_loss"]) == ("diffusion", "mlcd")
    for run, folder in ((diffusion, tmp_path / "kd"), (few_step, tmp_path / "kd-mlcd")):
        assert len(run["losses"]) == 2 and all(r["feature_loss"] > 0 and math.isfinite(r["loss"])
                                               for r in run["losses"])
        student = EfficientVDiTPipeline.from_pretrained(folder)
        assert student.mask_plan.layers == [1, 1]
        assert type(student.transformer).__name__ == "HunyuanVideo15Transformer3DModel"
    assert EfficientVDiTPipeline.from_pretrained(tmp_path / "kd").generation_defaults.guidance_scale == 6.0
    assert EfficientVDiTPipeline.from_pretrained(tmp_path / "kd-mlcd").scheduler.mlcd_num_steps == 2
