"""A distilled student shipped as a weight delta inside its base pipeline's folder loads as a whole pipeline
(diffusers_evdit.students: EfficientVDiTPipeline.from_pretrained, evdit generate / eval / profile / search)."""

import json
import shutil

import pytest
import torch

from diffusers_evdit import EfficientVDiTPipeline, MaskPlan
from diffusers_evdit.cli import main
from diffusers_evdit.generation import GenerationDefaults
from diffusers_evdit.schedulers import mlcd_scheduler_from
from diffusers_evdit.students import is_delta_student
from diffusers_evdit.tiny import tiny_pipeline
from diffusers_evdit.weight_delta import GROUP, save_delta


@pytest.fixture(scope="module")
def base_with_student(tmp_path_factory):
    """A tiny Wan base pipeline folder (dense, 20-step defaults) with a 4-step student ``evdit/`` inside it: a
    weight delta, the MLCD scheduler, 4-step defaults without guidance, and a 1:1 plan."""
    root = tmp_path_factory.mktemp("students") / "model"
    base = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"))
    base.set_generation_defaults(num_frames=9, height=32, width=48, num_inference_steps=20, guidance_scale=4.0)
    base.save_pretrained(root)
    student = EfficientVDiTPipeline.from_pretrained(root).transformer
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    folder = root / "evdit"
    folder.mkdir()
    save_delta(student, EfficientVDiTPipeline.from_pretrained(root).transformer, str(folder))
    sigmas = [1.0, 0.75, 0.5, 0.25]
    mlcd_scheduler_from(base.scheduler, [round(999 * s) for s in sigmas], sigmas=sigmas).save_pretrained(
        folder / "scheduler")
    GenerationDefaults(num_frames=9, height=32, width=48, num_inference_steps=4, guidance_scale=1.0).save(folder)
    MaskPlan.uniform(2, k=1).save(folder / "mask_plan.json")
    return root, student


def test_student_folder_loads_as_the_base_pipeline_with_its_own_parts(base_with_student):
    root, student = base_with_student
    folder = root / "evdit"
    assert is_delta_student(folder) and not is_delta_student(root)
    pipe = EfficientVDiTPipeline.from_pretrained(folder)
    base = EfficientVDiTPipeline.from_pretrained(root)
    assert type(pipe).__name__ == "EfficientVDiTWanPipeline"
    assert type(pipe.scheduler).__name__ == "MLCDFlowMatchEulerScheduler" and type(base.scheduler).__name__ != \
        type(pipe.scheduler).__name__
    assert pipe.mask_plan.layers == [1, 1] and base.mask_plan is None
    assert pipe.generation_defaults.call_kwargs()["num_inference_steps"] == 4
    assert pipe.generation_defaults.call_kwargs()["guidance_scale"] == 1.0
    for name, want in student.state_dict().items():  # each weight within half a 4-bit step of the trained student
        got, before = pipe.transformer.state_dict()[name], base.transformer.state_dict()[name]
        change = (want - before).abs()
        if want.ndim == 2 and want.shape[1] % GROUP == 0:
            step = change.reshape(want.shape[0], -1, GROUP).amax(-1, keepdim=True).expand(-1, -1, GROUP) / 7
            assert bool(((got - want).abs() <= step.reshape(want.shape) / 2 * 1.01 + 1e-7).all()), name
        else:  # float16 deltas
            torch.testing.assert_close(got, want, rtol=0, atol=float(change.max()) * 1e-3 + 1e-6)
    for part in ("vae", "text_encoder"):  # the base's components, as saved
        for (name, p), q in zip(getattr(pipe, part).state_dict().items(), getattr(base, part).state_dict().values()):
            assert torch.equal(p, q), (part, name)


