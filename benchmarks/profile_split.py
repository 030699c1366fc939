"""Where does the split kernel's time go? Per-call timings (TFLOP/s) of its three dense calls, the merge of the
first run of non-reference frames with each merge implementation (GB/s moved: two partial outputs read, one output
written), the whole kernel with each merge, and a CUDA kernel table from torch.profiler, for the cases below 85% of
the ideal speedup, and the global queries in 2 / 4 key chunks (one batched call each). Run on the device machine:
python3 benchmarks/profile_split.py [--json OUT]"""

import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

from diffusers_evdit.bench.kernels import SHAPES
from diffusers_evdit.kernels import TileAttention
from diffusers_evdit.masks import element_sparsity
from diffusers_evdit.kernels.gathered import frames_view
from diffusers_evdit.kernels.split import attention_with_lse, global_attention, merge_partial_attention
from diffusers_evdit.kernels.triton_merge import triton_merge_available, triton_merge_partial_attention

CASES = [("cogvideox5b_49f_480p", 2), ("cogvideox5b_49f_480p", 1), ("wan2.1-14b_81f_480p", 2), ("wan2.1-14b_81f_480p", 1),
         ("osp_29f_720p", 1)]
MERGES = ("compiled", "triton") if triton_merge_available("cuda") else ("compiled",)
results = []
shapes = {s.name: s for s in SHAPES}


def tflops(flops, ms):
    return flops / ms / 1e9


for name, k in CASES:
    s = shapes[name]
    layout = s.layout
    q, kk, v = (torch.randn(1, layout.seq_len, s.heads, s.head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                for _ in range(3))
    att = TileAttention("split")
    idx = att.indices(layout, k, q.device)
    h, d, t, m = s.heads, s.head_dim, layout.tokens_per_frame, len(idx.nonrefs)
    qv, kv, vv = (frames_view(x, layout) for x in (q, kk, v))
    qn, kn, vn = (x[:, :, idx.nonref_frames] for x in (qv, kv, vv))
    own_in = [x.transpose(1, 2).reshape(m, h, t, d) for x in (qn, kn, vn)]
    qflat = qn.flatten(2, 3)
    ks, vs = kk[:, :, idx.global_tokens], v[:, :, idx.global_tokens]
    qg = q[:, :, idx.global_tokens]
    L = ks.shape[2]
    parts = {
        "own": (lambda: attention_with_lse(*own_in), 4 * m * t * t * d * h),
        "shared": (lambda: attention_with_lse(qflat, ks, vs), 4 * m * t * L * d * h),
        "global": (lambda: torch.nn.functional.scaled_dot_product_attention(qg, kk, v), 4 * L * layout.seq_len * d * h),
        "whole": (lambda: att(q, kk, v, layout, k), None),
        "dense": (lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, v), 4 * layout.seq_len**2 * d * h),
    }
    for merge in MERGES:  # the whole kernel with each merge implementation
        att_m = TileAttention("split", merge=merge)
        parts[f"whole[{merge}]"] = (lambda att_m=att_m: att_m(q, kk, v, layout, k), None)
    for chunks in (2, 4):  # the global queries against 2 / 4 key chunks in one batched call (more thread blocks)
        att_c = TileAttention("split", global_chunks=chunks)
        parts[f"whole[g{chunks}]"] = (lambda att_c=att_c: att_c(q, kk, v, layout, k), None)
        parts[f"global[g{chunks}]"] = (lambda c=chunks: global_attention(qg, kk, v, chunks=c), 4 * L * layout.seq_len * d * h)
    # the merge of the first run of non-reference frames, as the kernel calls it
    run = idx.nonref_runs[0]
    mr = run.stop - run.start
    qr, kr, vr = qv[:, :, run], kv[:, :, run], vv[:, :, run]
    o_own, l_own = attention_with_lse(qr[0].transpose(0, 1), kr[0].transpose(0, 1), vr[0].transpose(0, 1))
    o_sh, l_sh = attention_with_lse(qr.flatten(2, 3), ks, vs)
    target = frames_view(torch.empty_like(q), layout)[:, :, run]
    merge_args = (target, o_own.transpose(0, 1)[None], o_sh.unflatten(2, (mr, t)), l_own.transpose(0, 1)[None],
                  l_sh.unflatten(2, (mr, t)))
    merge_bytes = 3 * target.numel() * target.element_size()
    merge_fns = {"eager": merge_partial_attention, "compiled": TileAttention().fused_merge}
    if "triton" in MERGES:
        merge_fns["triton"] = triton_merge_partial_attention
    print(f"== {name} {k}:{layout.num_frames - k}  (partial output strides: own {tuple(merge_args[1].stride())}, "
          f"shared {tuple(merge_args[2].stride())}, out {tuple(target.stride())})")
    total, case = 0, {"shape": name, "mask": f"{k}:{layout.num_frames - k}", "ms": {}}
    for part, (fn, flops) in parts.items():
        ms = do_bench(fn, warmup=50, rep=200, return_mode="median")
        case["ms"][part] = ms
        if part in ("own", "shared", "global"):  # the work of one split call
            total += flops
        print(f"  {part:16s} {ms:8.3f} ms" + (f"  {tflops(flops, ms):6.0f} TFLOP/s" if flops else
                                              f"  (attention work {total / 1e12:.3f} TFLOP)"))
    for merge, fn in merge_fns.items():
        ms = do_bench(lambda fn=fn: fn(*merge_args), warmup=20, rep=100, return_mode="median")
        case["ms"][f"merge[{merge}]"] = ms
        print(f"  merge[{merge}]{'':{8 - len(merge)}s} {ms:8.3f} ms  {merge_bytes / ms / 1e6:6.0f} GB/s "
              f"(first run, {mr} frames)")
    ideal = case["ms"]["dense"] * (1 - element_sparsity(layout, k))
    case["pct_of_ideal"] = {m: 100 * ideal / case["ms"][f"whole[{m}]"] for m in (*MERGES, "g2", "g4")}
    print("  % of ideal: " + ", ".join(f"{m} {p:.1f}" for m, p in case["pct_of_ideal"].items()))
    results.append(case)
    att(q, kk, v, layout, k)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            att(q, kk, v, layout, k)
        torch.cuda.synchronize()
    for evt in sorted(prof.key_averages(), key=lambda e: -getattr(e, "device_time_total", 0))[:8]:
        dt = getattr(evt, "device_time_total", 0) / 5e3
        if dt > 0.005:
            print(f"    {dt:7.3f} ms/call x{evt.count // 5:<3d} {evt.key[:95]}")

if "--json" in sys.argv:
    out = sys.argv[sys.argv.index("--json") + 1]
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": results}, f, indent=2)
    print(f"wrote {out}")
