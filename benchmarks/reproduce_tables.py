#!/usr/bin/env python
"""The paper's three-stage result on the shipped demo model: Base, MLCD, MLCD + uniform masks, Ours (search + KD).

From the demo model (``diffusers_evdit/demo_model``, a Wan-style pipeline; or ``--model DIR``) this script builds and
evaluates, all on the same held-out prompts and seeds (``diffusers_evdit.demo.evaluate_pipeline``: the analytic
``final_score`` in 0-1 and the Frechet stand-in over analytic video features):

* ``Base``: the model, dense, its default steps and guidance;
* ``MLCD``: the Stage 1 few-step model (``examples/train_mlcd.py``, ``S`` = ``--num_segments`` steps), dense; or
  ``--mlcd_model DIR``, a trained one;
* ``MLCD_k:F-k``: the MLCD model with a uniform plan (the paper's 4:4-style ablation), without training, and
  ``MLCD_k:F-k+KD`` after the same KD as ours (fair comparison of uniform vs searched plans);
* ``Ours_r=R`` for each ``R`` in ``--ratios`` (0.025, 0.05, 0.1, 0.2, 0.4): the greedy layer-wise search
  (``diffusers_evdit.search.greedy_search``, threshold ``R`` on the output MSE, inputs recorded from the MLCD
  pipeline on training prompts) followed by knowledge distillation (``examples/train_kd.py``, teacher = the dense
  MLCD model, task loss = the MLCD loss with the Base model as ODE teacher);
* ``Search_r=R``: the searched plan on the MLCD model before KD (compared with the uniform plans without training:
  the search's own choice, free of the KD run's noise; ``--no_search_rows`` skips them);
* order ablation (Tables 5 / 11): ``MLCD_then_KD`` (= ``Ours_r=--ablation_r``) vs ``KD_then_MLCD`` (KD of the Base
  model with the same plan and the diffusion loss, then MLCD of the sparse model with itself as ODE teacher).

Columns: ``steps``; ``sparsity`` (mean element sparsity of the plan's attention on the demo layout: 8 latent frames x
64 tokens); ``final_score``; ``frechet``; ``speedup = step_ratio * step_speedup`` where ``step_ratio = Base steps /
steps`` and ``step_speedup`` is the per-step speedup of *the same plan* on the full-size architecture of the family
(default ``wan2.1-1.3b_81f_480p``, 81 frames 480p) on a GPU. The plan is mapped to that model layer by layer (depth
proportional) and mask by mask (the ``k`` whose element sparsity on the full-size layout is closest). The per-step
speedup is, in order of preference:

1. **measured**: ``--step_speedups FILE`` (``{"Ours_r=0.1": 1.52, ...}``, e.g. measured with the mapped plans this
   script writes to ``WORK/fullsize_plans/``), or ``--measure_step_speedups`` (times the mapped plans on the full-size
   random-weight transformer on this GPU, bf16, batch 1, as ``evdit bench step``);
2. **derived**: from the measured uniform-plan step times of ``--step_results`` (``benchmarks/results/step-h100.json``)
   interpolated linearly over element sparsity, layer by layer (each layer adds ``1/L`` of the uniform plan's step
   time change at its sparsity; beyond the sparsest measured plan the attention time scales with ``1 - sparsity``).

``speedup_incl_cfg`` also counts classifier-free guidance passes (Base with CFG runs the transformer twice a step;
the MLCD student runs once). Writes ``OUT/quality.json`` and ``OUT/quality.md`` (rows with ``name``, ``steps``,
``sparsity``, ``final_score``, ``frechet``, ``speedup``, plus the per-step speedup, its source, plans, training
summaries, every metric), after every row, so an interrupted run leaves its rows.

Time: ``--budget_minutes`` (default 8) is shared by the stages: the MLCD training gets three shares, every wave of
``--jobs`` KD runs (trained side by side, each in its own process) one, after the measured evaluation times are
reserved. On one H100 the default run takes about 8 minutes. Runs side by side help only while one run leaves the GPU
idle: at ``--kd_batch_size 32`` two side by side got about 1.5x the samples of one alone (H100), six or eight no
more than one, so for longer KD runs use ``--jobs 2`` and train fewer plans (``--ratios``, ``--uniform_ks``,
``--no_ablation``) rather than more at once. ``--kd_minutes`` fixes the length of every KD wave instead. Runs longer
than one sitting: ``--max_kd_waves N`` trains at most N waves, writes the rows so far and exits with status 3;
``--resume`` with the same ``--work_dir`` reuses the finished MLCD model, plans, KD runs and row evaluations, and
goes on.

    # one GPU, the shipped demo model, ~8 minutes
    python benchmarks/reproduce_tables.py --out_dir benchmarks/results --work_dir runs/reproduce
    # with an MLCD model trained before, and per-step speedups measured on this GPU
    python benchmarks/reproduce_tables.py --mlcd_model runs/mlcd-s8 --measure_step_speedups
    # CPU smoke test: tiny random pipeline, a few training steps per stage (plumbing only: no quality)
    OMP_NUM_THREADS=1 python benchmarks/reproduce_tables.py --smoke --work_dir /tmp/reproduce
    # the checks and the Markdown of a finished table again, from its quality.json (nothing trained or evaluated)
    python benchmarks/reproduce_tables.py --render benchmarks/results
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from datetime import date

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if os.path.isdir(os.path.join(ROOT, "diffusers_evdit")) and ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
# the modules beside this script (its folder is on sys.path: run as a script, or while the tests import it)
from diffusers_evdit.commands import non_negative_int, positive_int  # noqa: E402
from fullsize_speedup import StepTimes, fullsize_model, map_plan, measure_step_speedups  # noqa: E402
from quality_report import finish_rows, fmt, render, write_results  # noqa: E402
from stage_runs import (StopForResume, count_wave, finished_run, keep_summary, kept_summary,  # noqa: E402
                        read_kept_summary, run_kd_jobs, train_kd, train_mlcd)

DEFAULT_RATIOS = (0.025, 0.05, 0.1, 0.2, 0.4)
ROW_KEYS = ("name", "steps", "sparsity", "final_score", "frechet", "speedup")
FULLSIZE_DEFAULT = {"wan": "wan2.1-1.3b_81f_480p", "cogvideox": "cogvideox-5b_49f_480p",
                    "hunyuan_video": "hunyuan_129f_720p"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="Base pipeline folder (default: the shipped demo model)")
    p.add_argument("--mlcd_model", default=None, help="a trained MLCD folder (train_mlcd.py) instead of training one")
    p.add_argument("--work_dir", default=None, help="trained models, plans, logs (default runs/reproduce[-smoke])")
    p.add_argument("--out_dir", default=None,
                   help="where quality.json / quality.md go (default benchmarks/results; --smoke: the work dir)")
    p.add_argument("--budget_minutes", type=float, default=8.0, help="wall-clock budget of the whole run")
    p.add_argument("--resume", action="store_true",
                   help="reuse what an earlier run with the same --work_dir finished: its MLCD model, searched plans, "
                        "KD runs (those that saved their kd_config.json) and row evaluations")
    p.add_argument("--max_kd_waves", type=non_negative_int, default=None,
                   help="train at most this many waves of KD runs in this call, then write the rows so far and stop "
                        "(exit status 3); a later --resume goes on. Splits a run over calls of limited length")
    p.add_argument("--kd_minutes", type=float, default=None,
                   help="minutes of every wave of KD runs, instead of a share of --budget_minutes")
    p.add_argument("--min_train_minutes", type=float, default=1.0,
                   help="no training run gets less, even when the budget is spent (a KD run of a few steps would "
                        "make its row meaningless; the run then overruns --budget_minutes and says so)")
    p.add_argument("--eval_prompts", type=int, default=64, help="held-out prompts per row")
    p.add_argument("--eval_batch_size", type=positive_int, default=None, help="default 16 on CUDA, 1 on CPU")
    p.add_argument("--eval_workers", type=positive_int, default=None, help="metric processes (default: min(8, CPUs))")
    p.add_argument("--num_segments", type=positive_int, default=8, help="S, the MLCD student's steps")
    p.add_argument("--teacher_steps", type=positive_int, default=None,
                   help="N of MLCD (default: the Base model's steps)")
    p.add_argument("--mlcd_shares", type=float, default=3.0, help="time shares of the MLCD run (a KD run has 1)")
    p.add_argument("--ratios", default=",".join(map(str, DEFAULT_RATIOS)), help="search thresholds r")
    p.add_argument("--uniform_ks", default="auto",
                   help="k of the uniform-plan rows (auto: F/2, F/4, 1; e.g. 4,2,1 for 8 latent frames)")
    p.add_argument("--no_uniform_kd", action="store_true", help="skip the KD of the uniform plans")
    p.add_argument("--ablation_r", type=float, default=0.1, help="r of the order ablation's plan")
    p.add_argument("--no_ablation", action="store_true", help="skip the order ablation")
    p.add_argument("--no_search_rows", action="store_true", help="skip the Search_r=R rows (searched plans before KD)")
    p.add_argument("--search_prompts", type=positive_int, default=2,
                   help="training prompts whose MLCD calls feed the search")
    p.add_argument("--search_loss", choices=("output", "layer"), default="output")
    p.add_argument("--kd_batch_size", type=positive_int, default=8)
    p.add_argument("--kd_learning_rate", type=float, default=None,
                   help="default: the learning rate the MLCD model was distilled with (its mlcd_config.json), else "
                        "1e-4; KD goes on minimising the MLCD loss (x --task_weight), and a few-step student drifts "
                        "at a higher rate than its own (S=4 on the demo model: 0.81 at 3e-5, 0.76 at 1e-4)")
    p.add_argument("--kd_weight", type=float, default=1.0)
    p.add_argument("--kd_extra_args", default="",
                   help="more train_kd.py options for every KD run, one string (e.g. \"--use_lora --lora_rank 16\"); "
                        "they come after this script's own, so they win")
    p.add_argument("--task_weight", type=float, default=100.0, help="lambda of the KD runs (paper: 100)")
    p.add_argument("--mlcd_batch_size", type=positive_int, default=8)
    p.add_argument("--mlcd_learning_rate", type=float, default=1e-4)
    p.add_argument("--dataloader_num_workers", type=non_negative_int, default=None,
                   help="default on CUDA: 8 shared by the concurrent jobs (at least 2 each); 0 on CPU")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="KD runs trained at once, each in its own process (for small batches, which leave a GPU "
                        "idle; at batch 32 the demo model's runs side by side got no more samples than one alone)")
    p.add_argument("--cache_samples", type=non_negative_int, default=2048,
                   help="synthetic clips of every training run, their VAE posteriors encoded once into "
                        "WORK_DIR/latents-*.pt and shared by every run (--latent_cache); 0: a fresh clip every step, "
                        "no cache")
    p.add_argument("--fullsize_model", default=None,
                   help="evdit bench step model whose per-step speedups count (default: the family's, "
                        "wan2.1-1.3b_81f_480p for the demo model)")
    p.add_argument("--step_results", default=os.path.join(ROOT, "benchmarks", "results", "step-h100.json"),
                   help="evdit bench step JSON with measured uniform-plan step times (for derived speedups)")
    p.add_argument("--step_speedups", default=None, help="JSON {row name: measured per-step speedup}")
    p.add_argument("--measure_step_speedups", action="store_true",
                   help="time the mapped plans on the full-size transformer on this GPU (CUDA, ~1 min)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--render", metavar="DIR", default=None,
                   help="only recompute the checks and the Markdown of DIR/quality.json (no training, no evaluation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true",
                   help="tiny random pipeline, 2 training steps per stage, 2 prompts (tests the plumbing on CPU)")
    args = p.parse_args(argv)
    try:
        args.ratio_list = [float(r) for r in args.ratios.split(",") if r.strip()]
    except ValueError:
        p.error(f"--ratios must be comma-separated numbers, got {args.ratios!r}")
    if not args.ratio_list or any(r <= 0 for r in args.ratio_list):
        p.error("--ratios must be positive")
    if args.eval_prompts < 2:
        p.error("--eval_prompts must be >= 2 (the Frechet distance needs two videos)")
    if args.measure_step_speedups and not torch.cuda.is_available():
        p.error("--measure_step_speedups needs a CUDA device")
    if args.smoke:
        args.eval_prompts = min(args.eval_prompts, 2)
        args.num_segments = 2
        args.teacher_steps = args.teacher_steps or 4
        args.search_prompts = 1
        args.kd_batch_size = args.mlcd_batch_size = 1
        args.min_train_minutes = 0.0  # the smoke runs stop by steps
        args.cache_samples = min(args.cache_samples, 16)  # the latent cache encodes them all up front
    args.work_dir = os.path.abspath(args.work_dir or os.path.join("runs", "reproduce-smoke" if args.smoke
                                                                  else "reproduce"))
    args.out_dir = os.path.abspath(args.out_dir or (args.work_dir if args.smoke
                                                    else os.path.join(ROOT, "benchmarks", "results")))
    return args


# ------------------------------------------------------------------------------------------------------ time


class Clock:
    """The run's deadline, split into training time shares after the evaluations still to come are reserved."""

    def __init__(self, minutes: float, min_train_minutes: float = 1.0):
        self.start = time.time()
        self.min_train_minutes = min_train_minutes
        self.deadline = self.start + 60.0 * minutes
        self.eval_s = 0.0  # the latest evaluation's seconds (the first one also loads and warms up: longer)
        self.extra_s = 0.0  # kept for the final stage (per-step speedup measurement)

    def elapsed(self) -> float:
        return time.time() - self.start

    def minutes_for(self, shares: float, shares_left: float, evals_left: int, extra_s: float = 0.0) -> float:
        """Minutes for a run of ``shares`` out of ``shares_left``, keeping time for ``evals_left`` evaluations."""
        reserve = evals_left * max(self.eval_s, 5.0) + extra_s + self.extra_s + 5.0
        left = self.deadline - time.time() - reserve
        minutes = left * shares / max(shares_left, 1e-9) / 60.0
        if minutes < self.min_train_minutes:
            print(f"[reproduce] warning: the budget leaves {max(minutes, 0):.2f} min for this training run; it gets "
                  f"--min_train_minutes = {self.min_train_minutes:g} and the run overruns --budget_minutes (raise it "
                  "or train fewer plans)", flush=True)
        return max(self.min_train_minutes, minutes)


