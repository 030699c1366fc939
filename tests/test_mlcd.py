"""MLCD (Stage 1): the DDIM jumps, the loss, the few-step schedulers and examples/train_mlcd.py on tiny pipelines
(the video-folder datasets the script reads: test_data.py)."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from example_scripts import import_script, run_example
from diffusers import (
    CogVideoXDDIMScheduler,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from diffusers_evdit import EfficientVDiTPipeline
from diffusers_evdit.data import SyntheticVideoDataset, save_video_folder
from diffusers_evdit.distill.common import call_default
from diffusers_evdit.mlcd import (
    DiffusionGrid,
    MLCDPoints,
    MLCDSchedule,
    TransformerPredictor,
    ddim_jump,
    draw_posterior,
    encode_prompts,
    encode_video_posteriors,
    encode_videos,
    guided_prediction,
    mlcd_loss,
    progressive_num_segments,
    segment_milestones,
)
from diffusers_evdit.schedulers import MLCDDDIMScheduler, MLCDFlowMatchEulerScheduler, stock_scheduler
from diffusers_evdit.tiny import tiny_pipeline, tiny_pipeline_inputs, tiny_transformer



def ddpm_scheduler(prediction_type: str):
    """CogVideoX-style noise schedule (SNR shift); zero terminal SNR only where the parameterisation allows it."""
    return CogVideoXDDIMScheduler(prediction_type=prediction_type, timestep_spacing="trailing", snr_shift_scale=3.0,
                                  rescale_betas_zero_snr=prediction_type == "v_prediction")


def oracle_output(prediction_type, x0, eps, alpha, sigma):
    """What a perfect model outputs at x_t = alpha x0 + sigma eps."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    return eps - x0  # flow velocity


# ------------------------------------------------------------------------------------------------- DDIM jumps


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow"])
def test_jump_with_true_prediction_lands_on_closed_form_noisy_sample(prediction_type):
    """A model predicting the true x0 / eps / v / velocity jumps exactly onto a(t_s) x0 + s(t_s) eps."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    if prediction_type == "flow":
        sigma_from, sigma_to = torch.tensor([0.9, 0.5, 1.0]), torch.tensor([0.3, 0.0, 0.75])
        a_t, s_t, a_s, s_s = 1 - sigma_from, sigma_from, 1 - sigma_to, sigma_to
    else:
        ac = ddpm_scheduler(prediction_type).alphas_cumprod.double()
        t, s = torch.tensor([900, 500, 120]), torch.tensor([400, 0, 119])
        a_t, s_t = ac[t].sqrt(), (1 - ac[t]).sqrt()
        a_s, s_s = ac[s].sqrt(), (1 - ac[s]).sqrt()
        a_s[1], s_s[1] = 1.0, 0.0  # the clean end (final_alpha_cumprod = 1)
    view = (-1, 1, 1, 1, 1)
    x_t = a_t.view(view) * x0 + s_t.view(view) * eps
    out = oracle_output(prediction_type, x0, eps, a_t.view(view), s_t.view(view))
    expected = a_s.view(view) * x0 + s_s.view(view) * eps
    got = ddim_jump(x_t, out, a_t, s_t, a_s, s_s, prediction_type)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-5)


def _grids():
    return {
        "cogvideox-v": (ddpm_scheduler("v_prediction"),
                        DiffusionGrid.from_scheduler(ddpm_scheduler("v_prediction"), 50)),
        "cogvideox-eps": (ddpm_scheduler("epsilon"), DiffusionGrid.from_scheduler(ddpm_scheduler("epsilon"), 50)),
        "ddim-eps": (DDIMScheduler(clip_sample=False),
                     DiffusionGrid.from_scheduler(DDIMScheduler(clip_sample=False), 50)),
        "flow": (FlowMatchEulerDiscreteScheduler(shift=3.0),
                 DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), 50)),
    }


@pytest.mark.parametrize("name", ["cogvideox-v", "cogvideox-eps", "ddim-eps", "flow"])
def test_grid_step_equals_the_teachers_own_scheduler_step(name):
    """One grid step is exactly the teacher's solver (DDIM eta=0 / flow-matching Euler) for any model output."""
    sched, grid = _grids()[name]
    sched.set_timesteps(50)
    assert grid.num_steps == 50
    assert grid.timesteps[:-1].tolist() == sched.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    for i in (0, 17, 49):
        x = torch.randn(2, 4, 3, 4, 4, generator=g)
        out = torch.randn(x.shape, generator=g)
        sched._step_index = None  # FlowMatch keeps a step index: look t up again
        ref = sched.step(out, sched.timesteps[i], x, return_dict=False)[0]
        got = grid.jump(x, out, torch.tensor([i, i]), torch.tensor([i + 1, i + 1]))
        torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-5)


