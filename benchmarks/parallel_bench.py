"""Per-step time of full-size video transformers on 1, 2 and 4 GPUs: tile-sparse attention under diffusers' Ulysses
context parallelism (docs/parallel.md), dense vs a uniform ``1:F-1`` plan.

Shapes (random weights, bf16, batch 1, one transformer forward = one denoising step without CFG):

* ``hunyuan_129f_720p``: HunyuanVideo 13B, 129 frames 720x1280 (33 x 90 x 160 latent, 118,800 video + 256 text
  tokens), plan 1:32;
* ``wan2.1-14b_81f_480p``: Wan2.1-14B, 81 frames 480x832 (21 x 60 x 104 latent, 32,760 tokens), plan 1:20.

Run on one machine with 4 GPUs (e.g. nvidia-h200-x4); each GPU count is one ``torchrun`` launch of this script in
worker mode, and the rows are merged into the JSON file (rows with the same shape, plan and GPU count are replaced,
so counts can be measured in separate invocations)::

    python benchmarks/parallel_bench.py --gpus 1 2 4 --out benchmarks/results/parallel-h200.json
    python benchmarks/parallel_bench.py --gpus 4 --shapes hunyuan_129f_720p --out benchmarks/results/parallel-h200.json

    python benchmarks/parallel_bench.py --tiny --gpus 1 2          # CPU (gloo), tiny models: checks the code path

Rows: ``shape``, ``plan``, ``gpus``, ``step_s`` (median over ``--reps`` steps, slowest rank), ``speedup_vs_1gpu``
(same shape and plan on 1 GPU), ``speedup_vs_dense`` (same shape and GPU count), ``element_sparsity``, and the
individual step times. The script prints the issue's targets (HunyuanVideo sparse: >= 1.85x on 2 GPUs, >= 3.6x on
4 GPUs; sparse-over-dense speedup on 4 GPUs within 10% of 1 GPU's). NVLink multicast stays off
(``NCCL_NVLS_ENABLE=0`` etc. are set for the workers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("hunyuan_129f_720p", "wan2.1-14b_81f_480p")
TINY_SHAPES = ("tiny_hunyuan_video", "tiny_wan")
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


# --------------------------------------------------------------------------------------------------------- worker


def build(shape: str, device: torch.device):
    """Random-weight transformer and forward kwargs of ``shape`` (identical on every rank: seeded)."""
    torch.manual_seed(0)
    if shape.startswith("tiny_"):
        from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_transformer

        model = tiny_transformer(shape[len("tiny_"):], num_layers=2).to(device)
        inputs = tiny_inputs(model, TinyVideo(frames=8, height=16, width=16, text_tokens=7, batch=1), padded_text=0)
        return model, {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    from diffusers_evdit.bench.step import MODELS, StepModel, build_model

    if shape == "wan2.1-14b_81f_480p":
        spec = StepModel(shape, "wan", dict(num_attention_heads=40, ffn_dim=13824, num_layers=40), (21, 60, 104), 512,
                         (1,))
    else:
        spec = MODELS[shape]
    return build_model(spec, device)


def time_steps(model, inputs, device, warmup: int, reps: int) -> list[float]:
    """Wall time of ``reps`` forwards after ``warmup``, each the slowest rank's (barrier before, max after)."""
    import torch.distributed as dist

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for i in range(warmup + reps):
        dist.barrier()
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(**inputs, return_dict=False)
        sync()
        elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if i >= warmup:
            times.append(float(elapsed.item()))
    return times


def worker(args) -> None:
    sys.path.insert(0, str(ROOT))
    from diffusers_evdit import MaskPlan, apply_mask_plan, format_mask, num_plan_layers
    from diffusers_evdit.parallel import enable_tile_parallelism, init_distributed

    rank, world, device = init_distributed(backend="gloo" if args.tiny else None)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    rows = []
    for shape in args.shapes:
        model, inputs = build(shape, device)
        n_layers = num_plan_layers(model)
        enabled = False
        for plan_name in args.plans:
            k = None if plan_name == "dense" else int(plan_name)
            apply_mask_plan(model, MaskPlan.uniform(n_layers, k), kernel=args.kernel)
            if world > 1 and not enabled:
                enable_tile_parallelism(model, ulysses_degree=world)
                enabled = True
            times = time_steps(model, inputs, device, args.warmup, args.reps)
            state = model._evdit_tile_state
            layout = state.video_layout
            family_text = {"HunyuanVideoTransformer3DModel": "last", "CogVideoXTransformer3DModel": "first"}
            position = family_text.get(type(model).__name__)
            text = inputs["encoder_hidden_states"].shape[1] if position else 0
            layout = layout.with_text(text, position or "none")
            plan = MaskPlan.uniform(n_layers, k)
            row = dict(shape=shape, plan="dense" if k is None else f"uniform {format_mask(layout.num_frames, k)}",
                       k=k, gpus=world, ulysses_degree=world, kernel=args.kernel, step_s=statistics.median(times),
                       step_times_s=times, element_sparsity=plan.sparsity(layout),
                       tokens=layout.seq_len, model=type(model).__name__)
            rows.append(row)
            if rank == 0:
                print(f"  {shape} {row['plan']} on {world} {device.type}: {row['step_s']:.3f} s/step", flush=True)
        del model, inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if rank == 0:
        Path(args.rows_file).write_text(json.dumps(rows))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------------------- driver


