"""A student shipped as a 4-bit grouped delta from its base (diffusers_evdit.weight_delta)."""

import pytest
import torch

from diffusers_evdit.weight_delta import GROUP, apply_delta, compress_delta, load_delta, save_delta
from diffusers_evdit.tiny import tiny_transformer


def _student_of(base, scale=0.02, seed=0):
    student = tiny_transformer("wan")
    student.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return student


def test_every_weight_is_within_half_a_4bit_step_of_the_student(tmp_path):
    base = tiny_transformer("wan")
    student = _student_of(base)
    save_delta(student, base, str(tmp_path))
    restored = load_delta(base, str(tmp_path))
    for (name, want), got in zip(student.state_dict().items(), restored.state_dict().values()):
        change = want - tiny_transformer("wan").state_dict()[name]  # tiny_transformer is seeded: the same base
        if want.ndim == 2 and want.shape[1] % GROUP == 0:
            groups = change.reshape(want.shape[0], -1, GROUP).abs().amax(-1, keepdim=True)
            step = (groups / 7).expand(-1, -1, GROUP).reshape(want.shape)
            assert bool(((got - want).abs() <= step / 2 * 1.01 + 1e-7).all()), name
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=float(change.abs().max()) * 1e-3 + 1e-6)


def test_a_delta_for_another_model_is_refused_and_changes_nothing():
    base = tiny_transformer("wan")
    delta = compress_delta(_student_of(base).state_dict(), base.state_dict())
    other = tiny_transformer("cogvideox")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="load it onto its own base model|another model"):
        apply_delta(other, delta)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_missing_delta_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_delta"):
        load_delta(tiny_transformer("wan"), str(tmp_path))


def test_pack_demo_row_ships_a_student_folder_as_a_delta_row(tmp_path):
    """benchmarks/pack_demo_row.py: the row's delta restores the student, and its scheduler, defaults and record."""
    import json
    import sys
    from pathlib import Path

    from diffusers_evdit.generation import GenerationDefaults
    from diffusers_evdit.tiny import tiny_pipeline

    base_dir, student_dir = tmp_path / "base", tmp_path / "student"
    pipe = tiny_pipeline("wan")
    pipe.save_pretrained(base_dir)
    student = _student_of(pipe.transformer, seed=1)
    pipe.transformer = student
    pipe.save_pretrained(student_dir)
    GenerationDefaults(num_inference_steps=4, guidance_scale=1.0).save(student_dir)
    (student_dir / "mlcd_config.json").write_text(json.dumps({"steps": 7}))
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import pack_demo_row
    finally:
        sys.path.remove(benchmarks)
    row = base_dir / "mlcd"
    written = pack_demo_row.main([str(student_dir), str(row)])
    assert {"transformer_delta.safetensors", "training.json", "generation_defaults.json",
            "scheduler/scheduler_config.json"} <= set(written)
    restored = load_delta(tiny_pipeline("wan").transformer, str(row)).state_dict()
    base = tiny_pipeline("wan").transformer.state_dict()
    for name, want in student.state_dict().items():
        change = (want - base[name]).abs().max()
        assert float((restored[name] - want).abs().max()) <= float(change) / 7, name  # within a 4-bit step
    assert json.loads((row / "training.json").read_text()) == {"mlcd": {"steps": 7}}
    assert GenerationDefaults.load(row).to_dict() == {"num_inference_steps": 4, "guidance_scale": 1.0}
    assert json.loads((row / "scheduler" / "scheduler_config.json").read_text()) == json.loads(
        (student_dir / "scheduler" / "scheduler_config.json").read_text())


def test_pack_demo_row_refuses_a_folder_that_is_not_a_trained_pipeline(tmp_path):
    import sys
    from pathlib import Path

    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import pack_demo_row
    finally:
        sys.path.remove(benchmarks)
    with pytest.raises(SystemExit, match="lacks transformer/config.json: pass the pipeline folder"):
        pack_demo_row.main([str(tmp_path / "missing"), str(tmp_path / "base" / "row")])
    assert not (tmp_path / "base").exists()
