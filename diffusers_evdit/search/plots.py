"""The chart of a mask plan: reference frames per layer (the paper's Figure 4)."""

from __future__ import annotations

from ..analysis.plots import pyplot
from ..plan import MaskPlan


def plot_plan(plan: MaskPlan, path: str, num_frames: int | None = None, title: str | None = None) -> str:
    """Bar chart of the chosen ``k`` per layer (the paper's Figure 4); dense layers drawn at ``F`` in gray.

    ``num_frames`` defaults to ``plan.metadata["num_frames"]``. Needs matplotlib. Returns ``path``.

    Example:
        >>> plot_plan(MaskPlan([1, None, 3]), "/tmp/plan.png", num_frames=4)
        '/tmp/plan.png'
    """
    plt = pyplot()
    num_frames = num_frames or plan.metadata.get("num_frames")
    if num_frames is None:
        raise ValueError("plot_plan needs num_frames (not in the plan's metadata).")
    heights = [num_frames if (k is None or k >= num_frames) else k for k in plan.layers]
    colors = ["lightgray" if (k is None or k >= num_frames) else "tab:blue" for k in plan.layers]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * plan.num_layers + 2), 3.2))
    ax.bar(range(plan.num_layers), heights, color=colors)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"reference frames k (dense = {num_frames})")
    ax.set_ylim(0, num_frames + 0.5)
    method = plan.metadata.get("method", "")
    ax.set_title(title or f"chosen k:F-k per layer {('(' + method + ')') if method else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
