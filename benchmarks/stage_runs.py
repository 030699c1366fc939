"""The training runs of ``reproduce_tables.py``: ``examples/train_mlcd.py`` and ``examples/train_kd.py``, each in its
own process (KD runs ``--jobs`` at a time, in waves counted against ``--max_kd_waves``), and the summaries of finished
runs that ``--resume`` reuses."""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")  # the training scripts, run in their own processes


def finished_run(folder: str, extra: list[str]) -> bool:
    """Whether a KD run with the arguments ``extra`` finished in ``folder`` before: its pipeline is saved
    (train_kd.py writes kd_config.json last) with the same teacher (``--teacher`` / ``--student``) and plan."""
    path = os.path.join(folder, "kd_config.json")
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(folder, "model_index.json"))):
        return False
    with open(path, encoding="utf-8") as f:
        kept = json.load(f)
    given = {flag: value for flag, value in zip(extra, extra[1:])
             if flag.startswith("--") and not value.startswith("--")}
    for flag, key in (("--teacher", "teacher"), ("--student", "student_init")):
        if flag in given and os.path.abspath(given[flag]) != os.path.abspath(kept.get(key) or ""):
            return False
    plan = given.get("--plan", "saved")
    if plan.startswith("uniform:"):
        return set(kept.get("plan_layers") or []) == {int(plan.split(":")[1])}
    if plan != "saved":
        from diffusers_evdit import MaskPlan

        return MaskPlan.load(plan).layers == kept.get("plan_layers")
    return True


class StopForResume(Exception):
    """--max_kd_waves reached: the rows so far are written; a later --resume call goes on."""


