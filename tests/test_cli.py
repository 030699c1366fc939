import json

from diffusers_evdit.cli import main


def test_plan_uniform_and_show(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert main(["plan", "uniform", "--layers", "3", "--k", "1", "--out", str(path)]) == 0
    assert json.loads(path.read_text())["layers"] == [1, 1, 1]
    assert main(["plan", "show", str(path), "--frames", "8", "--tokens-per-frame", "16"]) == 0
    out = capsys.readouterr().out
    assert "1:7" in out and "65.6%" in out  # 1 - (8 + 7 * 2) / 64


def test_bad_plan_file_is_an_error_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text('{"version": 99, "layers": [1]}')
    assert main(["plan", "show", str(path)]) == 2
    assert "newer" in capsys.readouterr().err


def test_smoke_runs(capsys):
    assert main(["smoke", "--frames", "4", "--k", "1"]) == 0
    assert "kernels agree: yes" in capsys.readouterr().out
