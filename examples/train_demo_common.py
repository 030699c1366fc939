"""Shared helpers of the demo-model training scripts (``train_demo_vae.py``, ``train_demo_t2v.py``).

* :class:`ClipStream`: synthetic clips rendered by a process pool, in order, with bounded prefetch (no shared memory,
  so it works in containers with a small ``/dev/shm``);
* :class:`Budget`: the wall-clock budget (``--max_minutes``) every script obeys, and the time-aware LR schedule;
* checkpoint helpers in the style of diffusers' training scripts (``checkpoint-<step>`` folders written with
  ``accelerator.save_state``, ``--checkpoints_total_limit``, ``--resume_from_checkpoint latest``);
* :class:`LossLog`: per-step losses kept on the device and fetched in blocks (no per-step host sync), written as JSON.
"""

from __future__ import annotations

import collections
import json
import math
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch

PROCESS_START = time.time()


def log(msg: str) -> None:
    """Print with the elapsed time of the process, flushed (the GPU run is watched live)."""
    print(f"[{time.time() - PROCESS_START:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Data


def render_clip(task: tuple) -> tuple[np.ndarray, str]:
    """Render training clip ``index`` of ``seed`` (``SyntheticVideoDataset(seed=seed, split="train")[index]``).

    ``task = (seed, index, num_frames, height, width, windows, window_frames)``. With ``windows > 0`` returns
    ``windows`` random temporal windows of ``window_frames`` frames (``uint8 (windows, t, H, W, 3)``), else the
    whole clip (``uint8 (T, H, W, 3)``), and the caption.
    """
    from diffusers_evdit.data import render, sample_scene

    seed, index, num_frames, height, width, windows, window_frames = task
    gen = np.random.default_rng([int(seed), int(index)])
    scene = sample_scene(gen, split="train", aspect_ratio=width / height)
    frames = render(scene, num_frames, height, width)
    if windows > 0:
        rng = np.random.default_rng([int(seed), int(index), 7])
        starts = rng.integers(0, num_frames - window_frames + 1, size=windows)
        frames = np.stack([frames[s : s + window_frames] for s in starts])
    return frames, scene.caption()


class ClipStream:
    """Clips ``start, start + 1, ...`` rendered by ``workers`` processes (``0``: in this process), in order.

    With ``num_clips`` the indices wrap around (a fixed pool of clips, as in the ``--smoke`` runs).

    At most ``prefetch`` clips are pending, so memory stays bounded however slow the consumer is. Create it before
    CUDA is initialised (the pool forks).
    """

    def __init__(self, seed: int, num_frames: int, height: int, width: int, workers: int, start: int = 0,
                 windows: int = 0, window_frames: int = 0, prefetch: int | None = None, num_clips: int | None = None):
        self.args = (seed, num_frames, height, width, windows, window_frames)
        self.num_clips = num_clips
        self.next_index = start
        self.workers = workers
        self.pool = None
        if workers > 0:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
            self.pool = ctx.Pool(workers)
        self.prefetch = prefetch or max(8, 6 * workers)
        self.pending: collections.deque = collections.deque()

    def _task(self, index: int) -> tuple:
        seed, t, h, w, windows, wf = self.args
        if self.num_clips:
            index = index % self.num_clips
        return (seed, index, t, h, w, windows, wf)

    def _fill(self) -> None:
        while self.pool is not None and len(self.pending) < self.prefetch:
            self.pending.append(self.pool.apply_async(render_clip, (self._task(self.next_index),)))
            self.next_index += 1

    def get(self) -> tuple[np.ndarray, str]:
        """The next clip and its caption."""
        if self.pool is None:
            out = render_clip(self._task(self.next_index))
            self.next_index += 1
            return out
        self._fill()
        out = self.pending.popleft().get()
        self._fill()
        return out

    def batch(self, n: int) -> tuple[np.ndarray, list[str]]:
        """``n`` clips stacked (``uint8``) and their captions."""
        clips, caps = zip(*(self.get() for _ in range(n)))
        return np.stack(clips), list(caps)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> "ClipStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_workers() -> int:
    """Render processes: all cores but two (at least one), none when there are at most two cores."""
    n = os.cpu_count() or 1
    return 0 if n <= 2 else max(1, n - 2)


def to_video_tensor(clips: np.ndarray, device) -> torch.Tensor:
    """``uint8 (B, T, H, W, 3)`` -> float ``(B, 3, T, H, W)`` in [-1, 1] on ``device``."""
    x = torch.from_numpy(clips).to(device, non_blocking=True)
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Time budget and schedule


class Budget:
    """A wall-clock budget measured from process start (``--max_minutes``), minus a reserve for saving.

    ``progress(step)`` is the training progress in [0, 1] used by the LR schedule: the larger of the step fraction
    (``step / max_steps``) and the time fraction of the training window (from the first step to the deadline, plus
    the training seconds of earlier runs when resumed), so a time-limited run anneals the LR to its end whatever
    the GPU's speed.
    """

    def __init__(self, max_minutes: float, reserve_s: float = 20.0, max_steps: int | None = None):
        self.deadline = PROCESS_START + 60.0 * max_minutes - reserve_s
        self.max_steps = max_steps
        self.loop_start: float | None = None
        self.prior_s = 0.0

    def left(self) -> float:
        """Seconds until the deadline."""
        return self.deadline - time.time()

    def start_loop(self, prior_train_s: float = 0.0) -> None:
        self.loop_start = time.time()
        self.prior_s = prior_train_s

    def train_seconds(self) -> float:
        return self.prior_s + (0.0 if self.loop_start is None else time.time() - self.loop_start)

    def progress(self, step: int) -> float:
        p = 0.0
        if self.max_steps:
            p = step / self.max_steps
        if self.loop_start is not None:
            window = self.prior_s + max(1e-6, self.deadline - self.loop_start)
            p = max(p, self.train_seconds() / window)
        return min(1.0, p)

    def done(self, step: int) -> bool:
        return time.time() >= self.deadline or (self.max_steps is not None and step >= self.max_steps)


def lr_at(progress: float, step: int, base_lr: float, warmup_steps: int, final_fraction: float = 0.05) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay over ``progress`` to ``final_fraction * base_lr``."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    cos = final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return base_lr * warm * cos


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete ``checkpoint-<step>`` folders of ``output_dir``, oldest first (an interrupted write is not one)."""
    from diffusers_evdit.distill.checkpoints import checkpoint_dirs

    return [os.path.join(output_dir, d) for d in checkpoint_dirs(output_dir)]


def resolve_resume(output_dir: str, resume: str | None) -> str | None:
    """The checkpoint folder to resume from: ``"latest"`` (``None`` when there is none yet) or a path/name."""
    from diffusers_evdit.distill.checkpoints import find_checkpoint

    if resume and resume != "latest" and not os.path.isdir(resume):
        path = os.path.join(output_dir, resume)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint {resume!r} not found (looked for {path}); pass 'latest' or a "
                                    "checkpoint-<step> folder of --output_dir")
        resume = path
    return find_checkpoint(output_dir, resume)


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, total_limit: int | None) -> str:
    """``accelerator.save_state`` into ``checkpoint-<step>`` plus ``trainer_state.json``, atomically (see
    :mod:`diffusers_evdit.distill.checkpoints`); prune to ``total_limit``."""
    from diffusers_evdit.distill.checkpoints import save_checkpoint as save_atomically

    return save_atomically(accelerator, output_dir, step, total_limit, json_files={"trainer_state.json": state})


def load_trainer_state(path: str) -> dict:
    file = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(file):
        return {}
    with open(file, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------------------------
# Logging


class LossLog:
    """Per-step losses, kept on the device and fetched every ``flush`` steps."""

    def __init__(self, history: dict | None = None):
        self.steps: list[int] = list((history or {}).get("steps", []))
        self.values: dict[str, list[float]] = {k: list(v) for k, v in (history or {}).get("values", {}).items()}
        self._pending: list[tuple[int, dict[str, torch.Tensor]]] = []

    def add(self, step: int, **losses: torch.Tensor) -> None:
        self._pending.append((step, {k: v.detach().float() for k, v in losses.items()}))

    def flush(self) -> None:
        if not self._pending:
            return
        keys = list(self._pending[0][1])
        stacked = {k: torch.stack([p[1][k] for p in self._pending]).cpu().tolist() for k in keys}
        for i, (step, _) in enumerate(self._pending):
            self.steps.append(step)
            for k in keys:
                self.values.setdefault(k, []).append(float(stacked[k][i]))
        self._pending = []

    def recent(self, key: str, n: int = 50) -> float:
        vals = self.values.get(key, [])[-n:]
        return float(np.mean(vals)) if vals else float("nan")

    def to_dict(self) -> dict:
        self.flush()
        return {"steps": self.steps, "values": self.values}


def smoothed(values: list[float], window: int = 50) -> list[float]:
    """Trailing mean over ``window`` values (for the loss-curve JSON)."""
    out, acc = [], collections.deque(maxlen=window)
    for v in values:
        acc.append(v)
        out.append(float(np.mean(acc)))
    return out


def mixed_precision(choice: str) -> str:
    """``auto``: ``bf16`` on CUDA with bf16 support, else ``no``."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def setup_torch(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def add_repo_to_path() -> None:
    """Make ``diffusers_evdit`` importable when the scripts run from a clone without installing it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)

