"""Where the keysets kernel spends its time on the CPU, stage by stage, and how many page faults each stage takes.

One process, the demo layout (8 frames x 64 tokens, 4 heads of 64, batch 1, float32, ``--threads`` torch threads):
dense SDPA, ``masked`` and ``keysets`` (through ``TileAttention``) in interleaved rounds, then per call of keysets the
wall time and minor page faults of its stages: the global rows' SDPA call, the gathers (non-reference queries and
the key sets of keys and values), the frames' SDPA call, the reshape and the final cat. The slow mode of the
development machine (BENCHMARKS.md, "Short sequences on the CPU") shows from one process to the next, so run it in
several processes::

    for i in 1 2 3 4 5 6 7 8 9 10; do PYTHONPATH=. python benchmarks/keyset_stages.py --k 4; done

``TileAttention`` writes the key and value sets of inference calls into buffers it keeps between calls;
``--fresh-gathers`` makes new tensors every call instead (as before 2026-12-07), to tell page faults apart from the
rest of the slow mode.

``staged_keysets`` is a copy of ``keyset_tile_attention``'s body with timers between its stages;
``tests/test_keysets.py`` checks it against the kernel and a float64 reference, so a change to the kernel that the
copy misses fails there.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import diffusers_evdit.kernels.dispatch as kernels
from diffusers_evdit.kernels import TileAttention
from diffusers_evdit.kernels import keysets as ks
from diffusers_evdit.layout import TileLayout

STAGES = ("global_sdpa", "gathers", "frames_sdpa", "reshape", "cat")


def staged_keysets(totals: dict, fresh: bool):
    """A drop-in ``keyset_tile_attention`` that adds each stage's seconds and page faults to ``totals``."""

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def run(q, k, v, plan, scale=None, gather_buffers=None):
        b, h, _, d = q.shape
        m, t, lg = plan.num_nonref, plan.tokens_per_frame, plan.num_global
        marks = [(time.perf_counter(), faults())]
        o_global = F.scaled_dot_product_attention(ks._heads_first(ks._tokens(q, plan.global_tokens)), k, v,
                                                  scale=scale)
        marks.append((time.perf_counter(), faults()))
        qn = ks._tokens(q, plan.nonref_tokens).reshape(b * m, t, h, d)
        buffers = (None, None) if fresh or gather_buffers is None else gather_buffers
        kn, vn = (ks._tokens(x, plan.key_sets, out).reshape(b * m, lg + t, h, d) for x, out in zip((k, v), buffers))
        marks.append((time.perf_counter(), faults()))
        o_frames = F.scaled_dot_product_attention(*(ks._heads_first(x) for x in (qn, kn, vn)), scale=scale)
        marks.append((time.perf_counter(), faults()))
        results = (o_global.transpose(1, 2), o_frames.transpose(1, 2).reshape(b, m * t, h, d))
        marks.append((time.perf_counter(), faults()))
        out = torch.cat([results[c][:, o:o + stop - start] for start, stop, c, o in plan.runs], dim=1).transpose(1, 2)
        marks.append((time.perf_counter(), faults()))
        for name, (a, z) in zip(STAGES, zip(marks, marks[1:])):
            totals[name][0] += z[0] - a[0]
            totals[name][1] += z[1] - a[1]
        return out

    return run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=4, help="reference frames of the k:F-k mask")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--round-s", type=float, default=0.1)
    p.add_argument("--fresh-gathers", action="store_true", help="new key and value sets every call")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    layout = TileLayout(8, 64)
    q, k, v = (torch.randn(1, layout.seq_len, 4, 64).transpose(1, 2) for _ in range(3))  # the processors' memory
    totals = {name: [0.0, 0] for name in STAGES}
    stock = kernels.keyset_tile_attention
    kernels.keyset_tile_attention = staged_keysets(totals, args.fresh_gathers)  # what TileAttention("keysets") runs
    try:
        out = _time(args, layout, q, k, v, totals)
    finally:
        kernels.keyset_tile_attention = stock
    print(json.dumps(out) if args.json else
          f"k={args.k}: dense {out['dense_us']:.0f} us, masked {out['masked_vs_dense']:.3f}x, keysets "
          f"{out['keysets_vs_dense']:.3f}x; keysets' stages (us) {out['stage_us']}, page faults a call "
          f"{out['stage_faults']}")
    return out


def _time(args, layout, q, k, v, totals: dict) -> dict:
    """Interleaved rounds of dense, masked and keysets; keysets' stage totals per call."""
    keysets, masked = TileAttention("keysets"), TileAttention("masked")
    fns = {"dense": lambda: F.scaled_dot_product_attention(q, k, v),
           "masked": lambda: masked(q, k, v, layout, args.k), "keysets": lambda: keysets(q, k, v, layout, args.k)}
    for fn in fns.values():
        for _ in range(20):
            fn()
    for name in STAGES:
        totals[name] = [0.0, 0]
    seconds, calls = {n: [] for n in fns}, 0
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0, c = time.perf_counter(), 0
            while time.perf_counter() - t0 < args.round_s:
                fn()
                c += 1
            seconds[name].append((time.perf_counter() - t0) / c)
            calls += c if name == "keysets" else 0
    dense = statistics.median(seconds["dense"])
    return {"k": args.k, "threads": args.threads, "fresh_gathers": args.fresh_gathers,
            "dense_us": round(1e6 * dense, 1),
            "masked_vs_dense": round(dense / statistics.median(seconds["masked"]), 3),
            "keysets_vs_dense": round(dense / statistics.median(seconds["keysets"]), 3),
            "stage_us": {n: round(1e6 * s / calls, 1) for n, (s, _) in totals.items()},
            "stage_faults": {n: round(f / calls, 1) for n, (_, f) in totals.items()}}


if __name__ == "__main__":
    main()
