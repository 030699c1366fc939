"""Where does the split kernel's time go? Per-call timings (TFLOP/s) of its three dense calls, and a CUDA kernel
table from torch.profiler, for a few cases. Run on the device machine: python3 benchmarks/profile_split.py"""

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

from diffusers_evdit.bench.kernels import SHAPES
from diffusers_evdit.kernels import TileAttention
from diffusers_evdit.kernels.gathered import frames_view
from diffusers_evdit.kernels.split import attention_with_lse

CASES = [("cogvideox5b_49f_480p", 2), ("cogvideox5b_49f_480p", 1), ("wan2.1-14b_81f_480p", 2), ("wan2.1-14b_81f_480p", 1)]
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
    print(f"== {name} {k}:{layout.num_frames - k}")
    total = 0
    for part, (fn, flops) in parts.items():
        ms = do_bench(fn, warmup=50, rep=200, return_mode="median")
        if part in ("own", "shared", "global"):
            total += flops
        print(f"  {part:7s} {ms:8.3f} ms" + (f"  {tflops(flops, ms):6.0f} TFLOP/s" if flops else
                                             f"  (attention work {total / 1e12:.3f} TFLOP)"))
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