def test_unipc_flow_teacher_grid_and_student_scheduler():
    """Wan checkpoints sample with UniPC on flow sigmas: the grid is its schedule, its first (order-1) step is the
    grid's Euler jump, and the student gets an Euler scheduler on the milestones."""
    base = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    grid = DiffusionGrid.from_scheduler(base, 20)
    base.set_timesteps(20)
    assert grid.prediction_type == "flow" and grid.timesteps[:-1].tolist() == base.timesteps.float().tolist()
    torch.testing.assert_close(grid.sigmas[:-1].float(), base.sigmas[:-1].float())
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    ref = base.step(out, base.timesteps[0], x, return_dict=False)[0]
    torch.testing.assert_close(grid.jump(x, out, torch.tensor([0]), torch.tensor([1])), ref, rtol=1e-4, atol=1e-4)
    sched = MLCDSchedule(grid, 4).inference_scheduler(base)
    assert isinstance(sched, MLCDFlowMatchEulerScheduler) and sched.config.shift == 3.0
    sched.set_timesteps(20)
    assert sched.timesteps.tolist() == grid.timesteps[[0, 5, 10, 15]].tolist()
    assert type(stock_scheduler(base)) is UniPCMultistepScheduler


def test_segments_points_and_progressive_schedule():
    assert segment_milestones(48, 8) == list(range(0, 49, 6))
    assert set(segment_milestones(48, 4)) <= set(segment_milestones(48, 8))  # progressive keeps milestones
    with pytest.raises(ValueError, match="larger than"):
        segment_milestones(4, 8)
    grid = _grids()["flow"][1]
    sched = MLCDSchedule(grid, 5, solver_steps=3)
    pts = sched.sample_points(4000, torch.Generator().manual_seed(0))
    e = torch.tensor(sched.milestones)
    assert torch.equal(pts.index_s, e[pts.segment + 1])
    assert bool(((e[pts.segment] <= pts.index_m) & (pts.index_m < pts.index_s)).all())
    assert torch.equal(pts.index_n, torch.minimum(pts.index_m + 3, pts.index_s))
    assert set(pts.segment.tolist()) == set(range(5)) and bool((pts.index_n == pts.index_s).any())
    assert [progressive_num_segments([16, 8, 4], p) for p in (0, 0.34, 0.67, 1.0)] == [16, 8, 4, 4]
    with pytest.raises(ValueError):
        progressive_num_segments([4, 8], 0.5)


# ---------------------------------------------------------------------------------------------------- the loss


