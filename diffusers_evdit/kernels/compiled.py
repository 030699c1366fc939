"""Lazily compiled functions, owned by the kernel objects that use them (no module-level compiled state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# Each distinct shape (layout, plan entry) compiles once; the default limit of 8 would silently fall back to eager
# code, which for FlexAttention materialises the full score matrix.
RECOMPILE_LIMIT = 256


@dataclass
class CompiledFn:
    """``torch.compile(fn, **options)`` built on first use, and called with a raised recompile limit."""

    fn: Callable
    options: dict = field(default_factory=dict)
    _compiled: Callable | None = field(default=None, repr=False)

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, **self.options)
        cfg = torch._dynamo.config
        limit = max(RECOMPILE_LIMIT, cfg.recompile_limit)
        with cfg.patch(recompile_limit=limit, accumulated_recompile_limit=max(limit, cfg.accumulated_recompile_limit)):
            return self._compiled(*args, **kwargs)
