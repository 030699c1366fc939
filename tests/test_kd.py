"""Stage 3 knowledge distillation: the hooked feature loss, gradients, a training step, examples/train_kd.py and
benchmarks/reproduce_tables.py --smoke, on tiny random models (CPU). Random weights: plumbing only, no quality."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from example_scripts import import_script, run_example
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from diffusers_evdit import EfficientVDiTPipeline, MaskPlan, get_mask_plan, num_plan_layers
from diffusers_evdit.kd import (
    LayerOutputCapture,
    check_trainable_kernel,
    diffusion_inputs,
    kd_layers,
    kd_loss,
    kd_mlcd_loss,
    make_sparse_student,
)
from diffusers_evdit.mlcd import DiffusionGrid, MLCDSchedule, TransformerPredictor
from diffusers_evdit.plan import apply_mask_plan
from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_transformer

FAMILIES = ("cogvideox", "wan", "hunyuan_video")
VIDEO = TinyVideo(frames=4, height=8, width=8)


def _direct_modules(model, family):
    """The attention / MLP modules per plan layer, named by hand (independent of kd.kd_layers)."""
    if family == "cogvideox":
        return [(b.attn1, [b.ff]) for b in model.transformer_blocks]
    if family == "wan":
        return [(b.attn1, [b.ffn]) for b in model.blocks]
    return ([(b.attn, [b.ff, b.ff_context]) for b in model.transformer_blocks]
            + [(b.attn, [b.act_mlp]) for b in model.single_transformer_blocks])


def _record(model, family, inputs):
    """Run ``model`` once with plain forward hooks; per layer, the attention and MLP outputs as flat vectors."""
    store, handles = [], []
    for attn, mlps in _direct_modules(model, family):
        entry = {"attn": [], "mlp": []}
        store.append(entry)

        def keep(key, entry=entry):
            def hook(module, args, out):
                outs = out if isinstance(out, tuple) else (out,)
                entry[key] += [o.detach().flatten() for o in outs if o is not None]
            return hook

        handles.append(attn.register_forward_hook(keep("attn")))
        handles += [m.register_forward_hook(keep("mlp")) for m in mlps]
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
    for h in handles:
        h.remove()
    return out, [{k: torch.cat(v) for k, v in e.items()} for e in store]


@pytest.mark.parametrize("family", FAMILIES)
def test_kd_loss_equals_direct_computation_from_captured_outputs(family):
    teacher = tiny_transformer(family)
    student = make_sparse_student(teacher, MaskPlan.uniform(num_plan_layers(teacher), k=1))
    inputs = tiny_inputs(teacher, VIDEO, seed=1)
    target = torch.randn_like(inputs["hidden_states"])
    out = kd_loss(student, teacher, inputs, task_target=target, task_weight=100.0, feature_weight=0.5)

    t_out, t_feats = _record(teacher, family, inputs)
    s_out, s_feats = _record(student, family, inputs)
    attn = torch.stack([(s["attn"] - t["attn"]).pow(2).mean() for s, t in zip(s_feats, t_feats)])
    mlp = torch.stack([(s["mlp"] - t["mlp"]).pow(2).mean() for s, t in zip(s_feats, t_feats)])
    feature = (attn + mlp).mean()
    task = (s_out - target).pow(2).mean()
    assert len(attn) == num_plan_layers(teacher) == len(kd_layers(student))
    assert float(feature) > 0  # the sparse student really differs from the dense teacher
    torch.testing.assert_close(out.attention_losses, attn, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(out.mlp_losses, mlp, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(out.feature_loss.detach(), feature, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(out.task_loss.detach(), task, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(out.loss.detach(), 0.5 * feature + 100.0 * task, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(out.teacher_output, t_out)
    # the output task compares with the teacher's final output instead
    out2 = kd_loss(student, teacher, inputs, task="output", task_weight=2.0)
    torch.testing.assert_close(out2.task_loss.detach(), (s_out - t_out).pow(2).mean(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("family", ("wan", "hunyuan_video"))
def test_gradients_reach_only_the_student(family):
    teacher = tiny_transformer(family)
    assert all(p.requires_grad for p in teacher.parameters())  # no_grad and detach, not requires_grad, protect it
    student = make_sparse_student(teacher, MaskPlan.uniform(num_plan_layers(teacher), k=1))
    assert get_mask_plan(teacher) is None  # the copy has the plan, the teacher stays dense
    inputs = tiny_inputs(teacher, VIDEO, seed=2)
    out = kd_loss(student, teacher, inputs, task_target=torch.zeros_like(inputs["hidden_states"]))
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    for layer in kd_layers(student):
        block = student.get_submodule(layer.block_name)
        for module in (layer.attention, *layer.mlp):
            if not list(module.parameters()):  # HunyuanVideo single blocks: act_mlp (GELU) of proj_mlp
                module = block.proj_mlp
            grads = [p.grad for p in module.parameters()]
            assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads), layer.block_name
    assert bool(student.proj_out.weight.grad.abs().sum() > 0)  # through the task loss


def test_a_kd_step_lowers_the_loss_on_a_fixed_batch():
    teacher = tiny_transformer("cogvideox")
    student = make_sparse_student(teacher, MaskPlan.uniform(num_plan_layers(teacher), k=1))
    inputs = tiny_inputs(teacher, VIDEO, seed=3)
    target = torch.randn_like(inputs["hidden_states"])
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    with LayerOutputCapture(student) as cs, LayerOutputCapture(teacher) as ct:
        losses = []
        for _ in range(3):
            out = kd_loss(student, teacher, inputs, student_capture=cs, teacher_capture=ct, task_target=target,
                          task_weight=1.0)
            losses.append(float(out.loss.detach()))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    assert losses[1] < losses[0] and losses[2] < losses[1]


def test_kernels_without_an_exact_backward_are_refused_for_training_and_captures_are_scoped():
    teacher = tiny_transformer("wan")
    plan = MaskPlan.uniform(2, k=1)
    with pytest.raises(ValueError, match="gathered"):
        make_sparse_student(teacher, plan, kernel="walk")  # inference only
    inputs = tiny_inputs(teacher, VIDEO)
    grads = {}
    for kernel in ("auto", "split", "gathered"):  # auto and split: split's backward; gathered: autograd through copies
        student = make_sparse_student(teacher, plan, kernel=kernel)
        kd_loss(student, teacher, inputs).loss.backward()
        grads[kernel] = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert "blocks.0.attn1.to_q.weight" in grads["gathered"]
    for kernel in ("auto", "split"):
        assert grads[kernel].keys() == grads["gathered"].keys()
        assert all(torch.allclose(grads[kernel][n], g, atol=1e-6) for n, g in grads["gathered"].items())
    apply_mask_plan(student, plan, kernel="walk")  # walk: refused for training
    with pytest.raises(ValueError, match="backward pass is not exact"):
        kd_loss(student, teacher, inputs)
    apply_mask_plan(student, plan)
    check_trainable_kernel(student)

    capture = LayerOutputCapture(student)
    student(**inputs)  # outside a recording: nothing kept
    with pytest.raises(RuntimeError, match="No attention"):
        capture.outputs()
    with pytest.raises(RuntimeError, match="second attention output"):
        with capture.recording():
            student(**inputs)
            student(**inputs)
    capture.remove()
    assert not student.blocks[0].attn1._forward_hooks


def test_kd_with_the_mlcd_loss_records_only_the_student_call():
    teacher = tiny_transformer("wan")
    student = make_sparse_student(teacher, MaskPlan.uniform(2, k=1))
    f_t, f_s = TransformerPredictor(teacher), TransformerPredictor(student)
    schedule = MLCDSchedule(DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), 8), 2)
    cond = {"encoder_hidden_states": torch.randn(2, 7, 16)}
    x0 = torch.randn(2, 4, 3, 8, 8)
    with LayerOutputCapture(student) as cs, LayerOutputCapture(teacher) as ct:
        # the target network is the student itself (under no_grad): its forward must not be recorded
        out = kd_mlcd_loss(f_s, f_s, f_t, f_t, cs, ct, x0, cond, schedule, task_weight=100.0,
                           generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert float(out.feature_loss.detach()) > 0 and float(out.task_loss.detach()) >= 0
    assert all(p.grad is None for p in teacher.parameters())
    assert student.blocks[0].attn1.to_q.weight.grad is not None
    z, t, target, idx = diffusion_inputs(schedule.grid, x0, torch.Generator().manual_seed(1))
    sigma = schedule.grid.sigmas[idx].float().view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(z, (1 - sigma) * x0 + sigma * (target + x0))  # flow: z = x0 + sigma * (eps - x0)


# ---------------------------------------------------------------------------------------------------- the scripts


def run_kd(args):
    return run_example("train_kd", args)


TINY = ["--num_frames", 9, "--height", 32, "--width", 32, "--max_sequence_length", 8, "--train_batch_size", 1,
        "--learning_rate", 1e-3, "--report_to", "none", "--seed", 5, "--validation_steps", 0]


def test_train_kd_resumes_exactly_and_saves_a_pipeline_with_its_plan(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--teacher", "tiny:wan", "--plan", "uniform:1", *TINY, "--max_train_steps", 3]
    run_a = run_kd([*common, "--output_dir", a, "--checkpointing_steps", 2, "--checkpoints_total_limit", 1])
    assert [r["step"] for r in run_a["losses"]] == [1, 2, 3] and run_a["task_loss"] == "diffusion"
    assert all(r["feature_loss"] > 0 and r["task_loss"] is not None for r in run_a["losses"])
    assert sorted(p.name for p in a.glob("checkpoint-*")) == ["checkpoint-2"]
    assert len(list((a / "validation").glob("student-step000003-*.gif"))) == 2
    b.mkdir()
    shutil.copytree(a / "checkpoint-2", b / "checkpoint-2")
    run_b = run_kd([*common, "--output_dir", b, "--resume_from_checkpoint", "latest", "--checkpointing_steps", 0,
                    "--no_final_validation"])
    assert [r["step"] for r in run_b["losses"]] == [3]
    assert run_b["losses"][0]["loss"] == run_a["losses"][2]["loss"]  # identical next step after resuming

    pipe = EfficientVDiTPipeline.from_pretrained(a)
    assert pipe.mask_plan.layers == [1, 1] and pipe.mask_plan.metadata["kd"]["task_loss"] == "diffusion"
    stock = DiffusionPipeline.from_pretrained(a).transformer.state_dict()  # the stock diffusers class loads it
    teacher = tiny_transformer("wan").state_dict()
    assert set(stock) == set(teacher) and any(not torch.equal(stock[k], teacher[k]) for k in teacher)
    config = json.loads((a / "kd_config.json").read_text())
    assert config["kernel"] == "auto" and config["steps"] == 3


def test_train_kd_lora_with_the_mlcd_task_saves_a_few_step_student(tmp_path):
    out = tmp_path / "out"
    run = run_kd(["--teacher", "tiny:cogvideox", "--plan", "uniform:2", *TINY, "--max_train_steps", 2,
                  "--task_loss", "mlcd", "--mlcd_teacher", "tiny:cogvideox", "--num_segments", 2,
                  "--teacher_steps", 4, "--use_lora", "--lora_rank", 4, "--output_dir", out,
                  "--checkpointing_steps", 0, "--no_final_validation"])
    assert run["task_loss"] == "mlcd" and len(run["losses"]) == 2
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    pipe = EfficientVDiTPipeline.from_pretrained(out)
    assert pipe.mask_plan.layers == [2, 2] and pipe.scheduler.mlcd_num_steps == 2
    assert json.loads((out / "evdit_demo.json").read_text())["num_inference_steps"] == 2
    assert json.loads((out / "mlcd_config.json").read_text())["num_segments"] == 2


def test_reproduce_tables_smoke_writes_the_tables(tmp_path):
    script = import_script("reproduce_tables")
    result = script.main(["--smoke", "--work_dir", str(tmp_path / "work"), "--out_dir", str(tmp_path / "out"),
                          "--ratios", "0.1", "--uniform_ks", "2,1", "--jobs", "2", "--mlcd_learning_rate", "2e-4"])
    data = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert data["complete"] and data["smoke"] and result["out_dir"] == str(tmp_path / "out")
    names = [r["name"] for r in data["rows"]]
    assert names == ["Base", "MLCD", "Ours_r=0.1", "Search_r=0.1", "MLCD_2:2", "MLCD_2:2+KD", "MLCD_1:3",
                     "MLCD_1:3+KD"]
    assert [r["name"] for r in data["order_ablation"]] == ["MLCD_then_KD", "KD_then_MLCD"]
    for row in data["rows"] + data["order_ablation"]:
        assert set(script.ROW_KEYS) <= set(row)
        assert 0.0 <= row["final_score"] <= 1.0 and row["frechet"] is not None and row["speedup"] > 0
    base, mlcd, ours = data["rows"][:3]
    assert base["speedup"] == 1.0 and base["sparsity"] == 0.0
    assert mlcd["steps"] == 2 and mlcd["speedup"] == pytest.approx(base["steps"] / 2)
    assert ours["sparsity"] > 0 and ours["step_speedup_source"] == "derived" and ours["step_speedup"] > 1.0
    assert "quality and speed" in (tmp_path / "out" / "quality.md").read_text()
    # the search gave every layer 1:3, the plan of uniform k=1: one KD run serves both rows, the second says so
    rows = {r["name"]: r for r in data["rows"]}
    assert ours["plan"] == [1, 1] and rows["MLCD_1:3+KD"]["same_plan_as"] == "Ours_r=0.1"
    assert rows["MLCD_1:3+KD"]["final_score"] == ours["final_score"] and "search" not in rows["MLCD_1:3+KD"]
    assert not (tmp_path / "work" / "uniform_k=1").exists()
    assert "| MLCD_1:3+KD (= Ours_r=0.1) |" in (tmp_path / "out" / "quality.md").read_text()
    pairs = data["checks"]["searched_vs_uniform_at_equal_or_higher_sparsity"]
    assert {(p["ours"], p["uniform"]) for p in pairs} == {("Ours_r=0.1", "MLCD_2:2+KD")}  # not itself
    # the searched plan before KD: the MLCD model with the plan, compared with the untrained uniform plans
    search = rows["Search_r=0.1"]
    assert search["plan"] == [1, 1] and search["training"] is None and search["steps"] == mlcd["steps"]
    assert search["final_score"] == rows["MLCD_1:3"]["final_score"]  # the same plan on the same model, same seeds
    pairs = data["checks"]["searched_vs_uniform_without_kd"]
    assert {(p["ours"], p["uniform"]) for p in pairs} == {("Search_r=0.1", "MLCD_2:2")}
    assert "before KD (the search's own choice)" in (tmp_path / "out" / "quality.md").read_text()
    # --jobs 2: the first two KD runs trained side by side in their own processes (a log each), the third in-process
    work = tmp_path / "work"
    assert (work / "ours_r=0.1.log").is_file() and (work / "uniform_k=2.log").is_file()
    assert not (work / "ablation" / "kd_base.log").exists()
    assert ours["training"]["steps"] == rows["MLCD_2:2+KD"]["training"]["steps"] == 2
    # KD runs at the learning rate the MLCD model was distilled with (recorded in its mlcd_config.json)
    mlcd_lr = json.loads((work / "mlcd" / "mlcd_config.json").read_text())["learning_rate"]
    assert mlcd_lr == 2e-4 and data["settings"]["kd_learning_rate"] == mlcd_lr
    assert json.loads((work / "ours_r=0.1" / "kd_config.json").read_text())["learning_rate"] == mlcd_lr
    kd_then_mlcd = data["order_ablation"][1]["training"]
    assert kd_then_mlcd["kd"]["steps"] == 2 and kd_then_mlcd["mlcd"]["steps"] == 2


def test_reproduce_clock_reserves_the_evaluations_and_never_starves_a_training_run(capsys):
    script = import_script("reproduce_tables")
    clock = script.Clock(2.0, min_train_minutes=0.5)
    clock.eval_s = 10.0
    left_s = clock.deadline - clock.start - (3 * 10.0 + 5.0)  # 3 evaluations of 10 s and 5 s of slack kept
    assert clock.minutes_for(1, 2, evals_left=3) == pytest.approx(left_s / 2 / 60, abs=0.01)
    assert "warning" not in capsys.readouterr().out
    # 20 evaluations of 10 s leave nothing of the 2 minutes: the run gets the floor and says so
    assert clock.minutes_for(1, 2, evals_left=20) == 0.5
    assert "--min_train_minutes" in capsys.readouterr().out


def test_reproduce_kd_extra_args_reach_every_kd_run_and_win(tmp_path):
    script = import_script("reproduce_tables")
    args = script.parse_args(["--work_dir", str(tmp_path), "--kd_learning_rate", "1e-4", "--device", "cpu",
                              "--kd_extra_args", "--learning_rate 3e-5 --use_lora --lora_rank 16"])
    argv = import_script("stage_runs").kd_argv(args, str(tmp_path / "kd"), 1.0, ["--plan", "uniform:2"])
    kd = import_script("train_kd").parse_args(argv + ["--teacher", "x"])
    assert kd.learning_rate == 3e-5 and kd.use_lora and kd.lora_rank == 16 and kd.plan == "uniform:2"


@pytest.mark.parametrize("flag, value, minimum", [("--jobs", "0", 1), ("--num_segments", "0", 1),
                                                  ("--kd_batch_size", "-1", 1), ("--cache_samples", "-1", 0),
                                                  ("--max_kd_waves", "-1", 0)])
def test_reproduce_counts_out_of_range_are_usage_errors_naming_the_flag(flag, value, minimum, capsys):
    with pytest.raises(SystemExit) as exit_info:
        import_script("reproduce_tables").parse_args([flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected an integer >= {minimum}, got '{value}'" in capsys.readouterr().err


def test_reproduce_tables_stops_after_max_kd_waves_and_resumes(tmp_path):
    script = import_script("reproduce_tables")
    common = ["--smoke", "--work_dir", str(tmp_path / "work"), "--out_dir", str(tmp_path / "out"), "--ratios", "0.1",
              "--uniform_ks", "2", "--jobs", "2"]
    with pytest.raises(SystemExit) as stop:  # first call: search + the first KD wave (ours_r=0.1, uniform_k=2)
        script.main(common + ["--max_kd_waves", "1"])
    assert stop.value.code == 3
    partial = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert not partial["complete"] and [r["name"] for r in partial["rows"]] == ["Base", "MLCD"]
    work = tmp_path / "work"
    first_wave = {d: (work / d / "kd_config.json").stat().st_mtime_ns for d in ("ours_r=0.1", "uniform_k=2")}
    assert not (work / "ablation" / "kd_base" / "kd_config.json").exists()
    mlcd_saved = (work / "mlcd" / "reproduce_summary.json").stat().st_mtime_ns
    plan_saved = (work / "plans" / "ours_r=0.1.json").stat().st_mtime_ns
    base_eval = (work / "evals" / "Base.json").stat().st_mtime_ns

    script.main(common + ["--resume"])  # second call: the rest, reusing what the first one finished
    data = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert data["complete"]
    assert [r["name"] for r in data["rows"]] == ["Base", "MLCD", "Ours_r=0.1", "Search_r=0.1", "MLCD_2:2",
                                                 "MLCD_2:2+KD"]
    assert {d: (work / d / "kd_config.json").stat().st_mtime_ns for d in first_wave} == first_wave
    assert (work / "mlcd" / "reproduce_summary.json").stat().st_mtime_ns == mlcd_saved
    assert (work / "plans" / "ours_r=0.1.json").stat().st_mtime_ns == plan_saved
    assert (work / "evals" / "Base.json").stat().st_mtime_ns == base_eval
    assert (work / "ablation" / "kd_then_mlcd" / "kd_config.json").is_file()
    rows = {r["name"]: r for r in data["rows"]}
    assert rows["Ours_r=0.1"]["training"]["steps"] == 2  # the kept summary of the first call's run
    assert "with `--resume`" in (tmp_path / "out" / "quality.md").read_text()
    assert [p.name for p in work.glob("latents-*.pt")] == ["latents-seed0-n16.pt"]  # one cache for every run


def test_reproduce_resume_reuses_only_a_kd_run_of_the_same_teacher_and_plan(tmp_path):
    script = import_script("reproduce_tables")
    run = tmp_path / "kd"
    run.mkdir()
    (run / "model_index.json").write_text("{}")
    assert not script.finished_run(str(run), ["--teacher", str(tmp_path / "t"), "--plan", "uniform:2"])  # unfinished
    (run / "kd_config.json").write_text(json.dumps({"teacher": str(tmp_path / "t"), "plan_layers": [2, 2, 2]}))
    assert script.finished_run(str(run), ["--teacher", str(tmp_path / "t"), "--plan", "uniform:2"])
    assert not script.finished_run(str(run), ["--teacher", str(tmp_path / "other"), "--plan", "uniform:2"])
    assert not script.finished_run(str(run), ["--teacher", str(tmp_path / "t"), "--plan", "uniform:1"])
    plan = tmp_path / "plan.json"
    MaskPlan([2, 2, 2]).save(plan)
    assert script.finished_run(str(run), ["--teacher", str(tmp_path / "t"), "--plan", str(plan), "--kd_weight", "0"])
    MaskPlan([2, 1, 2]).save(plan)
    assert not script.finished_run(str(run), ["--teacher", str(tmp_path / "t"), "--plan", str(plan)])


def test_train_kd_latent_cache_file_is_built_once_then_loaded_without_rendering(tmp_path, monkeypatch):
    from diffusers_evdit import data as evdit_data

    cache = tmp_path / "cache" / "latents.pt"
    common = ["--teacher", "tiny:wan", "--plan", "uniform:1", *TINY, "--max_train_steps", 3,
              "--synthetic_num_samples", 4, "--checkpointing_steps", 0, "--no_final_validation"]
    lazy = run_kd([*common, "--output_dir", tmp_path / "lazy", "--cache_latents"])  # encodes clips as they come
    built = run_kd([*common, "--output_dir", tmp_path / "built", "--latent_cache", cache])
    kept = torch.load(cache)
    assert len(kept["mean"]) == 4 and kept["identity"]["items"] == 4
    stamp = cache.stat().st_mtime_ns

    def no_render(self, index):
        raise AssertionError("a clip was rendered although every latent is cached")

    with monkeypatch.context() as m:
        m.setattr(evdit_data.SyntheticVideoDataset, "__getitem__", no_render)
        loaded = run_kd([*common, "--output_dir", tmp_path / "loaded", "--latent_cache", cache])
    assert cache.stat().st_mtime_ns == stamp  # loaded, not written again
    for run in (built, loaded):  # the same posteriors and draws as the lazy cache: the same training
        assert [r["loss"] for r in run["losses"]] == pytest.approx([r["loss"] for r in lazy["losses"]], rel=1e-5)
    # other data: the file is encoded again
    run_kd([*common[:-5], "--synthetic_num_samples", 2, *common[-3:], "--output_dir", tmp_path / "other",
            "--latent_cache", cache])
    assert len(torch.load(cache)["mean"]) == 2


def test_matched_sparsity_check_interpolates_the_uniform_curve_at_the_searched_sparsity():
    report = import_script("quality_report")
    uniform = [{"name": "MLCD_2:2+KD", "sparsity": 0.2, "frechet": 0.3, "plan": [2, 2]},
               {"name": "MLCD_1:3+KD", "sparsity": 0.5, "frechet": 0.6, "plan": [1, 1]}]
    searched = [{"name": "Ours_r=a", "sparsity": 0.35, "frechet": 0.44, "plan": [2, 1]},  # curve there: 0.45
                {"name": "Ours_r=b", "sparsity": 0.35, "frechet": 0.46, "plan": [1, 2]},
                {"name": "Ours_r=c", "sparsity": 0.7, "frechet": 0.1, "plan": [1, 0]},  # beyond the curve
                {"name": "Ours_r=d", "sparsity": 0.5, "frechet": 0.6, "plan": [1, 1]}]  # a uniform plan itself
    got = report.matched_sparsity(searched, uniform)
    assert [(p["ours"], p["ours_better"]) for p in got] == [("Ours_r=a", True), ("Ours_r=b", False)]
    assert got[0]["uniform_frechet_at_sparsity"] == pytest.approx(0.3 + (0.6 - 0.3) * 0.15 / 0.3)


def test_render_rewrites_the_markdown_and_checks_of_a_finished_table(tmp_path):
    script = import_script("reproduce_tables")
    row = lambda name, sparsity, frechet, plan, score: {  # noqa: E731
        "name": name, "steps": 4, "sparsity": sparsity, "final_score": score, "frechet": frechet, "plan": plan,
        "speedup": 6.0, "step_speedup": 1.2, "step_speedup_source": "derived", "speedup_incl_cfg": 12.0}
    rows = [dict(row("Base", 0.0, 0.2, None, 0.82), steps=20, speedup=1.0),
            row("Ours_r=0.1", 0.35, 0.44, [2, 1], 0.815),
            row("MLCD_2:2+KD", 0.2, 0.3, [2, 2], 0.8), row("MLCD_1:3+KD", 0.5, 0.6, [1, 1], 0.7)]
    data = {"complete": True, "smoke": False, "date": "2026-11-23", "total_minutes": 1.0, "rows": rows,
            "order_ablation": [], "speedup_source": None, "checks": None,
            "settings": {"model": "m", "device": "cpu", "eval_prompts": 4, "latent_frames": 4, "tokens_per_frame": 4,
                         "num_segments": 4, "task_weight": 100.0, "kd_weight": 1.0}}
    (tmp_path / "quality.json").write_text(json.dumps(data))
    script.main(["--render", str(tmp_path)])
    checks = json.loads((tmp_path / "quality.json").read_text())["checks"]
    assert checks["ours_within_0.01_of_base_at_5x"] == ["Ours_r=0.1"]
    assert [p["ours_better"] for p in checks["searched_vs_uniform_curve_at_matched_sparsity"]] == [True]
    # the wording: uniform plans at least as sparse as the searched one (only 1:3, 50% >= 35%)
    assert [(p["uniform"], p["ours_better"]) for p in checks["searched_vs_sparser_uniform"]] == [("MLCD_1:3+KD", True)]
    assert [p["uniform"] for p in checks["searched_vs_uniform_at_equal_or_higher_sparsity"]] == ["MLCD_2:2+KD"]
    md = (tmp_path / "quality.md").read_text()
    assert "within 0.01 of Base's final_score at >= 5x speedup: Ours_r=0.1." in md
    assert "Ours_r=0.1 (35.0%): 0.440 vs uniform 0.450: searched better" in md


@pytest.mark.parametrize("family, says", [
    ("mochi", "not MochiTransformer3DModel"),
    ("ltx2_video", "not LTX2VideoTransformer3DModel"),
    ("skyreels_v2_df", "diffusion-forcing SkyReels-V2"),  # a supported family, but per-frame timesteps
])
def test_distillation_refuses_transformers_it_cannot_drive_and_says_plans_still_work(family, says):
    import re

    from diffusers_evdit.mlcd import check_predictor_family

    transformer = tiny_transformer(family)
    for call in (TransformerPredictor, check_predictor_family):
        with pytest.raises(NotImplementedError, match=re.escape(says)) as info:
            call(transformer)
        assert "mask plans" in str(info.value).lower()


def test_distillation_encoders_refuse_a_pipeline_of_another_family():
    from diffusers_evdit.mlcd import encode_prompts, encode_video_posteriors
    from diffusers_evdit.tiny import tiny_pipeline

    pipe = tiny_pipeline("wan")
    pipe.transformer = tiny_transformer("mochi")  # a family distillation cannot drive
    with pytest.raises(NotImplementedError, match="MochiTransformer3DModel"):
        encode_prompts(pipe, ["a dog"])
    with pytest.raises(NotImplementedError, match="MochiTransformer3DModel"):
        encode_video_posteriors(pipe, torch.zeros(1, 3, 9, 32, 32))
    for family in ("cogvideox", "wan", "hunyuan_video", "skyreels_v2", "ltx_video", "hunyuan_video15"):
        assert TransformerPredictor(tiny_transformer(family)).family == family