# ------------------------------------------------------------------------------------------------------ models


def repo_path(path: str) -> str:
    """``path`` relative to the repository root where it lies inside it (results JSON carry no machine paths)."""
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def make_smoke_model(folder: str) -> str:
    """A random tiny demo pipeline folder (structure of the shipped model; 4 latent frames of 16 tokens)."""
    from diffusers_evdit import EfficientVDiTPipeline
    from diffusers_evdit.demo import GenerationConfig, build_demo_pipeline

    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        EfficientVDiTPipeline.from_pipe(build_demo_pipeline("tiny")).save_pretrained(folder)
        GenerationConfig.tiny().save(folder)
    return folder


def saved_plan(folder: str):
    from diffusers_evdit import MaskPlan

    path = os.path.join(folder, "mask_plan.json")
    return MaskPlan.load(path) if os.path.isfile(path) else None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate(args, clock: Clock, folder: str, plan=None, use_saved_plan: bool = True) -> dict:
    """The evdit eval metrics of a pipeline folder with its own generation settings (and ``plan`` or its saved one)."""
    import diffusers_evdit.schedulers  # noqa: F401  (MLCD schedulers load by name)
    from diffusers_evdit.demo import EVAL_KEYS, evaluate_pipeline, load_pipeline

    t0 = time.time()
    pipe, gen = load_pipeline(folder, device=args.device)
    if plan is None and use_saved_plan:
        plan = saved_plan(folder)
    pipe.set_mask_plan(plan)
    batch = args.eval_batch_size or (16 if str(pipe._execution_device).startswith("cuda") else 1)
    res = evaluate_pipeline(pipe, gen, num_prompts=args.eval_prompts, seed=args.seed, batch_size=batch,
                            workers=args.eval_workers, progress=False, reference=False)
    out = {k: res[k] for k in EVAL_KEYS}
    out.update(steps=gen.num_inference_steps, guidance_scale=gen.guidance_scale, sparsity=res["plan"]["sparsity"],
               latent_frames=res["plan"]["latent_frames"], tokens_per_frame=res["plan"]["tokens_per_frame"],
               plan=None if plan is None else list(plan.layers), step_ms=res["timing"]["step_ms"],
               eval_seconds=round(time.time() - t0, 1))
    del pipe
    free_memory()
    clock.eval_s = time.time() - t0
    return out


