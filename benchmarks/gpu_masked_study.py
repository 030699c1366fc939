"""Which single SDPA call runs an exact tile mask fastest on a GPU at small shapes (issue 21: `auto` >= 0.95x dense)?

For each small shape of `evdit bench kernels --shapes small` and each of its masks, times dense SDPA (PyTorch's
default backend) against one masked SDPA call under every backend that takes an additive mask (default dispatch,
cuDNN, memory-efficient), with the mask stored as it is built ([N, N]) or in a row-aligned buffer (rows padded to a
multiple of 16 elements and sliced back, so a backend needs no per-call padding copy), and a boolean mask; the same
masked products called as the backend's ATen operator directly (``direct/*``: no backend choice on the way, but a
private operator, so only a measurement here); and the package's own path (``tile/*``: ``TileAttention`` with
``masked``, ``auto`` and both ``walk`` settings, caches warm). Each variant is checked against masked SDPA in float64
before it is timed (max abs error). Timing: CUDA events over ``--iters`` back-to-back calls, median of ``--rounds``
rounds, variants interleaved within a round (``ms``: what a caller sees); ``gpu_ms``: the same calls replayed from a
CUDA graph (launch and Python costs removed, so the GPU's own time per call); ``enqueue_ms``: host time to issue one
call without waiting for the GPU. Where ``enqueue_ms`` is near ``ms`` and ``gpu_ms`` far below, the call is bound by
its host-side cost, not by the GPU.

    python benchmarks/gpu_masked_study.py --out /tmp/gpu-masked-study.json  # a run of results/gpu-masked-study.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusers_evdit.bench.kernels import SMALL_SHAPES
from diffusers_evdit.kernels import TileAttention, walk
from diffusers_evdit.kernels.walk import walk_available, walk_segments, walk_tile_attention
from diffusers_evdit.masks import additive_tile_mask, element_sparsity, tile_mask

BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}


def aligned_bias(keep: torch.Tensor, dtype) -> torch.Tensor:
    """The additive mask (0 kept, -inf dropped) in a buffer whose rows are padded to a multiple of 16 elements."""
    n_q, n_k = keep.shape
    padded = -(-n_k // 16) * 16
    buf = torch.zeros(n_q, padded, dtype=dtype, device=keep.device)
    bias = buf[:, :n_k]
    bias.masked_fill_(~keep, -torch.inf)
    return bias


def variants(layout, k_ref: int, keep: torch.Tensor, dtype):
    plain = additive_tile_mask(layout, k_ref, dtype, keep.device)
    aligned = aligned_bias(keep, dtype)
    out = {}
    for backend in BACKENDS:
        out[f"{backend}/bias"] = (backend, plain)
        out[f"{backend}/bias-aligned"] = (backend, aligned)
    out["default/bool"] = ("default", keep)
    out["direct/efficient"] = ("direct-efficient", plain)
    out["direct/cudnn"] = ("direct-cudnn", plain)
    return out


def call(q, k, v, backend, mask):
    if backend == "direct-efficient":
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, mask, False)[0]
    if backend == "direct-cudnn":
        return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, mask, False, 0.0, False, False)[0]
    if BACKENDS[backend] is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with sdpa_kernel([BACKENDS[backend]]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def time_ms(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def graph_ms(fn, iters: int) -> float | None:
    """Time per call of ``iters`` calls replayed from one CUDA graph (None where the call cannot be captured)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # warm-up on the capture stream
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(iters):
                fn()
    except RuntimeError:
        return None
    graph.replay()
    torch.cuda.synchronize()
    return time_ms(graph.replay, 1) / iters


