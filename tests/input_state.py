"""The state a refused call must leave as it was: modules (processors, mask plan, hooks, weights), pipelines, folders
and tensors; ``unchanged(*objects)`` checks it around a call that raises (tests/test_errors.py)."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import torch

from diffusers_evdit import get_mask_plan


def _module_state(model: torch.nn.Module):
    processors = tuple((name, type(p).__name__, getattr(p, "k", None))
                       for name, p in getattr(model, "attn_processors", {}).items())
    plan = get_mask_plan(model) if hasattr(model, "attn_processors") else None
    params = hashlib.sha256(b"".join(p.detach().cpu().contiguous().numpy().tobytes()
                                     for p in model.state_dict().values())).hexdigest()
    return processors, None if plan is None else plan.to_dict(), len(model._forward_pre_hooks), params


def _folder_state(folder: Path):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def state(obj):
    if isinstance(obj, torch.nn.Module):
        return _module_state(obj)
    if isinstance(obj, Path):
        return _folder_state(obj)
    if hasattr(obj, "components"):  # a pipeline
        return {k: _module_state(v) for k, v in obj.components.items() if isinstance(v, torch.nn.Module)}
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    raise TypeError(type(obj))


@contextlib.contextmanager
def unchanged(*objects):
    """Run the block (which must raise) and assert every object is exactly as before."""
    before = [state(o) for o in objects]
    try:
        yield
    finally:
        after = [state(o) for o in objects]
        for b, a in zip(before, after):
            same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            assert same, "the refused call modified its input"