class Linear5d(torch.nn.Module):
    """A tiny 'model' out = w * z + b(t) * cond, enough to test the loss plumbing exactly."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(4, generator=g) * 0.3)
        self.b = torch.nn.Parameter(torch.randn(4, generator=g) * 0.1)

    def forward(self, z, t, cond):
        scale = 1 + torch.as_tensor(t, dtype=torch.float32).view(-1, 1, 1, 1, 1) / 1000
        return self.w.view(1, -1, 1, 1, 1) * z + scale * self.b.view(1, -1, 1, 1, 1) * cond.view(-1, 1, 1, 1, 1)


def direct_mlcd_loss(kind, coefs, student, target, teacher, x0, eps, cond, uncond, w, m, n, s, huber_c=None):
    """The paper's formula written out per sample with explicit coefficients (float64), independent of mlcd.py."""
    a, sg, ts = coefs  # a(i), s(i), transformer timestep t(i) per grid index
    losses = []
    for b in range(x0.shape[0]):
        x0b, eb = x0[b: b + 1].double(), eps[b: b + 1].double()

        def jump(x, out, i, j):
            if kind == "flow":  # Euler on the velocity
                return x + (sg[j] - sg[i]) * out
            if kind == "v_prediction":
                x0h, eh = a[i] * x - sg[i] * out, sg[i] * x + a[i] * out
            else:
                eh = out
                x0h = (x - sg[i] * eh) / a[i]
            return a[j] * x0h + sg[j] * eh

        def call(f, x, i, c):
            return f(x.float(), ts[i].reshape(1), c[b: b + 1]).double()

        z_m = a[m[b]] * x0b + sg[m[b]] * eb
        with torch.no_grad():
            u_out, c_out = call(teacher, z_m, m[b], uncond), call(teacher, z_m, m[b], cond)
            z_n = jump(z_m, u_out + w * (c_out - u_out), m[b], n[b])
            tgt = z_n if n[b] == s[b] else jump(z_n, call(target, z_n, n[b], cond), n[b], s[b])
        pred = jump(z_m, call(student, z_m, m[b], cond), m[b], s[b])
        d = pred - tgt
        per = d.pow(2) if huber_c is None else torch.sqrt(d.pow(2) + huber_c**2) - huber_c
        losses.append(per.mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon", "flow"])
@pytest.mark.parametrize("huber", [False, True])
def test_loss_equals_direct_implementation_of_the_formula(kind, huber):
    if kind == "flow":
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        grid = DiffusionGrid.from_scheduler(sched, 12)
        sched.set_timesteps(12)
        sg = sched.sigmas.double()
        coefs = (1 - sg, sg, torch.cat([sched.timesteps, torch.zeros(1)]))
    else:
        sched = ddpm_scheduler(kind)
        grid = DiffusionGrid.from_scheduler(sched, 12)
        sched.set_timesteps(12)
        ac = torch.cat([sched.alphas_cumprod.double()[sched.timesteps], torch.ones(1, dtype=torch.float64)])
        coefs = (ac.sqrt(), (1 - ac).sqrt(), torch.cat([sched.timesteps, torch.tensor([-1])]))
    schedule = MLCDSchedule(grid, num_segments=3, solver_steps=2)
    # hand-picked points: mid-segment, one ending exactly on the milestone (boundary condition), first index
    m, n, s = torch.tensor([1, 6, 10, 8]), torch.tensor([3, 8, 12, 10]), torch.tensor([4, 8, 12, 12])
    points = MLCDPoints(torch.tensor([0, 1, 2, 2]), m, n, s)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 4, 2, 3, 3, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    cond, uncond = torch.tensor([1.0, -0.5, 2.0, 0.3]), torch.zeros(4)
    student, target, teacher = Linear5d(0), Linear5d(1), Linear5d(2)
    huber_c = 0.05 if huber else None
    out = mlcd_loss(student, target, teacher, x0, cond, schedule, uncond=uncond, guidance_scale=4.0, noise=eps,
                    points=points, loss_type="huber" if huber else "l2", huber_c=huber_c or 1e-3)
    ref = direct_mlcd_loss(kind, coefs, student, target, teacher, x0, eps, cond, uncond, 4.0, m.tolist(),
                           n.tolist(), s.tolist(), huber_c)
    torch.testing.assert_close(out.loss.double(), ref, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(out.target[1], out.z_tn[1])  # t_n == t_step^s: the target is z_tn itself
    out.loss.backward()
    assert student.w.grad is not None and target.w.grad is None and teacher.w.grad is None


def test_guidance_batched_equals_two_calls():
    f = Linear5d(0)
    z = torch.randn(3, 4, 2, 2, 2)
    t = torch.tensor([100, 200, 300])
    cond, uncond = torch.randn(3), torch.zeros(3)
    a = guided_prediction(f, z, t, cond, uncond, 5.0, batched=True)
    b = guided_prediction(f, z, t, cond, uncond, 5.0, batched=False)
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------- family adapters (tiny)


@pytest.mark.parametrize("family", ["cogvideox", "wan", "hunyuan_video", "skyreels_v2"])
def test_predictor_and_milestone_sampler_reproduce_the_pipeline(family):
    """S = N segments with TransformerPredictor + the grid give the pipeline's own latents (adapter kwargs right)."""
    pipe = tiny_pipeline(family)
    kw = tiny_pipeline_inputs(pipe, steps=2)
    noise = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = pipe(**{**kw, "latents": noise.clone()}).frames
    cond = encode_prompts(pipe, [kw["prompt"]], max_sequence_length=8, prompt_template=kw.get("prompt_template"))
    predict = TransformerPredictor.from_pipeline(pipe)
    if family == "hunyuan_video":  # the pipeline passes sigmas linspace(1, 0, N + 1)[:-1]; embedded guidance 6
        grid = DiffusionGrid.from_scheduler(pipe.scheduler, 2, sigmas=[1.0, 0.5])
        uncond, w = None, 1.0
    else:
        grid = DiffusionGrid.from_scheduler(pipe.scheduler, 2)
        uncond, w = encode_prompts(pipe, [""], max_sequence_length=8), call_default(pipe, "guidance_scale")
    got = MLCDSchedule(grid, 2).sample(predict, noise, cond, uncond, w)
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-4 if family == "cogvideox" else 1e-5)


@pytest.mark.parametrize("family", ["wan", "cogvideox", "skyreels_v2"])
def test_cached_posteriors_give_the_latents_of_the_vae(family):
    """encode_video_posteriors is the VAE posterior in the transformer's layout and scale (reference: the VAE's own
    DiagonalGaussianDistribution and the pipelines' normalisation, written out here), and --cache_latents' LatentCache
    runs the VAE once per clip while drawing a fresh posterior sample on every call."""
    pipe = tiny_pipeline(family)
    data = SyntheticVideoDataset(3, num_frames=9, height=32, width=32)
    videos = torch.stack([data[i]["video"] for i in range(3)])
    dist = pipe.vae.encode(videos).latent_dist
    z = dist.sample(torch.Generator().manual_seed(1))
    cfg = pipe.vae.config
    if family != "cogvideox":  # Wan's VAE (SkyReels-V2 too)
        shift = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        scale = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
        ref_mean, ref_x0 = (dist.mean - shift) / scale, (z - shift) / scale
    else:  # CogVideoX: scaled, frames before channels
        ref_mean = (dist.mean * cfg.scaling_factor).permute(0, 2, 1, 3, 4)
        ref_x0 = None  # the noise is drawn in the transformer's layout, so only the distribution matches
    mean, std = encode_video_posteriors(pipe, videos)
    torch.testing.assert_close(mean, ref_mean)
    assert bool((std > 0).all())
    x0 = encode_videos(pipe, videos, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x0, draw_posterior(mean, std, torch.Generator().manual_seed(1)))
    if ref_x0 is not None:
        torch.testing.assert_close(x0, ref_x0)
    torch.testing.assert_close(encode_videos(pipe, videos, sample_posterior=False), mean)

    from diffusers_evdit.distill.training_data import LatentCache

    calls = []
    encode = pipe.vae.encode
    pipe.vae.encode = lambda x: calls.append(x.shape[0]) or encode(x)
    cache = LatentCache(pipe, enabled=True, num_items=len(data))
    batch = {"video": videos[:2], "index": [0, 1]}
    first = cache.latents(batch, torch.Generator().manual_seed(2))
    again = cache.latents(batch, torch.Generator().manual_seed(2))
    fresh = cache.latents(batch, torch.Generator().manual_seed(3))
    mixed = cache.latents({"video": videos[1:], "index": [1, 2]}, torch.Generator().manual_seed(4))
    assert calls == [2, 1]  # clips 0 and 1 once, then only the new clip 2
    torch.testing.assert_close(first, draw_posterior(mean[:2], std[:2], torch.Generator().manual_seed(2)))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, fresh)
    torch.testing.assert_close(mixed, draw_posterior(mean[1:], std[1:], torch.Generator().manual_seed(4)))
    off = LatentCache(pipe, enabled=False, num_items=len(data))
    torch.testing.assert_close(off.latents(batch, torch.Generator().manual_seed(2)), first)
    assert calls == [2, 1, 2]


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_one_training_step_decreases_the_loss_on_a_fixed_batch(family):
    pipe = tiny_pipeline(family)
    data = SyntheticVideoDataset(2, num_frames=9, height=32, width=32)
    videos = torch.stack([data[i]["video"] for i in range(2)])
    x0 = encode_videos(pipe, videos, generator=torch.Generator().manual_seed(0)).float()
    cond = encode_prompts(pipe, [data[i]["caption"] for i in range(2)], max_sequence_length=8)
    uncond = encode_prompts(pipe, ["", ""], max_sequence_length=8)
    teacher = copy.deepcopy(pipe.transformer).requires_grad_(False)
    target = copy.deepcopy(pipe.transformer).requires_grad_(False)
    student = pipe.transformer.train().requires_grad_(True)
    predict = TransformerPredictor.from_pipeline(pipe)
    grid = DiffusionGrid.from_scheduler(pipe.scheduler, 8)
    schedule = MLCDSchedule(grid, 2)
    points = schedule.sample_points(2, torch.Generator().manual_seed(5))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(6))

    def loss():
        return mlcd_loss(predict.with_transformer(student), predict.with_transformer(target),
                         predict.with_transformer(teacher), x0, cond, schedule, uncond=uncond, guidance_scale=5.0,
                         noise=noise, points=points).loss

    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    before = loss()
    before.backward()
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = loss()
    assert after < before * 0.999, (before.item(), after.item())


