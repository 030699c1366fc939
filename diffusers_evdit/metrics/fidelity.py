"""Fidelity of a video to a reference video of the same seed: PSNR and SSIM."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .segmentation import as_frames

# ---------------------------------------------------------------------------
# Fidelity to a reference video (sparse vs dense on the same seed)
# ---------------------------------------------------------------------------


def psnr(video: Any, reference: Any, max_db: float = 100.0) -> float:
    """Peak signal-to-noise ratio (dB) of ``video`` against ``reference`` (same shape ``(T, H, W, 3)``).

    Pixels are taken in [0, 1] (:func:`as_frames`), so the peak is 1; the mean squared error is over all frames,
    pixels and channels. Identical videos give ``max_db``.

    Example::

        >>> a = np.zeros((2, 4, 4, 3), np.float32); b = a + 0.1
        >>> round(psnr(a, b), 2)
        20.0
    """
    a, b = as_frames(video), as_frames(reference)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse <= 10.0 ** (-max_db / 10.0):
        return float(max_db)
    return float(-10.0 * math.log10(mse))


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(video: Any, reference: Any, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) of ``video`` against ``reference`` ``(T, H, W, 3)``.

    Gaussian window ``window`` x ``window`` (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, data range 1, computed per
    frame and channel on the valid region (no padding) and averaged. The window shrinks for frames smaller than
    it. 1 for identical videos.

    Example::

        >>> from diffusers_evdit.data import sample_scene, render
        >>> v = render(sample_scene(0), 5, 32, 32)
        >>> ssim(v, v)
        1.0
    """
    a, b = as_frames(video), as_frames(reference)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    size = int(min(window, a.shape[1], a.shape[2]))
    w = _gaussian_window(size, sigma).to(torch.float64)[None, None].repeat(3, 1, 1, 1)
    x = torch.from_numpy(a.astype(np.float64)).permute(0, 3, 1, 2)
    y = torch.from_numpy(b.astype(np.float64)).permute(0, 3, 1, 2)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(z, w, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(min(1.0, s.mean().item()))
