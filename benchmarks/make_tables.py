"""Render the JSON results under benchmarks/results/ as the Markdown tables of BENCHMARKS.md (printed)."""

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


SPARSE_COLUMNS = (("split", "split"), ("split_triton", "split, Triton merge"),
                  ("split_triton_c2", "split, Triton merge, 2 key chunks"), ("split_overlap", "split, overlapped"),
                  ("gathered", "gathered"), ("flex", "flex tile"), ("walk", "walk"), ("walk_all", "walk, all rows"))


def sparse_columns(data: dict) -> list[tuple[str, str]]:
    """The sparse kernels a run timed, as (key, column title)."""
    return [(k, title) for k, title in SPARSE_COLUMNS if any(r.get(f"{k}_ms") is not None for r in data["rows"])]


def kernels_table(path: Path) -> str:
    data = json.loads(path.read_text())
    sparse = sparse_columns(data)
    if "rounds" in data:
        return rounds_table(path, data, sparse)
    lines = [f"`{path.name}`: {data['device']}, torch {data['torch']}, {data['dtype']}, {data['date']}", "",
             "| shape | mask | sparsity | cuDNN dense ms | Flash dense ms | Flex dense ms | "
             + "".join(f"{title} ms | " for _, title in sparse) + "fastest | speedup | ideal | % of ideal |",
             "|" + " --- |" * (10 + len(sparse))]
    for r in data["rows"]:
        def ms(key):
            return "" if r.get(key) is None else f"{r[key]:.2f}"
        lines.append(
            f"| {r['shape']} | {r['mask']} | {100 * r['element_sparsity']:.1f}% | {ms('dense_cudnn')} | "
            f"{ms('dense_flash')} | {ms('dense_flex')} | " + "".join(f"{ms(k + '_ms')} | " for k, _ in sparse)
            + f"{r['kernel']} | {r['speedup']:.2f}x | {r['ideal']:.2f}x | {r['pct_of_ideal']:.0f} |")
    return "\n".join(lines)


def rounds_table(path: Path, data: dict, sparse: list[tuple[str, str]]) -> str:
    """A run timed in alternating rounds: medians, and the range of the fastest kernel's per-round % of ideal."""
    lines = [f"`{path.name}`: {data['device']}, torch {data['torch']}, {data['dtype']}, {data['date']}, "
             f"{data['rounds']} alternating rounds (medians)", "",
             "| shape | mask | sparsity | best dense ms | " + "".join(f"{title} ms | " for _, title in sparse)
             + "fastest | speedup | ideal | % of ideal | rounds, % of ideal |",
             "|" + " --- |" * (9 + len(sparse))]
    for r in data["rows"]:
        pct = r["pct_of_ideal_rounds"]
        lines.append(
            f"| {r['shape']} | {r['mask']} | {100 * r['element_sparsity']:.1f}% | {r['best_dense_ms']:.2f} | "
            + "".join(f"{r[k + '_ms']:.2f} | " for k, _ in sparse)
            + f"{r['kernel']} | {r['speedup']:.2f}x | {r['ideal']:.2f}x | {r['pct_of_ideal']:.1f} | "
            f"{min(pct):.0f}-{max(pct):.0f} |")
    return "\n".join(lines)


def step_table(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [f"`{path.name}`: {data['device']}, torch {data['torch']}, kernel {data.get('kernel')}, {data['date']}", "",
             "| model | plan | dense step s | sparse step s | speedup | attention share | Amdahl limit | % of Amdahl |",
             "|" + " --- |" * 8]
    for r in data["rows"]:
        lines.append(f"| {r['model']} | {r['plan']} | {r['dense_step_s']:.3f} | {r['sparse_step_s']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['attention_share']:.2f} | {r['amdahl_limit']:.2f}x | "
                     f"{r['pct_of_amdahl']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for p in sorted(RESULTS.glob("kernels-*.json")):
        print(kernels_table(p), end="\n\n")
    for p in sorted(RESULTS.glob("step-*.json")):
        print(step_table(p), end="\n\n")
    sys.exit(0)