def common_train_args(args, concurrent: int = 1) -> list[str]:
    workers = args.dataloader_num_workers
    if workers is None:
        workers = max(2, 8 // concurrent) if torch.cuda.is_available() and not args.smoke else 0
    out = ["--report_to", "none", "--checkpointing_steps", "0", "--validation_steps", "0", "--mixed_precision", "no",
           "--seed", str(args.seed), "--dataloader_num_workers", str(workers), "--allow_tf32"]
    if args.cache_samples > 0:  # every run draws from the same clips: their latents are encoded once
        cache = os.path.join(args.work_dir, f"latents-seed{args.seed}-n{args.cache_samples}.pt")
        out += ["--latent_cache", cache, "--synthetic_num_samples", str(args.cache_samples)]
    return out


def budget_args(args, minutes: float) -> list[str]:
    if args.smoke:
        return ["--max_train_steps", "2"]
    return ["--max_train_steps", "1000000", "--max_minutes", f"{minutes:.3f}", "--time_reserve_s", "6"]


def example_command(name: str, argv: list[str]) -> list[str]:
    """The command line of ``examples/<name>.py`` with ``argv`` (the training scripts run as scripts, never
    imported)."""
    return [sys.executable, os.path.join(EXAMPLES, f"{name}.py"), *map(str, argv)]


def example_env() -> dict:
    """The environment of a training process: this checkout's package first on ``PYTHONPATH``."""
    env = dict(os.environ)
    if os.path.isdir(os.path.join(ROOT, "diffusers_evdit")):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_example(name: str, argv: list[str]) -> None:
    """Run one training script to the end in its own process; ``SystemExit`` naming it when it fails."""
    import subprocess

    done = subprocess.run(example_command(name, argv), env=example_env(), cwd=os.getcwd())
    if done.returncode != 0:
        raise SystemExit(f"examples/{name}.py failed (exit status {done.returncode}); its output is above")


def train_mlcd(args, base: str, out: str, minutes: float) -> dict:
    argv = ["--teacher", base, "--output_dir", out, "--num_segments", str(args.num_segments),
            "--train_batch_size", str(args.mlcd_batch_size), "--learning_rate", str(args.mlcd_learning_rate),
            "--no_final_validation", *common_train_args(args), *budget_args(args, minutes)]
    if args.teacher_steps:
        argv += ["--teacher_steps", str(args.teacher_steps)]
    run_example("train_mlcd", argv)
    with open(os.path.join(out, "mlcd_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    return {"steps": cfg.get("steps"), "final_loss": cfg.get("final_loss"), "minutes": round(minutes, 2),
            "stopped_by_time": cfg.get("stopped_by_time")}


def kd_argv(args, out: str, minutes: float, extra: list[str], concurrent: int = 1) -> list[str]:
    """train_kd.py's arguments for one KD run of reproduce_tables.py."""
    argv = ["--output_dir", out, "--train_batch_size", str(args.kd_batch_size), "--learning_rate",
            str(args.kd_learning_rate), "--task_weight", str(args.task_weight), "--no_final_validation",
            *common_train_args(args, concurrent), *budget_args(args, minutes), *shlex.split(args.kd_extra_args),
            *extra]
    if "--kd_weight" not in extra:
        argv += ["--kd_weight", str(args.kd_weight)]
    return argv


def kd_summary(out: str, minutes: float, seconds: float) -> dict:
    """What a finished KD run reports (read from the files train_kd.py writes: kd_config.json, losses.jsonl)."""
    with open(os.path.join(out, "kd_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    last = {}
    losses = os.path.join(out, "losses.jsonl")
    if os.path.isfile(losses):
        with open(losses, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        last = json.loads(lines[-1]) if lines else {}
    return {"steps": cfg.get("steps"), "final_loss": last.get("loss", cfg.get("final_loss")),
            "final_feature_loss": last.get("feature_loss"), "final_task_loss": last.get("task_loss"),
            "task_loss": cfg.get("task_loss"), "minutes": round(minutes, 2), "seconds": round(seconds, 1),
            "stopped_by_time": cfg.get("stopped_by_time")}


def train_kd(args, out: str, minutes: float, extra: list[str]) -> dict:
    """One KD run (``examples/train_kd.py`` in its own process)."""
    t0 = time.time()
    run_example("train_kd", kd_argv(args, out, minutes, extra))
    return kd_summary(out, minutes, time.time() - t0)


def train_kd_concurrently(args, jobs: list[tuple[str, list[str]]], minutes: float) -> list[dict]:
    """KD runs ``(out, extra args)`` side by side, each ``train_kd.py`` in its own process (log: ``out + '.log'``)."""
    import subprocess

    t0 = time.time()
    procs = []
    for out, extra in jobs:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        log = open(out + ".log", "w", encoding="utf-8")
        cmd = example_command("train_kd", kd_argv(args, out, minutes, extra, len(jobs)))
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=example_env()),
                      log, out))
    failed = []
    for proc, log, out in procs:
        if proc.wait() != 0:
            failed.append(out)
        log.close()
    if failed:
        raise SystemExit(f"KD run(s) failed: {', '.join(failed)}; see each folder's .log beside it")
    return [kd_summary(out, minutes, time.time() - t0) for _, _, out in procs]


def run_kd_jobs(args, clock, jobs: list[tuple[str, list[str]]], shares_left: float,
                evals_left: int) -> tuple[list[dict], float]:
    """Every KD run of ``jobs`` (``(out, extra args)``), ``--jobs`` at a time; each wave of runs takes one time
    share of ``clock`` (reproduce_tables' ``Clock``). Returns the summaries in job order and the shares left."""
    summaries = {}
    if args.resume:
        for out, extra in jobs:
            if finished_run(out, extra):
                summaries[out] = kept_summary(out)
                print(f"[reproduce] KD: {os.path.basename(out)} finished before, reused", flush=True)
    todo = [job for job in jobs if job[0] not in summaries]
    shares_left -= math.ceil(len(jobs) / args.jobs) - math.ceil(len(todo) / args.jobs)
    for i in range(0, len(todo), args.jobs):
        wave = todo[i: i + args.jobs]
        count_wave(args)
        minutes = args.kd_minutes or clock.minutes_for(1, shares_left, evals_left)
        print(f"[reproduce] KD: {', '.join(os.path.basename(o) for o, _ in wave)}: {minutes:.2f} min", flush=True)
        if len(wave) == 1:
            done = [train_kd(args, wave[0][0], minutes, wave[0][1])]
        else:
            done = train_kd_concurrently(args, wave, minutes)
        for (out, _), summary in zip(wave, done):
            summaries[out] = keep_summary(out, summary)
        shares_left -= 1
    return [summaries[out] for out, _ in jobs], shares_left


def count_wave(args) -> None:
    """Count one wave of training runs against --max_kd_waves; raise :class:`StopForResume` past it."""
    if args.max_kd_waves is not None and args.waves_trained >= args.max_kd_waves:
        raise StopForResume
    args.waves_trained += 1


def keep_summary(out: str, summary: dict) -> dict:
    """Write a finished run's summary beside it (``reproduce_summary.json``), for a later --resume; returns it."""
    with open(os.path.join(out, "reproduce_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def read_kept_summary(out: str) -> dict | None:
    """The summary :func:`keep_summary` wrote for the run in ``out``, if any."""
    path = os.path.join(out, "reproduce_summary.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def kept_summary(out: str) -> dict:
    """The summary :func:`keep_summary` wrote, else what kd_config.json / losses.jsonl say."""
    kept = read_kept_summary(out)
    return kept if kept is not None else kd_summary(out, minutes=0.0, seconds=0.0)
