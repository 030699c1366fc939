"""``evdit bench kernels`` on CPU-sized shapes: the JSON rows follow the issue's formulas."""

import json
import statistics

import pytest

from diffusers_evdit.bench.kernels import QUICK_SHAPES, run_kernel_benchmark
from diffusers_evdit.cli import main
from diffusers_evdit.masks import tile_mask


def test_kernel_benchmark_rows_follow_the_formulas(tmp_path):
    path = tmp_path / "kernels.json"
    data = run_kernel_benchmark(str(path), QUICK_SHAPES, "cpu", kernels=("split", "gathered"), rep_ms=2, rounds=2)
    assert json.loads(path.read_text())["rows"] == data["rows"]
    assert data["rounds"] == 2 and data["complete"]
    assert len(data["rows"]) == sum(len(s.masks) for s in QUICK_SHAPES)
    for row in data["rows"]:
        shape = next(s for s in QUICK_SHAPES if s.name == row["shape"])
        k_ref = int(row["mask"].split(":")[0])
        sparsity = 1 - tile_mask(shape.layout, k_ref).double().mean().item()  # from the explicit mask
        assert row["element_sparsity"] == pytest.approx(sparsity)
        assert row["ideal"] == pytest.approx(1 / (1 - sparsity))
        times = {name: row[f"{name}_ms"] for name in ("split", "gathered")}
        assert row["kernel"] == min(times, key=times.get) and row["sparse_ms"] == times[row["kernel"]]
        assert row["speedup"] == pytest.approx(row["best_dense_ms"] / row["sparse_ms"])
        assert row["pct_of_ideal"] == pytest.approx(100 * row["speedup"] / row["ideal"])
        assert row["rounds"] == 2
        assert row["best_dense_ms"] == statistics.median(row["dense_ms_rounds"])
        assert row["sparse_ms"] == statistics.median(row["sparse_ms_rounds"])
        assert row["pct_of_ideal_rounds"] == pytest.approx(
            [100 * d * (1 - sparsity) / t for d, t in zip(row["dense_ms_rounds"], row["sparse_ms_rounds"])])
        assert row["split_rel_err"] < 1e-5 and row["gathered_rel_err"] < 1e-5  # float32 on CPU
        # 128-token blocks cover every kept pair, so they keep at least the mask's share of the matrix
        assert 1 - sparsity <= row["block_kept_share"] <= 1 and 0 <= row["block_partial_share"] <= 1
        assert row["block_bound_pct_of_ideal"] == pytest.approx(100 * (1 - sparsity) / row["block_kept_share"])


def test_kernel_benchmark_rejects_zero_rounds():
    with pytest.raises(ValueError, match="rounds"):
        run_kernel_benchmark(None, QUICK_SHAPES[:1], "cpu", kernels=("split",), rep_ms=1, rounds=0)