def add_speedups(rows: list[dict]) -> list[dict]:
    """Fill ``speedup_vs_1gpu`` and ``speedup_vs_dense`` from the other rows (``None`` when the baseline is missing).

    Example:
        >>> rows = add_speedups([dict(shape="s", plan="dense", gpus=1, step_s=4.0),
        ...                      dict(shape="s", plan="dense", gpus=4, step_s=1.0)])
        >>> rows[1]["speedup_vs_1gpu"], rows[1]["speedup_vs_dense"]
        (4.0, 1.0)
    """
    by_key = {(r["shape"], r["plan"], r["gpus"]): r for r in rows}
    for r in rows:
        one = by_key.get((r["shape"], r["plan"], 1))
        dense = by_key.get((r["shape"], "dense", r["gpus"]))
        r["speedup_vs_1gpu"] = one["step_s"] / r["step_s"] if one else None
        r["speedup_vs_dense"] = dense["step_s"] / r["step_s"] if dense else None
    return sorted(rows, key=lambda r: (r["shape"], r["plan"] != "dense", r["plan"], r["gpus"]))


def targets(rows: list[dict]) -> list[str]:
    """The issue's acceptance numbers, as far as the rows allow."""
    lines = []
    for r in rows:
        if r["shape"] != "hunyuan_129f_720p" or r["plan"] == "dense" or r["speedup_vs_1gpu"] is None:
            continue
        goal = {2: 1.85, 4: 3.6}.get(r["gpus"])
        if goal:
            ok = "met" if r["speedup_vs_1gpu"] >= goal else "NOT met"
            lines.append(f"HunyuanVideo {r['plan']} on {r['gpus']} GPUs: {r['speedup_vs_1gpu']:.2f}x over 1 GPU "
                         f"(target >= {goal}x: {ok})")
    by_key = {(r["shape"], r["plan"], r["gpus"]): r for r in rows}
    for r in rows:
        if r["plan"] == "dense" or r["gpus"] == 1 or r["speedup_vs_dense"] is None:
            continue
        one = by_key.get((r["shape"], r["plan"], 1))
        if one and one.get("speedup_vs_dense"):
            kept = r["speedup_vs_dense"] / one["speedup_vs_dense"]
            ok = "met" if kept >= 0.9 else "NOT met"
            lines.append(f"{r['shape']} {r['plan']} on {r['gpus']} GPUs: sparse/dense {r['speedup_vs_dense']:.2f}x vs "
                         f"{one['speedup_vs_dense']:.2f}x on 1 GPU ({100 * kept:.0f}% kept; target >= 90%: {ok})")
    return lines


def driver(args) -> int:
    sys.path.insert(0, str(ROOT))
    from diffusers_evdit.bench.common import print_table, write_results

    env = dict(os.environ)
    env.update(SAFE_ENV)  # NVLink multicast stays off in every worker
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        for gpus in args.gpus:
            if not args.tiny and torch.cuda.device_count() < gpus:
                raise SystemExit(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA devices here.")
            rows_file = os.path.join(tmp, f"rows-{gpus}.json")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                   str(Path(__file__).resolve()), "--worker", "--rows-file", rows_file, "--shapes", *args.shapes,
                   "--plans", *args.plans, "--kernel", args.kernel, "--warmup", str(args.warmup),
                   "--reps", str(args.reps)] + (["--tiny"] if args.tiny else [])
            print(f"{gpus} GPU(s): {' '.join(cmd[1:])}", flush=True)
            code = subprocess.call(cmd, env=env)
            if code:
                raise SystemExit(f"the {gpus}-process run failed (exit code {code}).")
            measured += json.loads(Path(rows_file).read_text())
    rows = measured
    if args.out and os.path.exists(args.out):
        new_keys = {(r["shape"], r["plan"], r["gpus"]) for r in measured}
        old = json.loads(Path(args.out).read_text()).get("rows", [])
        rows = [r for r in old if (r["shape"], r["plan"], r["gpus"]) not in new_keys] + measured
    rows = add_speedups(rows)
    print_table(rows, ["shape", "plan", "gpus", "step_s", "speedup_vs_1gpu", "speedup_vs_dense", "element_sparsity"])
    for line in targets(rows):
        print(line)
    if args.out:
        device = torch.device("cuda" if not args.tiny and torch.cuda.is_available() else "cpu")
        write_results(args.out, "parallel", rows, device, kernel=args.kernel, dtype="float32" if args.tiny else
                      "bfloat16", engine="diffusers context parallelism (Ulysses), diffusers_evdit.parallel")
        print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4], help="GPU counts (processes) to run")
    parser.add_argument("--shapes", nargs="+", default=None, help=f"default: {' '.join(SHAPES)}")
    parser.add_argument("--plans", nargs="+", default=["dense", "1"], help="'dense' and/or k of uniform k:F-k plans")
    parser.add_argument("--kernel", default="auto", help="tile kernel of the sparse layers")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="timed steps per configuration (median)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU processes (gloo): code path only")
    parser.add_argument("--out", default=None, help="JSON file to merge the rows into")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.shapes is None:
        args.shapes = list(TINY_SHAPES if args.tiny else SHAPES)
    known = TINY_SHAPES if args.tiny else SHAPES
    unknown = [s for s in args.shapes if s not in known]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {', '.join(known)}")
    for plan in args.plans:
        if plan != "dense" and not (plan.isdigit() and int(plan) >= 1):
            parser.error(f"--plans takes 'dense' or a k >= 1, got {plan!r}")
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
