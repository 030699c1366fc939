"""``evdit bench kernels``: tile-sparse attention kernels against the best dense kernel, on real model shapes.

For each shape and mask: dense cuDNN SDPA, dense FlashAttention SDPA, dense FlexAttention, and every exact sparse
kernel (median of many runs after warm-up). Each sparse kernel's output is checked on fresh random inputs against a
float64 masked reference on sampled query rows (every frame and the text represented). JSON rows carry
``element_sparsity``, ``best_dense_ms``, ``sparse_ms`` (fastest exact sparse kernel), ``kernel``, ``speedup``,
``ideal = 1 / (1 - sparsity)`` and ``pct_of_ideal``, plus mask build time and mask/index memory.

Timings taken seconds apart drift (GPU clocks under load): on an H100, one case's % of ideal moved by up to 20 points
between rounds. So each mask's sparse kernels and the best dense backend are timed in
``rounds`` alternating rounds: ``best_dense_ms`` and ``<kernel>_ms`` are medians over the rounds;
``dense_ms_rounds``, ``sparse_ms_rounds`` (the chosen kernel) and ``pct_of_ideal_rounds`` (each round against that
round's dense time) list the rounds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels import TileAttention
from ..kernels.flex import tile_block_mask
from ..kernels.triton_support import triton_runs
from ..layout import TileLayout
from ..masks import element_sparsity, format_mask, reference_flags
from .common import bench_ms, print_table, write_results

SPARSE_KERNELS = ("split", "gathered", "flex")
REL_TOL_BF16 = 1e-2
# Variants, timed when named (`--kernels`; CUDA, the Triton ones also need Triton): the split kernel with its Triton
# merge, and with it the global queries in two key chunks (fills the last wave of a short global call); the split
# kernel with its global call overlapping the others on a second stream; the Triton walk kernel (global rows by
# cuDNN, or all rows in its one launch: walk_all). Of these, walk is timed by default where it runs: it is a kernel of
# its own, the others are settings of split (each measured, BENCHMARKS.md).
EXTRA_KERNELS = {"split_triton": {"kernel": "split", "merge": "triton"},
                 "split_triton_c2": {"kernel": "split", "merge": "triton", "global_chunks": 2},
                 "split_overlap": {"kernel": "split", "overlap": True},
                 "walk": {"kernel": "walk"},
                 "walk_all": {"kernel": "walk", "walk_global": "walk"}}


def make_attention(name: str) -> TileAttention:
    """The :class:`TileAttention` a benchmark kernel name stands for (a kernel, or an ``EXTRA_KERNELS`` variant)."""
    return TileAttention(**EXTRA_KERNELS.get(name, {"kernel": name}))


def default_kernels(device: torch.device) -> tuple[str, ...]:
    """``SPARSE_KERNELS``, plus the walk kernel on CUDA where Triton runs."""
    if device.type == "cuda" and triton_runs(device):
        return SPARSE_KERNELS + ("walk",)
    return SPARSE_KERNELS


@dataclass(frozen=True)
class KernelShape:
    """One attention shape of the benchmark (batch 1)."""

    name: str
    frames: int
    tokens_per_frame: int
    heads: int
    head_dim: int
    text_tokens: int
    text_position: str
    masks: tuple[int, ...]

    @property
    def layout(self) -> TileLayout:
        pos = self.text_position if self.text_tokens else "none"
        return TileLayout(self.frames, self.tokens_per_frame, self.text_tokens, pos)


SHAPES = (
    KernelShape("osp_29f_720p", 8, 3600, 24, 96, 0, "none", (4, 3, 2, 1)),
    KernelShape("osp_93f_720p", 24, 3600, 24, 96, 0, "none", (12, 8, 6, 4, 3)),
    KernelShape("cogvideox5b_49f_480p", 13, 1350, 48, 64, 226, "first", (6, 4, 3, 2, 1)),
    KernelShape("wan2.1-14b_81f_480p", 21, 1560, 40, 128, 0, "none", (6, 4, 3, 2, 1)),
    KernelShape("hunyuan_129f_720p", 33, 3600, 24, 128, 256, "last", (8, 4, 2, 1)),
)
QUICK_SHAPES = (  # CPU-sized versions of the same layouts, to exercise the code path
    KernelShape("quick_text_first", 5, 48, 2, 32, 12, "first", (2, 1)),
    KernelShape("quick_text_last", 6, 40, 2, 32, 10, "last", (3, 1)),
)


def sampled_rows(layout: TileLayout, per_group: int, generator: torch.Generator) -> torch.Tensor:
    """Random query positions: ``per_group`` from every frame and from the text."""
    groups = [layout.frame_slice(f) for f in range(layout.num_frames)]
    if layout.num_text_tokens:
        groups.append(layout.text_slice)
    rows = [torch.randint(g.start, g.stop, (per_group,), generator=generator) for g in groups]
    return torch.cat(rows).unique()


def reference_rows(q, k, v, layout: TileLayout, k_ref: int, rows: torch.Tensor) -> torch.Tensor:
    """Float64 masked attention for the query ``rows`` (``[B, H, R, D]``), the mask written from the rule."""
    frames = layout.token_frames(q.device)
    flags = reference_flags(layout.num_frames, k_ref, q.device)[frames]
    rf, rflag = frames[rows.to(q.device)], flags[rows.to(q.device)]
    allowed = (rf[:, None] == frames[None]) | flags[None] | rflag[:, None] | (rf[:, None] < 0) | (frames[None] < 0)
    qr = q[:, :, rows.to(q.device)].double()
    scores = qr @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ v.double()


def block_mask_bytes(mask) -> int:
    """GPU bytes held by a FlexAttention BlockMask's index tensors."""
    names = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks", "q_indices",
             "full_q_num_blocks", "full_q_indices")
    return sum(t.numel() * t.element_size() for t in (getattr(mask, n, None) for n in names) if t is not None)


