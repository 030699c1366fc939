"""Distillation of LTX-Video text-to-video (``LTXPipeline``): the predictor, text conditioning, latent scale and
teacher grid reproduce the pipeline's own sampling and decoding; examples/train_mlcd.py and train_kd.py run on it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline
from example_scripts import run_example

from diffusers_evdit import EfficientVDiTPipeline
from diffusers_evdit.data import SyntheticVideoDataset
from diffusers_evdit.mlcd import (
    MLCDSchedule,
    TransformerPredictor,
    encode_prompts,
    encode_video_posteriors,
    encode_videos,
    pipeline_grid,
)
from diffusers_evdit.tiny import tiny_pipeline, tiny_pipeline_inputs


def ltx_scheduler():
    """LTX-Video's scheduler settings (as ComfyUI's LTXV scheduler defaults too): resolution-dependent (dynamic)
    shifting from 0.95 at 1024 latent tokens to 2.05 at 4096, stretched to end at 0.1."""
    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                           base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)


def unpacked(pipe, packed, frames, size):
    """Pipeline tokens ``(B, F H W, C)`` back to ``(B, C, F, H, W)`` latents (``output_type="latent"`` is packed)."""
    t, s = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
    return LTXPipeline._unpack_latents(packed, (frames - 1) // t + 1, size // s, size // s, 1, 1)


@pytest.mark.parametrize("scheduler", ["stock", "ltx"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_predictor_and_grid_reproduce_the_pipelines_sampling(scheduler, guidance):
    """N jumps of TransformerPredictor on pipeline_grid give LTXPipeline's own latents: token packing, text mask,
    RoPE scale, timesteps, the sigmas and (with dynamic shifting) mu the pipeline passes, CFG on a doubled batch."""
    pipe = tiny_pipeline("ltx_video")
    if scheduler == "ltx":
        pipe.scheduler = ltx_scheduler()
    kw = tiny_pipeline_inputs(pipe, steps=3)  # 13 frames of 32 x 32: a 4 x 8 x 8 latent
    noise = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = pipe(**{**kw, "latents": LTXPipeline._pack_latents(noise, 1, 1), "guidance_scale": guidance}).frames
    ref = unpacked(pipe, ref, 13, 32)
    assert ref.shape == noise.shape

    cond = encode_prompts(pipe, [kw["prompt"]], max_sequence_length=8)
    uncond = encode_prompts(pipe, [""], max_sequence_length=8)
    assert cond["encoder_attention_mask"].dtype == torch.bool and not bool(cond["encoder_attention_mask"].all())
    predict = TransformerPredictor.from_pipeline(pipe)
    grid = pipeline_grid(pipe, 3, 13, 32, 32)
    torch.testing.assert_close(grid.timesteps[:-1], pipe.scheduler.timesteps.float())  # the pipeline's own call
    with torch.no_grad():
        got = MLCDSchedule(grid, 3).sample(predict, noise, cond, uncond, guidance)
        torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-5)
        if scheduler == "ltx":  # the grid of another resolution (another mu) would not reproduce it
            other = MLCDSchedule(pipeline_grid(pipe, 3, 13, 64, 64), 3).sample(predict, noise, cond, uncond, guidance)
            assert not torch.allclose(other, ref, atol=1e-3)
        else:  # nor would the RoPE scale of another frame rate
            wrong = TransformerPredictor.from_pipeline(pipe, rope_interpolation_scale=(4 / 24, 4, 4))
            assert not torch.allclose(MLCDSchedule(grid, 3).sample(wrong, noise, cond, uncond, guidance), ref,
                                      atol=1e-3)


def test_posteriors_are_in_the_scale_the_pipeline_decodes():
    """encode_video_posteriors is the inverse of LTXPipeline's decoding: its mean, and a draw with the VAE's own
    noise, decoded by the pipeline itself (a transformer predicting zero velocity leaves the latents as given) are
    what the VAE decodes from the raw posterior mean and sample (non-trivial latents_mean / latents_std /
    scaling_factor)."""
    pipe = tiny_pipeline("ltx_video")
    vae = pipe.vae
    g = torch.Generator().manual_seed(0)
    vae.latents_mean.copy_(torch.randn(4, generator=g))
    vae.latents_std.copy_(torch.rand(4, generator=g) + 0.5)
    vae.register_to_config(scaling_factor=0.7)
    data = SyntheticVideoDataset(1, num_frames=9, height=32, width=32)
    videos = data[0]["video"][None]
    with torch.no_grad():
        dist = vae.encode(videos).latent_dist
        raw = torch.cat([dist.mean, dist.sample(torch.Generator().manual_seed(1))])
        reference = pipe.video_processor.postprocess_video(vae.decode(raw).sample, output_type="pt")
    mean, std = encode_video_posteriors(pipe, videos)
    assert mean.shape == std.shape == dist.mean.shape and bool((std > 0).all())
    x0 = encode_videos(pipe, videos, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(encode_videos(pipe, videos, sample_posterior=False), mean)

    pipe.transformer.forward = lambda hidden_states, **kwargs: (torch.zeros_like(hidden_states),)
    decoded = pipe(prompt=["a dog", "a dog"], latents=LTXPipeline._pack_latents(torch.cat([mean, x0]), 1, 1),
                   num_frames=9, height=32, width=32, num_inference_steps=1, guidance_scale=1.0, output_type="pt",
                   max_sequence_length=8).frames
    torch.testing.assert_close(decoded, reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(AssertionError):  # the scale matters: unnormalised latents decode to something else
        torch.testing.assert_close(pipe(prompt="a dog", latents=LTXPipeline._pack_latents(dist.mean, 1, 1),
                                        num_frames=9, height=32, width=32, num_inference_steps=1, guidance_scale=1.0,
                                        output_type="pt", max_sequence_length=8).frames, reference[:1])


def test_kd_captures_the_video_self_attention_and_mlp_of_every_ltx_block():
    """KD on LTX-Video through the predictor: each block's attn1 (not the text cross-attention attn2) and ff outputs
    are captured; a dense student matches the teacher exactly, a sparse one differs from the first layer on and its
    loss reaches every captured module."""
    from diffusers_evdit import MaskPlan
    from diffusers_evdit.kd import LayerOutputCapture, kd_layers, kd_loss, make_sparse_student

    pipe = tiny_pipeline("ltx_video")
    teacher = pipe.transformer
    assert [(layer.attention_name, layer.mlp_names) for layer in kd_layers(teacher)] == [
        (f"transformer_blocks.{i}.attn1", (f"transformer_blocks.{i}.ff",)) for i in range(2)]
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 4, 3, 8, 8, generator=g), torch.tensor([900.0, 300.0]),
              encode_prompts(pipe, ["a red panda", "a dog"], max_sequence_length=8))
    teach = TransformerPredictor.from_pipeline(pipe)
    for plan, differs in ((MaskPlan.dense(2), False), (MaskPlan.uniform(2, k=1), True)):
        student = make_sparse_student(teacher, plan)
        with LayerOutputCapture(student) as s_cap, LayerOutputCapture(teacher) as t_cap:
            out = kd_loss(teach.with_transformer(student), teach, inputs, student_capture=s_cap, teacher_capture=t_cap,
                          task="output")
        assert bool((out.attention_losses > 0).all()) == differs and bool((out.mlp_losses > 0).all()) == differs
        assert (out.task_loss > 0) == differs
    out.loss.backward()
    assert all(layer.attention.to_q.weight.grad is not None and layer.mlp[0].net[2].weight.grad is not None
               for layer in kd_layers(student))
    assert teacher.transformer_blocks[0].attn1.to_q.weight.grad is None


# ------------------------------------------------------------------------------------------- the example scripts


SIZE = ["--num_frames", 9, "--height", 32, "--width", 32, "--max_sequence_length", 8, "--report_to", "none",
        "--learning_rate", 1e-3, "--checkpointing_steps", 0, "--validation_steps", 0, "--no_final_validation",
        "--max_train_steps", 2]


def test_train_scripts_distil_an_ltx_video_pipeline(tmp_path):
    """Two MLCD steps on a (tiny) LTX-Video teacher with LTX-Video's dynamic-shifting scheduler save a student that
    loads and samples in S steps on the teacher pipeline's own timesteps for N steps at the training size; two KD
    steps (diffusion task on the teacher, MLCD task on that student) save sparse students with their plan."""
    teacher = tiny_pipeline("ltx_video")
    teacher.scheduler = ltx_scheduler()
    teacher.save_pretrained(tmp_path / "teacher")
    teacher(prompt="a dog", num_frames=9, height=32, width=32, num_inference_steps=8, output_type="latent",
            max_sequence_length=8)
    teacher_timesteps = teacher.scheduler.timesteps.clone()  # what LTXPipeline itself samples on (9 x 32 x 32)

    mlcd = tmp_path / "mlcd"
    run = run_example("train_mlcd", ["--teacher", tmp_path / "teacher", *SIZE, "--teacher_steps", 8,
                                     "--num_segments", 2, "--train_batch_size", 2, "--seed", 3, "--output_dir", mlcd])
    assert len(run["losses"]) == 2 and all(math.isfinite(row["loss"]) for row in run["losses"])
    config = json.loads((mlcd / "mlcd_config.json").read_text())
    assert config["family"] == "ltx_video" and config["milestones"] == [0, 4, 8]
    torch.testing.assert_close(torch.tensor(config["milestone_timesteps"]), teacher_timesteps[[0, 4]])
    pipe = EfficientVDiTPipeline.from_pretrained(mlcd)
    assert type(pipe.transformer).__name__ == "LTXVideoTransformer3DModel" and pipe.scheduler.mlcd_num_steps == 2
    calls = []
    pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    kw = tiny_pipeline_inputs(pipe, num_frames=9)
    kw.pop("num_inference_steps")  # the pipeline's default (50 steps, its sigmas and mu) must give S = 2 steps
    pipe(**kw, guidance_scale=1.0)
    assert len(calls) == 2
    torch.testing.assert_close(pipe.scheduler.timesteps, teacher_timesteps[[0, 4]])

    common = ["--plan", "uniform:1", *SIZE, "--train_batch_size", 1, "--seed", 5]
    diffusion = run_example("train_kd", ["--teacher", tmp_path / "teacher", *common, "--output_dir", tmp_path / "kd"])
    few_step = run_example("train_kd", ["--teacher", mlcd, *common, "--output_dir", tmp_path / "kd-mlcd"])
    assert (diffusion["task_loss"], few_step["task_loss"]) == ("diffusion", "mlcd")
    for run, folder in ((diffusion, tmp_path / "kd"), (few_step, tmp_path / "kd-mlcd")):
        assert len(run["losses"]) == 2 and all(r["feature_loss"] > 0 and math.isfinite(r["loss"])
                                               for r in run["losses"])
        student = EfficientVDiTPipeline.from_pretrained(folder)
        assert student.mask_plan.layers == [1, 1] and type(student.transformer).__name__ == "LTXVideoTransformer3DModel"
    assert EfficientVDiTPipeline.from_pretrained(tmp_path / "kd-mlcd").scheduler.mlcd_num_steps == 2


def test_frame_counts_follow_the_vae_temporal_compression():
    """LTX-Video's VAE compresses time by 8 (the tiny one by 4): clips need 8k + 1 frames there, 4k + 1 elsewhere,
    and the refusal names the nearest count below that works (the training scripts stop on it before training)."""
    from diffusers_evdit.mlcd import num_frames_error

    pipe = tiny_pipeline("ltx_video")
    assert num_frames_error(pipe, 13) is None and "4k + 1" in num_frames_error(pipe, 11)
    pipe.vae_temporal_compression_ratio = 8  # the released LTX-Video VAE's
    assert num_frames_error(pipe, 33) is None
    assert num_frames_error(pipe, 29) == "The video VAEs need 8k + 1 frames, got 29; use e.g. 25."
    assert num_frames_error(tiny_pipeline("wan"), 29) is None


def test_training_scripts_refuse_clips_that_are_not_whole_patches_before_training(tmp_path):
    """clip_size_error: heights and widths in whole transformer patches of the latent (the tiny LTX VAE compresses 4x,
    its transformer patches 1x1; Wan's 8x and 2x2); both scripts stop on it before training, naming the fix."""
    from diffusers_evdit.mlcd import clip_size_error

    ltx, wan = tiny_pipeline("ltx_video"), tiny_pipeline("wan")
    assert clip_size_error(ltx, 9, 32, 36) is None and clip_size_error(wan, 9, 32, 48) is None
    assert clip_size_error(wan, 9, 32, 40).endswith("multiples of 16 pixels (the VAE compresses 8x, the transformer "
                                                    "patches 2x2), got 32x40; use e.g. 32x32.")
    assert clip_size_error(wan, 11, 32, 40).startswith("The video VAEs need 4k + 1 frames")  # frames first
    size = [a if a != 32 else 30 for a in SIZE]  # --height 30 --width 30
    for script in ("train_mlcd", "train_kd"):
        extra = ["--plan", "uniform:1"] if script == "train_kd" else []
        with pytest.raises(SystemExit, match="multiples of 4 pixels .* got 30x30; use e.g. 28x28"):
            run_example(script, ["--teacher", "tiny:ltx_video", *size, *extra, "--output_dir", tmp_path / script])
        assert not (tmp_path / script / "model_index.json").exists()
