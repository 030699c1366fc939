"""Profiling a model's attention: capture chosen layers on every input and reduce them to tile statistics."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..processors import family_for
from .capture import StopForward, check_layers, instrument, run_until_stopped
from .inputs import input_timestep
from .plots import plot_profile_curves, plot_tile_heatmap
from .statistics import DEFAULT_LEVELS, TileAccumulator, attention_probabilities, check_levels, query_rows


@dataclass
class AttentionProfile:
    """Result of :func:`profile_attention`: per-layer statistics and provenance; :meth:`save` writes JSON + PNGs.

    Attributes:
        layers: ``{layer index: statistics dict}`` (see :meth:`TileAccumulator.summary`).
        meta: model class, layout, inputs (timesteps), pairs compared, query sampling, levels.

    Example:
        >>> AttentionProfile(layers={}, meta={"model_class": "X"}).to_dict()["meta"]["model_class"]
        'X'
    """

    layers: dict
    meta: dict

    def to_dict(self) -> dict:
        return {"format": "diffusers-evdit/attention-profile", "meta": self.meta,
                "layers": {str(k): v for k, v in sorted(self.layers.items())}}

    def save(self, out_dir: str | os.PathLike, plots: bool = True) -> list[str]:
        """Write ``summary.json`` and (with ``plots``) ``heatmap_layer{l}.png`` per layer and ``curves.png`` to
        ``out_dir``; return the written paths. Plots need matplotlib."""
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "summary.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
        paths = [path]
        if plots:
            for layer, stats in sorted(self.layers.items()):
                paths.append(plot_tile_heatmap(stats, os.path.join(out_dir, f"heatmap_layer{layer}.png"), layer))
            paths.append(plot_profile_curves(self, os.path.join(out_dir, "curves.png")))
        return paths


def profile_attention(
    transformer: nn.Module,
    inputs: list[dict],
    layers: list[int] | None = None,
    pairs: list[tuple[int, int]] | None = None,
    levels=DEFAULT_LEVELS,
    max_queries: int | None = None,
    query_chunk: int = 1024,
    kernel: str = "auto",
    progress: bool = False,
) -> AttentionProfile:
    """Capture the self-attention of ``layers`` on every input and measure its Attention Tile structure.

    Args:
        transformer: a supported diffusers video transformer (any installed plan is restored afterwards).
        inputs: forward-keyword dicts, one per (prompt, timestep); all with the same latent shape.
        layers: plan-layer indices (``None``: all).
        pairs: input index pairs compared for data independence; default ``(0, 1), (2, 3), ...`` (so order inputs
            as prompt A, prompt B at each timestep). An input may be in at most one pair; ``[]`` skips the overlap.
        levels: attention-mass levels of the overlap.
        max_queries: evaluate this many evenly spaced video queries per layer (``None``: all).
        query_chunk: queries per probability block (memory ``batch x query_chunk x N`` floats).
        kernel: tile kernel of the (dense) plan installed while profiling.
        progress: show a progress bar over inputs.

    The forward stops right after the last requested layer's attention inputs are seen. For each pair the first
    input's q (sampled rows) and k of the requested layers stay in memory until the second input has run.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> prof = profile_attention(t, [tiny_inputs(t, seed=0), tiny_inputs(t, seed=1)])
        >>> sorted(prof.layers), sorted(prof.layers[1]["overlap"])
        ([0, 1], ['0.9', '0.95', '0.99'])
    """
    from tqdm.auto import tqdm

    if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(x, dict) for x in inputs):
        raise ValueError("inputs must be a non-empty list of forward-keyword dicts (one per prompt and timestep).")
    levels = check_levels(levels)
    num_layers = len(family_for(transformer).attention_modules(transformer))
    layers = check_layers(layers, num_layers)
    last = max(layers)
    if pairs is None:
        pairs = [(i, i + 1) for i in range(0, len(inputs) - 1, 2)]
    partner: dict[int, int] = {}
    for pair in pairs:
        a, b = sorted(pair)
        if a == b or not (0 <= a < len(inputs) and 0 <= b < len(inputs)):
            raise ValueError(f"Bad input pair {pair}: need two different indices below {len(inputs)}.")
        if a in partner or b in partner:
            raise ValueError(f"Input pairs must be disjoint; {pair} reuses an input.")
        partner[a], partner[b] = b, a

    accs: dict[int, TileAccumulator] = {}
    stored: dict[int, tuple] = {}  # layer -> (rows, q rows, k, key_padding_mask) of the pending first input
    current = {"index": 0}

    def observer(proc, q, k, v, layout, key_padding_mask):
        layer = proc.layer_index
        if layer in layers:
            acc = accs.setdefault(layer, TileAccumulator(layout))
            if acc.layout != layout:
                raise ValueError(f"Layer {layer}: inputs have different layouts ({acc.layout} vs {layout}).")
            rows = query_rows(layout, max_queries, q.device)
            probs = attention_probabilities(q, k, layout, rows, key_padding_mask, None, query_chunk)
            i = current["index"]
            if i in partner and partner[i] < i:  # second input of a pair: tile statistics and overlap in one pass
                q_a, k_a, kpm_a = stored.pop(layer)
                probs_a = attention_probabilities(q_a, k_a, layout, rows, kpm_a, None, query_chunk, gathered=True)
                for (r, p), (_, p_a) in zip(probs, probs_a):
                    acc.add(r, p)
                    acc.add_overlap(p_a, p, levels)
            else:
                for r, p in probs:
                    acc.add(r, p)
                if i in partner:
                    stored[layer] = (q[:, :, rows], k, key_padding_mask)
        if layer == last:
            raise StopForward()

    with torch.no_grad(), instrument(transformer, observer, kernel):
        for i in tqdm(range(len(inputs)), desc="profile", disable=not progress):
            current["index"] = i
            run_until_stopped(transformer, inputs[i])

    first = accs[layers[0]].layout
    meta = {
        "model_class": type(transformer).__name__,
        "layout": {"num_frames": first.num_frames, "tokens_per_frame": first.tokens_per_frame,
                   "num_text_tokens": first.num_text_tokens, "text_position": first.text_position},
        "num_inputs": len(inputs),
        "timesteps": [input_timestep(x) for x in inputs],
        "pairs": [list(sorted(p)) for p in pairs],
        "levels": list(levels),
        "max_queries": max_queries,
        "layers": layers,
    }
    return AttentionProfile({layer: accs[layer].summary() for layer in layers}, meta)