def cached_evaluate(args, clock: Clock, name: str, folder: str, plan=None, use_saved_plan: bool = True) -> dict:
    """:func:`evaluate`, kept in ``work_dir/evals/NAME.json``; with ``--resume`` a kept result of the same folder and
    plan is reused instead of evaluating again."""
    path = os.path.join(args.work_dir, "evals", name.replace(":", "-").replace("/", "_") + ".json")
    ident = {"folder": os.path.relpath(folder, args.work_dir), "plan": None if plan is None else list(plan.layers),
             "use_saved_plan": use_saved_plan, "eval_prompts": args.eval_prompts, "seed": args.seed}
    if args.resume and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            kept = json.load(f)
        if kept.get("ident") == ident:
            return kept["result"]
    result = evaluate(args, clock, folder, plan, use_saved_plan)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"ident": ident, "result": result}, f, indent=2)
    return result


# ------------------------------------------------------------------------------------------------------ search


def search_plans(args, mlcd_dir: str, ratios: list[float], plan_dir: str) -> dict:
    """Greedy plans of the MLCD model for each threshold, on transformer inputs recorded from its own sampling
    (with ``--resume``, the plans an earlier run saved in ``plan_dir`` when it has them all)."""
    from diffusers_evdit import MaskPlan

    paths = {r: os.path.join(plan_dir, f"ours_r={r:g}.json") for r in ratios}
    if args.resume and all(os.path.isfile(p) for p in paths.values()):
        plans = {r: (MaskPlan.load(p), p) for r, p in paths.items()}
        if all(plan.metadata.get("source") == repo_path(mlcd_dir) for plan, _ in plans.values()):
            print(f"[reproduce] search: the plans of an earlier run, reused ({', '.join(map(str, ratios))})")
            return plans
    import diffusers_evdit.schedulers  # noqa: F401
    from diffusers_evdit.analysis import record_transformer_inputs
    from diffusers_evdit.data import SyntheticVideoDataset
    from diffusers_evdit.demo import load_pipeline
    from diffusers_evdit.search import greedy_search

    pipe, gen = load_pipeline(mlcd_dir, device=args.device)
    pipe.set_mask_plan(None)
    ds = SyntheticVideoDataset(num_samples=1000, seed=args.seed + 7, split="train")
    prompts = [ds.scene(i).caption() for i in range(args.search_prompts)]
    with record_transformer_inputs(pipe.transformer, device=None) as calls, torch.no_grad():
        pipe(prompt=prompts, generator=torch.Generator("cpu").manual_seed(args.seed), output_type="latent",
             **gen.call_kwargs())
    plans = {}
    os.makedirs(plan_dir, exist_ok=True)
    for r in ratios:
        plan = greedy_search(pipe.transformer, calls, r, loss=args.search_loss, progress=False)
        plan.metadata.update(source=repo_path(mlcd_dir), search_prompts=prompts, inputs="recorded MLCD sampling calls")
        path = paths[r]
        plan.save(path)
        plans[r] = (plan, path)
        print(f"[reproduce] search r={r:g}: k per layer {plan.layers}", flush=True)
    del pipe, calls
    free_memory()
    return plans


