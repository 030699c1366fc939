"""Training checkpoints written atomically, and resuming from the last complete one.

A checkpoint is written into a hidden temporary folder (``.checkpoint-<step>.partial``), completed with
:data:`MARKER` (``{"step": N}``) and only then renamed to ``checkpoint-<step>``: a run killed at any point leaves
either a complete checkpoint folder or no folder of that name. Old checkpoints are renamed away before they are
deleted, so a half-deleted folder never keeps a checkpoint's name either. Resuming reads only folders that hold the
marker.

Example:
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(out, "checkpoint-4"))   # no marker: an interrupted write, never resumed from
    >>> checkpoint_dirs(out)
    []
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

__all__ = ["MARKER", "checkpoint_dirs", "checkpoint_step", "find_checkpoint", "resume_checkpoint", "save_checkpoint",
           "trim_loss_log"]

logger = logging.getLogger(__name__)

#: The file that makes a checkpoint folder complete, written last (before the rename).
MARKER = "evdit_checkpoint.json"
_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_step(path: str) -> int | None:
    """The step of a complete checkpoint folder (from its :data:`MARKER`), ``None`` when it is not one.

    Example:
        >>> checkpoint_step("/nonexistent/checkpoint-3") is None
        True
    """
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            step = json.load(f).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and step >= 0 else None


def checkpoint_dirs(output_dir: str) -> list[str]:
    """Names of the complete ``checkpoint-<step>`` folders of ``output_dir``, oldest first (see module example)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _NAME.fullmatch(name)
        if match and checkpoint_step(os.path.join(output_dir, name)) == int(match.group(1)):
            found.append(name)
    return sorted(found, key=lambda d: int(d.split("-")[-1]))


def _remove(path: str) -> None:
    """Delete a folder by renaming it to a hidden name first (a half-deleted folder keeps no checkpoint name)."""
    if not os.path.exists(path):
        return
    trash = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.trash")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_leftovers(output_dir: str) -> None:
    """Remove temporary and half-deleted folders that a killed run left behind."""
    for name in os.listdir(output_dir):
        if name.startswith(".checkpoint-") and name.endswith((".partial", ".trash")):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: int | None,
                    json_files: dict[str, object] | None = None) -> str:
    """``accelerator.save_state`` into ``checkpoint-<step>``, atomically; then keep the newest ``total_limit``.

    ``json_files`` (file name -> JSON data, e.g. a trainer state) are written into the folder before it is marked
    complete. Every process calls this (as ``save_state`` needs); the main process completes the rename and the
    pruning. Returns the checkpoint's path.
    """
    final = os.path.join(output_dir, f"checkpoint-{step}")
    partial = os.path.join(output_dir, f".checkpoint-{step}.partial")
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        _clean_leftovers(output_dir)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, data in {**(json_files or {}), MARKER: {"step": step}}.items():  # the marker last
            with open(os.path.join(partial, name), "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
        _remove(final)  # a checkpoint of the same step from an earlier attempt
        os.rename(partial, final)
        if total_limit is not None and total_limit > 0:
            for old in checkpoint_dirs(output_dir)[:-total_limit]:
                _remove(os.path.join(output_dir, old))
        logger.info("Saved state to %s", final)
    accelerator.wait_for_everyone()
    return final


def find_checkpoint(output_dir: str, spec: str | None) -> str | None:
    """The checkpoint folder ``--resume_from_checkpoint spec`` names: ``"latest"`` (the newest complete one in
    ``output_dir``, ``None`` if there is none) or a folder, which must be a complete checkpoint (``SystemExit``
    naming the fix otherwise). ``None`` / ``""``: no resume."""
    if not spec:
        return None
    if spec == "latest":
        dirs = checkpoint_dirs(output_dir)
        return os.path.join(output_dir, dirs[-1]) if dirs else None
    if not os.path.isdir(spec):
        raise SystemExit(f"--resume_from_checkpoint {spec}: not a folder; pass a checkpoint-<step> folder of "
                         "--output_dir or 'latest'")
    if checkpoint_step(spec) is None:
        raise SystemExit(f"--resume_from_checkpoint {spec}: not a complete checkpoint (no valid {MARKER}; its "
                         "write was interrupted); pass 'latest' to resume from the newest complete checkpoint")
    return spec


def resume_checkpoint(accelerator, output_dir: str, spec: str | None) -> int:
    """Load the state of the checkpoint :func:`find_checkpoint` names and return its step (0: a new run)."""
    path = find_checkpoint(output_dir, spec)
    if path is None:
        if spec:
            logger.info("No complete checkpoint in %s; starting a new run.", output_dir)
        return 0
    logger.info("Resuming from %s", path)
    accelerator.load_state(path)
    return checkpoint_step(path)


def trim_loss_log(path: str, step: int) -> None:
    """Drop the rows after ``step`` from a JSON-lines loss log (the steps a killed run logged after its last
    checkpoint, which the resumed run logs again); rewritten atomically. A missing file is left missing.

    Example:
        >>> import tempfile
        >>> log = os.path.join(tempfile.mkdtemp(), "losses.jsonl")
        >>> _ = open(log, "w").write('{"step": 1}\\n{"step": 2}\\n{"step": 3')
        >>> trim_loss_log(log, 1); open(log).read()
        '{"step": 1}\\n'
    """
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by the kill
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)
