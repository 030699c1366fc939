"""A cached one-time micro-benchmark of candidate kernels, per call signature.

Like ``torch.backends.cudnn.benchmark``: the first call of each distinct signature (device, layout, plan entry,
input shape and dtype, ...) runs every candidate a few times and keeps the fastest; later calls reuse the choice.
:class:`~diffusers_evdit.kernels.TileAttention` uses it for ``kernel="fastest"``: a sparse entry runs the split kernel
or dense attention, whichever is faster on the user's GPU (at low sparsity the split kernel's fixed costs can
outweigh the skipped work).
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Callable, Hashable

import torch


def cuda_event_seconds(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes on the current CUDA stream (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


@dataclass
class KernelTuner:
    """Times candidate kernels once per signature and remembers the fastest.

    Args:
        reps: timed calls per candidate (the median counts).
        warmup: untimed calls per candidate first (compilation, caches).
        timer: ``timer(fn) -> seconds`` of one call; default :func:`cuda_event_seconds`.

    Attributes:
        choices: signature -> chosen candidate name.
        timings: signature -> {candidate name: median seconds} (``inf`` for a candidate that raised).
        errors: signature -> {candidate name: the error it raised}; such a candidate is never chosen (a warning
            says so once per signature), unless it is ``prefer``, whose error propagates.

    Example:
        >>> fake = {"split": 2.0, "dense": 1.0}
        >>> tuner = KernelTuner(timer=lambda fn: fake[fn()])
        >>> tuner.pick("sig", {"split": lambda: "split", "dense": lambda: "dense"})
        'dense'
        >>> tuner.timings["sig"]
        {'split': 2.0, 'dense': 1.0}
    """

    reps: int = 3
    warmup: int = 1
    timer: Callable[[Callable[[], object]], float] | None = None
    choices: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)

    def pick(self, signature: Hashable, candidates: dict[str, Callable[[], object]], prefer: str | None = None,
             margin: float = 0.0) -> str:
        """The fastest of ``candidates`` (name -> zero-argument call) for ``signature``, timed on first use.

        ``prefer`` keeps that candidate unless another is faster by more than ``margin`` (a share of its time), so
        that timing noise near a tie does not flip the choice from one process to the next."""
        if signature not in self.choices:
            times, errors = {}, {}
            for name, fn in candidates.items():
                try:
                    times[name] = self.seconds(fn)
                except Exception as err:  # e.g. a kernel this GPU cannot run: time the others
                    if name == prefer:
                        raise
                    times[name], errors[name] = math.inf, f"{type(err).__name__}: {err}"
            if errors:
                self.errors[signature] = errors
                warnings.warn(f"kernel tuning skipped {', '.join(errors)} (raised: {'; '.join(errors.values())})",
                              stacklevel=3)
            best = min(times, key=times.get)
            if prefer in times and times[best] * (1 + margin) >= times[prefer]:
                best = prefer
            self.timings[signature] = times
            self.choices[signature] = best
        return self.choices[signature]

    def seconds(self, fn: Callable[[], object]) -> float:
        """Median seconds of ``fn`` over ``reps`` calls, after ``warmup`` untimed ones."""
        timer = self.timer or cuda_event_seconds
        for _ in range(self.warmup):
            fn()
        return statistics.median(timer(fn) for _ in range(max(1, self.reps)))