# --------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    try:
        return build_tables(args)
    except StopForResume:
        print(f"[reproduce] --max_kd_waves {args.max_kd_waves} reached: rows so far in {args.out_dir}/quality.json; "
              f"run again with --resume --work_dir {args.work_dir} to go on", flush=True)
        raise SystemExit(3)


def build_tables(args) -> dict:
    """Every stage of the run (see the module docstring); returns the rows, the order ablation and the out dir."""
    args.waves_trained = 0
    if args.smoke:
        torch.set_num_threads(1)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.eval_workers is None:
        args.eval_workers = 1 if args.smoke else min(8, os.cpu_count() or 1)
    os.makedirs(args.work_dir, exist_ok=True)
    clock = Clock(args.budget_minutes, args.min_train_minutes)
    clock.extra_s = 60.0 if args.measure_step_speedups else 0.0
    from diffusers_evdit.demo import GenerationConfig, resolve_model
    from diffusers_evdit.layout import layout_from_latents
    from diffusers_evdit.masks import format_mask
    from diffusers_evdit import MaskPlan

    base_dir = make_smoke_model(os.path.join(args.work_dir, "base")) if args.smoke else resolve_model(args.model)
    gen = GenerationConfig.load(base_dir)
    with open(os.path.join(base_dir, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    tclass = index.get("transformer", [None, None])[1]
    family = {"WanTransformer3DModel": "wan", "CogVideoXTransformer3DModel": "cogvideox",
              "HunyuanVideoTransformer3DModel": "hunyuan_video"}.get(tclass)
    if family is None:
        raise SystemExit(f"{base_dir}: transformer {tclass} is not supported")
    with open(os.path.join(base_dir, "transformer", "config.json"), encoding="utf-8") as f:
        tcfg = json.load(f)
    patch = tcfg["patch_size"] if family == "wan" else (tcfg.get("patch_size_t") or 1, tcfg["patch_size"],
                                                        tcfg["patch_size"])
    demo_layout = layout_from_latents((gen.latent_frames, gen.height // 8, gen.width // 8), patch)
    n_frames = demo_layout.num_frames
    fullsize = args.fullsize_model or FULLSIZE_DEFAULT[family]
    fs_spec, fs_layers, fs_layout = fullsize_model(fullsize)
    uniform_ks = (sorted({k for k in (n_frames // 2, n_frames // 4, 1) if k >= 1}, reverse=True)
                  if args.uniform_ks == "auto" else [int(k) for k in args.uniform_ks.split(",") if k.strip()])
    if any(not 1 <= k < n_frames for k in uniform_ks):
        raise SystemExit(f"--uniform_ks must be in 1..{n_frames - 1} for {n_frames} latent frames")
    n_parallel = len(args.ratio_list) + (0 if args.no_uniform_kd else len(uniform_ks)) + (0 if args.no_ablation else 1)
    n_kd = math.ceil(n_parallel / args.jobs) + (0 if args.no_ablation else 1)  # waves, then KD_then_MLCD's 2nd run
    shares_left = n_kd + (0 if args.mlcd_model else args.mlcd_shares)
    evals_left = 2 + len(uniform_ks) * (1 if args.no_uniform_kd else 2) + len(args.ratio_list) * (
        1 if args.no_search_rows else 2) + (0 if args.no_ablation else 1)

    meta = {"date": date.today().isoformat(), "total_minutes": 0.0,
            "settings": {"model": repo_path(base_dir),
                         "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                         "eval_prompts": args.eval_prompts, "seed": args.seed, "num_segments": args.num_segments,
                         "latent_frames": n_frames, "tokens_per_frame": demo_layout.tokens_per_frame,
                         "ratios": args.ratio_list, "uniform_ks": uniform_ks, "task_weight": args.task_weight,
                         "kd_weight": args.kd_weight, "budget_minutes": args.budget_minutes,
                         "kd_batch_size": args.kd_batch_size, "kd_learning_rate": args.kd_learning_rate,
                         "kd_extra_args": args.kd_extra_args, "kd_minutes": args.kd_minutes, "resume": args.resume,
                         "mlcd_batch_size": args.mlcd_batch_size, "jobs": args.jobs,
                         "cache_samples": args.cache_samples},
            "speedup_source": None}
    rows: list[dict] = []
    ablation: list[dict] = []

    def add(name, folder, plan=None, training=None, use_saved=True, into=None):
        nonlocal evals_left
        res = cached_evaluate(args, clock, name, folder, plan, use_saved)
        row = {"name": name, "steps": res.pop("steps"), "sparsity": res.pop("sparsity"),
               "final_score": res["final_score"], "frechet": res["frechet"], "speedup": None, **res,
               "model_dir": os.path.relpath(folder, args.work_dir), "training": training}
        (rows if into is None else into).append(row)
        evals_left -= 1
        meta["total_minutes"] = clock.elapsed() / 60
        write_results(args, rows, ablation, meta, final=False)
        print(f"[reproduce] {name}: steps {row['steps']}, sparsity {row['sparsity']:.1%}, final_score "
              f"{row['final_score']:.4f}, frechet {fmt(row['frechet'], '.3f')} ({clock.elapsed():.0f} s)", flush=True)
        return row

    # 1. Base
    add("Base", base_dir, use_saved=False)
    # 2. MLCD
    if args.mlcd_model:
        mlcd_dir = os.path.abspath(args.mlcd_model)
        mlcd_training = {"given": args.mlcd_model}
    else:
        mlcd_dir = os.path.join(args.work_dir, "mlcd")
        mlcd_training = read_kept_summary(mlcd_dir) if args.resume else None
        if mlcd_training is not None:
            print("[reproduce] MLCD training: finished before, reused", flush=True)
        else:
            minutes = clock.minutes_for(args.mlcd_shares, shares_left, evals_left, extra_s=20)
            print(f"[reproduce] MLCD training: {minutes:.2f} min", flush=True)
            mlcd_training = keep_summary(mlcd_dir, train_mlcd(args, base_dir, mlcd_dir, minutes))
        shares_left -= args.mlcd_shares
    add("MLCD", mlcd_dir, use_saved=False, training=mlcd_training)
    mlcd_cfg_path = os.path.join(mlcd_dir, "mlcd_config.json")
    mlcd_cfg = json.load(open(mlcd_cfg_path, encoding="utf-8")) if os.path.isfile(mlcd_cfg_path) else {}
    if mlcd_cfg.get("num_segments"):  # a given MLCD model brings its own S
        meta["settings"]["num_segments"] = mlcd_cfg["num_segments"]
    if args.kd_learning_rate is None:
        args.kd_learning_rate = float(mlcd_cfg.get("learning_rate") or 1e-4)
    meta["settings"]["kd_learning_rate"] = args.kd_learning_rate
    print(f"[reproduce] KD learning rate {args.kd_learning_rate:g}", flush=True)
    # KD of the MLCD model: features from the dense MLCD model, task loss = MLCD with the Base model as ODE teacher
    kd_task = ["--task_loss", "mlcd", "--mlcd_teacher", base_dir]

    # 3. search
    plans = search_plans(args, mlcd_dir, sorted(set(args.ratio_list + ([] if args.no_ablation else
                                                                         [args.ablation_r]))),
                         os.path.join(args.work_dir, "plans"))

    # 4. every KD run that needs only the MLCD model and a plan: Ours (search + KD), the uniform plans with the same
    #    KD (a fair comparison), and the order ablation's KD of the Base model; --jobs of them at a time. A plan met
    #    before (e.g. r = 0.2 giving r = 0.1's plan, or a search that lands on a uniform plan) is trained and scored
    #    once; its other rows copy that row and say so ("same_plan_as").
    n_layers = len(plans[args.ratio_list[0]][0].layers)
    first_dir: dict[tuple, str] = {}  # plan -> folder of its KD run

    def kd_dir(plan_layers, out: str) -> str:
        return first_dir.setdefault(tuple(plan_layers), out)

    ours_dirs = {r: kd_dir(plans[r][0].layers, os.path.join(args.work_dir, f"ours_r={r:g}")) for r in args.ratio_list}
    uniform_dirs = {} if args.no_uniform_kd else {
        k: kd_dir([k] * n_layers, os.path.join(args.work_dir, f"uniform_k={k}")) for k in uniform_ks}
    kd_base = os.path.join(args.work_dir, "ablation", "kd_base")
    runs: dict[str, list[str]] = {}  # KD folder -> its extra arguments, one run a folder
    for r in args.ratio_list:
        runs.setdefault(ours_dirs[r], ["--teacher", mlcd_dir, "--plan", plans[r][1], *kd_task])
    for k, out in uniform_dirs.items():
        runs.setdefault(out, ["--teacher", mlcd_dir, "--plan", f"uniform:{k}", *kd_task])
    if not args.no_ablation:
        runs[kd_base] = ["--teacher", base_dir, "--plan", plans[args.ablation_r][1], "--task_loss", "diffusion"]
    jobs = list(runs.items())
    shares_left = math.ceil(len(jobs) / args.jobs) + (0 if args.no_ablation else 1)
    distinct_plans = {tuple(plans[r][0].layers) for r in args.ratio_list}
    evals_left = len(set(ours_dirs.values()) | set(uniform_dirs.values())) + len(uniform_ks) + (
        0 if args.no_ablation else 1) + (0 if args.no_search_rows else len(distinct_plans))
    summaries, shares_left = run_kd_jobs(args, clock, jobs, shares_left, evals_left)
    training = dict(zip([out for out, _ in jobs], summaries))

    # 5. rows: Ours; the searched plans before KD; MLCD + uniform masks without training, then with the same KD
    scored: dict = {}  # KD folder or (untrained) plan -> the row that scored it

    def add_once(name: str, key, score) -> dict:
        """The row of ``name``: scored by ``score()`` the first time ``key`` is met, else a copy of that row."""
        if key in scored:
            row = {k: v for k, v in scored[key].items() if k != "search"}
            row.update(name=name, same_plan_as=scored[key]["name"])
            rows.append(row)
            write_results(args, rows, ablation, meta, final=False)
            print(f"[reproduce] {name}: the plan of {row['same_plan_as']}, row shared", flush=True)
            return row
        scored[key] = score()
        return scored[key]

    def add_kd_row(name: str, folder: str) -> dict:
        return add_once(name, folder, lambda: add(name, folder, training=training[folder]))

    for r in args.ratio_list:
        row = add_kd_row(f"Ours_r={r:g}", ours_dirs[r])
        row["search"] = {"threshold": r, "layer_losses": plans[r][0].metadata.get("layer_losses")}
    for r in ([] if args.no_search_rows else args.ratio_list):
        name = f"Search_r={r:g}"
        add_once(name, tuple(plans[r][0].layers), lambda: add(name, mlcd_dir, plan=plans[r][0], training=None))
    for k in uniform_ks:
        name = f"MLCD_{format_mask(n_frames, k)}"
        add(name, mlcd_dir, plan=MaskPlan.uniform(n_layers, k), training=None)
        if k in uniform_dirs:
            add_kd_row(name + "+KD", uniform_dirs[k])

    # 6. order ablation: MLCD then KD (= the Ours row of --ablation_r) vs KD then MLCD (MLCD of the KD'd Base model)
    if not args.no_ablation:
        first = next((r for r in rows if r["name"] == f"Ours_r={args.ablation_r:g}"), None)
        if first is not None:
            ablation.append(dict(first, name="MLCD_then_KD"))
        final = os.path.join(args.work_dir, "ablation", "kd_then_mlcd")
        minutes = args.kd_minutes or clock.minutes_for(1, shares_left, evals_left)
        mlcd_flags = ["--num_segments", str(mlcd_cfg.get("num_segments") or args.num_segments)]
        if mlcd_cfg.get("teacher_steps") or args.teacher_steps:
            mlcd_flags += ["--teacher_steps", str(mlcd_cfg.get("teacher_steps") or args.teacher_steps)]
        if mlcd_cfg.get("teacher_guidance_scale") is not None:
            mlcd_flags += ["--guidance_scale", str(mlcd_cfg["teacher_guidance_scale"])]
        second = ["--student", kd_base, "--plan", "saved", "--kd_weight", "0", "--task_loss", "mlcd",
                  "--mlcd_teacher", kd_base, "--mlcd_teacher_plan", "saved", *mlcd_flags]
        if args.resume and finished_run(final, second):
            t2 = kept_summary(final)
        else:
            count_wave(args)
            t2 = keep_summary(final, train_kd(args, final, minutes, second))
        shares_left -= 1
        add("KD_then_MLCD", final, training={"kd": training[kd_base], "mlcd": t2}, into=ablation)

    # 7. speedups
    plan_dir = os.path.join(args.work_dir, "fullsize_plans")
    os.makedirs(plan_dir, exist_ok=True)
    mapped = {}
    for r in rows + ablation:
        if r.get("plan"):
            src = MaskPlan(r["plan"])
            mp = map_plan(src, demo_layout, fs_layers, fs_layout)
            r["fullsize_plan"] = mp.layers
            r["fullsize_sparsity"] = mp.sparsity(fs_layout)
            mapped[r["name"]] = mp
            mp.save(os.path.join(plan_dir, f"{r['name'].replace(':', '-')}.json"))
    given = {}
    if args.step_speedups:
        with open(args.step_speedups, encoding="utf-8") as f:
            given = json.load(f)
        if not isinstance(given, dict):
            raise SystemExit(f"{args.step_speedups}: expected a JSON object {{row name: per-step speedup}}")
    measured = measure_step_speedups(mapped, fullsize) if args.measure_step_speedups else {}
    step_times = None
    try:
        step_times = StepTimes(args.step_results, fullsize)
    except SystemExit as err:
        if not (given or measured):
            raise
        print(f"[reproduce] {err}", flush=True)

    def step_speedup(row):
        if not row.get("plan"):
            return 1.0, "dense"
        if row["name"] in given:
            return float(given[row["name"]]), "measured (--step_speedups)"
        if row["name"] in measured:
            return measured[row["name"]], "measured here"
        if step_times is None:
            raise SystemExit(f"no per-step speedup for {row['name']}")
        return step_times.speedup(mapped[row["name"]], fs_layout), "derived"

    base_row = rows[0]
    finish_rows(rows, base_row, step_speedup)
    finish_rows(ablation, base_row, step_speedup)
    parts = []
    if given:
        parts.append(f"measured, from `{args.step_speedups}` for {', '.join(sorted(given))}")
    if measured:
        parts.append(f"measured on {torch.cuda.get_device_name()} in this run (random weights, bf16, batch 1)")
    if step_times is not None:
        parts.append(f"derived for the other rows from the uniform-plan step times measured in "
                     f"`{step_times.source['file']}` ({step_times.source['device']}, {step_times.source['date']}), "
                     "interpolated over element sparsity layer by layer")
    meta["speedup_source"] = {"fullsize_model": fullsize, "fullsize_layers": fs_layers,
                              "fullsize_layout": {"frames": fs_layout.num_frames,
                                                  "tokens_per_frame": fs_layout.tokens_per_frame},
                              "description": "; ".join(parts) + ".",
                              "step_results": None if step_times is None else step_times.source}
    meta["total_minutes"] = clock.elapsed() / 60
    meta["mlcd"] = {"dir": repo_path(mlcd_dir), "config": mlcd_cfg, "training": mlcd_training}
    write_results(args, rows, ablation, meta, final=True)
    print(f"[reproduce] wrote {args.out_dir}/quality.json and quality.md in {clock.elapsed() / 60:.1f} min",
          flush=True)
    return {"rows": rows, "order_ablation": ablation, "out_dir": args.out_dir}


if __name__ == "__main__":
    main()
