"""Distillation of Wan 2.2 TI2V-5B run text-to-video (``WanPipeline(expand_timesteps=True)``): the predictor's
per-token timesteps, the package's grid and the Wan 2.2 VAE's latent scale reproduce the pipeline's own sampling and
decoding; examples/train_mlcd.py and train_kd.py run on it and save students that keep ``expand_timesteps``.

In text-to-video the pipeline's per-token timestep is built from a mask of ones, so every token of a sample carries
the same ``t``: the Wan transformer computes the same function as with the scalar ``(B,)`` timestep, up to float
rounding (the time embedding runs on ``B * seq_len`` rows instead of ``B``). The tests below check both: the
per-token predictor passes the pipeline's own timestep tensor and reproduces its latents bit for bit at guidance 1,
and the scalar one agrees only to rounding.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import WanTransformer3DModel
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


def record_timesteps(transformer):
    """The ``timestep`` argument of every call of ``transformer`` (a list filled as it runs)."""
    seen = []
    transformer.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["timestep"].clone()),
                                          with_kwargs=True)
    return seen


def test_tiny_ti2v_pipeline_has_wan22_components():
    """The tiny TI2V pipeline is shaped as Wan2.2-TI2V-5B-Diffusers: expand_timesteps, a residual 2 x 2-patchified
    VAE with 48 latent channels and 16x spatial compression (non-trivial latents_mean / latents_std), a 48-channel
    transformer with (1, 2, 2) patches."""
    pipe = tiny_pipeline("wan", expand_timesteps=True)
    vae = pipe.vae.config
    assert pipe.config.expand_timesteps and pipe.config.boundary_ratio is None and pipe.transformer_2 is None
    assert (vae.z_dim, vae.is_residual, vae.patch_size, vae.in_channels, vae.scale_factor_spatial) == (48, True, 2,
                                                                                                       12, 16)
    assert (pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal) == (16, 4)
    assert len(set(vae.latents_mean)) > 1 and len(set(vae.latents_std)) > 1
    config = pipe.transformer.config
    assert (config.in_channels, config.out_channels, tuple(config.patch_size)) == (48, 48, (1, 2, 2))
    assert not tiny_pipeline("wan").config.expand_timesteps


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_predictor_and_grid_reproduce_the_pipelines_sampling(guidance):
    """N jumps of TransformerPredictor.from_pipeline on pipeline_grid give WanPipeline's own latents with
    expand_timesteps, and the transformer gets the pipeline's own per-token timestep tensor (B, F x H/2 x W/2)."""
    pipe = tiny_pipeline("wan", expand_timesteps=True)
    kw = tiny_pipeline_inputs(pipe, steps=3, size=64)  # 13 frames of 64 x 64: a 48 x 4 x 4 x 4 latent, 16 tokens
    noise = torch.randn(1, 48, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = record_timesteps(pipe.transformer)
    ref = pipe(**{**kw, "latents": noise.clone(), "guidance_scale": guidance}).frames
    pipe_timesteps = list(seen)
    seen.clear()
    assert ref.shape == noise.shape and len(pipe_timesteps) == 3 * (1 if guidance == 1.0 else 2)
    assert all(t.shape == (1, 16) for t in pipe_timesteps)

    cond = encode_prompts(pipe, [kw["prompt"]], max_sequence_length=8)
    uncond = encode_prompts(pipe, [""], max_sequence_length=8)
    predict = TransformerPredictor.from_pipeline(pipe)
    assert predict.expand_timesteps and predict.with_transformer(pipe.transformer).expand_timesteps
    grid = pipeline_grid(pipe, 3, 13, 64, 64)
    torch.testing.assert_close(grid.timesteps[:-1], pipe.scheduler.timesteps.float())
    with torch.no_grad():
        got = MLCDSchedule(grid, 3).sample(predict, noise, cond, uncond, guidance)
    ours = list(seen)
    seen.clear()
    # the pipeline calls cond and uncond one after the other (each (1, 16)); the predictor on a doubled batch
    expected = [t for i, t in enumerate(pipe_timesteps) if guidance == 1.0 or i % 2 == 0]
    assert len(ours) == 3 and all(torch.equal(o, t.expand(o.shape[0], -1)) for o, t in zip(ours, expected))
    if guidance == 1.0:  # the same calls on the same tensors: bit for bit
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    else:  # a doubled batch rounds differently
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

    # without per-token timesteps the transformer gets (B,) timesteps: in text-to-video (all tokens at t) the same
    # function, so the latents agree to rounding only
    scalar = TransformerPredictor.from_pipeline(pipe, expand_timesteps=False)
    with torch.no_grad():
        other = MLCDSchedule(grid, 3).sample(scalar, noise, cond, uncond, guidance)
    assert all(t.ndim == 1 for t in seen)
    torch.testing.assert_close(other, ref, rtol=1e-4, atol=1e-4)


def test_per_token_timesteps_of_a_batch_follow_each_sample():
    """Training batches carry one timestep per sample: each sample's output is the transformer called as WanPipeline
    calls it on that sample alone (its code: ``(mask[0][0][:, ::2, ::2] * t).flatten()`` expanded to (1, seq_len))."""
    pipe = tiny_pipeline("wan", expand_timesteps=True)
    predict = TransformerPredictor.from_pipeline(pipe)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 48, 3, 4, 6, generator=g)  # 3 x 2 x 3 tokens
    cond = {"encoder_hidden_states": torch.randn(2, 8, 16, generator=g)}
    timesteps = torch.tensor([900.0, 125.5])
    with torch.no_grad():
        got = predict(latents, timesteps, cond)
        for i, t in enumerate(timesteps):
            mask = torch.ones(latents[i:i + 1].shape)
            temp_ts = (mask[0][0][:, ::2, ::2] * t).flatten()
            ref = pipe.transformer(hidden_states=latents[i:i + 1], timestep=temp_ts.unsqueeze(0).expand(1, -1),
                                   encoder_hidden_states=cond["encoder_hidden_states"][i:i + 1],
                                   return_dict=False)[0]
            torch.testing.assert_close(got[i:i + 1], ref, rtol=1e-5, atol=1e-5)
        swapped = predict(latents, timesteps.flip(0), cond)  # the timesteps matter
    assert not torch.allclose(swapped, got, atol=1e-3)
    assert predict.wan_timestep(latents, timesteps).shape == (2, 18)
    with pytest.raises(NotImplementedError, match="expand_timesteps"):
        TransformerPredictor(tiny_pipeline("skyreels_v2").transformer, expand_timesteps=True)


