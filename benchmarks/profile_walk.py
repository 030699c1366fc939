"""How close does the walk kernel come to cuDNN? For the cases where the split kernel stays below 85% of the ideal
speedup (and a long one), time the walk kernel with every launch setting (query block 64 / 128, key block 64 / 128,
4 / 8 warps, 2-4 pipeline stages; global rows in the launch or by one SDPA call), check each against a float64
reference on sampled rows, and report its useful TFLOP/s (the mask's kept pairs) and walked TFLOP/s (pairs computed,
block rounding included) beside dense cuDNN and the split kernel. Prints a table per case and writes JSON. Run on the device machine (~4 min on an H100):

    python benchmarks/profile_walk.py [--json benchmarks/results/profile-walk-<gpu>.json] [--quick]

Without a GPU, ``TRITON_INTERPRET=1 python benchmarks/profile_walk.py --cpu-check`` runs the same code on tiny shapes
in Triton's interpreter (the timings mean nothing; it checks the script).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F

from diffusers_evdit.bench.common import bench_ms, print_table, write_results
from diffusers_evdit.bench.kernels import QUICK_SHAPES, REL_TOL_BF16, SHAPES, reference_rows, sampled_rows
from diffusers_evdit.kernels import TileAttention
from diffusers_evdit.kernels.indices import tile_indices
from diffusers_evdit.kernels.walk import walk_available, walk_segments, walk_tile_attention
from diffusers_evdit.masks import element_sparsity, format_mask

CASES = [("cogvideox5b_49f_480p", 1), ("wan2.1-14b_81f_480p", 1), ("osp_29f_720p", 1), ("cogvideox5b_49f_480p", 3),
         ("hunyuan_129f_720p", 1)]
CPU_CASES = [("quick_text_first", 1), ("quick_text_last", 1)]


def configs(quick: bool, device: torch.device):
    """(query block, {key block, warps, stages}) launch settings to time."""
    if device.type != "cuda":
        grid = itertools.product((16, 32), (16,), (4,), (2,))
    elif quick:
        grid = itertools.product((128,), (64, 128), (8,), (3,))
    else:
        grid = itertools.product((64, 128), (64, 128), (4, 8), (2, 3, 4))
    return [(bm, {"BLOCK_N": bn, "num_warps": w, "num_stages": st}) for bm, bn, w, st in grid]


def profile_case(name: str, k: int, quick: bool, rep_ms: float, device: torch.device) -> list[dict]:
    shape = {s.name: s for s in SHAPES + QUICK_SHAPES}[name]
    layout = shape.layout
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    q, kk, v = (torch.randn(1, layout.seq_len, shape.heads, shape.head_dim, generator=g).to(device, dtype)
                .transpose(1, 2) for _ in range(3))
    rows_checked = sampled_rows(layout, 4, g)
    ref = reference_rows(q, kk, v, layout, k, rows_checked)
    sparsity = element_sparsity(layout, k)
    per_pair = 4 * shape.head_dim * shape.heads  # FLOPs of one (query, key) pair: QK^T and PV
    kept = (1 - sparsity) * layout.seq_len ** 2
    dense_ms = bench_ms(lambda: F.scaled_dot_product_attention(q, kk, v), device, rep_ms=rep_ms)
    split = TileAttention("split")
    split_ms = bench_ms(lambda: split(q, kk, v, layout, k), device, rep_ms=rep_ms)
    base = {"shape": name, "mask": format_mask(layout.num_frames, k), "element_sparsity": sparsity,
            "dense_ms": dense_ms, "dense_tflops": per_pair * layout.seq_len ** 2 / dense_ms / 1e9, "split_ms": split_ms,
            "split_pct_of_ideal": 100 * dense_ms / split_ms * (1 - sparsity)}
    out_rows = []
    tables = {}
    tokens = tile_indices(layout, k, device).global_tokens
    n_global = len(range(layout.seq_len)[tokens]) if isinstance(tokens, slice) else tokens.numel()
    for (block_m, cfg), global_rows in itertools.product(configs(quick, device), ("walk", "sdpa")):
        if block_m not in tables:
            t0 = time.perf_counter()
            tables[block_m] = walk_segments(layout, k, block_m).to(device)
            build_s = time.perf_counter() - t0
        tb = tables[block_m]
        row = {**base, "block_m": block_m, **cfg, "global_rows": global_rows, "tables_build_s": build_s,
               "tables_kib": tb.nbytes() / 1024}
        run = lambda: walk_tile_attention(q, kk, v, tb, config=cfg, global_rows=global_rows,  # noqa: E731
                                          global_tokens=tokens)
        try:
            out = run()
        except Exception as err:  # a setting the GPU cannot hold (shared memory) is reported, not fatal
            row["error"] = f"{type(err).__name__}: {str(err)[:100]}"
            out_rows.append(row)
            continue
        err = ((out[:, :, rows_checked.to(device)].double() - ref).norm() / ref.norm()).item()
        row["rel_err"] = err
        if err > REL_TOL_BF16 or not bool(torch.isfinite(out).all()):
            row["error"] = f"NOT EXACT (rel err {err:.2e})"
            out_rows.append(row)
            continue
        ms = bench_ms(run, device, rep_ms=rep_ms)
        walked = tb.keys_walked(global_rows) + (n_global * layout.seq_len if global_rows == "sdpa" else 0)
        row.update(walk_ms=ms, useful_tflops=per_pair * kept / ms / 1e9, walked_tflops=per_pair * walked / ms / 1e9,
                   pct_of_ideal=100 * dense_ms / ms * (1 - sparsity))
        out_rows.append(row)
    return out_rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", default=None, help="write the rows here (with the device name and date)")
    p.add_argument("--quick", action="store_true", help="one launch setting per case")
    p.add_argument("--rep-ms", type=float, default=200, help="timing budget per measurement (ms)")
    p.add_argument("--cpu-check", action="store_true", help="tiny shapes on the CPU (needs TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.cpu_check else "cuda")
    if not walk_available(device):
        raise SystemExit("profile_walk.py times the walk kernel on CUDA: run it on a GPU machine (or --cpu-check "
                         "with TRITON_INTERPRET=1).")
    rows = []
    for name, k in CPU_CASES if args.cpu_check else CASES:
        case = profile_case(name, k, args.quick, args.rep_ms, device)
        rows += case
        timed = [r for r in case if "walk_ms" in r]
        best = min(timed, key=lambda r: r["walk_ms"]) if timed else None
        head = case[0]
        print(f"{name} {head['mask']}: dense {head['dense_ms']:.2f} ms ({head['dense_tflops']:.0f} TFLOP/s), split "
              f"{head['split_ms']:.2f} ms ({head['split_pct_of_ideal']:.1f}% of ideal), walk best "
              + (f"{best['walk_ms']:.2f} ms ({best['pct_of_ideal']:.1f}% of ideal, "
                 f"{best['useful_tflops']:.0f} useful / "
                 f"{best['walked_tflops']:.0f} walked TFLOP/s, global rows by {best['global_rows']}, block_m "
                 f"{best['block_m']}, BLOCK_N {best['BLOCK_N']}, {best['num_warps']} warps, {best['num_stages']} "
                 "stages)" if best else "none"), flush=True)
        if args.json:  # after every case, so that a run stopped part-way keeps what it measured
            write_results(args.json, "profile-walk", rows, device, complete=False)
    print_table([r for r in rows if "walk_ms" in r],
                ["shape", "mask", "global_rows", "block_m", "BLOCK_N", "num_warps", "num_stages", "walk_ms",
                 "useful_tflops", "walked_tflops", "pct_of_ideal", "split_pct_of_ideal"])
    if args.json:
        write_results(args.json, "profile-walk", rows, device, complete=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
