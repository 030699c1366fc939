"""Running the example training scripts and the experiment runners inside the test process (a helper for the
distillation tests)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BENCHMARKS = EXAMPLES.parent / "benchmarks"  # experiment runners (reproduce_tables and its modules)


def import_script(name: str):
    """The module of benchmarks/<name>.py if there is one, else of examples/<name>.py."""
    folder = str(BENCHMARKS if (BENCHMARKS / f"{name}.py").is_file() else EXAMPLES)
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)


def run_example(name: str, args: list) -> dict:
    """examples/<name>.py main() in this process (accelerate's singleton state reset between runs); the arguments are
    turned into strings."""
    from accelerate.state import AcceleratorState, GradientState

    script = import_script(name)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return script.main([str(a) for a in args])
