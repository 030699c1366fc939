import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Tiny models on a loaded 2-core CI machine run far faster single-threaded.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests without CUDA, and ``needs_fa4`` tests where FlashAttention-4 does not run."""
    if not torch.cuda.is_available():
        marker, reason = "gpu", "needs a CUDA device"
    else:
        from diffusers_evdit.kernels.fa4 import fa4_available

        if fa4_available():
            return
        marker, reason = "needs_fa4", "FlashAttention-4 is not installed or this GPU is not Hopper/Blackwell"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)
