"""The distillation scripts in bf16 mixed precision (``--mixed_precision bf16``: autocast), on the CPU and on CUDA
(skipped without a GPU): two MLCD steps, then two KD steps of the MLCD student under a sparse plan, for every family
distillation drives, on tiny random pipelines; the KD student then samples in bf16 on the same device. Plumbing
(tensors, dtypes, the sparse kernels' backward under autocast), not quality: random weights."""

from __future__ import annotations

import math

import pytest
import torch
from example_scripts import run_example
from test_ltx_distill import SIZE

from diffusers_evdit import EfficientVDiTPipeline
from diffusers_evdit.generation import call_arguments
from diffusers_evdit.tiny import tiny_pipeline, tiny_pipeline_inputs

TEACHERS = ["tiny:cogvideox", "tiny:wan", "tiny:hunyuan_video", "tiny:skyreels_v2", "tiny:ltx_video",
            "tiny:hunyuan_video15", "wan_ti2v"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("teacher", TEACHERS)
def test_mlcd_then_kd_in_bf16_mixed_precision(teacher, device, tmp_path, monkeypatch):
    if device == "cpu":
        monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # accelerate trains on the CPU even where CUDA is present
    if teacher == "wan_ti2v":  # Wan 2.2 TI2V-5B's layout (per-token timesteps, 16x VAE), from a saved folder
        tiny_pipeline("wan", expand_timesteps=True).save_pretrained(tmp_path / "teacher")
        teacher = tmp_path / "teacher"
    common = [*SIZE, "--mixed_precision", "bf16", *(["--allow_tf32"] if device == "cuda" else [])]
    mlcd = run_example("train_mlcd", ["--teacher", teacher, *common, "--teacher_steps", 8, "--num_segments", 2,
                                      "--train_batch_size", 2, "--output_dir", tmp_path / "mlcd"])
    assert len(mlcd["losses"]) == 2 and all(math.isfinite(row["loss"]) for row in mlcd["losses"])
    kd = run_example("train_kd", ["--teacher", tmp_path / "mlcd", "--plan", "uniform:1", *common,
                                  "--train_batch_size", 1, "--output_dir", tmp_path / "kd"])
    assert kd["task_loss"] == "mlcd" and len(kd["losses"]) == 2
    assert all(math.isfinite(row["loss"]) and row["feature_loss"] > 0 for row in kd["losses"])

    student = EfficientVDiTPipeline.from_pretrained(tmp_path / "kd", dtype=torch.bfloat16).to(device)
    assert student.scheduler.mlcd_num_steps == 2 and set(student.mask_plan.layers) == {1}
    kw = tiny_pipeline_inputs(student, num_frames=9)
    kw.pop("num_inference_steps")  # the student's own S steps
    latents = student(**call_arguments(student, {**kw, "guidance_scale": 1.0})).frames  # HV1.5: on its guider
    assert latents.device.type == device and bool(torch.isfinite(latents.float()).all())
