"""What a search tries and on what: sampled timesteps, the mask list, and checks of the inputs and options."""

from __future__ import annotations

import json
import os

import torch

from ..masks import check_k
from ..processors import family_for

LOSSES = ("output", "layer")
REDUCTIONS = ("max", "mean")
SOLVERS = ("lagrangian", "exact")


def student_timesteps(folder: str) -> list[int] | None:
    """The timesteps a few-step MLCD student samples at (``mlcd_timesteps`` of its folder's saved scheduler), the
    ones a search of its plan should weigh; ``None`` for anything else (a Hub id, a stock scheduler, no folder).

    Example:
        >>> import tempfile
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> from diffusers_evdit.schedulers import mlcd_scheduler_from
        >>> folder = tempfile.mkdtemp()
        >>> student = mlcd_scheduler_from(FlowMatchEulerDiscreteScheduler(), [999.0, 600.0], sigmas=[1.0, 0.6])
        >>> student.save_pretrained(os.path.join(folder, "scheduler"))
        >>> student_timesteps(folder), student_timesteps(tempfile.mkdtemp())
        ([999, 600], None)
    """
    path = os.path.join(os.fspath(folder), "scheduler", "scheduler_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    steps = config.get("mlcd_timesteps")
    if not steps or not config.get("use_mlcd_steps", True):
        return None
    return [int(round(float(t))) for t in steps]


def sample_timesteps(m: int, seed: int = 0, num_train_timesteps: int = 1000) -> list[int]:
    """``m`` distinct timesteps drawn uniformly from ``0 .. num_train_timesteps-1`` (sorted, deterministic by seed).

    Example:
        >>> sample_timesteps(4, seed=0) == sample_timesteps(4, seed=0)
        True
        >>> len(set(sample_timesteps(4, seed=0)))
        4
    """
    if not 1 <= m <= num_train_timesteps:
        raise ValueError(f"Need 1 <= m <= {num_train_timesteps} timesteps, got m={m}.")
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(num_train_timesteps, generator=g)[:m].tolist())


def default_masks(num_frames: int) -> list[int]:
    """The masks of the search, dense to sparse: ``k = F-2, ..., 1``.

    ``k = F-1`` is left out: its only non-reference frame still sees every other frame (they are all reference
    frames), so it keeps every (query, key) pair, computes exactly the dense attention and only adds kernel overhead.
    Pass it in ``masks`` explicitly to try it anyway.

    Example:
        >>> default_masks(5)
        [3, 2, 1]
        >>> default_masks(2)
        [1]
    """
    return list(range(max(num_frames - 2, 1), 0, -1)) if num_frames > 1 else []


def check_masks(masks, num_frames: int) -> list[int]:
    """Validate a mask list (ints ``1 <= k < F``) and order it dense to sparse (descending ``k``, no repeats).

    Example:
        >>> check_masks([1, 4, 2, 4], 13)
        [4, 2, 1]
    """
    if masks is None:
        masks = default_masks(num_frames)
    masks = list(masks)
    if not masks:
        raise ValueError(
            f"The mask list is empty; give at least one k in 1..{num_frames - 1} (or None for the default list)"
            + (" - a single latent frame has no sparse mask." if num_frames < 2 else ".")
        )
    for k in masks:
        check_k(k)
        if k is None or k >= num_frames:
            raise ValueError(
                f"Mask {k!r} is dense for {num_frames} latent frames; the search always has the dense option, list "
                f"sparse masks only (1..{num_frames - 1})."
            )
    return sorted(set(masks), reverse=True)


def check_inputs(inputs) -> list[dict]:
    """The inputs as a non-empty list of forward-keyword dicts (one dict is taken as a list of one)."""
    if isinstance(inputs, dict):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(x, dict) for x in inputs):
        raise ValueError("inputs must be a non-empty list of forward-keyword dicts, one per timestep.")
    return list(inputs)


def check_choice(value, choices, name):
    """``ValueError`` naming the choices unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(choices)}.")


def input_frames(transformer, inputs: list[dict]) -> int:
    """The number of latent frames of the inputs (``ValueError`` when they differ)."""
    family = family_for(transformer)
    frames = {family.video_layout(transformer, (), x).num_frames for x in inputs}
    if len(frames) != 1:
        raise ValueError(f"All inputs must have the same number of latent frames, got {sorted(frames)}.")
    return frames.pop()
