import json

import pytest

from diffusers_evdit import MaskPlan, TileLayout, element_sparsity


def test_uniform_dense_and_roundtrip(tmp_path):
    plan = MaskPlan.uniform(3, 2, model_class="WanTransformer3DModel")
    assert plan.layers == [2, 2, 2] and plan.num_layers == 3
    assert MaskPlan.dense(2).layers == [None, None]
    mixed = MaskPlan([None, 1, 4], metadata={"threshold": 0.05})
    path = tmp_path / "plan.json"
    mixed.save(path)
    assert MaskPlan.load(path) == mixed
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["num_layers"] == 3 and data["model_class"] is None
    assert MaskPlan.from_json(plan.to_json()) == plan
    plan.save(tmp_path / "new" / "folder" / "plan.json")  # a missing folder is created, as save_pretrained does
    assert MaskPlan.load(tmp_path / "new" / "folder" / "plan.json") == plan


def test_describe_and_sparsity():
    plan = MaskPlan([None, 1, 8])
    assert plan.describe(8) == ["dense", "1:7", "dense"]
    layout = TileLayout(8, 16)
    assert plan.sparsity(layout) == pytest.approx(element_sparsity(layout, 1) / 3)


@pytest.mark.parametrize(
    "layers,match", [([1, -2], "layer 1: .*k >= 1"), ([0], "k >= 1"), ([1.5], "None .* or an int"), ("12", "list")]
)
def test_bad_entries(layers, match):
    with pytest.raises(ValueError, match=match):
        MaskPlan(layers)


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"layers": [1]}', "version"),
        ('{"version": 2, "layers": [1]}', "newer .* upgrade"),
        ('{"version": 1, "layers": 3}', "layers"),
        ('{"version": 1, "layers": [1, 2], "num_layers": 3}', "num_layers=3"),
        ('{"version": 1, "layers": [1, -1]}', "layer 1"),
    ],
)
def test_malformed_plan_files(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        MaskPlan.load(path)


def test_missing_plan_file_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere" / "plan.json"
    with pytest.raises(FileNotFoundError, match=r"no mask plan file at .*plan\.json.*evdit plan uniform"):
        MaskPlan.load(missing)


def test_uniform_needs_layers():
    with pytest.raises(ValueError, match="at least one layer"):
        MaskPlan.uniform(0, 1)
