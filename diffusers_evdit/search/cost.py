"""Search cost: the worst-case number of layer forwards of a greedy sweep, and a timed projection of it."""

from __future__ import annotations

import torch
from torch import nn

from ..analysis.capture import check_layers, instrument
from ..processors import family_for
from .engine import BlockRunner
from .options import LOSSES, check_choice, check_inputs, check_masks, input_frames
from .runtimes import time_call


def greedy_cost_units(num_layers: int, num_masks: int, num_timesteps: int, loss: str = "output",
                      prefix_cache: bool = True) -> int:
    """Worst-case layer forwards of a full greedy sweep (every mask tried on every layer at every timestep).

    With the prefix cache and output loss: ``m * (L + (L - 1) + M * L (L + 1) / 2)`` (dense references, advancing
    the cache one block per layer, trials on blocks ``l..L-1``); naive: ``m * L * (1 + M * L)``. With layer loss:
    ``m * L * (1 + M)`` cached, ``m * L * L * (1 + M)`` naive.

    Example:
        >>> greedy_cost_units(42, 11, 4)     # CogVideoX-5B: 42 layers, 13 latent frames (k = 11..1), m = 4
        40064
        >>> greedy_cost_units(42, 11, 4, prefix_cache=False)
        77784
    """
    L, M, m = num_layers, num_masks, num_timesteps
    if loss == "output":
        return m * (L + (L - 1) + M * L * (L + 1) // 2) if prefix_cache else m * L * (1 + M * L)
    check_choice(loss, LOSSES, "loss")
    return m * L * (1 + M) if prefix_cache else m * L * L * (1 + M)


def estimate_search_cost(
    transformer: nn.Module,
    inputs: list[dict],
    masks: list[int] | None = None,
    loss: str = "output",
    layer: int = 0,
    k: int = 1,
    repeats: int = 2,
    kernel: str = "auto",
) -> dict:
    """Time one greedy trial and project the cost of a full sweep (worst case: every mask on every layer).

    Measures, on the first input, a dense full forward and one trial of mask ``k`` on ``layer`` run from the cached
    dense prefix (blocks ``layer .. L-1``); the median of ``repeats`` after one warm-up. The seconds per layer forward
    (dense forward / L) times :func:`greedy_cost_units` gives the projected worst-case sweep time for ``len(inputs)``
    timesteps, with and without the prefix cache.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan", num_layers=2)
        >>> cost = estimate_search_cost(t, [tiny_inputs(t)] * 4, repeats=1)
        >>> cost["worst_case_layer_forwards"], cost["naive_layer_forwards"]
        (60, 72)
    """
    inputs = check_inputs(inputs)
    num_frames = input_frames(transformer, inputs)
    masks = check_masks(masks, num_frames)
    check_choice(loss, LOSSES, "loss")
    num_layers = len(family_for(transformer).attention_modules(transformer))
    check_layers([layer], num_layers)
    check_masks([k], num_frames)
    x = inputs[0]
    device = next(transformer.parameters()).device
    with torch.no_grad(), instrument(transformer, None, kernel) as processors:
        runner = BlockRunner(transformer)
        cached = runner.run(x, stop_after=layer - 1) if layer > 0 else None
        dense_s = time_call(lambda: runner.run(x), device, repeats, 1)

        def trial():
            processors[layer].k = k
            try:
                return runner.run(x, layer, cached, stop_after=layer if loss == "layer" else None)
            finally:
                processors[layer].k = None

        trial_s = time_call(trial, device, repeats, 1)
    m = len(inputs)
    per_unit = dense_s / num_layers
    units = greedy_cost_units(num_layers, len(masks), m, loss, True)
    naive = greedy_cost_units(num_layers, len(masks), m, loss, False)
    return {
        "num_layers": num_layers,
        "num_masks": len(masks),
        "num_timesteps": m,
        "loss": loss,
        "dense_forward_s": dense_s,
        "layer_forward_s": per_unit,
        "trial_layer": layer,
        "trial_k": k,
        "trial_s": trial_s,
        "trial_layer_forwards": 1 if loss == "layer" else num_layers - layer,
        "worst_case_layer_forwards": units,
        "naive_layer_forwards": naive,
        "projected_worst_case_s": units * per_unit,
        "projected_naive_s": naive * per_unit,
    }