# ---------------------------------------------------------------------------------------- few-step schedulers


@pytest.mark.parametrize("name", ["cogvideox-v", "flow"])
def test_inference_scheduler_steps_through_the_milestones(name, tmp_path):
    base, grid = _grids()[name]
    schedule = MLCDSchedule(grid, 4)
    sched = schedule.inference_scheduler(base)
    assert isinstance(sched, MLCDFlowMatchEulerScheduler if name == "flow" else MLCDDDIMScheduler)
    sched.save_pretrained(tmp_path)
    sched = type(sched).from_pretrained(tmp_path)
    sched.set_timesteps(50)  # the pipeline default is ignored: S milestones
    assert sched.timesteps.tolist() == schedule.milestone_timesteps().tolist()
    predict = Linear5d(0)
    noise = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    cond = torch.ones(1)
    x = noise.clone()
    for t in sched.timesteps:
        x = sched.step(predict(x, t.reshape(1), cond), t, x, return_dict=False)[0]
    torch.testing.assert_close(x, schedule.sample(predict, noise, cond), rtol=1e-5, atol=1e-5)
    # the stock behaviour and the teacher's class come back from the same config
    sched.register_to_config(use_mlcd_steps=False)
    sched.set_timesteps(10)
    assert len(sched.timesteps) == 10
    assert type(stock_scheduler(sched)).__name__ in ("FlowMatchEulerDiscreteScheduler", "CogVideoXDDIMScheduler")


