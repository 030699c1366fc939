"""Timing, device description and result files shared by the benchmarks."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time

import torch


def device_info(device: torch.device) -> dict:
    """Name of the device, torch/CUDA versions and the date, for result files."""
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.date.today().isoformat(),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


def package_versions(names=("triton", "flash-attn-4", "nvidia-cutlass-dsl")) -> dict:
    """``{"<name>_version": version}`` of the installed packages among ``names`` (for result files)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[f"{name.replace('-', '_')}_version"] = version(name)
        except PackageNotFoundError:
            pass
    return found


def bench_ms(fn, device: torch.device, warmup_ms: float = 100, rep_ms: float = 500) -> float:
    """Median milliseconds of ``fn()``: CUDA events via ``triton.testing.do_bench`` on GPU, a wall clock elsewhere."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    times = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def write_results(path: str | os.PathLike, kind: str, rows: list[dict], device: torch.device, **extra) -> dict:
    """Write ``{"benchmark": kind, <device info>, **extra, "rows": rows}`` as JSON and return it."""
    data = {"benchmark": kind, **device_info(device), **extra, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return data


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print ``rows`` as an aligned text table of ``columns``."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return "" if value is None else str(value)
