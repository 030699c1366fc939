"""``evdit bench kernels``: tile-sparse attention kernels against the best dense kernel, on real model shapes.

For each shape and mask: the dense kernels (cuDNN SDPA, FlashAttention SDPA, FlexAttention, and FlashAttention-4
where it runs) and every exact sparse kernel (median of many runs after warm-up). Each sparse kernel's output is
checked on fresh random inputs against a float64 masked reference on sampled query rows (every frame and the text
represented). JSON rows carry ``shape``, ``mask``, ``mode``, ``seq_len``, ``element_sparsity``, ``best_dense_ms``
(the fastest dense kernel but FlexAttention), ``sparse_ms`` (fastest exact sparse kernel), ``kernel``, ``speedup``,
``ideal = 1 / (1 - sparsity)`` and ``pct_of_ideal``, plus mask build time, mask/index memory and the 128 x 128 block
structure (:func:`block_structure`).

With ``backward=True`` (``--backward``) every timing is a forward pass and the backward pass of q, k and v for a fixed
output gradient (``mode: "fwd+bwd"``; ``best_dense_ms`` is then the fastest dense forward+backward). Kernels without a
backward pass are skipped with a note (``<kernel>_note``); the others are also checked on their query gradient
(``<kernel>_grad_rel_err``, the float64 reference of the sampled rows). Dense FlexAttention is not timed there.

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
from ..kernels.fa4 import FA4TileKernel, block_sparsity, fa4_available, fa4_dense_attention
from ..kernels.flex import FlexTileKernel, tile_block_mask
from ..kernels.triton_support import triton_runs
from ..layout import TileLayout
from ..masks import allowed_pairs, element_sparsity, format_mask, reference_flags
from .common import bench_ms, package_versions, print_table, write_results

SPARSE_KERNELS = ("split", "gathered", "flex")
REL_TOL_BF16 = 1e-2
GRAD_REL_TOL_BF16 = 3e-2  # the query gradient sums over all keys in bf16: a looser bound than the output's
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
# The short-sequence kernels auto picks on small shapes (one SDPA call with the tile mask; two dense calls over the
# rows' key sets), timed when named
SHORT_KERNELS = ("masked", "keysets")
# FlashAttention-4 with the tile mask as block-sparsity tensors (kernels/fa4.py; CUDA, Hopper or Blackwell): its
# default blocks, and 128 x 64 blocks (Hopper; less waste where frames straddle a block, see block_structure)
FA4_KERNEL = "fa4"
FA4_KERNELS = {FA4_KERNEL: None, "fa4_kv64": (128, 64)}
# The dispatcher's own choice, timed when named: rows then carry ``auto_vs_dense = best_dense_ms / auto_ms``, what a
# user of kernel="auto" gets against the best dense kernel
AUTO_KERNEL = "auto"
# FlexAttention's experimental FlashAttention-4 backend (torch's own CuTe DSL lowering of the same block mask as
# ``flex``), timed when named: the route by which FA4 could run inside torch.compile graphs
FLEX_FLASH_KERNEL = "flex_flash"


def make_attention(name: str):
    """The callable ``(q, k, v, layout, k_ref)`` a benchmark kernel name stands for: a :class:`TileAttention` (a
    kernel, or an ``EXTRA_KERNELS`` variant) or, for ``"fa4"``, the FlashAttention-4 tile kernel."""
    if name in FA4_KERNELS:
        return FA4TileKernel(FA4_KERNELS[name])
    if name == FLEX_FLASH_KERNEL:
        return TileAttention("flex", flex=FlexTileKernel(backend="FLASH"))
    return TileAttention(**EXTRA_KERNELS.get(name, {"kernel": name}))


def default_kernels(device: torch.device) -> tuple[str, ...]:
    """``SPARSE_KERNELS``, plus the walk kernel on CUDA where Triton runs and the FA4 tile kernel where FA4 runs."""
    kernels = SPARSE_KERNELS
    if device.type == "cuda" and triton_runs(device):
        kernels += ("walk",)
    if device.type == "cuda" and fa4_available(device):
        kernels += (FA4_KERNEL,)
    return kernels


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
# Small shapes, from the demo model (diffusers_evdit/demo_model: Wan-style, 8 latent frames x 64 tokens, 4 heads of
# 64, no text) up towards CogVideoX-5B: where launch overheads, not FLOPs, decide which kernel is fastest.
SMALL_SHAPES = (
    KernelShape("demo_8f_64t", 8, 64, 4, 64, 0, "none", (6, 5, 4, 3, 2, 1)),
    KernelShape("demo_8f_256t", 8, 256, 4, 64, 0, "none", (4, 2, 1)),
    KernelShape("wan2.1-1.3b_33f_240p", 9, 390, 12, 128, 0, "none", (4, 2, 1)),
    KernelShape("cogvideox5b_49f_240p", 13, 330, 48, 64, 226, "first", (6, 3, 1)),
)
QUICK_SHAPES = (  # CPU-sized versions of the same layouts, to exercise the code path
    KernelShape("quick_text_first", 5, 48, 2, 32, 12, "first", (2, 1)),
    KernelShape("quick_text_last", 6, 40, 2, 32, 10, "last", (3, 1)),
)

SHAPE_GROUPS = {"small": SMALL_SHAPES, "full": SHAPES, "all": SMALL_SHAPES + SHAPES, "quick": QUICK_SHAPES}


def select_shapes(names) -> tuple[KernelShape, ...]:
    """Shapes named by group (``small``, ``full``, ``all``, ``quick``) or by shape name, in the order given."""
    known = {s.name: s for s in SMALL_SHAPES + SHAPES + QUICK_SHAPES}
    shapes = []
    for name in names:
        if name in SHAPE_GROUPS:
            shapes += [s for s in SHAPE_GROUPS[name] if s not in shapes]
        elif name in known:
            shapes += [known[name]] if known[name] not in shapes else []
        else:
            raise ValueError(f"Unknown shape {name!r}; choose a group ({', '.join(SHAPE_GROUPS)}) or a shape "
                             f"({', '.join(known)}).")
    return tuple(shapes)


def sampled_rows(layout: TileLayout, per_group: int, generator: torch.Generator) -> torch.Tensor:
    """Random query positions: ``per_group`` from every frame and from the text."""
    groups = [layout.frame_slice(f) for f in range(layout.num_frames)]
    if layout.num_text_tokens:
        groups.append(layout.text_slice)
    rows = [torch.randint(g.start, g.stop, (per_group,), generator=generator) for g in groups]
    return torch.cat(rows).unique()


def _row_probabilities(q, k, layout: TileLayout, k_ref: int, rows: torch.Tensor) -> torch.Tensor:
    """Float64 attention probabilities of the query ``rows`` under the mask written from the rule, ``[B, H, R, N]``."""
    frames = layout.token_frames(q.device)
    flags = reference_flags(layout.num_frames, k_ref, q.device)[frames]
    rf, rflag = frames[rows.to(q.device)], flags[rows.to(q.device)]
    allowed = (rf[:, None] == frames[None]) | flags[None] | rflag[:, None] | (rf[:, None] < 0) | (frames[None] < 0)
    qr = q[:, :, rows.to(q.device)].double()
    scores = qr @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)


def reference_rows(q, k, v, layout: TileLayout, k_ref: int, rows: torch.Tensor) -> torch.Tensor:
    """Float64 masked attention for the query ``rows`` (``[B, H, R, D]``), the mask written from the rule."""
    return _row_probabilities(q, k, layout, k_ref, rows) @ v.double()


def reference_grad_q_rows(q, k, v, grad_out, layout: TileLayout, k_ref: int, rows: torch.Tensor) -> torch.Tensor:
    """Float64 gradient of ``(out * grad_out).sum()`` with respect to the query ``rows`` (``[B, H, R, D]``):
    ``dq_i = scale * sum_j p_ij (dO_i . v_j - dO_i . o_i) k_j``, which needs only row ``i``'s probabilities."""
    p = _row_probabilities(q, k, layout, k_ref, rows)
    vd, do = v.double(), grad_out[:, :, rows.to(q.device)].double()
    o = p @ vd
    ds = p * (do @ vd.transpose(-1, -2) - (do * o).sum(-1, keepdim=True))
    return ds @ k.double() * q.shape[-1] ** -0.5


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def block_structure(layout: TileLayout, k_ref: int, block: int = 128) -> dict:
    """Of the ``block x block`` tiles of the attention matrix (as FA4 and FlexAttention see it): the share a kernel
    computes (``block_kept_share``) and, of those, the share where frames or text straddle a block and the tile rule
    runs element by element (``block_partial_share``). A kernel that computes whole tiles reaches at most
    ``block_bound_pct_of_ideal = 100 * kept pairs / pairs in the computed tiles`` percent of the ideal speedup."""
    sp = block_sparsity(layout, k_ref, block, block)
    kept = int((sp.full | sp.partial).sum())
    return {"block_kept_share": kept / sp.full.numel(), "block_partial_share": int(sp.partial.sum()) / max(kept, 1),
            "block_bound_pct_of_ideal": 100 * allowed_pairs(layout, k_ref) / sp.computed_pairs()}