# ------------------------------------------------------------------------------------- the training script


def run_script(args):
    return run_example("train_mlcd", args)


TINY_ARGS = ["--num_frames", 9, "--height", 32, "--width", 32, "--teacher_steps", 8, "--max_sequence_length", 8,
             "--train_batch_size", 2, "--learning_rate", 1e-3, "--report_to", "none", "--seed", 3]


def test_train_script_resume_is_exact_and_the_folder_samples_in_s_steps(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--teacher", "tiny:wan", *TINY_ARGS, "--progressive_segments", "4,2", "--max_train_steps", 3,
              "--ema_decay", 0.9, "--gradient_accumulation_steps", 2]
    run_a = run_script([*common, "--output_dir", a, "--checkpointing_steps", 2, "--checkpoints_total_limit", 1,
                        "--validation_steps", 2, "--eval_prompts", 2])
    assert [r["num_segments"] for r in run_a["losses"]] == [4, 4, 2]
    assert sorted(p.name for p in a.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (a / "validation" / "student-S4-step000002-0.gif").is_file()
    assert (a / "validation" / "student-S2-step000003-1.gif").is_file()
    rows = json.loads((a / "eval.json").read_text())["rows"]
    assert [(r["name"], r["steps"]) for r in rows] == [("MLCD", 2), ("Teacher", 2), ("Base", 50)]
    assert all(0 <= r["final_score"] <= 1 for r in rows)
    generation = json.loads((a / "evdit_demo.json").read_text())
    assert generation["num_inference_steps"] == 2 and generation["guidance_scale"] == 1.0
    defaults = json.loads((a / "generation_defaults.json").read_text())  # the same values, none left null
    assert {k: defaults[k] for k in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale")} == {
        "num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 2, "guidance_scale": 1.0}
    # a teacher folder that records its settings only in generation_defaults.json is read too
    from diffusers_evdit.distill.training import generation_settings_of

    (a / "evdit_demo.json").rename(a / "legacy.json")
    assert generation_settings_of(str(a))["num_frames"] == 9
    (a / "legacy.json").rename(a / "evdit_demo.json")
    b.mkdir()
    shutil.copytree(a / "checkpoint-2", b / "checkpoint-2")
    run_b = run_script([*common, "--output_dir", b, "--resume_from_checkpoint", "latest",
                        "--checkpointing_steps", 0, "--validation_steps", 0, "--no_final_validation"])
    assert [r["step"] for r in run_b["losses"]] == [3]
    assert run_b["losses"][0]["loss"] == run_a["losses"][2]["loss"]  # bit-identical next-step loss
    sa = DiffusionPipeline.from_pretrained(a).transformer.state_dict()
    sb = DiffusionPipeline.from_pretrained(b).transformer.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    pipe = EfficientVDiTPipeline.from_pretrained(a)
    assert isinstance(pipe.scheduler, MLCDFlowMatchEulerScheduler) and pipe.scheduler.mlcd_num_steps == 2
    config = json.loads((a / "mlcd_config.json").read_text())
    assert config["num_segments"] == 2 and config["steps"] == 3 and "MLCD few-step" in (a / "README.md").read_text()
    calls = []
    pipe.transformer.register_forward_hook(lambda *args: calls.append(1))
    kw = tiny_pipeline_inputs(pipe)
    kw["num_inference_steps"] = 50  # any step count asked for gives S = 2 steps
    pipe(**kw, guidance_scale=1.0)
    assert len(calls) == 2


def test_train_script_saves_the_student_before_the_evaluation(tmp_path, monkeypatch):
    """An evaluation that outlasts the budget's reserve (a CPU run) and is stopped leaves the trained student."""
    script = import_script("train_mlcd")

    def stopped(*args, **kwargs):
        assert (tmp_path / "out" / "model_index.json").is_file() and (tmp_path / "out" / "mlcd_config.json").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "evaluate", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_script(["--teacher", "tiny:wan", *TINY_ARGS, "--num_segments", 2, "--max_train_steps", 1,
                    "--output_dir", tmp_path / "out", "--checkpointing_steps", 0, "--validation_steps", 0,
                    "--no_final_validation", "--eval_prompts", 2])
    assert EfficientVDiTPipeline.from_pretrained(tmp_path / "out").scheduler.mlcd_num_steps == 2


def test_train_script_snapshot_is_the_shorter_run_and_leaves_training_unchanged(tmp_path):
    """--snapshot_steps 2 of a 3-step run saves what a 2-step run saves, and the run ends as one without snapshots."""
    common = ["--teacher", "tiny:wan", *TINY_ARGS, "--num_segments", 2, "--checkpointing_steps", 0,
              "--validation_steps", 0, "--no_final_validation"]
    run_script([*common, "--max_train_steps", 2, "--output_dir", tmp_path / "two"])
    run_script([*common, "--max_train_steps", 3, "--output_dir", tmp_path / "three"])
    snapped = run_script([*common, "--max_train_steps", 3, "--output_dir", tmp_path / "snap", "--snapshot_steps", 2, 3])

    def weights(folder):
        return DiffusionPipeline.from_pretrained(folder).transformer.state_dict()

    assert sorted(p.name for p in (tmp_path / "snap").glob("snapshot-*")) == ["snapshot-2"]  # step 3 is the final
    for snapshot, reference in (("snap/snapshot-2", "two"), ("snap", "three")):
        got, want = weights(tmp_path / snapshot), weights(tmp_path / reference)
        assert all(torch.equal(got[k], want[k]) for k in want), snapshot
    assert len(snapped["losses"]) == 3
    pipe = EfficientVDiTPipeline.from_pretrained(tmp_path / "snap" / "snapshot-2")
    assert pipe.scheduler.mlcd_num_steps == 2
    assert json.loads((tmp_path / "snap" / "snapshot-2" / "evdit_demo.json").read_text())["num_inference_steps"] == 2
    record = json.loads((tmp_path / "snap" / "snapshot-2" / "mlcd_config.json").read_text())  # train_kd.py reads it
    assert record["steps"] == 2 and record["num_segments"] == 2


def test_train_script_lora_on_a_video_folder(tmp_path):
    folder = save_video_folder(SyntheticVideoDataset(4, num_frames=9, height=32, width=32), tmp_path / "data")
    out = tmp_path / "out"
    run = run_script(["--teacher", "tiny:cogvideox", *TINY_ARGS, "--dataset", folder, "--num_segments", 2,
                      "--max_train_steps", 2, "--use_lora", "--lora_rank", 4, "--output_dir", out,
                      "--checkpointing_steps", 0, "--validation_steps", 0, "--save_weights", "ema"])
    assert len(run["losses"]) == 2 and all(np.isfinite(r["loss"]) for r in run["losses"])
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    pipe = EfficientVDiTPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, MLCDDDIMScheduler) and pipe.scheduler.mlcd_num_steps == 2
    teacher = tiny_pipeline("cogvideox").transformer.state_dict()
    student = pipe.transformer.state_dict()
    assert set(student) == set(teacher)  # LoRA fused and unloaded: plain transformer weights
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)
    frames = pipe(**tiny_pipeline_inputs(pipe), guidance_scale=1.0).frames
    assert torch.isfinite(frames).all()


