"""Folders written atomically: build in a temporary folder beside the target, then rename it into place.

A reader sees either the previous complete folder or the new complete one, never a half-written one: the temporary
folder (``.<name>.tmp-<id>``) holds an ``.evdit-incomplete`` marker until it is complete, and
:func:`check_complete` refuses a folder that still has it (the temporary folder of a killed process).
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

__all__ = ["INCOMPLETE_MARKER", "atomic_directory", "check_complete"]

#: File inside a folder that is still being written.
INCOMPLETE_MARKER = ".evdit-incomplete"


def check_complete(folder: str | os.PathLike) -> None:
    """Raise ``ValueError`` when ``folder`` is a half-written save (it holds :data:`INCOMPLETE_MARKER`).

    Example:
        >>> import tempfile
        >>> check_complete(tempfile.mkdtemp())  # a complete folder: no error
    """
    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, INCOMPLETE_MARKER)):
        raise ValueError(
            f"{folder} is an incomplete save (it still holds {INCOMPLETE_MARKER}: the process writing it stopped "
            "before it finished). Save again, or load the previous folder; this one can be deleted."
        )


@contextmanager
def atomic_directory(
    path: str | os.PathLike, carry_over: Callable[[str, str], Iterable[str]] | None = None
) -> Iterator[str]:
    """Yield an empty temporary folder in ``path``'s parent; on normal exit it replaces ``path``.

    On an exception the temporary folder is removed and ``path`` is left as it was. ``carry_over(old, new)`` names
    entries of an existing ``path`` to move into the new folder before the swap (user files the writer does not
    produce). The swap is two renames (old folder aside, new folder in), then the old folder is deleted.

    Example:
        >>> import os, tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "out")
        >>> with atomic_directory(target) as tmp:
        ...     open(os.path.join(tmp, "a.txt"), "w").close()
        >>> os.listdir(target)
        ['a.txt']
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{path} exists and is not a folder; choose another save directory.")
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    os.mkdir(tmp)  # honours the umask, unlike tempfile.mkdtemp (0700)
    marker = os.path.join(tmp, INCOMPLETE_MARKER)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(f"{path} is being written here; a folder that still holds this file is incomplete.\n")
    try:
        yield tmp
        if carry_over is not None and os.path.isdir(path):
            for entry in carry_over(path, tmp):
                if not os.path.exists(os.path.join(tmp, entry)):
                    os.rename(os.path.join(path, entry), os.path.join(tmp, entry))
        os.remove(marker)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: str, path: str) -> None:
    if not os.path.exists(path):
        os.rename(new, path)
        return
    parent, name = os.path.split(path)
    old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