def block_mask_bytes(mask) -> int:
    """GPU bytes held by a FlexAttention BlockMask's index tensors."""
    names = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks", "q_indices",
             "full_q_num_blocks", "full_q_indices")
    return sum(t.numel() * t.element_size() for t in (getattr(mask, n, None) for n in names) if t is not None)


def _dense_fns(q, k, v, device, flex: bool = True):
    """The dense kernels to time; ``flex=False`` leaves out dense FlexAttention (never the best dense, and its
    compiled backward costs minutes per shape)."""
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
        if flex:
            from torch.nn.attention.flex_attention import flex_attention

            from ..kernels.compiled import CompiledFn

            compiled = CompiledFn(flex_attention, {"dynamic": False})
            fns["dense_flex"] = lambda: compiled(q, k, v)
        if fa4_available(device):
            fns["dense_fa4"] = lambda: fa4_dense_attention(q, k, v)
    else:
        fns["dense_sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v)
    return fns


def _with_backward(fn, q, k, v, grad_out, backward: bool):
    """``fn`` itself (forward), or forward and the gradients of q, k, v for ``grad_out`` (no accumulation)."""
    if not backward:
        return fn
    return lambda: torch.autograd.grad(fn(), (q, k, v), grad_out)


def _check_kernel(name, fn, row, q, k, v, grad_out, ref, ref_dq, check_rows, backward, device):
    """Run ``fn`` once: record its error against the float64 reference (and of its query gradient) and its extra
    peak memory; return whether it is exact (a kernel without a backward pass counts as not exact, with a note)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    try:
        out = fn()
        dq = torch.autograd.grad(out, q, grad_out)[0] if backward else None
    except Exception as err:  # no backward pass, or a backend the device lacks: reported, not fatal
        row[f"{name}_ms"] = None
        row[f"{name}_note"] = f"{type(err).__name__}: {str(err)[:160]}"
        print(f"  {row['shape']} {row['mask']}: {name} skipped ({row[f'{name}_note']})")
        return False
    cuda = device.type == "cuda"
    row[f"{name}_peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    rows_d = check_rows.to(device)
    err = row[f"{name}_rel_err"] = _rel_err(out[:, :, rows_d], ref)
    finite = bool(torch.isfinite(out).all())
    exact = finite and err <= REL_TOL_BF16
    if backward:
        gerr = row[f"{name}_grad_rel_err"] = _rel_err(dq[:, :, rows_d], ref_dq)
        exact = exact and bool(torch.isfinite(dq).all()) and gerr <= GRAD_REL_TOL_BF16
    del out, dq
    if not exact:
        row[f"{name}_ms"] = None
        print(f"  {row['shape']} {row['mask']}: {name} NOT EXACT (rel err {err:.2e}"
              + (f", query-gradient rel err {row[f'{name}_grad_rel_err']:.2e}" if backward else "")
              + f", finite={finite})")
    return exact


def bench_shape(shape: KernelShape, device: torch.device, dtype: torch.dtype, kernels=SPARSE_KERNELS, seed: int = 0,
                rep_ms: float = 300, rounds: int = 3, backward: bool = False) -> list[dict]:
    """Benchmark one shape: a row per mask (plus the dense timings in every row). The exact sparse kernels of each
    mask and the fastest dense backend are timed in ``rounds`` alternating rounds (medians reported). With
    ``backward``, every timing is a forward and the backward pass of q, k and v (kernels without one are skipped)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}.")
    layout = shape.layout
    g = torch.Generator().manual_seed(seed)
    # [B, N, H, D] viewed as [B, H, N, D], the layout the diffusers processors hand to attention
    q, k, v, grad_out = (torch.randn(1, layout.seq_len, shape.heads, shape.head_dim, generator=g).to(device, dtype)
                         .transpose(1, 2).requires_grad_(backward) for _ in range(4))
    grad_out = grad_out.detach()
    mode = "fwd+bwd" if backward else "fwd"
    dense_ms = {}
    dense_fns = {name: _with_backward(fn, q, k, v, grad_out, backward)
                 for name, fn in _dense_fns(q, k, v, device, flex=not backward).items()}
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
        with torch.no_grad():
            ref = reference_rows(q, k, v, layout, k_ref, check_rows)
            ref_dq = reference_grad_q_rows(q, k, v, grad_out, layout, k_ref, check_rows) if backward else None
        row = {"shape": shape.name, "mask": format_mask(layout.num_frames, k_ref), "mode": mode,
               "element_sparsity": sparsity, "seq_len": layout.seq_len, "heads": shape.heads,
               "head_dim": shape.head_dim, **dense_ms, "best_dense": best_name}
        exact = {}
        for name, att in attention.items():
            fn = lambda att=att: att(q, k, v, layout, k_ref)  # noqa: E731
            if _check_kernel(name, fn, row, q, k, v, grad_out, ref, ref_dq, check_rows, backward, device):
                exact[name] = _with_backward(fn, q, k, v, grad_out, backward)
        if not exact:
            print(f"  {shape.name} {row['mask']}: no exact sparse kernel ran; row left out")
            continue
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
        row.update(block_structure(layout, k_ref))
        if AUTO_KERNEL in times:
            row["auto_vs_dense"] = best_dense / times[AUTO_KERNEL]
        best = min(times, key=times.get)
        row.update(kernel=best, sparse_ms=times[best], speedup=best_dense / times[best], ideal=1 / (1 - sparsity))
        row["pct_of_ideal"] = 100 * row["speedup"] / row["ideal"]
        row.update(rounds=rounds, dense_ms_rounds=dense_rounds, sparse_ms_rounds=rounds_ms[best])
        row["pct_of_ideal_rounds"] = [100 * d * (1 - sparsity) / t for d, t in zip(dense_rounds, rounds_ms[best])]
        rows.append(row)
        print(f"  {shape.name} {row['mask']} ({mode}): sparsity {sparsity:.1%}, dense {best_dense:.2f} ms, "
              + ", ".join(f"{n} {t:.2f}" for n, t in times.items()) + f" ms -> {row['speedup']:.2f}x "
              f"({row['pct_of_ideal']:.0f}% of ideal; rounds {min(row['pct_of_ideal_rounds']):.0f}-"
              f"{max(row['pct_of_ideal_rounds']):.0f})", flush=True)
    return rows