def enqueue_ms(fn, iters: int) -> float:
    """Host milliseconds to issue one call (the GPU is drained first; ``iters`` stays below the launch queue depth)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed * 1e3 / iters


def walk_launches(q, k, v, layout, k_ref: int, ref, fns: dict) -> dict:
    """The walk kernel called directly, one launch (``walk/*``): through its autotuner (``tuned``) and with the
    autotuner's chosen setting passed in (``pinned``), to split its host cost into the package's Python, the
    autotuner's and the launch's own. Adds the callables to ``fns``; returns their errors."""
    if not walk_available(q.device) or q.shape[2] <= 512:
        return {}
    tables = walk_segments(layout, k_ref).to(q.device)
    errors = {}
    run = lambda cfg=None: walk_tile_attention(q, k, v, tables, config=cfg)  # noqa: E731
    for name in ("walk/tuned", "walk/pinned"):
        try:
            cfg = None
            if name == "walk/pinned":
                cfg = walk._walk_tuned.best_config.all_kwargs()
            out = run(cfg)
            errors[name] = (out.double() - ref).abs().max().item()
            fns[name] = (lambda c=cfg: run(c))
        except Exception as err:  # noqa: BLE001 - recorded
            errors[name] = f"refused: {str(err).splitlines()[0][:120]}"
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None)
    parser.add_argument("--shapes", nargs="*", default=None, help="small shapes to run (default: all)")
    parser.add_argument("--only-tile", action="store_true",
                        help="dense and the package's paths only (tile/*, walk/*), not every SDPA backend")
    args = parser.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    rows = []
    for shape in SMALL_SHAPES:
        if args.shapes and shape.name not in args.shapes:
            continue
        layout = shape.layout
        n = layout.seq_len
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(1, shape.heads, n, shape.head_dim, device=dev, dtype=dtype, generator=g)
                   for _ in range(3))
        for k_ref in shape.masks:
            keep = tile_mask(layout, k_ref, dev)
            ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=keep)
            fns = {"dense": lambda: F.scaled_dot_product_attention(q, k, v)}
            errors = {}
            for name, (backend, mask) in ({} if args.only_tile else variants(layout, k_ref, keep, dtype)).items():
                try:
                    out = call(q, k, v, backend, mask)
                    errors[name] = (out.double() - ref).abs().max().item()
                    fns[name] = (lambda b=backend, m=mask: call(q, k, v, b, m))
                except RuntimeError as err:  # a backend that refuses this input
                    errors[name] = f"refused: {str(err).splitlines()[0][:120]}"
            for name, attention in {"tile/masked": TileAttention("masked"), "tile/auto": TileAttention("auto"),
                                    "tile/walk": TileAttention("walk"),
                                    "tile/walk-one-launch": TileAttention("walk", walk_global="walk")}.items():
                try:
                    out = attention(q, k, v, layout, k_ref)
                    errors[name] = (out.double() - ref).abs().max().item()
                    fns[name] = (lambda a=attention: a(q, k, v, layout, k_ref))
                except Exception as err:  # noqa: BLE001 - a kernel that refuses this input, recorded
                    errors[name] = f"refused: {str(err).splitlines()[0][:120]}"
            errors.update(walk_launches(q, k, v, layout, k_ref, ref, fns))
            for fn in fns.values():  # warm-up
                fn()
            torch.cuda.synchronize()
            samples = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    samples[name].append(time_ms(fn, args.iters))
            ms = {name: statistics.median(s) for name, s in samples.items()}
            host = {name: statistics.median(enqueue_ms(fn, 50) for _ in range(args.rounds)) for name, fn in fns.items()}
            gpu = {name: graph_ms(fn, args.iters) for name, fn in fns.items()}
            row = {"shape": shape.name, "mask": f"{k_ref}:{layout.num_frames - k_ref}", "seq_len": n,
                   "heads": shape.heads, "head_dim": shape.head_dim,
                   "element_sparsity": round(element_sparsity(layout, k_ref), 4),
                   "ms": {k_: round(v_, 5) for k_, v_ in ms.items()},
                   "spread_ms": {k_: [round(min(s), 5), round(max(s), 5)] for k_, s in samples.items()},
                   "gpu_ms": {k_: None if v_ is None else round(v_, 5) for k_, v_ in gpu.items()},
                   "enqueue_ms": {k_: round(v_, 5) for k_, v_ in host.items()},
                   "vs_dense": {k_: round(ms["dense"] / v_, 3) for k_, v_ in ms.items() if k_ != "dense"},
                   "max_abs_err": errors}
            rows.append(row)
            best = max(row["vs_dense"], key=row["vs_dense"].get)
            print(f"{shape.name:22s} {row['mask']:5s} n={n:5d} dense {ms['dense']:.4f} ms | "
                  + " ".join(f"{k_}={v_:.2f}x" for k_, v_ in row["vs_dense"].items()) + f" | best {best}", flush=True)
            print("   gpu_ms " + " ".join(f"{k_}={v_:.4f}" for k_, v_ in gpu.items() if v_ is not None))
            print("   enqueue_ms " + " ".join(f"{k_}={v_:.4f}" for k_, v_ in host.items()))
            refused = {k_: e for k_, e in errors.items() if isinstance(e, str)}
            if refused:
                print("   refused:", refused)
            if args.out:  # after every row, so a run cut short keeps what it measured
                result = {"benchmark": "gpu-masked-study", "device": torch.cuda.get_device_name(),
                          "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                          "date": datetime.date.today().isoformat(), "dtype": "bfloat16", "iters": args.iters,
                          "rounds": args.rounds, "rows": rows}
                with open(args.out, "w") as f:
                    json.dump(result, f, indent=1)
    if args.out:
        print("wrote", args.out)


if __name__ == "__main__":
    main()
