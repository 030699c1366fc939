"""Does pinning the walk kernel's launch setting speed up a whole denoising step, not only one attention call?

``TileAttention`` keeps the setting Triton's autotuner chose for each walk shape after its first call and launches
with it directly afterwards (``walk_tile_attention(..., launch_settings=...)``), which saves ~25-40 us of host time a
call (``gpu_masked_study.py --only-tile``). In a step the host issues the next layer's work while the GPU runs, so the
saving shows only where the step is host-bound. This script times whole steps of full-size transformers (random
weights, bf16, batch 1) at the 240p shapes where ``auto`` runs walk: dense, and each uniform plan with ``kernel="walk"``
pinned (as shipped) and unpinned (every call through the autotuner's wrapper, as before the change). Variants are
interleaved within each round; each time is the median over rounds of the mean of ``--steps`` CUDA-synchronised steps.

    python benchmarks/walk_step_pinning.py --out /tmp/walk-step-pinning.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import time

import torch

import diffusers_evdit.kernels.dispatch as kernels
from diffusers_evdit.bench.step import StepModel, build_model
from diffusers_evdit.kernels.walk import walk_available
from diffusers_evdit.masks import format_mask
from diffusers_evdit.plan import MaskPlan, apply_mask_plan, num_plan_layers

MODELS = {  # the 240p shapes of `evdit bench kernels --shapes small` (3510 and 4516 tokens), as whole models
    "wan2.1-1.3b_33f_240p": StepModel("wan2.1-1.3b_33f_240p", "wan",
                                      dict(num_attention_heads=12, ffn_dim=8960, num_layers=30), (9, 30, 52), 512,
                                      (4, 2, 1)),
    "cogvideox-5b_49f_240p": StepModel(
        "cogvideox-5b_49f_240p", "cogvideox",
        dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True), (13, 30, 44), 226,
        (6, 3, 1)),
}


@contextlib.contextmanager
def unpinned():
    """Every walk call goes through the autotuner's wrapper (no kept launch setting)."""
    original = kernels.walk_tile_attention

    def walk_without_pinning(*args, **kwargs):
        kwargs["launch_settings"] = None
        return original(*args, **kwargs)

    kernels.walk_tile_attention = walk_without_pinning
    try:
        yield
    finally:
        kernels.walk_tile_attention = original


def mean_step_s(model, inputs, steps: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            model(**inputs, return_dict=False)
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench(spec: StepModel, rounds: int, steps: int) -> list[dict]:
    model, inputs = build_model(spec, torch.device("cuda"))
    layers = num_plan_layers(model)
    plans = {"dense": MaskPlan.dense(layers)} | {k: MaskPlan.uniform(layers, k) for k in spec.masks}
    times: dict[str, list[float]] = {}
    frames = spec.latent[0]
    for r in range(rounds):
        for k, plan in plans.items():
            apply_mask_plan(model, plan, kernel="auto" if k == "dense" else "walk")
            with torch.no_grad():
                model(**inputs, return_dict=False)  # warm-up: the first walk call per shape tunes and pins
            if k == "dense":
                times.setdefault("dense", []).append(mean_step_s(model, inputs, steps))
                continue
            name = format_mask(frames, k)
            order = (("pinned", contextlib.nullcontext), ("unpinned", unpinned))
            for label, ctx in order if r % 2 == 0 else order[::-1]:
                with ctx():
                    times.setdefault(f"{name} {label}", []).append(mean_step_s(model, inputs, steps))
        print(f"  {spec.name} round {r + 1}/{rounds}", flush=True)
    dense = statistics.median(times["dense"])
    rows = [dict(model=spec.name, variant="dense", step_ms=1e3 * dense, spread_ms=1e3 * (max(times["dense"]) -
                                                                                           min(times["dense"])))]
    for k in spec.masks:
        name = format_mask(frames, k)
        pinned, plain = (statistics.median(times[f"{name} {x}"]) for x in ("pinned", "unpinned"))
        for label, t in (("pinned", pinned), ("unpinned", plain)):
            ts = times[f"{name} {label}"]
            rows.append(dict(model=spec.name, variant=f"walk {name} {label}", step_ms=1e3 * t,
                             spread_ms=1e3 * (max(ts) - min(ts)), speedup_vs_dense=dense / t))
        rows[-2]["pinned_over_unpinned"] = plain / pinned
    del model, inputs
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="CUDA-synchronised steps a variant a round (their mean)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available() or not walk_available("cuda"):
        raise SystemExit("walk_step_pinning.py needs a CUDA GPU with Triton")
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = [row for name in args.models for row in bench(MODELS[name], args.rounds, args.steps)]
    print(f"{'model':24} {'variant':24} {'step ms':>8} {'spread':>7} {'x dense':>8} {'pinned/unpinned':>16}")
    for row in rows:
        print(f"{row['model']:24} {row['variant']:24} {row['step_ms']:8.2f} {row['spread_ms']:7.2f} "
              f"{row.get('speedup_vs_dense', 1.0):8.3f} {row.get('pinned_over_unpinned', float('nan')):16.3f}")
    data = dict(device=torch.cuda.get_device_name(), date=datetime.date.today().isoformat(),
                torch=torch.__version__, rounds=args.rounds, steps=args.steps,
                command="python benchmarks/walk_step_pinning.py", rows=rows)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    return data


if __name__ == "__main__":
    main()
