"""Does concurrency close the split kernel's last gap on the 1:F-1 masks (83-85% of the ideal on an H100)?

For each case below: the split kernel as it runs (``whole``), the same calls with each run's own-frame and shared
calls on two CUDA streams (``pair``: the tail wave of one fills with the other), the global call on a third stream as
well (``pair+global``), and the whole kernel replayed from a CUDA graph (``graph``: no launch gaps). Every variant
and dense attention are timed in ``--rounds`` alternating rounds (default 5), so that the spread between rounds
(clocks, other load) shows beside the differences between variants. Prints a table, writes JSON. Run on the device
machine: python3 benchmarks/profile_split_streams.py [--rounds N] [--json OUT]
"""

import json
import statistics
import sys

import torch
from triton.testing import do_bench

from diffusers_evdit.bench.kernels import SHAPES
from diffusers_evdit.kernels import TileAttention
from diffusers_evdit.kernels.gathered import frames_view
from diffusers_evdit.kernels.split import attention_with_lse, global_attention
from diffusers_evdit.masks import element_sparsity

CASES = [("cogvideox5b_49f_480p", 1), ("wan2.1-14b_81f_480p", 1), ("osp_29f_720p", 1), ("wan2.1-14b_81f_480p", 2)]


def concurrent_split(q, k, v, layout, idx, merge, streams, with_global):
    """The split kernel's calls (no text padding) with each run's shared call on ``streams[0]`` and, with
    ``with_global``, the global call on ``streams[1]``; the output is exact either way."""
    out = torch.empty_like(q)
    main = torch.cuda.current_stream()
    for s in streams:
        s.wait_stream(main)
    qv, kv, vv = (frames_view(x, layout) for x in (q, k, v))
    ks, vs = k[:, :, idx.global_tokens], v[:, :, idx.global_tokens]
    keep = []  # partial results made on a side stream stay referenced until the join

    def global_part():
        out[:, :, idx.global_tokens] = global_attention(q[:, :, idx.global_tokens], k, v)

    if with_global:
        with torch.cuda.stream(streams[1]):
            global_part()
    out_frames = frames_view(out, layout)
    tpf = layout.tokens_per_frame
    for run in idx.nonref_runs:
        m = run.stop - run.start
        qr, kr, vr = qv[:, :, run], kv[:, :, run], vv[:, :, run]
        with torch.cuda.stream(streams[0]):
            o_sh, lse_sh = attention_with_lse(qr.flatten(2, 3), ks, vs)
        o_own, lse_own = attention_with_lse(qr[0].transpose(0, 1), kr[0].transpose(0, 1), vr[0].transpose(0, 1))
        main.wait_stream(streams[0])
        keep.append((o_sh, lse_sh))
        merge(out_frames[:, :, run], o_own.transpose(0, 1)[None], o_sh.unflatten(2, (m, tpf)),
              lse_own.transpose(0, 1)[None], lse_sh.unflatten(2, (m, tpf)))
    if not with_global:
        global_part()
    for s in streams:
        main.wait_stream(s)
    return out


def main():
    shapes = {s.name: s for s in SHAPES}
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    rows = []
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 5
    for name, k_ref in CASES:
        s = shapes[name]
        layout = s.layout
        q, k, v = (torch.randn(1, layout.seq_len, s.heads, s.head_dim, device="cuda", dtype=torch.bfloat16)
                   .transpose(1, 2) for _ in range(3))
        att = TileAttention("split")
        idx = att.indices(layout, k_ref, q.device)
        merge = att.merge_fn(q)
        expected = att(q, k, v, layout, k_ref)
        variants = {
            "whole": lambda: att(q, k, v, layout, k_ref),
            "pair": lambda: concurrent_split(q, k, v, layout, idx, merge, streams, False),
            "pair+global": lambda: concurrent_split(q, k, v, layout, idx, merge, streams, True),
        }
        for fn in list(variants.values())[1:]:
            err = (fn().float() - expected.float()).abs().max().item()
            assert err < 1e-2, f"{name}: a concurrent variant differs by {err}"
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                att(q, k, v, layout, k_ref)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            graph_out = att(q, k, v, layout, k_ref)
        graph.replay()
        assert (graph_out.float() - expected.float()).abs().max().item() < 1e-2
        variants["graph"] = graph.replay
        variants = {"dense": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), **variants}
        ms = {key: [] for key in variants}
        for _ in range(rounds):
            for key, fn in variants.items():
                ms[key].append(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        sparsity = element_sparsity(layout, k_ref)
        pct = {key: [100 * d * (1 - sparsity) / t for d, t in zip(ms["dense"], ms[key])] for key in variants if
               key != "dense"}  # per round, against that round's dense time
        row = {"shape": name, "mask": f"{k_ref}:{layout.num_frames - k_ref}", "ms": ms, "pct_of_ideal": pct}
        print(f"{name} {row['mask']}: dense {statistics.median(ms['dense']):.2f} ms; " + ", ".join(
            f"{key} {statistics.median(ms[key]):.3f} ms ({statistics.median(p):.1f}% of ideal, rounds "
            f"{min(p):.1f}-{max(p):.1f})" for key, p in pct.items()), flush=True)
        rows.append(row)
    if "--json" in sys.argv:
        path = sys.argv[sys.argv.index("--json") + 1]
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
