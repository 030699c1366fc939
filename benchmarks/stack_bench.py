"""A mask plan stacked with ``torch.compile``, a quantized attention backend (SageAttention) and FirstBlockCache, on
a Wan2.1-1.3B-shaped transformer (random weights, bf16, batch 1, 81 frames 480x832: 21 x 60 x 104 latent, 32,760
tokens), dense against a uniform ``1:F-1`` plan (1:20). docs/stacking.md quotes the results.

Parts (all by default; ``--parts`` picks some):

* ``eager``: one transformer forward (a denoising step without CFG), dense and planned;
* ``compile``: the same under ``torch.compile`` (``--compile regional``: diffusers' ``compile_repeated_blocks``,
  default; ``full``: ``torch.compile(transformer)``); ``compile_s`` = the warm-up calls' time minus as many warm
  steps (tracing and code generation, recompiles included);
* ``sage``: dense and planned steps under ``attention_backend("sage")`` when the ``sageattention`` package imports
  (dense layers and Wan's cross-attention run Sage; sparse layers run the tile kernels); output error against the
  bf16 dense step and against the bf16 planned step;
* ``cache``: ``--steps`` toy flow-matching steps (``x <- x - dt * v``) through ``cache_context`` with and without
  ``FirstBlockCacheConfig(threshold=--fbc-threshold)``, dense and planned: loop time and final-latent error
  against the dense loop without cache.

Every row has ``part``, ``config``, ``step_s`` (median of ``--reps``) or ``loop_s``, ``speedup`` against the same
part's dense row, and where measured ``rel_err`` (relative L2 error of the output). The JSON also has the GPU name,
torch / diffusers / CUDA versions and the date. Run on one H100 (under 5 minutes)::

    python benchmarks/stack_bench.py --out benchmarks/results/stack-h100.json

    python benchmarks/stack_bench.py --tiny --out /tmp/stack-tiny.json   # CPU, tiny Wan: checks the code path
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffusers_evdit import MaskPlan, apply_mask_plan, num_plan_layers, remove_mask_plan  # noqa: E402
from diffusers_evdit.bench.common import print_table, write_results  # noqa: E402
from diffusers_evdit.masks import format_mask  # noqa: E402

PARTS = ("eager", "compile", "sage", "cache")
WAN_1_3B = "wan2.1-1.3b_81f_480p"


def sage_available() -> bool:
    try:
        import sageattention  # noqa: F401
    except ImportError:
        return False
    return True


class Bench:
    """Builds the model (seeded: every build has the same weights) and times it on ``device``."""

    def __init__(self, tiny: bool, device: torch.device, reps: int):
        self.tiny, self.device, self.reps = tiny, device, reps

    def build(self):
        torch.manual_seed(0)
        if self.tiny:
            from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_transformer

            model = tiny_transformer("wan", num_layers=2).to(self.device)  # FirstBlockCache needs 2 blocks
            inputs = tiny_inputs(model, TinyVideo(frames=6, height=8, width=8, batch=1))
            return model, {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        from diffusers_evdit.bench.step import MODELS, build_model

        return build_model(MODELS[WAN_1_3B], self.device)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def call(self, model, inputs) -> torch.Tensor:
        with torch.no_grad():
            out = model(**inputs, return_dict=False)[0]
        self.sync()
        return out

    def timed(self, fn):
        t0 = time.perf_counter()
        result = fn()
        self.sync()
        return time.perf_counter() - t0, result

    def step_time(self, model, inputs, warmup: int = 1) -> tuple[float, float, torch.Tensor]:
        """(median step seconds, seconds of the ``warmup`` first calls, output)."""
        warm = sum(self.timed(lambda: self.call(model, inputs))[0] for _ in range(warmup))
        times, out = [], None
        for _ in range(self.reps):
            t, out = self.timed(lambda: self.call(model, inputs))
            times.append(t)
        return statistics.median(times), warm, out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return ((out - ref).norm() / ref.norm()).item()


def plan_for(model) -> MaskPlan:
    return MaskPlan.uniform(num_plan_layers(model), 1)


def release() -> None:
    """Return the memory of models the caller has deleted to the device (the next build is a full model)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def report(row: dict) -> dict:
    print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    return row


def run_eager(bench: Bench, refs: dict) -> list[dict]:
    model, inputs = bench.build()
    rows = []
    step, _, refs["dense"] = bench.step_time(model, inputs)
    rows.append(report(dict(part="eager", config="dense", step_s=step)))
    apply_mask_plan(model, plan_for(model))
    step, _, refs["plan"] = bench.step_time(model, inputs)
    rows.append(report(dict(part="eager", config="plan", step_s=step, rel_err=rel_err(refs["plan"], refs["dense"]))))
    del model, inputs
    release()
    return rows


def run_compile(bench: Bench, refs: dict, mode: str, backend: str) -> list[dict]:
    rows = []
    for config in ("dense", "plan"):
        torch._dynamo.reset()
        model, inputs = bench.build()
        if config == "plan":
            apply_mask_plan(model, plan_for(model))
        if mode == "regional":
            model.compile_repeated_blocks(backend=backend)
            runner = model
        else:
            runner = torch.compile(model, backend=backend)
        warmup = 3  # a planned model may recompile on its second call (docs/stacking.md)
        step, warm, out = bench.step_time(runner, inputs, warmup=warmup)
        rows.append(report(dict(part=f"compile_{mode}", config=config, step_s=step,
                                compile_s=max(warm - warmup * step, 0.0), rel_err=rel_err(out, refs[config]))))
        del model, inputs, runner, out
        release()
    return rows


