"""Charts of attention profiles (tile heatmaps, per-layer curves) and the one place matplotlib is imported."""

from __future__ import annotations

import os

import torch

from .statistics import DEFAULT_LEVELS


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend; ``ImportError`` naming the fix without matplotlib.

    Example:
        >>> pyplot().__name__
        'matplotlib.pyplot'
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "Plots need matplotlib: pip install matplotlib (or pass plots=False / --no-plots for the JSON only)."
        ) from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_tile_heatmap(stats: dict, path: str | os.PathLike, layer: int | None = None) -> str:
    """Save the tile-averaged ``F x F`` attention map of one layer's statistics as a PNG; return ``path``.

    Example:
        >>> plot_tile_heatmap({"tile_map": [[0.2, 0.1], [0.1, 0.2]], "diag_offdiag_ratio": 2.0}, "/tmp/h.png", 0)
        '/tmp/h.png'
    """
    plt = pyplot()
    tile_map = torch.tensor(stats["tile_map"])
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    im = ax.imshow(tile_map.numpy(), cmap="viridis")
    fig.colorbar(im, ax=ax, label="mean attention probability")
    ratio = stats.get("diag_offdiag_ratio")
    title = f"layer {layer}" if layer is not None else "attention tiles"
    if ratio is not None:
        title += f": diag/off-diag {ratio:.2f}x"
    ax.set_title(title)
    ax.set_xlabel("key frame")
    ax.set_ylabel("query frame")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_profile_curves(profile, path: str | os.PathLike) -> str:
    """Save the per-layer curves of an :class:`~diffusers_evdit.analysis.AttentionProfile` (locality curve, attention by
    frame distance, diag/off-diag ratio, mass overlap between inputs) as one PNG; return ``path``.

    Example:
        >>> from diffusers_evdit.analysis import profile_attention
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> plot_profile_curves(profile_attention(t, [tiny_inputs(t)]), "/tmp/c.png")
        '/tmp/c.png'
    """
    plt = pyplot()
    layers = sorted(profile.layers)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    ax = axes[0, 0]
    for layer in layers:
        curve = profile.layers[layer]["locality_curve"]
        xs = [d for d, c in enumerate(curve, start=1) if c is not None]
        ax.plot(xs, [c for c in curve if c is not None], marker="o", label=f"layer {layer}")
    ax.set_title("locality: ||B[i,d] - B[i,0]|| / ||B[i,0]||")
    ax.set_xlabel("key-frame distance d from frame 0")
    ax = axes[0, 1]
    for layer in layers:
        curve = profile.layers[layer]["mass_by_distance"]
        ax.plot(range(len(curve)), curve, marker="o", label=f"layer {layer}")
    ax.set_title("attention by frame distance (diagonal = 1)")
    ax.set_xlabel("|query frame - key frame|")
    ax = axes[1, 0]
    ratios = [profile.layers[layer]["diag_offdiag_ratio"] or float("nan") for layer in layers]
    ax.bar([str(layer) for layer in layers], ratios, color="tab:blue")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_title("diagonal / off-diagonal tile ratio")
    ax.set_xlabel("layer")
    ax = axes[1, 1]
    levels = [f"{x:g}" for x in profile.meta.get("levels", DEFAULT_LEVELS)]
    has_overlap = any("overlap" in profile.layers[layer] for layer in layers)
    for level in levels if has_overlap else []:
        ax.plot([str(layer) for layer in layers],
                [profile.layers[layer].get("overlap", {}).get(level, float("nan")) for layer in layers],
                marker="o", label=f"{float(level):.0%} mass")
    ax.set_ylim(0, 1.05)
    ax.set_title("data independence: overlap of top-mass keys" + ("" if has_overlap else " (no input pair)"))
    ax.set_xlabel("layer")
    for a in (axes[0, 0], axes[0, 1]):
        if len(layers) <= 12:
            a.legend(fontsize=7)
    if has_overlap:
        axes[1, 1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
