"""The demo model plumbing: ``evdit demo`` / ``evdit eval`` on a random tiny pipeline of the shipped structure, the
training scripts' ``--smoke`` runs (loss goes down, checkpoints resume), the model card stage, and the flow-matching
conventions shared by training and the pipeline's sampler. Random weights: nothing here claims quality."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_evdit.cli import main
from diffusers_evdit.demo import (
    DEMO_MODEL_DIR,
    EVAL_KEYS,
    DemoModelMissingError,
    GenerationConfig,
    build_demo_pipeline,
    build_transformer,
    build_vae,
    caption_tokenizer,
    eval_prompts,
    load_pipeline,
    resolve_model,
    run_demo,
)
from diffusers_evdit.metrics import psnr, ssim

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))


def _shipped() -> bool:
    return os.path.isfile(os.path.join(DEMO_MODEL_DIR, "model_index.json"))


@pytest.mark.skipif(_shipped(), reason="the trained demo model is present")
def test_missing_demo_model_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(DemoModelMissingError, match="train_demo.sh"):
        resolve_model(None)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "demo model is missing" in err and "--model tiny" in err
    assert not (tmp_path / "d").exists()


def test_run_demo_refuses_no_prompts_before_writing_anything(tmp_path):
    with pytest.raises(ValueError, match=r"num_prompts \(evdit demo --prompts\) must be >= 1, got 0"):
        run_demo(tmp_path / "d", model="tiny", num_prompts=0, progress=False, log=lambda s: None)
    assert not (tmp_path / "d").exists()


def test_tokenizer_covers_every_caption():
    tok = caption_tokenizer()
    for caption, _ in eval_prompts(30):
        ids = tok(caption).input_ids
        assert 2 not in ids  # no <unk>
        assert ids[-1] == 1  # </s>
        assert tok.decode(ids, skip_special_tokens=True) == caption


def test_shortened_demo_writes_rows_video_sheet_and_report(tmp_path):
    out = tmp_path / "demo"
    rep = run_demo(out, model="tiny", num_prompts=2, steps=2, progress=False, log=lambda s: None)
    gif = Image.open(out / "side_by_side.gif")
    assert gif.n_frames == GenerationConfig.tiny().num_frames
    assert gif.size[0] > 4 * 64  # real | Base | MLCD | Efficient-vDiT
    assert Image.open(out / "contact_sheet.png").size[1] > 2 * 4 * 64
    data = json.loads((out / "report.json").read_text())
    rows = data["rows"]
    assert [r["name"] for r in rows] == ["Base", "MLCD", "Efficient-vDiT"]
    assert [r["steps"] for r in rows] == [2, 4, 4] and [r["guidance_scale"] for r in rows] == [2.0, 1.0, 1.0]
    assert [r["plan"]["sparsity"] for r in rows] == [0.0, 0.0, pytest.approx(0.375)]
    assert rows[2]["plan"]["layers"] == [1, 1]
    base = rows[0]
    for r in rows:
        assert 0 < r["denoise_seconds"] < r["seconds_per_video"]
        assert r["wallclock_speedup"] == pytest.approx(base["denoise_seconds"] / r["denoise_seconds"])
        assert r["video_speedup"] == pytest.approx(base["seconds_per_video"] / r["seconds_per_video"])
        assert 0.0 <= r["final_score"] <= 1.0 and set(EVAL_KEYS) <= set(r["metrics"])
        assert len(r["per_video"]) == 2 and r["timing"]["steps"] == 2 * r["steps"]
    assert base["wallclock_speedup"] == base["video_speedup"] == 1.0
    assert data["reference"]["color_accuracy"] == 1.0 and data["split"] == "test" and data["missing_rows"] == []
    assert data["prompts"] == [c for c, _ in eval_prompts(2, split="test")]
    md = (out / "report.md").read_text()
    assert "denoising speedup" in md and "contact_sheet.png" in md and "random-weight" in md
    assert "Generate with a row yourself" not in md  # random stand-ins: no folder to generate from
    assert rep["files"]["video"] == "side_by_side.gif"


def test_demo_times_the_rows_prompt_by_prompt_in_turn_and_flags_uneven_timings(tmp_path, monkeypatch):
    import diffusers_evdit.demo.run as demo_run
    from diffusers_evdit.demo.rows import DemoRow
    from diffusers_evdit.demo.report import timing_notes

    calls, real_generate = [], demo_run.generate_videos

    def recording(pipe, captions, generation, seeds=None, **kwargs):
        calls.append((captions[0], generation.num_inference_steps, pipe.mask_plan))
        return real_generate(pipe, captions, generation, seeds, **kwargs)

    monkeypatch.setattr(demo_run, "generate_videos", recording)
    # two rows on the base pipeline (dense and uniform:1) take turns with their plans, a student row between them
    rows = [DemoRow("Base", None, None, None, None), DemoRow("MLCD", "mlcd", 4, 1.0, None),
            DemoRow("Base 1:F-1", None, None, None, "uniform:1")]
    rep = demo_run.run_demo(tmp_path / "d", model="tiny", num_prompts=2, steps=2, rows=rows, progress=False,
                            log=lambda s: None)
    captions = rep["prompts"]
    assert [(c, steps) for c, steps, _ in calls] == [(captions[0], 2), (captions[0], 4), (captions[0], 2),
                                                     (captions[1], 2), (captions[1], 4), (captions[1], 2)]
    assert [plan is None for *_, plan in calls] == [True, True, False] * 2
    assert [p.layers for *_, p in calls if p is not None] == [[1, 1], [1, 1]]
    for r in rep["rows"]:
        per_call = r["timing"]["denoise_s_per_call"]
        assert len(per_call) == 2 and r["denoise_seconds"] == pytest.approx(sum(per_call) / 2)
    assert rep["rows"][2]["plan"]["sparsity"] > 0 and rep["rows"][0]["plan"]["sparsity"] == 0

    steady = {"name": "A", "denoise_seconds": 1.0, "decode_seconds": 0.1, "seconds_per_video": 1.2,
              "timing": {"denoise_s_per_call": [1.0, 1.2]}}
    assert timing_notes([steady]) == []
    uneven = dict(steady, timing={"denoise_s_per_call": [0.4, 2.0]})
    assert "A's videos took 0.40-2.00 s" in timing_notes([uneven])[0]
    tie = dict(steady, decode_seconds=1.05)  # decoding level with denoising is not "more than" it
    assert timing_notes([tie]) == []


def test_report_names_the_command_that_generates_with_each_row_folder():
    from diffusers_evdit.demo.report import markdown_report

    row = {"steps": 4, "guidance_scale": 1.0, "plan": {"sparsity": 0.0}, "denoise_seconds": 1.0,
           "decode_seconds": 0.1, "seconds_per_video": 1.5, "wallclock_speedup": 1.0, "video_speedup": 1.0,
           "final_score": 0.5, "metrics": {}, "per_video": [{"final_score": 0.5}]}
    rep = {"model": "m", "pipeline_class": "P", "device": "cpu", "dtype": "float32", "prompts": ["p"],
           "generation": {"num_frames": 9, "height": 32, "width": 32}, "total_s": 1.0, "notes": [],
           "missing_rows": [], "reference": {}, "files": {"video": "v.gif"},
           "rows": [{**row, "name": "Base", "folder": "/m"}, {**row, "name": "Efficient-vDiT", "folder": "/m/evdit"},
                    {**row, "name": "Other", "folder": None}]}
    md = markdown_report(rep)
    assert "* Base: `evdit generate --model /m --prompt" in md
    assert "* Efficient-vDiT: `evdit generate --model /m/evdit --prompt" in md and "* Other:" not in md


def _save_row(folder, seed, plan=None, sigmas=(1.0, 0.75, 0.5, 0.25)):
    from diffusers_evdit import MaskPlan
    from diffusers_evdit.schedulers import mlcd_scheduler_from

    student = build_transformer("tiny", seed=seed, zero_init_output=False).to(torch.float16)
    student.save_pretrained(folder / "transformer")
    base_sched = build_demo_pipeline("tiny").scheduler
    mlcd_scheduler_from(base_sched, [round(999 * s) for s in sigmas], sigmas=list(sigmas)).save_pretrained(
        folder / "scheduler")
    if plan is not None:
        MaskPlan.uniform(2, k=plan).save(folder / "mask_plan.json")


def test_row_folder_loads_student_with_base_components(tmp_path):
    from diffusers_evdit.demo import DEFAULT_ROWS, DemoRowMissingError, load_row

    base_dir = tmp_path / "model"
    build_demo_pipeline("tiny").save_pretrained(base_dir)
    GenerationConfig.tiny().save(base_dir)
    _save_row(base_dir / "evdit", seed=7, plan=1)
    base, gen = load_pipeline(str(base_dir), device="cpu")
    evdit = DEFAULT_ROWS[2]
    pipe = load_row(base, str(base_dir), evdit)
    ref = build_transformer("tiny", seed=7, zero_init_output=False).to(torch.float16).float()
    for (name, p), (_, q) in zip(pipe.transformer.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(p, q), name
    assert pipe.transformer.dtype == torch.float32 and pipe.transformer is not base.transformer
    assert pipe.vae is base.vae and pipe.text_encoder is base.text_encoder and pipe.tokenizer is base.tokenizer
    assert type(pipe.scheduler).__name__ == "MLCDFlowMatchEulerScheduler"
    assert pipe.mask_plan.layers == [1, 1] and base.mask_plan is None
    gen4 = evdit.generation(gen)
    assert (gen4.num_inference_steps, gen4.guidance_scale) == (4, 1.0)
    with pytest.raises(DemoRowMissingError, match="mlcd.*transformer/config.json.*--model tiny"):
        load_row(base, str(base_dir), DEFAULT_ROWS[1])
    (base_dir / "evdit" / "mask_plan.json").unlink()
    with pytest.raises(DemoRowMissingError, match="mask_plan.json"):
        load_row(base, str(base_dir), evdit)


def test_delta_row_in_bfloat16_keeps_the_dtypes_base_has(tmp_path):
    """A delta student is loaded the way Base is: in bfloat16, diffusers' float32 modules stay float32 (the whole
    model is not cast), and each weight is the base weight plus the delta."""
    from diffusers_evdit.demo import DEFAULT_ROWS, load_row
    from diffusers_evdit.weight_delta import save_delta

    base_dir = tmp_path / "model"
    build_demo_pipeline("tiny").save_pretrained(base_dir)
    GenerationConfig.tiny().save(base_dir)
    _save_row(base_dir / "evdit", seed=7, plan=1)
    (base_dir / "evdit" / "transformer" / "config.json").unlink()  # the row ships a delta, not a transformer
    base_fp32 = build_demo_pipeline("tiny").transformer
    save_delta(build_transformer("tiny", seed=7, zero_init_output=False), base_fp32, str(base_dir / "evdit"))
    student_fp32 = load_row(load_pipeline(str(base_dir), device="cpu")[0], str(base_dir), DEFAULT_ROWS[2]).transformer
    base, _ = load_pipeline(str(base_dir), device="cpu", dtype=torch.bfloat16)
    pipe = load_row(base, str(base_dir), DEFAULT_ROWS[2])
    want = {n: p.dtype for n, p in base.transformer.named_parameters()}
    assert {n: p.dtype for n, p in pipe.transformer.named_parameters()} == want
    assert {torch.float32, torch.bfloat16} <= set(want.values())
    reference = dict(student_fp32.named_parameters())
    changed = 0
    for name, p in pipe.transformer.named_parameters():
        ref, before = reference[name].detach(), base_fp32.state_dict()[name]
        changed += not torch.equal(ref, before)
        if p.dtype == torch.float32:
            assert torch.equal(p.detach(), ref), name
        else:  # base rounded to bfloat16, plus the delta, rounded again: within one bfloat16 step of each
            bound = 2.0**-8 * (before.abs() + ref.abs()) + 1e-30
            assert bool(((p.detach().float() - ref).abs() <= bound).all()), name
    assert changed > len(reference) // 2  # the delta moved most tensors


def test_demo_skips_a_missing_row_with_the_reason(tmp_path):
    base_dir = tmp_path / "model"
    build_demo_pipeline("tiny").save_pretrained(base_dir)
    GenerationConfig.tiny().save(base_dir)
    _save_row(base_dir / "evdit", seed=3, plan=1)
    rep = run_demo(tmp_path / "out", model=str(base_dir), num_prompts=1, steps=2, progress=False, log=lambda s: None)
    assert [r["name"] for r in rep["rows"]] == ["Base", "Efficient-vDiT"]
    assert rep["rows"][1]["steps"] == 4 and rep["rows"][1]["plan"]["layers"] == [1, 1]
    assert [m["name"] for m in rep["missing_rows"]] == ["MLCD"] and "mlcd" in rep["missing_rows"][0]["reason"]
    assert "Not run" in (tmp_path / "out" / "report.md").read_text()


def test_eval_demo_rows_script_on_cpu(tmp_path):
    sys.path.insert(0, str(EXAMPLES.parent / "benchmarks"))
    import eval_demo_rows

    out = tmp_path / "rows.json"
    res = eval_demo_rows.main(["--model", "tiny", "--device", "cpu", "--prompts", "2", "--seeds", "2",
                               "--timing-videos", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res)) and data["split"] == "test" and data["prompts"] == 2
    assert [r["name"] for r in data["rows"]] == ["Base", "MLCD", "Efficient-vDiT"]
    for r in data["rows"]:
        fs = r["final_score"]
        assert fs["n"] == 2 and r["n_videos"] == 4 and len(r["rounds"]) == 2
        assert fs["mean"] == pytest.approx(np.mean([x["final_score"] for x in r["rounds"]]))
        assert fs["std"] == pytest.approx(np.std([x["final_score"] for x in r["rounds"]], ddof=1))
        assert r["denoise_seconds"] > 0
        assert r["wallclock_speedup"] == pytest.approx(data["rows"][0]["denoise_seconds"] / r["denoise_seconds"])
    assert data["rows"][2]["plan"]["layers"] == [1, 1]
    base_videos = [v for rnd in data["rows"][0]["rounds"] for v in rnd["per_video_final"]]
    for r in data["rows"]:
        mine = [v for rnd in r["rounds"] for v in rnd["per_video_final"]]
        paired = r["paired_difference_vs_first_row"]
        assert paired["n"] == 4 and paired["mean"] == pytest.approx(np.mean(mine) - np.mean(base_videos))


def test_eval_demo_rows_times_rows_in_alternating_rounds(tmp_path):
    sys.path.insert(0, str(EXAMPLES.parent / "benchmarks"))
    import eval_demo_rows

    res = eval_demo_rows.main(["--model", "tiny", "--device", "cpu", "--prompts", "1", "--seeds", "1", "--rows",
                               "Base,MLCD", "--timing-videos", "1", "--timing-rounds", "3",
                               "--out", str(tmp_path / "rows.json")])
    assert res["timing_rounds"] == 3
    base, mlcd = res["rows"]
    for r in (base, mlcd):
        assert len(r["denoise_seconds_rounds"]) == 3 and min(r["denoise_seconds_rounds"]) > 0
        assert r["denoise_seconds"] == pytest.approx(np.median(r["denoise_seconds_rounds"]))
        assert r["wallclock_speedup_rounds"] == pytest.approx(
            [a / b for a, b in zip(base["denoise_seconds_rounds"], r["denoise_seconds_rounds"])])
    assert mlcd["wallclock_speedup"] == pytest.approx(base["denoise_seconds"] / mlcd["denoise_seconds"])
    assert base["wallclock_speedup_rounds"] == [1.0, 1.0, 1.0]


def test_eval_demo_rows_script_with_row_folders(tmp_path):
    sys.path.insert(0, str(EXAMPLES.parent / "benchmarks"))
    import eval_demo_rows

    base_dir = tmp_path / "model"
    build_demo_pipeline("tiny").save_pretrained(base_dir)
    GenerationConfig.tiny().save(base_dir)
    _save_row(tmp_path / "kd", seed=4, plan=1)
    _save_row(tmp_path / "uniform", seed=5)
    _save_row(tmp_path / "two", seed=6, sigmas=(1.0, 0.5))  # a 2-segment student
    res = eval_demo_rows.main(["--model", str(base_dir), "--evdit", str(tmp_path / "kd"), "--rows",
                               "Base,Efficient-vDiT", "--extra-row", f"Uniform 2:2+KD={tmp_path / 'uniform'}:uniform:2",
                               "--extra-row", f"two segments={tmp_path / 'two'}:dense@2",
                               "--extra-row", f"asked 3={tmp_path / 'uniform'}:dense@3", "--device", "cpu",
                               "--prompts", "1", "--seeds", "1", "--timing-videos", "1", "--out", str(tmp_path / "rows.json")])
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == ["Base", "Efficient-vDiT", "Uniform 2:2+KD", "two segments", "asked 3"]
    assert rows["two segments"]["steps"] == 2 and rows["two segments"]["plan"]["layers"] is None
    assert rows["asked 3"]["steps"] == 4  # the steps run: a 4-segment MLCD scheduler keeps its milestones
    assert rows["Efficient-vDiT"]["plan"]["layers"] == [1, 1] and rows["Uniform 2:2+KD"]["plan"]["layers"] == [2, 2]
    assert rows["Efficient-vDiT"]["folder"] == str(tmp_path / "kd") and rows["Uniform 2:2+KD"]["steps"] == 4
    with pytest.raises(SystemExit):
        eval_demo_rows.main(["--model", "tiny", "--extra-row", "nofolder", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        eval_demo_rows.main(["--model", "tiny", "--extra-row", "a=mlcd:dense@0", "--out", str(tmp_path / "x.json")])


def test_steps_timing_script_on_cpu(tmp_path):
    sys.path.insert(0, str(EXAMPLES.parent / "benchmarks"))
    import steps_timing

    res = steps_timing.main(["--model", "tiny", "--steps", "3", "1", "--rounds", "2", "--threads", "1",
                             "--out", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text()) == json.loads(json.dumps(res))
    base, three, one = res["rows"]
    assert [r["name"] for r in res["rows"]] == ["Base", "3 steps, no CFG", "1 steps, no CFG"]
    assert (three["steps"], three["guidance_scale"], one["steps"]) == (3, 1.0, 1)
    assert base["guidance_scale"] > 1 and base["wallclock_speedup"] == 1.0
    for r in res["rows"]:
        assert len(r["denoise_seconds"]) == 2 and r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["wallclock_speedup"] == pytest.approx(base["median_s"] / r["median_s"])
    assert one["median_s"] < base["median_s"]  # one step without CFG against the base's CFG steps


def test_eval_cli_json_keys(tmp_path, capsys):
    path = tmp_path / "eval.json"
    assert main(["eval", "--model", "tiny", "--prompts", "2", "--steps", "2", "--plan", "uniform:1",
                 "--json", str(path), "--no-progress"]) == 0
    data = json.loads(path.read_text())
    assert list(data)[: len(EVAL_KEYS)] == list(EVAL_KEYS)
    for key in EVAL_KEYS:
        assert isinstance(data[key], float)
        if key != "frechet":
            assert 0.0 <= data[key] <= 1.0
    assert data["num_videos"] == 2 and data["plan"]["layers"] == [1, 1]
    assert data["reference"]["motion_direction_accuracy"] == 1.0
    assert "final_score" in capsys.readouterr().out


def test_batched_decoding_matches_the_pipeline():
    from diffusers_evdit.demo import decode_latents

    pipe, gen = load_pipeline("tiny", device="cpu")
    call = dict(prompt="a blue square moving right on a light background", **gen.call_kwargs())
    ref = pipe(**call, output_type="np", generator=torch.Generator().manual_seed(1)).frames[0]
    lat = pipe(**call, output_type="latent", generator=torch.Generator().manual_seed(1)).frames
    video = decode_latents(pipe, lat)[0]
    assert np.abs(video.astype(np.float32) - ref * 255.0).max() <= 1.0


def test_channels_last_decoding_keeps_the_vae_output():
    """The memory format changes nothing but rounding: the demo VAE decodes the same video from the same latents."""
    from diffusers_evdit.demo import channels_last_convolutions

    vae = build_vae("tiny").eval()
    z = torch.randn(2, vae.config.z_dim, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = vae.decode(z, return_dict=False)[0]
        convs = [m for m in vae.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
        assert convs and not all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convs
                                 if isinstance(m, torch.nn.Conv3d))
        assert channels_last_convolutions(channels_last_convolutions(vae)) is vae  # idempotent
        for m in convs:
            fmt = torch.channels_last_3d if isinstance(m, torch.nn.Conv3d) else torch.channels_last
            assert m.weight.is_contiguous(memory_format=fmt)
        out = vae.decode(z, return_dict=False)[0]
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


def test_psnr_ssim_separate_copies_from_noise():
    from diffusers_evdit.data import render, sample_scene

    v = render(sample_scene(0), 5, 32, 32)
    noisy = np.clip(v / 255.0 + np.random.default_rng(0).normal(0, 0.1, v.shape), 0, 1)
    assert psnr(v, v) == 100.0 and ssim(v, v) == 1.0
    assert 15 < psnr(v, noisy) < 25 and ssim(v, noisy) < 0.6


def test_flow_matching_targets_match_the_pipeline_sampler():
    """An oracle velocity built with the training code's convention makes WanPipeline's sampler (UniPC, flow sigmas,
    integer timesteps) land on the data latent, and decoding de-normalises with latents_mean/std."""
    from train_demo_t2v import flow_matching_batch

    pipe = build_demo_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    z = pipe.vae.config.z_dim
    mean, std = torch.linspace(-0.5, 0.5, z), torch.linspace(0.5, 2.0, z)
    pipe.vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    gen = GenerationConfig.tiny()
    gen.num_inference_steps, gen.guidance_scale = 8, 1.0
    shape = (1, z, gen.latent_frames, gen.height // 8, gen.width // 8)
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(3))

    def oracle(hidden_states, timestep, encoder_hidden_states=None, return_dict=False, **kwargs):
        s = (timestep.float() / 1000.0).view(-1, 1, 1, 1, 1)
        noise = (hidden_states - (1 - s) * x0) / s
        return (flow_matching_batch(x0, noise, s.view(-1))[1],)

    pipe.transformer.forward = oracle
    call = dict(prompt="a red circle moving left on a dark background", **gen.call_kwargs())
    latents = pipe(**call, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    assert (latents - x0).abs().max() < 0.02
    video = pipe(**call, output_type="pt", generator=torch.Generator().manual_seed(0)).frames[0]
    with torch.no_grad():
        ref = pipe.vae.decode(x0 * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)).sample[0]
    ref = ((ref + 1) / 2).clamp(0, 1).permute(1, 0, 2, 3)
    assert (video - ref).abs().max() < 0.05


def test_saved_demo_structure_loads_offline(tmp_path):
    from diffusers import DiffusionPipeline

    build_demo_pipeline("tiny").save_pretrained(tmp_path)
    GenerationConfig.tiny().save(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(pipe).__name__ == "WanPipeline"
    assert pipe.tokenizer("a cyan square bouncing").input_ids[-1] == 1
    loaded, gen = load_pipeline(str(tmp_path), device="cpu")
    assert gen == GenerationConfig.tiny() and type(loaded).__name__ == "EfficientVDiTWanPipeline"


# ---------------------------------------------------------------------------------------------------------------------
# training scripts (--smoke: tiny models, 32x32 clips, CPU)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import train_demo_t2v
    import train_demo_vae

    root = tmp_path_factory.mktemp("train")
    vae = train_demo_vae.main(["--output_dir", str(root / "vae"), "--smoke", "--max_train_steps", "24"])
    t2v = train_demo_t2v.main(["--vae_path", str(root / "vae" / "vae"), "--output_dir", str(root / "t2v"),
                               "--pipeline_dir", str(root / "pipe"), "--smoke", "--max_train_steps", "24"])
    return root, vae, t2v


def _decreases(losses, n=6):
    return np.mean(losses[-n:]) < np.mean(losses[:n])


def test_vae_smoke_learns_and_saves(trained):
    root, vae, _ = trained
    assert vae["steps"] == 24 and _decreases(vae["losses"]["loss"])
    assert (root / "vae" / "vae" / "config.json").exists()
    assert set(vae["reconstruction"]) >= {"psnr", "color_accuracy"}


def test_t2v_smoke_learns_and_saves_a_pipeline(trained):
    root, _, t2v = trained
    assert t2v["steps"] == 24 and _decreases(t2v["losses"]["loss"])
    pipe, gen = load_pipeline(str(root / "pipe"), device="cpu")
    assert gen.num_frames == 9 and gen.max_sequence_length == 32
    assert pipe.vae.config.latents_std == pytest.approx(t2v["latents_std"])
    assert pipe.transformer.proj_out.weight.abs().sum() > 0  # trained away from the zero init


def test_t2v_resume_from_latest_checkpoint(trained, capsys):
    import train_demo_t2v

    root, _, first = trained
    ckpts = sorted(p.name for p in (root / "t2v").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-20", "checkpoint-24"]  # --checkpoints_total_limit 2
    res = train_demo_t2v.main(["--vae_path", str(root / "vae" / "vae"), "--output_dir", str(root / "t2v"),
                               "--pipeline_dir", str(root / "pipe2"), "--smoke", "--max_train_steps", "28",
                               "--resume_from_checkpoint", "latest"])
    assert "resumed from" in capsys.readouterr().out
    assert res["steps"] == 28
    assert res["losses"]["steps"] == list(range(1, 29))
    assert res["losses"]["loss"][:24] == pytest.approx(first["losses"]["loss"])


def test_vae_init_from_fine_tunes_the_saved_vae(trained):
    import train_demo_vae

    root, scratch, _ = trained
    saved = root / "vae" / "vae"
    with pytest.raises(SystemExit):  # the loaded VAE's config wins: an --architecture would be silently ignored
        train_demo_vae.parse_args(["--output_dir", str(root / "x"), "--init_from", str(saved), "--architecture", "tiny"])
    res = train_demo_vae.main(["--output_dir", str(root / "vae_ft"), "--smoke", "--init_from", str(saved),
                               "--max_train_steps", "2"])
    assert res["steps"] == 2
    # same seed, same first batch: the fine-tune starts from the trained weights, not from a random init
    assert res["losses"]["loss"][0] < 0.8 * scratch["losses"]["loss"][0]
    a = json.loads((saved / "config.json").read_text())
    b = json.loads((root / "vae_ft" / "vae" / "config.json").read_text())
    assert {k: v for k, v in a.items() if not k.startswith("_")} == {k: v for k, v in b.items() if not k.startswith("_")}


def test_t2v_init_from_continues_a_saved_pipeline(trained):
    import train_demo_t2v

    root, _, first = trained
    res = train_demo_t2v.main(["--init_from", str(root / "pipe"), "--output_dir", str(root / "t2v_ft"),
                               "--pipeline_dir", str(root / "pipe_ft"), "--smoke", "--max_train_steps", "2"])
    assert res["steps"] == 2
    before, gen0 = load_pipeline(str(root / "pipe"), device="cpu")
    after, gen1 = load_pipeline(str(root / "pipe_ft"), device="cpu")
    assert gen1.extra["trained_steps"] == gen0.extra["trained_steps"] + 2 == first["steps"] + 2
    assert after.vae.config.latents_std == before.vae.config.latents_std  # the loaded normalisation is kept
    w0, w1 = before.transformer.proj_out.weight, after.transformer.proj_out.weight
    assert w0.abs().sum() > 0 and (w1 - w0).norm() < 0.5 * w0.norm()  # continued from, not re-initialised


def test_model_card_stage(trained):
    import train_demo_card

    root, _, _ = trained
    info = train_demo_card.main(["--pipeline_dir", str(root / "pipe"), "--vae_log", str(root / "vae" / "vae_log.json"),
                                 "--t2v_log", str(root / "t2v" / "t2v_log.json"), "--smoke", "--sparse_plan",
                                 "uniform:1"])
    card = (root / "pipe" / "README.md").read_text()
    assert "## Training" in card and "| color_accuracy |" in card and "library_name: diffusers" in card
    log = json.loads((root / "pipe" / "training_log.json").read_text())
    assert len(log["t2v"]["losses"]["loss"]) == log["t2v"]["steps"] >= 24
    assert len(log["vae"]["losses"]["loss"]) == log["vae"]["steps"] == 24
    assert (root / "pipe" / "samples.png").exists() and info["sizes"]["total_mb"] < 1
    gen = GenerationConfig.load(root / "pipe")
    assert gen.guidance_scale in (1.0, 4.0)
