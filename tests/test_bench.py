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