def run_kernel_benchmark(out: str | None, shapes=SHAPES, device: str | None = None, kernels=None,
                         rep_ms: float = 300, rounds: int = 3, backward: bool = False) -> dict:
    """Run the kernel benchmark on ``shapes``; print a table, write JSON to ``out`` (if given) and return it.
    ``kernels`` default: :func:`default_kernels` of the device. ``rep_ms``: the timing budget of one measurement;
    ``rounds``: alternating rounds of each mask's dense and sparse timings (see the module docstring);
    ``backward``: time forward and backward passes (rows with ``mode: "fwd+bwd"``)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kernels = tuple(kernels or default_kernels(dev))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rows = []
    data = {"rows": rows}
    for i, shape in enumerate(shapes):
        rows += bench_shape(shape, dev, dtype, kernels, rep_ms=rep_ms, rounds=rounds, backward=backward)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if out:  # after every shape, so that a run stopped part-way keeps what it measured
            data = write_results(out, "kernels", rows, dev, dtype=str(dtype).replace("torch.", ""),
                                 kernels=list(kernels), rounds=rounds, mode="fwd+bwd" if backward else "fwd",
                                 threads=torch.get_num_threads() if dev.type == "cpu" else None,
                                 complete=i == len(shapes) - 1, **package_versions())
    print_table(rows, ["shape", "mask", "seq_len", "element_sparsity", "best_dense_ms", "sparse_ms", "kernel",
                       "speedup", "ideal", "pct_of_ideal"])
    if out:
        print(f"wrote {out}")
    return data
