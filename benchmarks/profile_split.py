"""Where does the split kernel's time go? torch.profiler CUDA-time table for a few cases (device machine)."""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from diffusers_evdit.bench.kernels import SHAPES
from diffusers_evdit.kernels import TileAttention

cases = [("cogvideox5b_49f_480p", 1), ("wan2.1-14b_81f_480p", 1), ("osp_29f_720p", 1), ("hunyuan_129f_720p", 1)]
shapes = {s.name: s for s in SHAPES}
for name, k in cases[: int(sys.argv[1]) if len(sys.argv) > 1 else None]:
    s = shapes[name]
    layout = s.layout
    q, kk, v = (torch.randn(1, layout.seq_len, s.heads, s.head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                for _ in range(3))
    att = TileAttention("split")
    for _ in range(3):
        att(q, kk, v, layout, k)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            att(q, kk, v, layout, k)
        torch.cuda.synchronize()
    print(f"== {name} {k}:{layout.num_frames - k} (5 calls)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))
