"""The paper's greedy threshold search (Algorithm 1): per layer, the sparsest mask whose loss stays below r."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from ..analysis.capture import check_layers, instrument
from ..analysis.inputs import input_timestep
from ..plan import MaskPlan
from ..processors import family_for
from .engine import TrialEngine
from .options import LOSSES, check_choice, check_inputs, check_masks, input_frames
from .runtimes import per_layer_runtimes, runtimes_metadata


def greedy_search(
    transformer: nn.Module,
    inputs: list[dict],
    threshold: float,
    masks: list[int] | None = None,
    loss: str = "output",
    layers: list[int] | None = None,
    kernel: str = "auto",
    prefix_cache: bool = True,
    progress: bool | str = True,
    on_trial: Callable[[int, int, float], None] | None = None,
    runtimes: list[dict] | dict | None = None,
) -> MaskPlan:
    """The paper's Algorithm 1: per layer, the sparsest mask (tried dense to sparse) whose max loss stays below r.

    Args:
        transformer: a supported diffusers video transformer (its installed plan, if any, is restored afterwards).
        inputs: forward-keyword dicts, one per timestep (``m`` timesteps drawn uniformly: :func:`sample_timesteps`).
        threshold: ``r > 0``: a mask is kept while its maximum loss over the inputs is ``< r``.
        masks: ``k`` values to try (default ``F-2 .. 1``, :func:`default_masks`), tried in descending order.
        loss: ``"output"`` (MSE of the final output vs the dense model) or ``"layer"`` (MSE of the block's output).
        layers: layers to search (default all); the others stay dense.
        kernel: tile kernel for the sparse trials (all kernels are exact; this only changes speed).
        prefix_cache: run only blocks ``l..L-1`` per trial on cached dense inputs (``False``: full forwards).
        progress: a progress bar over trials (``True``), nothing (``False``), or a mode of
            :func:`~diffusers_evdit.progress.as_mode` (``"log"``: a line every few seconds, for log files).
        on_trial: called as ``on_trial(layer, k, max_loss)`` after every trial.
        runtimes: optional per-mask runtimes (as from :func:`measure_mask_runtimes`) recorded in the metadata.

    Returns:
        a :class:`MaskPlan` (``None`` = dense) with ``metadata``: method, threshold, loss, timesteps, masks,
        ``trial_losses`` (per layer: ``{k: max loss}`` of every mask tried; the failing one may be a lower bound, as
        its remaining inputs are skipped once one exceeds ``r``), ``layer_losses`` (the chosen mask's loss),
        ``layer_forwards``, ``naive_layer_forwards``, ``wall_time_s``, ``complete``.

    A ``KeyboardInterrupt`` ends the search early and returns the plan so far: searched layers keep their choice,
    the others are dense, ``metadata["complete"]`` is ``False``.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan", num_layers=2)
        >>> plan = greedy_search(t, [tiny_inputs(t)], threshold=1e-30, progress=False)
        >>> plan.layers       # nothing is below a near-zero threshold
        [None, None]
    """
    from ..progress import Progress, as_mode

    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"The loss threshold r must be a number > 0, got {threshold!r}.")
    check_choice(loss, LOSSES, "loss")
    inputs = check_inputs(inputs)
    num_frames = input_frames(transformer, inputs)
    masks = check_masks(masks, num_frames)
    num_layers = len(family_for(transformer).attention_modules(transformer))
    layers = check_layers(layers, num_layers)
    runtimes = None if runtimes is None else per_layer_runtimes(runtimes, num_layers, masks)

    began = time.perf_counter()
    chosen: list = [None] * num_layers
    trial_losses: dict[str, dict[str, float]] = {}
    done: list[int] = []
    complete = True
    runs = 0
    bar = Progress(len(layers) * len(masks), "greedy mask search", unit="trial", mode=as_mode(progress))
    with torch.no_grad(), instrument(transformer, None, kernel) as processors:
        engine = TrialEngine(transformer, inputs, processors, loss, prefix_cache)
        try:
            engine.start()
            runs += len(inputs) if loss == "output" else 0
            for layer in layers:
                engine.enter_layer(layer)
                runs += len(inputs) if loss == "layer" else 0
                tried = trial_losses.setdefault(str(layer), {})
                for i, k in enumerate(masks):
                    losses = engine.trial(layer, k, stop_at=threshold)
                    runs += len(losses)
                    worst = max(losses)
                    tried[str(k)] = worst
                    bar.update(1)
                    if on_trial is not None:
                        on_trial(layer, k, worst)
                    if worst >= threshold:
                        bar.update(len(masks) - i - 1)
                        break
                    chosen[layer] = k
                done.append(layer)
        except KeyboardInterrupt:
            complete = False
            for layer in layers:
                if layer not in done:
                    chosen[layer] = None
        finally:
            bar.close()
    wall = time.perf_counter() - began
    layer_losses = [trial_losses.get(str(i), {}).get(str(k), 0.0) if k is not None else 0.0
                    for i, k in enumerate(chosen)]
    metadata = {
        "method": "greedy-threshold",
        "threshold": float(threshold),
        "loss": loss,
        "timesteps": [input_timestep(x) for x in inputs],
        "num_frames": num_frames,
        "masks": masks,
        "layers_searched": done,
        "trial_losses": trial_losses,
        "layer_losses": layer_losses,
        "layer_forwards": engine.layer_forwards,
        "naive_layer_forwards": runs * num_layers,  # every reference and trial as a full forward
        "prefix_cache": prefix_cache,
        "wall_time_s": wall,
        "kernel": kernel,
        "complete": complete,
    }
    if runtimes is not None:
        metadata["mask_runtimes_s"] = runtimes_metadata(runtimes)
    return MaskPlan(chosen, type(transformer).__name__, metadata)