def test_bench_kernels_cli_quick(tmp_path, capsys):
    path = tmp_path / "k.json"
    assert main(["bench", "kernels", "--quick", "--device", "cpu", "--kernels", "split", "--rep-ms", "1",
                 "--rounds", "1", "--out", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["split"] * len(rows)
    assert statistics.median(r["pct_of_ideal_rounds"][0] for r in rows) > 0
    assert "pct_of_ideal" in capsys.readouterr().out


def test_small_shapes_hold_the_demo_model_shape_and_every_row_has_seq_len(tmp_path):
    import json as _json
    from pathlib import Path

    from diffusers_evdit.bench.kernels import SHAPES, SMALL_SHAPES, select_shapes

    config = _json.loads((Path(__file__).parents[1] / "diffusers_evdit/demo_model/transformer/config.json").read_text())
    demo = SMALL_SHAPES[0]
    assert (demo.frames, demo.tokens_per_frame, demo.text_tokens) == (8, 64, 0)
    assert (demo.heads, demo.head_dim) == (config["num_attention_heads"], config["attention_head_dim"])
    lengths = [s.layout.seq_len for s in SMALL_SHAPES]
    assert lengths == sorted(lengths) and lengths[-1] < min(s.layout.seq_len for s in SHAPES)
    assert select_shapes(["small"]) == SMALL_SHAPES and select_shapes(["all"]) == SMALL_SHAPES + SHAPES
    assert select_shapes(["full", SHAPES[0].name]) == SHAPES  # no duplicates
    with pytest.raises(ValueError, match="small"):
        select_shapes(["tiny"])
    data = run_kernel_benchmark(None, (demo,), "cpu", kernels=("split", "auto"), rep_ms=1, rounds=1)
    assert [r["seq_len"] for r in data["rows"]] == [512] * len(demo.masks)
    for row in data["rows"]:
        assert row["mode"] == "fwd" and row["auto_rel_err"] < 1e-5
        assert row["auto_vs_dense"] == pytest.approx(row["best_dense_ms"] / row["auto_ms"])


def test_reference_query_gradient_rows_match_autograd():
    import torch
    from reference import attention_f64

    from diffusers_evdit.bench.kernels import reference_grad_q_rows, sampled_rows

    layout = QUICK_SHAPES[0].layout
    g = torch.Generator().manual_seed(1)
    q, k, v, do = torch.randn(4, 1, 2, layout.seq_len, 8, generator=g, dtype=torch.float64).unbind(0)
    q.requires_grad_()
    (dq,) = torch.autograd.grad(attention_f64(q, k, v, tile_mask(layout, 2)), q, do)
    rows = sampled_rows(layout, 3, g)
    assert torch.allclose(reference_grad_q_rows(q.detach(), k, v, do, layout, 2, rows), dq[:, :, rows], atol=1e-12)


def test_backward_rows_time_forward_and_backward(tmp_path):
    path = tmp_path / "bwd.json"
    assert main(["bench", "kernels", "--shapes", "quick", "--device", "cpu", "--kernels", "split", "gathered",
                 "--backward", "--rep-ms", "1", "--rounds", "1", "--out", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["mode"] == "fwd+bwd" and len(data["rows"]) == sum(len(s.masks) for s in QUICK_SHAPES)
    for row in data["rows"]:
        assert row["mode"] == "fwd+bwd" and row["best_dense"] == "dense_sdpa"
        assert row["gathered_ms"] > 0 and row["gathered_grad_rel_err"] < 1e-5
        # split is timed where it has a backward pass (exact), else skipped with a note
        assert (row["split_ms"] is None and "split_note" in row) or row["split_grad_rel_err"] < 1e-5
        assert row["speedup"] == pytest.approx(row["best_dense_ms"] / row["sparse_ms"])


def test_backward_check_refuses_a_kernel_with_a_wrong_gradient(monkeypatch):
    import diffusers_evdit.bench.kernels as bench_kernels

    real = bench_kernels.make_attention

    def make(name):
        gathered = real("gathered")
        if name != "no_lse_grad":
            return gathered
        # the right output, but the gradient of the merge weights dropped (as a fused LSE without gradient would)
        return lambda q, k, v, layout, k_ref: gathered(q, k, v, layout, k_ref).detach() + 0 * q

    monkeypatch.setattr(bench_kernels, "make_attention", make)
    rows = bench_kernels.bench_shape(QUICK_SHAPES[0], bench_kernels.torch.device("cpu"), bench_kernels.torch.float32,
                                     ("gathered", "no_lse_grad"), rep_ms=1, rounds=1, backward=True)
    for row in rows:
        assert row["no_lse_grad_rel_err"] < 1e-5 and row["no_lse_grad_grad_rel_err"] > 0.5
        assert row["no_lse_grad_ms"] is None and row["kernel"] == "gathered"


@pytest.mark.parametrize("model", ["tiny_wan", "tiny_cogvideox_lora"])
def test_train_step_benchmark_on_tiny_models(tmp_path, model):
    path = tmp_path / "train.json"
    assert main(["bench", "train-step", "--models", model, "--device", "cpu", "--reps", "1", "--kernel", "gathered",
                 "--out", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["benchmark"] == "train-step" and {"device", "torch", "date"} <= set(data)
    (row,) = data["rows"]
    assert row["model"] == model and row["plan"] == "uniform 1:5" and row["losses_finite"]
    assert row["speedup"] == pytest.approx(row["dense_step_s"] / row["sparse_step_s"])
    assert row["peak_mem_gib"] is None and row["device"] == data["device"]  # CPU: no CUDA peak
    assert row["kernel_used"] == "gathered"


def test_kd_step_trains_the_student_through_the_sparse_plan():
    import torch

    from diffusers_evdit import MaskPlan, apply_mask_plan
    from diffusers_evdit.bench.train import TRAIN_MODELS, KDStep, build_teacher, make_inputs, make_student

    spec = TRAIN_MODELS["tiny_cogvideox_lora"]
    teacher = build_teacher(spec, torch.device("cpu"), torch.float32)
    student, params = make_student(teacher, spec)
    assert params and all("lora_" in n for n, p in student.named_parameters() if p.requires_grad)
    apply_mask_plan(student, MaskPlan.uniform(2, 1), kernel="gathered")
    step = KDStep(student, teacher, params, make_inputs(teacher, spec, torch.device("cpu"), torch.float32), lr=1e-2)
    before = [p.detach().clone() for p in params]
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    losses = [step() for _ in range(3)]
    step.remove()
    assert losses[-1] < losses[0]  # the student moves towards its teacher
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    assert all(torch.equal(a, p) for a, p in zip(teacher_before, teacher.parameters()))


@pytest.mark.parametrize("name", ["wan2.1-1.3b_81f_480p", "cogvideox-5b_49f_480p"])
def test_full_size_train_models_take_their_inputs(name):
    """The full-size rows' inputs fit their model's config (16 latent channels, 4096-wide text): one forward on the
    meta device, no memory and no GPU. The 4-channel inputs of the tiny configs failed here on an H100."""
    import torch

    from diffusers_evdit.bench.train import TRAIN_MODELS, build_teacher, make_inputs

    spec, meta = TRAIN_MODELS[name], torch.device("meta")
    model = build_teacher(spec, meta, torch.bfloat16)
    inputs = make_inputs(model, spec, meta, torch.bfloat16)
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
    assert out.shape == inputs["hidden_states"].shape
    assert inputs["encoder_hidden_states"].shape[1:] == (spec.video.text_tokens, 4096)


def test_train_step_refuses_full_size_models_on_cpu():
    from diffusers_evdit.bench.train import run_train_step_benchmark

    with pytest.raises(ValueError, match="CUDA"):
        run_train_step_benchmark(None, ("wan2.1-1.3b_81f_480p",), "cpu")


def test_train_step_reports_a_failing_model_and_goes_on(monkeypatch):
    import diffusers_evdit.bench.train as train

    real = train.bench_train_model

    def flaky(spec, *args, **kwargs):
        if spec.name == "tiny_cogvideox_lora":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(train, "bench_train_model", flaky)
    rows = train.run_train_step_benchmark(None, ("tiny_cogvideox_lora", "tiny_wan"), "cpu", "gathered", reps=1)["rows"]
    assert "out of memory" in rows[0]["error"] and rows[1]["model"] == "tiny_wan" and rows[1]["speedup"] > 0


def test_compare_summary_pairs_each_test_video_across_training_seeds():
    """benchmarks/compare_summary.py: per-seed means and the paired searched - uniform difference, against numbers
    worked out by hand for two seeds x two rounds of two videos."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_summary.py"
    spec = importlib.util.spec_from_file_location("compare_summary", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def row(name, videos):
        return {"name": name, "rounds": [{"per_video_final": videos[:2]}, {"per_video_final": videos[2:]}]}

    data = {"rows": [row("Base", [0.9] * 4), row("searched-s0", [0.5, 0.6, 0.7, 0.8]),
                     row("uniform-s0", [0.4, 0.6, 0.7, 0.6]), row("searched-s1", [0.3, 0.2, 0.1, 0.2]),
                     row("uniform-s1", [0.3, 0.4, 0.1, 0.2]), row("searched-s2", [0.0] * 4)]}  # s2: no uniform row
    s = script.summarize(data)
    assert s["searched"]["per_training_seed"] == [0.65, 0.2] and s["uniform"]["per_training_seed"] == [0.575, 0.25]
    assert s["searched"]["mean"] == 0.425 and s["searched"]["std"] == pytest.approx(0.3182, abs=1e-4)
    # per video, mean over seeds of searched - uniform: (0.1+0)/2, (0-0.2)/2, 0, (0.2+0)/2 = 0.05, -0.1, 0, 0.1
    d = s["paired_searched_minus_uniform"]
    assert d["mean"] == pytest.approx(0.0125) and d["n_videos"] == 4 and d["training_seeds"] == [0, 1]
    assert d["stderr"] == pytest.approx(statistics.stdev([0.05, -0.1, 0.0, 0.1]) / 2, abs=1e-4)
    with pytest.raises(SystemExit, match="no training seed"):
        script.summarize({"rows": [row("searched-s0", [0.5] * 4)]})


def test_demo_frontier_takes_interleaved_timings_where_a_row_of_the_same_cost_was_timed(tmp_path):
    """benchmarks/plot_demo_frontier.py: which speedup each point gets (interleaved rounds over single timings, the
    8-step rounds for the 8-step mean), which rows it leaves out, and that it draws."""
    from example_scripts import import_script

    script = import_script("plot_demo_frontier")

    def row(name, steps, diff, speedup, sparsity=0.0):
        return {"name": name, "steps": steps, "wallclock_speedup": speedup, "plan": {"sparsity": sparsity},
                "paired_difference_vs_first_row": {"mean": diff, "stderr": 0.02}}

    data = {
        "rows": [row("Base", 20, 0.0, 1.0), row("MLCD", 4, -0.08, 6.2), row("Base-4", 4, -0.25, 3.5),
                 row("MLCD + uniform 3:5, no KD", 4, -0.15, 6.3, 0.31)],
        "gpu_timing": {"device_name": "GPU X",
                       "rows_timing": {"rows": [{"name": "Base", "wallclock_speedup": 1.0},
                                                {"name": "MLCD", "wallclock_speedup": 9.9}]},
                       "steps_timing": {"rows": [{"name": "Base", "steps": 20, "wallclock_speedup": 1.0},
                                                 {"name": "8 steps, no CFG", "steps": 8, "wallclock_speedup": 4.8}]}},
        "stage1_steps_s8_seeds": {"summary": {"paired_vs_base": {"mean": -0.05, "stderr": 0.018}}},
        "stage1_steps_s8_evdit": {"rows": [row("Base", 20, 0.0, 1.0),
                                           row("8 segments + shipped-plan + KD", 8, -0.04, 4.7, 0.25)]},
    }
    points = {p["name"]: p for p in script.frontier_points(data)}
    assert set(points) == {"Base (20 steps, CFG)", "MLCD (shipped, 4 steps)", "Base, 4 steps",
                           "8 steps, mean of 3 training seeds", "8 steps + plan + KD (one run)"}
    mlcd = points["MLCD (shipped, 4 steps)"]
    assert (mlcd["speedup"], mlcd["interleaved"], mlcd["diff"]) == (9.9, True, -0.08)  # the rounds, not 6.2
    assert (points["Base, 4 steps"]["speedup"], points["Base, 4 steps"]["interleaved"]) == (3.5, False)
    eight = points["8 steps, mean of 3 training seeds"]
    assert (eight["speedup"], eight["diff"], eight["stderr"], eight["interleaved"]) == (4.8, -0.05, 0.018, True)
    kd = points["8 steps + plan + KD (one run)"]
    assert (kd["speedup"], kd["sparse"], kd["interleaved"]) == (4.7, True, False)
    with_plans = script.frontier_points(data, with_plans_without_kd=True)
    assert "MLCD + uniform 3:5, no KD" in {p["name"] for p in with_plans}
    out = script.plot_frontier(list(points.values()), "GPU X", str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 1000 and out.endswith("f.png")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"rows": data["rows"]}))
    with pytest.raises(SystemExit, match="lacks gpu_timing, stage1_steps_s8_seeds, stage1_steps_s8_evdit"):
        script.main(["--results", str(partial), "--out", str(tmp_path / "g.png")])

