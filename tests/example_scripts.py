"""Running the example training scripts inside the test process (a helper for the distillation tests)."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, args: list) -> dict:
    """examples/<name>.py main() in this process (accelerate's singleton state reset between runs); the arguments are
    turned into strings."""
    from accelerate.state import AcceleratorState, GradientState

    sys.path.insert(0, str(EXAMPLES))
    try:
        script = __import__(name)
    finally:
        sys.path.remove(str(EXAMPLES))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return script.main([str(a) for a in args])