def test_mlcd_table_scores_students_against_the_teacher_on_the_same_prompts(tmp_path):
    """benchmarks/mlcd_table.py: one row per (model, steps), the checks computed from the rows, --reuse verified."""
    from diffusers_evdit.demo import GenerationConfig, build_demo_pipeline

    teacher = tmp_path / "teacher"
    build_demo_pipeline("tiny").save_pretrained(teacher)
    GenerationConfig(num_frames=9, height=32, width=32, num_inference_steps=4, guidance_scale=2.0,
                     max_sequence_length=8).save(teacher)
    student = tmp_path / "student"
    run_script(["--teacher", teacher, "--num_segments", 2, "--max_train_steps", 1, "--train_batch_size", 2,
                "--report_to", "none", "--output_dir", student, "--checkpointing_steps", 0,
                "--validation_steps", 0, "--no_final_validation"])
    mlcd_table = import_script("mlcd_table")
    out = tmp_path / "res" / "mlcd.json"
    common = ["--teacher", str(teacher), "--students", str(student), "--prompts", "2", "--device", "cpu",
              "--out", str(out)]
    result = mlcd_table.main(common)
    rows = {r["name"]: r for r in result["rows"]}
    assert [(r["name"], r["steps"], r["transformer_calls"]) for r in result["rows"]] == [
        ("Teacher", 4, 8), ("Teacher_S=2", 2, 4), ("MLCD_S=2", 2, 2)]
    for r in result["rows"]:
        data = json.loads(Path(r["eval_json"]).read_text())
        assert data["final_score"] == r["final_score"] and data["num_videos"] == 2
        assert data["generation"]["num_inference_steps"] == r["steps"]
    (check,) = result["checks"]
    assert check["gap_to_teacher"] == rows["MLCD_S=2"]["final_score"] - rows["Teacher"]["final_score"]
    assert check["margin_over_baseline"] == rows["MLCD_S=2"]["final_score"] - rows["Teacher_S=2"]["final_score"]
    assert check["within"] == (check["gap_to_teacher"] >= -mlcd_table.WITHIN)
    assert "| MLCD_S=2 | 2 | 1 | 2 |" in out.with_suffix(".md").read_text()
    assert json.loads(out.read_text()) == result

    # --reuse: a matching file replaces the evaluation, a file of other settings is refused
    teacher_json = rows["Teacher"]["eval_json"]
    again = mlcd_table.main([*common, "--reuse", f"Teacher={teacher_json}"])
    assert again["rows"][0]["final_score"] == rows["Teacher"]["final_score"]
    with pytest.raises(SystemExit, match="Teacher_S=2"):
        mlcd_table.main([*common, "--reuse", f"Teacher_S=2={teacher_json}"])

    # a sweep: two students of the same S get one row each (named by folder), the teacher at S is scored once
    shutil.copytree(student, tmp_path / "student2")
    sweep = mlcd_table.main([*common[:3], str(student), str(tmp_path / "student2"), *common[4:],
                             "--reuse", f"Teacher={teacher_json}"])
    names = [r["name"] for r in sweep["rows"]]
    assert names == ["Teacher", "Teacher_S=2", "MLCD_S=2[student]", "MLCD_S=2[student2]"]
    assert [c["student"] for c in sweep["checks"]] == names[2:]
    assert sweep["rows"][2]["final_score"] == sweep["rows"][3]["final_score"] == rows["MLCD_S=2"]["final_score"]
    assert all(Path(r["eval_json"]).is_file() for r in sweep["rows"])


