"""Evaluation prompts: disjoint, seeded validation and test sets of held-out scenes.

Every caption of a held-out scene (see :data:`~diffusers_evdit.data.HELDOUT_COMBOS`) belongs to exactly one split,
decided by a hash of its text (:func:`prompt_split`), so no caption can be in both sets whatever their sizes. Each set
is then drawn from its own seed, distinct captions only, and ``eval_prompts(n)`` is a prefix of ``eval_prompts(m)``
for ``n < m``. Choices (recipes, learning rates, thresholds, plans) are made on ``"validation"``; every reported
number uses ``"test"``. No training scene has a held-out triple, so neither set was trained on.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .sampling import sample_scene
from .scenes import SceneSpec

#: The two evaluation splits.
SPLITS: tuple[str, ...] = ("validation", "test")

#: Sampling seed of each split.
SPLIT_SEEDS = {"validation": 20261204, "test": 20261205}

_MAX_DRAWS = 200_000


def prompt_split(caption: str) -> str:
    """The split a caption belongs to: ``"validation"`` or ``"test"`` (first byte of its SHA-256, even or odd).

    Example::

        >>> prompt_split("a red circle moving left on a dark background") in SPLITS
        True
    """
    return SPLITS[hashlib.sha256(caption.encode("utf-8")).digest()[0] % 2]


def eval_prompts(n: int, split: str = "test", seed: int | None = None) -> list[tuple[str, SceneSpec]]:
    """``n`` distinct held-out ``(caption, scene)`` pairs of one split (``"test"`` or ``"validation"``).

    ``seed`` replaces the split's sampling seed (:data:`SPLIT_SEEDS`); captions still come only from ``split``, so a
    validation set of any seed never shares a caption with any test set.

    Example::

        >>> test, val = eval_prompts(8), eval_prompts(8, split="validation")
        >>> len(test), all(s.is_heldout for _, s in test), set(c for c, _ in test) & set(c for c, _ in val)
        (8, True, set())
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n < 1:
        raise ValueError(f"need at least one prompt, got {n}")
    base = SPLIT_SEEDS[split] if seed is None else int(seed)
    out: list[tuple[str, SceneSpec]] = []
    seen: set[str] = set()
    for i in range(_MAX_DRAWS):
        scene = sample_scene(np.random.default_rng([base, i]), split="heldout")
        text = scene.caption()
        if text in seen or prompt_split(text) != split:
            continue
        seen.add(text)
        out.append((text, scene))
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} distinct {split} prompts found in {_MAX_DRAWS} draws; ask for fewer")