def test_student_folder_plan_arguments_and_errors(base_with_student, tmp_path):
    root, _ = base_with_student
    folder = root / "evdit"
    assert EfficientVDiTPipeline.from_pretrained(folder, mask_plan=None).mask_plan is None
    own = EfficientVDiTPipeline.from_pretrained(root).scheduler
    assert EfficientVDiTPipeline.from_pretrained(folder, scheduler=own).scheduler is own  # a scheduler passed wins
    assert EfficientVDiTPipeline.from_pretrained(folder, mask_plan=MaskPlan([None, 1])).mask_plan.layers == [None, 1]
    with pytest.raises(ValueError, match="one plan, for transformer"):
        EfficientVDiTPipeline.from_pretrained(folder, mask_plan_2="saved")
    plan = folder / "mask_plan.json"
    kept = plan.read_text()
    MaskPlan.uniform(3, k=1).save(plan)  # a plan for another model: the error names the file and the way out
    try:
        with pytest.raises(ValueError, match=r"evdit/mask_plan.json: .*3 layers.*mask_plan=None to run dense"):
            EfficientVDiTPipeline.from_pretrained(folder)
        assert EfficientVDiTPipeline.from_pretrained(folder, mask_plan=None).mask_plan is None
    finally:
        plan.write_text(kept)
    loose = tmp_path / "alone"
    shutil.copytree(folder, loose)
    with pytest.raises(ValueError, match="folder above it.*no model_index.json"):
        EfficientVDiTPipeline.from_pretrained(loose)
    (loose / "scheduler" / "scheduler_config.json").unlink()
    shutil.copytree(loose, root / "broken")
    with pytest.raises(ValueError, match="no scheduler/scheduler_config.json"):
        EfficientVDiTPipeline.from_pretrained(root / "broken")
    shutil.rmtree(root / "broken")


def test_generate_runs_a_student_folder_with_its_defaults(base_with_student, tmp_path, capsys):
    root, _ = base_with_student
    out = tmp_path / "frames"
    assert main(["generate", "--model", str(root / "evdit"), "--prompt", "a red circle", "--out", str(out) + "/"]) == 0
    printed = capsys.readouterr().out
    assert "num_inference_steps=4 (model default)" in printed and "guidance_scale=1.0 (model default)" in printed
    assert "4 steps x 1 = 4 transformer calls" in printed and "k per layer [1, 1]" in printed
    assert len(list(out.glob("*.png"))) == 9


def test_the_shipped_students_are_delta_folders_of_the_demo_model():
    from diffusers_evdit.demo import DEMO_MODEL_DIR

    for name in ("mlcd", "evdit"):
        folder = f"{DEMO_MODEL_DIR}/{name}"
        assert is_delta_student(folder), folder
        with open(f"{folder}/scheduler/scheduler_config.json", encoding="utf-8") as f:
            assert json.load(f)["_class_name"] == "MLCDFlowMatchEulerScheduler"


def test_eval_scores_a_student_folder_at_its_own_steps_and_plan(base_with_student, tmp_path, capsys):
    root, _ = base_with_student
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(root / "evdit"), "--plan", "saved", "--prompts", "1", "--json", str(out),
                 "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["generation"]["num_inference_steps"] == 4 and data["generation"]["guidance_scale"] == 1.0
    assert data["timing"]["steps"] == 4 and data["plan"]["layers"] == [1, 1] and data["plan"]["sparsity"] > 0
    assert data["model"].endswith("evdit") and data["num_videos"] == 1


def test_a_loaded_student_saves_as_an_ordinary_whole_pipeline(base_with_student, tmp_path):
    root, _ = base_with_student
    pipe = EfficientVDiTPipeline.from_pretrained(root / "evdit")
    pipe.save_pretrained(tmp_path / "whole")
    assert (tmp_path / "whole" / "model_index.json").is_file() and not is_delta_student(tmp_path / "whole")
    again = EfficientVDiTPipeline.from_pretrained(tmp_path / "whole")
    assert type(again.scheduler).__name__ == "MLCDFlowMatchEulerScheduler" and again.mask_plan.layers == [1, 1]
    assert again.generation_defaults.call_kwargs()["num_inference_steps"] == 4
    for (name, p), q in zip(pipe.transformer.state_dict().items(), again.transformer.state_dict().values()):
        assert torch.equal(p, q), name


def test_profile_and_search_load_a_student_folder_as_its_transformer(base_with_student):
    from diffusers_evdit.analysis import load_transformer

    root, _ = base_with_student
    transformer = load_transformer(str(root / "evdit"))
    want = EfficientVDiTPipeline.from_pretrained(root / "evdit").transformer
    for (name, p), q in zip(transformer.state_dict().items(), want.state_dict().values()):
        assert torch.equal(p, q), name