def run_sage(bench: Bench, refs: dict) -> list[dict]:
    from diffusers.models.attention_dispatch import attention_backend

    if not sage_available():
        print("sage: the sageattention package does not import; skipped (pip install sageattention)")
        return [dict(part="sage", config=c, skipped="sageattention not importable") for c in ("dense", "plan")]
    rows = []
    model, inputs = bench.build()
    with attention_backend("sage"):
        for config in ("dense", "plan"):
            if config == "plan":
                apply_mask_plan(model, plan_for(model))
            step, _, out = bench.step_time(model, inputs)
            rows.append(report(dict(part="sage", config=config, step_s=step, rel_err=rel_err(out, refs["dense"]),
                                    rel_err_vs_bf16_same_config=rel_err(out, refs[config]))))
    del model, inputs
    release()
    return rows


def denoise(bench: Bench, model, inputs, steps: int) -> tuple[float, torch.Tensor]:
    """Seconds and final latent of ``steps`` toy flow-matching steps (one transformer call each, in a cache
    context, as the pipelines call it)."""
    x = inputs["hidden_states"].clone()
    timesteps = torch.linspace(999, 1, steps, device=bench.device)

    def loop():
        nonlocal x
        for t in timesteps:
            kwargs = {**inputs, "hidden_states": x, "timestep": t.expand(x.shape[0]).to(inputs["timestep"].dtype)}
            with model.cache_context("cond"):
                v = bench.call(model, kwargs)
            x = x - v.to(x.dtype) / steps
        return x

    seconds, out = bench.timed(loop)
    return seconds, out


def run_cache(bench: Bench, steps: int, threshold: float) -> list[dict]:
    from diffusers import FirstBlockCacheConfig

    model, inputs = bench.build()
    rows, reference = [], None
    for config in ("dense", "plan", "fbc", "fbc+plan"):
        if "plan" in config:
            apply_mask_plan(model, plan_for(model))
        denoise(bench, model, inputs, 2)  # warm-up (kernel caches), before the cache hooks exist
        if "fbc" in config:
            model.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        seconds, out = denoise(bench, model, inputs, steps)
        reference = out if reference is None else reference
        rows.append(report(dict(part="cache", config=config, loop_s=seconds, steps=steps,
                                rel_err=rel_err(out, reference))))
        if "fbc" in config:
            model.disable_cache()
        if "plan" in config:
            remove_mask_plan(model)
    del model, inputs
    release()
    return rows


def add_speedups(rows: list[dict]) -> None:
    dense = {r["part"]: r.get("step_s", r.get("loop_s")) for r in rows if r["config"] == "dense"}
    for row in rows:
        t = row.get("step_s", row.get("loop_s"))
        if t and dense.get(row["part"]):
            row["speedup"] = dense[row["part"]] / t


def run(args) -> dict:
    device = torch.device("cpu" if args.tiny else "cuda")
    if not args.tiny and not torch.cuda.is_available():
        raise RuntimeError("stack_bench.py needs a CUDA device (or --tiny for a CPU check of the code path).")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    bench = Bench(args.tiny, device, args.reps)
    compile_backend = args.compile_backend or ("eager" if args.tiny else "inductor")
    parts = args.parts or PARTS
    refs, rows = {}, []
    started = time.perf_counter()
    eager_rows = run_eager(bench, refs)  # the bf16 references every part compares with
    if "eager" in parts:
        rows += eager_rows
    if "compile" in parts:
        rows += run_compile(bench, refs, args.compile, compile_backend)
    if "sage" in parts:
        rows += run_sage(bench, refs)
    if "cache" in parts:
        rows += run_cache(bench, args.steps, args.fbc_threshold)
    add_speedups(rows)
    model_name = "tiny_wan" if args.tiny else WAN_1_3B
    frames = 6 if args.tiny else 21
    print_table(rows, ["part", "config", "step_s", "loop_s", "compile_s", "speedup", "rel_err"])
    extra = dict(model=model_name, plan=f"uniform {format_mask(frames, 1)}",
                 dtype="float32" if args.tiny else "bfloat16",
                 compile_mode=args.compile, compile_backend=compile_backend, fbc_threshold=args.fbc_threshold,
                 reps=args.reps, total_s=time.perf_counter() - started, sageattention=sage_available())
    if args.out:
        data = write_results(args.out, "stack", rows, device, **extra)
        print(f"wrote {args.out}")
        return data
    return {**extra, "rows": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny float32 Wan on the CPU (checks the code path)")
    parser.add_argument("--parts", nargs="*", choices=PARTS, help="parts to run (default: all)")
    parser.add_argument("--compile", choices=("regional", "full"), default="regional",
                        help="regional: compile_repeated_blocks (default); full: torch.compile(transformer)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default inductor; --tiny: eager)")
    parser.add_argument("--reps", type=int, default=3, help="timed steps per configuration (median)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps of the cache part")
    parser.add_argument("--fbc-threshold", type=float, default=0.05, help="FirstBlockCache threshold")
    parser.add_argument("--out", default=None, help="JSON result path, e.g. benchmarks/results/stack-h100.json")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
