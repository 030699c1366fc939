"""Frechet distance between sets of videos on weight-free analytic features (a stand-in for FVD)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .config import MetricConfig
from .segmentation import as_frames, estimate_background, foreground_mask
from .tracking import fill_missing

# ---------------------------------------------------------------------------
# Frechet distance on weight-free features
# ---------------------------------------------------------------------------


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein squared) distance between two Gaussians.

    ``d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})``.
    ``tr (S1^{1/2} S2 S1^{1/2})^{1/2}`` equals ``tr (S1 S2)^{1/2}`` of the usual
    FID formula but only needs symmetric eigendecompositions (numpy only).

    Example::

        >>> frechet_distance_gaussians(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))
        4.0
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError("incompatible mean / covariance shapes")
    r1 = _sqrtm_psd(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(d, 0.0)


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Fréchet distance between Gaussians fit to two feature sets ``(N, D)`` and ``(M, D)``.

    Means and (unbiased) covariances are estimated from the rows; see
    :func:`frechet_distance_gaussians`. Symmetric and 0 for identical sets.

    Example::

        >>> x = np.random.default_rng(0).normal(size=(100, 3))
        >>> round(frechet_distance(x, x), 8)
        0.0
    """
    a = np.asarray(feats_a, np.float64)
    b = np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) feature arrays, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two samples per set")
    return frechet_distance_gaussians(
        a.mean(0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1]),
        b.mean(0), np.cov(b, rowvar=False).reshape(b.shape[1], b.shape[1]),
    )


#: Length of :func:`video_features` vectors.
VIDEO_FEATURE_DIM = 92


def video_features(video: Any, config: MetricConfig = MetricConfig()) -> np.ndarray:
    """Fixed, weight-free descriptor (length :data:`VIDEO_FEATURE_DIM`) of a video.

    Resolution- and length-independent; needs no prompt. Concatenates:

    * background colour, mean over frames (3)
    * foreground fraction of the frame, mean over frames (1)
    * foreground colour histogram, 3 bins per channel, normalised (27)
    * foreground centroid trajectory (normalised): mean (2), std (2), net
      displacement (2), mean step length (1), range (2)
    * foreground bounding-box fill ratio: mean (1) and std (1) over frames
    * absolute frame difference: mean (1) and std over frame pairs (1)
    * temporal mean frame block-averaged to 4 x 4 RGB (48)

    Example::

        >>> from diffusers_evdit.data import sample_scene, render
        >>> video_features(render(sample_scene(0))).shape
        (92,)
    """
    frames = as_frames(video)
    t, h, w, _ = frames.shape
    bg = estimate_background(frames, config.border)
    fg = foreground_mask(frames, bg, config.fg_threshold)
    feats: list[np.ndarray] = [bg.mean(0), np.array([fg.mean()])]
    pix = frames[fg]
    if len(pix):
        bins = np.minimum((pix * 3).astype(np.int64), 2)
        hist = np.bincount(bins[:, 0] * 9 + bins[:, 1] * 3 + bins[:, 2], minlength=27).astype(np.float64)
        feats.append(hist / hist.sum())
    else:
        feats.append(np.zeros(27))
    cents = np.full((t, 2), np.nan)
    fills = np.full(t, np.nan)
    for i in range(t):
        ys, xs = np.nonzero(fg[i])
        if len(xs):
            cents[i] = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
            fills[i] = len(xs) / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    if np.isnan(cents[:, 0]).all():
        feats.append(np.zeros(9))
        feats.append(np.zeros(2))
    else:
        c = fill_missing(cents)
        step = np.linalg.norm(np.diff(c, axis=0), axis=1).mean() if t > 1 else 0.0
        feats += [c.mean(0), c.std(0), c[-1] - c[0], np.array([step]), c.max(0) - c.min(0)]
        feats.append(np.array([np.nanmean(fills), np.nanstd(fills)]))
    if t > 1:
        fd = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
        feats.append(np.array([fd.mean(), fd.std()]))
    else:
        feats.append(np.zeros(2))
    mean_frame = torch.from_numpy(frames.mean(0)).permute(2, 0, 1)[None]
    pooled = torch.nn.functional.adaptive_avg_pool2d(mean_frame, 4)[0].permute(1, 2, 0).numpy()
    feats.append(pooled.reshape(-1))
    out = np.concatenate([np.asarray(f, np.float64).reshape(-1) for f in feats])
    assert out.shape == (VIDEO_FEATURE_DIM,), out.shape
    return out


def frechet_video_feature_distance(
    videos_a: Sequence[Any], videos_b: Sequence[Any], config: MetricConfig = MetricConfig()
) -> float:
    """:func:`frechet_distance` between :func:`video_features` of two video sets.

    A weight-free stand-in for FVD: compare generated clips with real
    synthetic clips rendered from the same prompts.

    Example::

        >>> from diffusers_evdit.data import sample_scene, render
        >>> real = [render(sample_scene(i), 9, 32, 32) for i in range(8)]
        >>> frechet_video_feature_distance(real, real) < 1e-6
        True
    """
    fa = np.stack([video_features(v, config) for v in videos_a])
    fb = np.stack([video_features(v, config) for v in videos_b])
    return frechet_distance(fa, fb)