def test_train_script_init_student_continues_a_saved_student(tmp_path):
    """--init_student: the student starts from another folder's transformer (progressive S across runs)."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--teacher", "tiny:wan", *TINY_ARGS, "--checkpointing_steps", 0, "--validation_steps", 0,
              "--no_final_validation"]
    run_script([*common, "--num_segments", 4, "--max_train_steps", 2, "--output_dir", a])
    # one step at learning rate 0: the saved student is exactly the weights it started from
    run_script([*common, "--num_segments", 2, "--max_train_steps", 1, "--learning_rate", 0, "--init_student", a,
                "--output_dir", b])
    sa = DiffusionPipeline.from_pretrained(a).transformer.state_dict()
    sb = DiffusionPipeline.from_pretrained(b).transformer.state_dict()
    teacher = tiny_pipeline("wan").transformer.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], teacher[k]) for k in sa)  # a trained away from the teacher
    assert json.loads((b / "mlcd_config.json").read_text())["init_student"] == str(a)
    with pytest.raises(SystemExit, match="use_lora"):
        run_script([*common, "--num_segments", 2, "--max_train_steps", 1, "--init_student", a, "--use_lora",
                    "--output_dir", tmp_path / "c"])
    with pytest.raises(SystemExit, match="does not match"):
        run_script(["--teacher", "tiny:cogvideox", *TINY_ARGS[:-2], "--num_segments", 2, "--max_train_steps", 1,
                    "--init_student", a, "--output_dir", tmp_path / "d", "--checkpointing_steps", 0,
                    "--validation_steps", 0, "--no_final_validation"])


def test_validation_videos_use_the_negative_prompt_only_under_real_guidance(tmp_path, monkeypatch):
    """The training scripts' validation videos: a negative prompt goes with guidance above 1 (CFG), not with 1.0 (a
    student) nor for HunyuanVideo (embedded guidance); log writes one GIF a prompt under the validation folder."""
    from types import SimpleNamespace

    from diffusers_evdit.distill.training import ValidationVideos

    calls = []

    class Recorder:
        def set_progress_bar_config(self, **_):
            pass

        def __call__(self, prompt, generator, **kw):
            calls.append(kw)
            return SimpleNamespace(frames=np.zeros((len(prompt), 3, 8, 8, 3), dtype=np.float32))

    monkeypatch.setattr(EfficientVDiTPipeline, "from_pipe", classmethod(lambda cls, pipe, **kw: Recorder()))
    accelerator = SimpleNamespace(autocast=lambda: torch.autocast("cpu", enabled=False), trackers=[])
    for family, guidance, negative in (("wan", 1.0, False), ("wan", 4.0, True), ("hunyuan_video", 6.0, False)):
        videos = ValidationVideos(None, accelerator, ["a", "b"], str(tmp_path / "validation"), {"num_frames": 3},
                                  negative_prompt="blurry", family=family)
        out = videos.generate(None, None, steps=2, guidance_scale=guidance, seed=0)
        assert out.shape == (2, 3, 8, 8, 3) and calls[-1]["guidance_scale"] == guidance
        assert calls[-1].get("negative_prompt") == (["blurry", "blurry"] if negative else None), family
    paths = videos.log("student", out, step=7)
    assert [Path(p).name for p in paths] == ["student-step000007-0.gif", "student-step000007-1.gif"]
    assert all(Path(p).is_file() for p in paths)


def test_train_script_distils_a_skyreels_v2_pipeline_and_refuses_a_mochi_transformer(tmp_path):
    """A family beyond the first three end to end: two MLCD steps on SkyReels-V2 save a student that loads and samples
    in S steps; a family the predictor cannot drive (Mochi, in that pipeline) stops before training, naming it."""
    common = [*TINY_ARGS, "--num_segments", 2, "--checkpointing_steps", 0, "--validation_steps", 0,
              "--no_final_validation", "--max_train_steps", 2]
    result = run_script(["--teacher", "tiny:skyreels_v2", *common, "--output_dir", tmp_path / "sky"])
    assert len(result["losses"]) == 2 and all(math.isfinite(row["loss"]) for row in result["losses"])
    pipe = EfficientVDiTPipeline.from_pretrained(tmp_path / "sky")
    assert type(pipe.transformer).__name__ == "SkyReelsV2Transformer3DModel" and pipe.scheduler.mlcd_num_steps == 2
    EfficientVDiTPipeline.from_pipe(pipe, transformer=tiny_transformer("mochi")).save_pretrained(tmp_path / "sky")
    with pytest.raises(NotImplementedError, match="MochiTransformer3DModel"):
        run_script(["--teacher", tmp_path / "sky", *common, "--output_dir", tmp_path / "out"])
    assert not (tmp_path / "out" / "model_index.json").exists()
