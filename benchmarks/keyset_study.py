"""Study: exact formulations of light ``k:F-k`` masks on short CPU sequences against plain dense SDPA.

The demo model's attention shape (8 frames x 64 tokens, no text, 4 heads of 64, batch 1; ``[B, N, H, D]`` memory
viewed as ``[B, H, N, D]``, as the kernel benchmark and the diffusers processors hand it over) is timed under
``torch.set_num_threads(t)`` for every ``k`` with several candidate formulations, all exact:

* ``dense``: plain SDPA, no mask (the baseline; not exact for the mask, the speed to match);
* ``masked``: one SDPA call with the cached additive ``[N, N]`` tile mask (what ``auto`` runs for light masks);
* (the committed ``keyset-study-cpu.json`` also holds ``regrouped``, the three-call LSE-merged kernel that keysets
  replaced: ``diffusers_evdit/kernels/regrouped.py`` in the git history, last at commit 97d73c5)
* ``keysets``: (a) global rows (reference frames + text) dense against every key, and every non-reference frame's
  queries against its own key set (global tokens + own frame), the frames as the batch: keys gathered once;
* ``part_mask``: (c) global rows dense; the non-reference rows in one SDPA call with the rows' slice of the mask;
* ``masked_math`` / ``dense_math``: (d) the same through the math backend (``sdpa_kernel(MATH)``);
* ``*_bf16``: (d) bfloat16 inputs (``--bf16``).

Timing: per ``k`` the candidates run in interleaved rounds (the order rotated every round); in each round a candidate
runs ``inner`` calls back to back (after warm-up) and its mean per-call time is recorded. Reported: the median over
rounds of those means, and the median, min and max over rounds of the ratio dense/candidate of the same round
(paired, so slow drift of the machine cancels).

Usage::

    PYTHONPATH=. python benchmarks/keyset_study.py --threads 1 2 --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusers_evdit.kernels.keysets import keyset_plan, keyset_tile_attention
from diffusers_evdit.layout import TileLayout
from diffusers_evdit.masks import additive_tile_mask, non_reference_frames


def part_mask_fn(q, k, v, layout, k_ref):
    """(c) global rows dense, non-reference rows with their rows of the additive mask (two SDPA calls)."""
    plan = keyset_plan(layout, k_ref, q.device)
    bias = additive_tile_mask(layout, k_ref, q.dtype)
    rows = plan.nonref_tokens if isinstance(plan.nonref_tokens, torch.Tensor) else torch.arange(
        plan.nonref_tokens.start, plan.nonref_tokens.stop)
    row_bias = bias.index_select(0, rows).contiguous()
    g, n = plan.global_tokens, rows

    def take(x, sel):
        return x.transpose(1, 2)[:, sel] if isinstance(sel, slice) else x.transpose(1, 2).index_select(1, sel)

    def fn():
        og = F.scaled_dot_product_attention(take(q, g).transpose(1, 2), k, v).transpose(1, 2)
        on = F.scaled_dot_product_attention(take(q, n).transpose(1, 2), k, v, attn_mask=row_bias).transpose(1, 2)
        results = (og, on)
        pieces = [results[call][:, offset:offset + stop - start] for start, stop, call, offset in plan.runs]
        return torch.cat(pieces, dim=1).transpose(1, 2)

    return fn


def candidates(q, k, v, layout, k_ref, math: bool):
    bias = additive_tile_mask(layout, k_ref, q.dtype)
    plan = keyset_plan(layout, k_ref, q.device)
    fns = {
        "dense": lambda: F.scaled_dot_product_attention(q, k, v),
        "masked": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
        "keysets": lambda: keyset_tile_attention(q, k, v, plan),
        "part_mask": part_mask_fn(q, k, v, layout, k_ref),
    }
    if math:
        def in_math(f):
            def g():
                with sdpa_kernel([SDPBackend.MATH]):
                    return f()
            return g
        fns["dense_math"] = in_math(fns["dense"])
        fns["masked_math"] = in_math(fns["masked"])
    return fns


def check_exact(fns, q, k, v, layout, k_ref):
    bias = additive_tile_mask(layout, k_ref, torch.float64)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias)
    return {name: (fn().double() - ref).abs().max().item() for name, fn in fns.items() if name != "dense"}


def calibrate(fn, target_s: float) -> int:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.05:
        fn()
        n += 1
    per = (time.perf_counter() - t0) / n
    return max(3, int(target_s / per))


def time_rounds(fns: dict, rounds: int, target_s: float) -> dict:
    names = list(fns)
    inner = {name: calibrate(fns[name], target_s) for name in names}
    ms = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn, n = fns[name], inner[name]
            fn()  # warm the caches after the previous candidate
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            ms[name].append(1e3 * (time.perf_counter() - t0) / n)
    return ms


def summarize(ms: dict) -> dict:
    dense = ms["dense"]
    out = {}
    for name, xs in ms.items():
        ratios = [d / x for d, x in zip(dense, xs)]
        out[name] = {"ms": statistics.median(xs), "ms_min": min(xs), "ms_max": max(xs),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ks", type=int, nargs="+", default=[6, 5, 4, 3, 2, 1])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--round-s", type=float, default=0.1, help="seconds per candidate per round")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--text", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 inputs instead of float32")
    p.add_argument("--math", action="store_true", help="also time the math SDPA backend")
    p.add_argument("--only", nargs="*", help="candidates to time (dense always)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    layout = TileLayout(args.frames, args.tokens, args.text, "first" if args.text else "none")
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    q, k, v = (torch.randn(1, layout.seq_len, args.heads, args.head_dim, generator=g).to(dtype).transpose(1, 2)
               for _ in range(3))
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n== {threads} thread(s), {dtype}, N={layout.seq_len}, H={args.heads}, D={args.head_dim}, "
              f"{args.rounds} rounds x {args.round_s:.2f} s per candidate")
        for k_ref in args.ks:
            fns = candidates(q, k, v, layout, k_ref, args.math)
            if args.only:
                fns = {n: f for n, f in fns.items() if n == "dense" or n in args.only}
            with torch.no_grad():
                errs = check_exact(fns, q, k, v, layout, k_ref)
                stats = summarize(time_rounds(fns, args.rounds, args.round_s))
            m = len(non_reference_frames(layout.num_frames, k_ref))
            print(f"k={k_ref} (M={m}):  " + "  ".join(
                f"{n} {s['ms']:.3f}ms {s['ratio']:.3f}x[{s['ratio_min']:.3f}-{s['ratio_max']:.3f}]"
                for n, s in stats.items()))
            print("      max|err| vs f64 masked: " + "  ".join(f"{n} {e:.1e}" for n, e in errs.items()))
            results.append({"threads": threads, "k": k_ref, "dtype": str(dtype), "rounds": args.rounds,
                            "stats": stats, "max_abs_err": errs})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
