"""Crash-safe training: examples/train_mlcd.py and train_kd.py killed with SIGKILL (inside a checkpoint write, right
after one, at a random moment) resume from the last complete checkpoint and log the same losses, bit for bit, as an
uninterrupted run with the same seed; the final weights are identical too. Tiny random pipelines on the CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from example_scripts import run_example

from diffusers_evdit.distill.checkpoints import MARKER, checkpoint_dirs, find_checkpoint, trim_loss_log

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# The child process: runs an example script's main(argv), optionally killing itself with SIGKILL inside the k-th
# checkpoint write of this process (after its first file: the model weights are written, the optimizer is not) or
# right after the k-th write returned (complete files, before the folder is marked complete and renamed).
CHILD = r"""
import importlib, json, os, signal, sys
script, argv, fault, k = json.loads(sys.argv[1])
sys.path.insert(0, os.environ["EVDIT_EXAMPLES"])
import accelerate
import accelerate.checkpointing as ckpt
count = {"state": 0, "files": 0}
save_file, save_state = ckpt.save, accelerate.Accelerator.save_state
def patched_file(*a, **kw):
    count["files"] += 1
    if fault == "inside_write" and count["state"] == k and count["files"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return save_file(*a, **kw)
def patched_state(self, *a, **kw):
    count["state"] += 1
    count["files"] = 0
    out = save_state(self, *a, **kw)
    if fault == "after_write" and count["state"] == k:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
ckpt.save, accelerate.Accelerator.save_state = patched_file, patched_state
importlib.import_module(script).main(argv)
"""


def _env():
    env = dict(os.environ, EVDIT_EXAMPLES=str(EXAMPLES), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return env


def _start(script, argv, fault=None, k=0):
    payload = json.dumps([script, [str(a) for a in argv], fault, k])
    return subprocess.Popen([sys.executable, "-c", CHILD, payload], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _run(script, argv, fault=None, k=0) -> int:
    proc = _start(script, argv, fault, k)
    out, _ = proc.communicate(timeout=300)
    if fault is None and proc.returncode != 0:
        raise AssertionError(out[-3000:])
    return proc.returncode


def _run_here(script, argv) -> None:
    """An uninterrupted reference run in this process (no interpreter start-up; accelerate's singletons reset)."""
    run_example(script, argv)


def _kill_at_random_moment(script, argv, out: Path, after_step: int, seed: int) -> int:
    """Start a run and SIGKILL it at a random moment once its loss log has reached ``after_step``."""
    proc = _start(script, argv)
    log = out / "losses.jsonl"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if log.is_file() and sum(1 for line in log.read_text().splitlines() if line.endswith("}")) >= after_step:
            time.sleep(random.Random(seed).uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.communicate(timeout=60)
    return proc.returncode


def _losses(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"], r.get("feature_loss"), r.get("task_loss")) for r in rows]


def _weights(out: Path) -> dict:
    return DiffusionPipeline.from_pretrained(out).transformer.state_dict()


MLCD = ["--teacher", "tiny:wan", "--num_frames", 9, "--height", 32, "--width", 32, "--teacher_steps", 8,
        "--num_segments", 2, "--max_sequence_length", 8, "--train_batch_size", 1, "--learning_rate", 1e-3,
        "--report_to", "none", "--seed", 3, "--ema_decay", 0.9, "--max_train_steps", 5, "--checkpointing_steps", 1,
        "--checkpoints_total_limit", 2, "--validation_steps", 0, "--no_final_validation",
        "--synthetic_num_samples", 8]


def test_train_mlcd_killed_anywhere_resumes_with_the_same_losses(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    _run_here("train_mlcd", [*MLCD, "--output_dir", ref])
    resume = [*MLCD, "--output_dir", out, "--resume_from_checkpoint", "latest"]

    # 1. killed inside the write of the second checkpoint: step 1 is the last complete one
    assert _run("train_mlcd", resume, "inside_write", 2) == -signal.SIGKILL
    assert checkpoint_dirs(out) == ["checkpoint-1"]
    assert (out / ".checkpoint-2.partial").is_dir() and not (out / ".checkpoint-2.partial" / MARKER).exists()
    # 2. resumed, then killed right after a checkpoint's files were written, before it was marked complete
    assert _run("train_mlcd", resume, "after_write", 2) == -signal.SIGKILL
    assert checkpoint_dirs(out) == ["checkpoint-1", "checkpoint-2"]
    partial = out / ".checkpoint-3.partial"
    assert partial.is_dir() and any(partial.glob("*.safetensors")) and not (partial / MARKER).exists()
    with pytest.raises(SystemExit, match="not a complete checkpoint"):
        find_checkpoint(str(out), str(partial))
    # 3. resumed, then killed at a random moment after step 4 was logged
    assert _kill_at_random_moment("train_mlcd", resume, out, after_step=4, seed=0) in (-signal.SIGKILL, 0)
    # 4. resumed to the end
    _run("train_mlcd", resume)

    assert _losses(out) == _losses(ref)  # every step once, bit for bit
    wa, wb = _weights(ref), _weights(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list(out.glob(".checkpoint-*"))  # leftovers of the killed runs are gone


KD = ["--teacher", "tiny:wan", "--plan", "uniform:1", "--num_frames", 9, "--height", 32, "--width", 32,
      "--max_sequence_length", 8, "--train_batch_size", 1, "--learning_rate", 1e-3, "--report_to", "none",
      "--seed", 5, "--validation_steps", 0, "--no_final_validation", "--max_train_steps", 3,
      "--checkpointing_steps", 1, "--synthetic_num_samples", 8]


def test_train_kd_killed_inside_a_checkpoint_write_resumes_with_the_same_losses(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    _run_here("train_kd", [*KD, "--output_dir", ref])
    resume = [*KD, "--output_dir", out, "--resume_from_checkpoint", "latest"]
    assert _run("train_kd", resume, "inside_write", 2) == -signal.SIGKILL
    assert checkpoint_dirs(out) == ["checkpoint-1"]
    _run("train_kd", resume)
    assert _losses(out) == _losses(ref)
    wa, wb = _weights(ref), _weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_only_marked_folders_are_checkpoints_and_the_log_drops_rows_past_the_checkpoint(tmp_path):
    for step, marked in ((1, True), (2, True), (3, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if marked:
            (folder / MARKER).write_text(json.dumps({"step": step}))
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / MARKER).write_text('{"step": 4')  # cut by a kill: not complete
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / MARKER).write_text('{"step": 1}')  # a renamed folder of another step
    assert checkpoint_dirs(tmp_path) == ["checkpoint-1", "checkpoint-2"]
    assert find_checkpoint(str(tmp_path), "latest") == str(tmp_path / "checkpoint-2")
    assert find_checkpoint(str(tmp_path), None) is None
    log = tmp_path / "losses.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "loss": 0.125}\n{"step": 4, "lo')
    trim_loss_log(str(log), 2)
    assert log.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n'
