"""Triton, where it is installed, and whether its kernels can run for a device."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without Triton
    triton = None
    tl = None


def triton_runs(device: torch.device | str) -> bool:
    """Whether Triton kernels run for tensors on ``device``: CUDA with Triton installed, or the CPU under Triton's
    interpreter (``TRITON_INTERPRET=1``, how the tests check the kernels without a GPU)."""
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