def _dense_fns(q, k, v, device):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fns = {}
    if device.type == "cuda":
        def backend(b):
            def fn():
                with sdpa_kernel([b]):
                    return F.scaled_dot_product_attention(q, k, v)
            return fn

        fns["dense_cudnn"] = backend(SDPBackend.CUDNN_ATTENTION)
        fns["dense_flash"] = backend(SDPBackend.FLASH_ATTENTION)
        from torch.nn.attention.flex_attention import flex_attention

        from ..kernels.compiled import CompiledFn

        compiled = CompiledFn(flex_attention, {"dynamic": False})
        fns["dense_flex"] = lambda: compiled(q, k, v)
    else:
        fns["dense_sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v)
    return fns


def bench_shape(shape: KernelShape, device: torch.device, dtype: torch.dtype, kernels=SPARSE_KERNELS, seed: int = 0,
                rep_ms: float = 300, rounds: int = 3) -> list[dict]:
    """Benchmark one shape: a row per mask (plus the dense timings in every row). The exact sparse kernels of each
    mask and the fastest dense backend are timed in ``rounds`` alternating rounds (medians reported)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}.")
    layout = shape.layout
    g = torch.Generator().manual_seed(seed)
    # [B, N, H, D] viewed as [B, H, N, D], the layout the diffusers processors hand to attention
    q, k, v = (torch.randn(1, layout.seq_len, shape.heads, shape.head_dim, generator=g).to(device, dtype).transpose(1, 2)
               for _ in range(3))
    dense_ms = {}
    dense_fns = _dense_fns(q, k, v, device)
    for name, fn in dense_fns.items():
        try:
            dense_ms[name] = bench_ms(fn, device, rep_ms=rep_ms)
        except Exception as err:  # a backend the device lacks is reported, not fatal
            dense_ms[name] = None
            print(f"  {shape.name}: {name} unavailable: {type(err).__name__}: {str(err)[:120]}")
    best_name = min((n for n, t in dense_ms.items() if t is not None and n != "dense_flex"), key=dense_ms.get)
    rows = []
    attention = {name: make_attention(name) for name in kernels}
    check_rows = sampled_rows(layout, 4, g)
    for k_ref in shape.masks:
        sparsity = element_sparsity(layout, k_ref)
        ref = reference_rows(q, k, v, layout, k_ref, check_rows)
        row = {"shape": shape.name, "mask": format_mask(layout.num_frames, k_ref), "element_sparsity": sparsity,
               "seq_len": layout.seq_len, "heads": shape.heads, "head_dim": shape.head_dim, **dense_ms,
               "best_dense": best_name}
        exact = {}
        for name, att in attention.items():
            fn = lambda att=att: att(q, k, v, layout, k_ref)  # noqa: E731
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            out = fn()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else None
            err = ((out[:, :, check_rows.to(device)].double() - ref).norm() / ref.norm()).item()
            finite = bool(torch.isfinite(out).all())
            del out
            row[f"{name}_rel_err"] = err
            row[f"{name}_peak_extra_mib"] = peak
            if not finite or err > REL_TOL_BF16:
                row[f"{name}_ms"] = None
                print(f"  {shape.name} {row['mask']}: {name} NOT EXACT (rel err {err:.2e}, finite={finite})")
                continue
            exact[name] = fn
        dense_rounds, rounds_ms = [], {name: [] for name in exact}
        for _ in range(rounds):  # alternating, so that clock drift moves dense and sparse times alike
            dense_rounds.append(bench_ms(dense_fns[best_name], device, rep_ms=rep_ms))
            for name, fn in exact.items():
                rounds_ms[name].append(bench_ms(fn, device, rep_ms=rep_ms))
        best_dense = row["best_dense_ms"] = statistics.median(dense_rounds)
        times = {name: statistics.median(ms) for name, ms in rounds_ms.items()}
        for name, ms in times.items():
            row[f"{name}_ms"] = ms
        t0 = time.perf_counter()
        mask = tile_block_mask(layout, k_ref, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row["flex_mask_build_s"] = time.perf_counter() - t0
        row["flex_mask_mib"] = block_mask_bytes(mask) / 2**20
        best = min(times, key=times.get)
        row.update(kernel=best, sparse_ms=times[best], speedup=best_dense / times[best], ideal=1 / (1 - sparsity))
        row["pct_of_ideal"] = 100 * row["speedup"] / row["ideal"]
        row.update(rounds=rounds, dense_ms_rounds=dense_rounds, sparse_ms_rounds=rounds_ms[best])
        row["pct_of_ideal_rounds"] = [100 * d * (1 - sparsity) / t for d, t in zip(dense_rounds, rounds_ms[best])]
        rows.append(row)
        print(f"  {shape.name} {row['mask']}: sparsity {sparsity:.1%}, dense {best_dense:.2f} ms, "
              + ", ".join(f"{n} {t:.2f}" for n, t in times.items()) + f" ms -> {row['speedup']:.2f}x "
              f"({row['pct_of_ideal']:.0f}% of ideal; rounds {min(row['pct_of_ideal_rounds']):.0f}-"
              f"{max(row['pct_of_ideal_rounds']):.0f})", flush=True)
    return rows


def run_kernel_benchmark(out: str | None, shapes=SHAPES, device: str | None = None, kernels=None,
                         rep_ms: float = 300, rounds: int = 3) -> dict:
    """Run the kernel benchmark on ``shapes``; print a table, write JSON to ``out`` (if given) and return it.
    ``kernels`` default: :func:`default_kernels` of the device. ``rep_ms``: the timing budget of one measurement;
    ``rounds``: alternating rounds of each mask's dense and sparse timings (see the module docstring)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kernels = tuple(kernels or default_kernels(dev))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rows = []
    data = {"rows": rows}
    for i, shape in enumerate(shapes):
        rows += bench_shape(shape, dev, dtype, kernels, rep_ms=rep_ms, rounds=rounds)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if out:  # after every shape, so that a run stopped part-way keeps what it measured
            data = write_results(out, "kernels", rows, dev, dtype=str(dtype).replace("torch.", ""),
                                 kernels=list(kernels), rounds=rounds, complete=i == len(shapes) - 1)
    print_table(rows, ["shape", "mask", "element_sparsity", "best_dense_ms", "sparse_ms", "kernel", "speedup", "ideal",
                       "pct_of_ideal"])
    if out:
        print(f"wrote {out}")
    return data
