"""Progress that suits where a command runs: a tqdm bar on a terminal, a line every few seconds with an ETA in a log
file or CI, nothing with ``--quiet``.

    >>> import io
    >>> stream = io.StringIO()
    >>> with Progress(4, "generating", unit="step", mode="log", stream=stream, interval=0) as bar:
    ...     for _ in range(4):
    ...         bar.update()
    >>> stream.getvalue().splitlines()[-1].startswith("generating: 4/4 steps (100%)")
    True
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "as_mode", "configure_pipeline_progress", "count_transformer_calls", "format_duration",
           "progress_mode", "set_verbosity"]

MODES = ("bar", "log", "off")


def progress_mode(quiet: bool = False, stream: TextIO | None = None) -> str:
    """``"off"`` when ``quiet``, ``"bar"`` when ``stream`` (default stderr) is a terminal, else ``"log"``.

    Example:
        >>> import io
        >>> progress_mode(stream=io.StringIO()), progress_mode(quiet=True)
        ('log', 'off')
    """
    if quiet:
        return "off"
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


def as_mode(progress: bool | str) -> str:
    """A library function's ``progress`` argument as a :class:`Progress` mode: ``True`` a bar, ``False`` nothing,
    or a mode name (``"bar"``, ``"log"``, ``"off"``) as :func:`progress_mode` gives for the command's stream.

    Example:
        >>> as_mode(True), as_mode(False), as_mode("log")
        ('bar', 'off', 'log')
    """
    if isinstance(progress, str):
        if progress not in MODES:
            raise ValueError(f"progress must be True, False or one of {MODES}, got {progress!r}")
        return progress
    return "bar" if progress else "off"


def format_duration(seconds: float) -> str:
    """Seconds as a short duration for progress and log lines.

    Example:
        >>> format_duration(7.4), format_duration(70), format_duration(3725)
        ('7s', '1m10s', '1h02m')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """A progress report over ``total`` units in one of three modes (see :func:`progress_mode`).

    ``"log"`` prints ``desc: n/total units (pct%), elapsed, ETA`` at most every ``interval`` seconds, and never more
    than about ``max_lines`` lines for the whole task (the interval grows with the expected duration), plus a last
    line when done. ``"bar"`` is a tqdm bar; ``"off"`` prints nothing. Use as a context manager or call
    :meth:`close`.

    Example:
        >>> with Progress(3, "search", mode="off") as bar:
        ...     bar.update(3)
        >>> bar.n
        3
    """

    def __init__(self, total: int, desc: str, unit: str = "step", mode: str = "log", stream: TextIO | None = None,
                 interval: float = 5.0, max_lines: int = 30):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.total, self.desc, self.unit, self.mode = max(0, int(total)), desc, unit, mode
        self.stream = sys.stderr if stream is None else stream
        self.interval, self.max_lines = float(interval), max(1, int(max_lines))
        self.n = 0
        self.start = time.perf_counter()
        self._last = self.start
        self._closed = False
        self._bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total or None, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        units = self.unit + ("s" if self.total != 1 else "")
        text = f"{self.desc}: {self.n}/{self.total} {units}"
        if self.total:
            text += f" ({min(100.0, 100.0 * self.n / self.total):.0f}%)"
        text += f", {format_duration(elapsed)}"
        if 0 < self.n < self.total:
            text += f", ETA {format_duration(elapsed / self.n * (self.total - self.n))}"
        return text

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.mode != "log" or self.n >= self.total:
            return
        now = time.perf_counter()
        expected = (now - self.start) / self.n * self.total if self.n else 0.0
        if now - self._last >= max(self.interval, expected / self.max_lines):
            self._last = now
            print(self._line(now), file=self.stream, flush=True)

    def write(self, line: str) -> None:
        """Print a line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        elif self.mode != "off":
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log":
            print(self._line(time.perf_counter()).replace(", ETA", ""), file=self.stream, flush=True)


def set_verbosity(quiet: bool = False, verbose: bool = False, bars: bool = True) -> None:
    """Set diffusers', transformers' and huggingface_hub's logging for a command: errors only (``quiet``), info
    (``verbose``), else warnings; their loading bars only when ``bars`` (a terminal) and not ``quiet``.

    Example:
        >>> set_verbosity(quiet=True)  # what ``evdit <cmd> --quiet`` does
        >>> set_verbosity()
    """
    from diffusers.utils import logging as dlog

    level = "error" if quiet else "info" if verbose else "warning"
    show = bars and not quiet
    modules = [dlog]
    try:
        from transformers.utils import logging as tlog

        modules.append(tlog)
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    for module in modules:
        getattr(module, f"set_verbosity_{level}")()
        (module.enable_progress_bar if show else module.disable_progress_bar)()
    try:
        import huggingface_hub.utils as hub

        (hub.enable_progress_bars if show else hub.disable_progress_bars)()
    except ImportError:  # pragma: no cover
        pass


def configure_pipeline_progress(pipe, mode: str, verbose: bool = False) -> None:
    """diffusers' own per-call progress bar: shown only on a terminal with ``verbose`` (a command's :class:`Progress`
    reports the whole job otherwise).

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("wan")
        >>> configure_pipeline_progress(pipe, "log")
        >>> pipe._progress_bar_config["disable"]
        True
    """
    pipe.set_progress_bar_config(disable=not (mode == "bar" and verbose), leave=False)


class count_transformer_calls:
    """Context manager: ``progress.update()`` after every forward of the pipeline's transformer(s) (public forward
    hooks, removed on exit).

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline, tiny_pipeline_inputs
        >>> pipe = tiny_pipeline("wan")
        >>> with Progress(4, "calls", mode="off") as bar, count_transformer_calls(pipe, bar):
        ...     _ = pipe(**{**tiny_pipeline_inputs(pipe), "num_inference_steps": 2, "guidance_scale": 5.0})
        >>> bar.n
        4
    """

    def __init__(self, pipe, progress: Progress):
        self.modules = []
        for slot in ("transformer", "transformer_2"):
            module = getattr(pipe, slot, None)
            if module is not None:
                self.modules.append(getattr(module, "_orig_mod", module))
        self.progress = progress
        self.handles = []

    def __enter__(self) -> "count_transformer_calls":
        self.handles = [m.register_forward_hook(lambda *a: self.progress.update()) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