def test_posteriors_are_in_the_scale_the_pipeline_decodes():
    """encode_video_posteriors is the inverse of WanPipeline's decoding with the Wan 2.2 VAE (48 channels, 16x,
    patchified pixels, random latents_mean / latents_std): its mean, and a draw with the VAE's own noise, decoded by
    the pipeline itself (a transformer predicting zero velocity leaves the latents as given) are what the VAE decodes
    from the raw posterior mean and sample."""
    pipe = tiny_pipeline("wan", expand_timesteps=True)
    vae = pipe.vae
    videos = SyntheticVideoDataset(1, num_frames=9, height=64, width=64)[0]["video"][None]
    with torch.no_grad():
        dist = vae.encode(videos).latent_dist
        raw = torch.cat([dist.mean, dist.sample(torch.Generator().manual_seed(1))])
        reference = pipe.video_processor.postprocess_video(vae.decode(raw).sample, output_type="pt")
    mean, std = encode_video_posteriors(pipe, videos)
    assert mean.shape == std.shape == dist.mean.shape == (1, 48, 3, 4, 4) and bool((std > 0).all())
    x0 = encode_videos(pipe, videos, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(encode_videos(pipe, videos, sample_posterior=False), mean)

    pipe.transformer.forward = lambda hidden_states, **kwargs: (torch.zeros_like(hidden_states),)
    call = dict(num_frames=9, height=64, width=64, num_inference_steps=1, guidance_scale=1.0, output_type="pt",
                max_sequence_length=8)
    decoded = pipe(prompt=["a dog", "a dog"], latents=torch.cat([mean, x0]), **call).frames
    torch.testing.assert_close(decoded, reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(AssertionError):  # the scale matters: unnormalised latents decode to something else
        torch.testing.assert_close(pipe(prompt="a dog", latents=dist.mean, **call).frames, reference[:1])


# ------------------------------------------------------------------------------------------- the example scripts


SIZE = ["--num_frames", 9, "--height", 64, "--width", 64, "--max_sequence_length", 8, "--report_to", "none",
        "--learning_rate", 1e-3, "--checkpointing_steps", 0, "--validation_steps", 0, "--no_final_validation",
        "--max_train_steps", 2]


@pytest.fixture
def transformer_calls(monkeypatch):
    """``(timestep shape, latent shape)`` of every WanTransformer3DModel call, whichever instance runs."""
    calls = []
    forward = WanTransformer3DModel.forward

    def recorded(self, hidden_states, timestep, *args, **kwargs):
        calls.append((tuple(timestep.shape), tuple(hidden_states.shape)))
        return forward(self, hidden_states, timestep, *args, **kwargs)

    monkeypatch.setattr(WanTransformer3DModel, "forward", recorded)
    return calls


def per_token(calls):
    """Whether every recorded call had a (B, seq_len) timestep, seq_len the tokens of its (1, 2, 2)-patched latent."""
    return bool(calls) and all(ts == (x[0], x[2] * (x[3] // 2) * (x[4] // 2)) for ts, x in calls)


def test_train_scripts_distil_a_ti2v_pipeline(tmp_path, transformer_calls):
    """Two MLCD steps on a (tiny) Wan 2.2 TI2V teacher train with the pipeline's per-token timesteps and save a
    student whose pipeline keeps expand_timesteps and samples in S = 2 steps on the teacher's milestones; two KD
    steps (diffusion task on the teacher, MLCD task on that student) do too and save sparse students with their
    plan."""
    teacher = tiny_pipeline("wan", expand_timesteps=True)
    teacher.save_pretrained(tmp_path / "teacher")
    teacher(prompt="a dog", num_frames=9, height=64, width=64, num_inference_steps=8, output_type="latent",
            max_sequence_length=8)
    teacher_timesteps = teacher.scheduler.timesteps.clone()
    transformer_calls.clear()

    mlcd = tmp_path / "mlcd"
    run = run_example("train_mlcd", ["--teacher", tmp_path / "teacher", *SIZE, "--teacher_steps", 8,
                                     "--num_segments", 2, "--train_batch_size", 2, "--seed", 3, "--output_dir", mlcd])
    assert len(run["losses"]) == 2 and all(math.isfinite(row["loss"]) for row in run["losses"])
    assert per_token(transformer_calls), transformer_calls[:3]
    assert {x[1:] for _, x in transformer_calls} == {(48, 3, 4, 4)}
    config = json.loads((mlcd / "mlcd_config.json").read_text())
    assert config["family"] == "wan" and config["milestones"] == [0, 4, 8]
    pipe = EfficientVDiTPipeline.from_pretrained(mlcd)
    assert pipe.config.expand_timesteps and pipe.scheduler.mlcd_num_steps == 2
    assert json.loads((mlcd / "model_index.json").read_text())["expand_timesteps"] is True
    transformer_calls.clear()
    kw = tiny_pipeline_inputs(pipe, num_frames=9, size=64)
    kw.pop("num_inference_steps")  # the pipeline's default must give S = 2 steps
    pipe(**kw, guidance_scale=1.0)
    assert len(transformer_calls) == 2 and per_token(transformer_calls)
    torch.testing.assert_close(pipe.scheduler.timesteps, teacher_timesteps[[0, 4]])

    common = ["--plan", "uniform:1", *SIZE, "--train_batch_size", 1, "--seed", 5]
    for teacher_folder, folder, task in ((tmp_path / "teacher", tmp_path / "kd", "diffusion"),
                                         (mlcd, tmp_path / "kd-mlcd", "mlcd")):
        transformer_calls.clear()
        run = run_example("train_kd", ["--teacher", teacher_folder, *common, "--output_dir", folder])
        assert run["task_loss"] == task and len(run["losses"]) == 2
        assert all(r["feature_loss"] > 0 and math.isfinite(r["loss"]) for r in run["losses"])
        assert per_token(transformer_calls), transformer_calls[:3]
        student = EfficientVDiTPipeline.from_pretrained(folder)
        assert student.mask_plan.layers == [1, 1] and student.config.expand_timesteps
    assert EfficientVDiTPipeline.from_pretrained(tmp_path / "kd-mlcd").scheduler.mlcd_num_steps == 2
