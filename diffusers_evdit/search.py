"""Layer-wise mask search: the paper's greedy threshold search (Algorithm 1) and latency-budget search (Appendix A).

Both work on a transformer and a list of *inputs*, forward-keyword dicts, one per timestep (from
:func:`diffusers_evdit.analysis.random_inputs` at timesteps from :func:`sample_timesteps`, or recorded from a real
pipeline run with :func:`diffusers_evdit.analysis.record_transformer_inputs`), and return a
:class:`~diffusers_evdit.MaskPlan` whose ``metadata`` records how it was found.

**Greedy threshold search** (:func:`greedy_search`). For each layer, masks are tried from dense to sparse
(``k = F-2 .. 1``, see :func:`default_masks`, or a given list) on that layer only, all other layers dense, at every input; the sparsest mask whose
maximum loss over the inputs stays below ``r`` is kept, and the layer's search stops at the first mask that exceeds
it. The loss is the MSE of the final transformer output against the dense model (``loss="output"``, the default) or
of the layer's block output (``loss="layer"``).

**Dense prefix once per timestep.** A mask on layer ``l`` changes nothing before block ``l``, so the dense hidden
states entering block ``l`` are computed once per input and every trial runs only blocks ``l .. L-1``. This is done
for every family the same way, without re-implementing any model forward: the blocks ``0 .. l-1`` are temporarily
replaced in their ``nn.ModuleList`` by a stub that returns the cached output of block ``l-1`` (the model's own forward
still runs its cheap embeddings and head), and a forward hook that raises :class:`~diffusers_evdit.analysis.
StopForward` ends a forward right after a given block (used to advance the cache by one block and for layer-output
losses). A model's plan layer ``i`` must be the self-attention of the ``i``-th block of the blocks lists, which holds
for CogVideoX, Wan and HunyuanVideo (double-stream, then single-stream blocks). The cost is counted in *layer
forwards* (one block on one input); the metadata carries the count, the naive count (full forwards for every trial)
and the wall time. :func:`greedy_cost_units` gives the worst-case counts in closed form.

**Latency-budget search** (:func:`budget_search`). Every (layer, mask) loss is measured (:func:`mask_loss_table`),
per-mask attention runtimes are measured on the current device (:func:`measure_mask_runtimes`) or supplied, and one
mask per layer is chosen to minimise the summed loss subject to the summed runtime ``<= budget``, by Lagrangian
relaxation with subgradient updates of the multiplier (:func:`solve_budget_lagrangian`: reports the achieved
runtime, the loss and the gap to the best dual bound) or exactly by dynamic programming over the (runtime, loss) Pareto frontier or a discretised budget
(:func:`solve_budget_exact`).

Example:
    >>> from diffusers_evdit.tiny import tiny_transformer, TinyVideo
    >>> from diffusers_evdit.analysis import random_inputs
    >>> from diffusers_evdit.search import greedy_search, sample_timesteps
    >>> t = tiny_transformer("cogvideox")
    >>> inputs = [random_inputs(t, 6, 8, 8, timestep=s, seed=0) for s in sample_timesteps(2, seed=0)]
    >>> plan = greedy_search(t, inputs, threshold=1e9, progress=False)
    >>> plan.layers, plan.metadata["method"]
    ([1, 1], 'greedy-threshold')
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .analysis import (
    StopForward,
    attention_shapes,
    check_layers,
    input_timestep,
    instrument,
    run_until_stopped,
)
from .kernels import TileAttention
from .masks import check_k
from .plan import MaskPlan
from .processors import family_for

LOSSES = ("output", "layer")
REDUCTIONS = ("max", "mean")
SOLVERS = ("lagrangian", "exact")


# ----------------------------------------------------------------------------------------------------------------------
# Inputs, masks and checks
# ----------------------------------------------------------------------------------------------------------------------


def sample_timesteps(m: int, seed: int = 0, num_train_timesteps: int = 1000) -> list[int]:
    """``m`` distinct timesteps drawn uniformly from ``0 .. num_train_timesteps-1`` (sorted, deterministic by seed).

    Example:
        >>> sample_timesteps(4, seed=0) == sample_timesteps(4, seed=0)
        True
        >>> len(set(sample_timesteps(4, seed=0)))
        4
    """
    if not 1 <= m <= num_train_timesteps:
        raise ValueError(f"Need 1 <= m <= {num_train_timesteps} timesteps, got m={m}.")
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(num_train_timesteps, generator=g)[:m].tolist())


def default_masks(num_frames: int) -> list[int]:
    """The masks of the search, dense to sparse: ``k = F-2, ..., 1``.

    ``k = F-1`` is left out: its only non-reference frame still sees every other frame (they are all reference
    frames), so it keeps every (query, key) pair, computes exactly the dense attention and only adds kernel overhead.
    Pass it in ``masks`` explicitly to try it anyway.

    Example:
        >>> default_masks(5)
        [3, 2, 1]
        >>> default_masks(2)
        [1]
    """
    return list(range(max(num_frames - 2, 1), 0, -1)) if num_frames > 1 else []


def check_masks(masks, num_frames: int) -> list[int]:
    """Validate a mask list (ints ``1 <= k < F``) and order it dense to sparse (descending ``k``, no repeats).

    Example:
        >>> check_masks([1, 4, 2, 4], 13)
        [4, 2, 1]
    """
    if masks is None:
        masks = default_masks(num_frames)
    masks = list(masks)
    if not masks:
        raise ValueError(
            f"The mask list is empty; give at least one k in 1..{num_frames - 1} (or None for the default list)"
            + (" - a single latent frame has no sparse mask." if num_frames < 2 else ".")
        )
    for k in masks:
        check_k(k)
        if k is None or k >= num_frames:
            raise ValueError(
                f"Mask {k!r} is dense for {num_frames} latent frames; the search always has the dense option, list "
                f"sparse masks only (1..{num_frames - 1})."
            )
    return sorted(set(masks), reverse=True)


def _check_inputs(inputs) -> list[dict]:
    if isinstance(inputs, dict):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(x, dict) for x in inputs):
        raise ValueError("inputs must be a non-empty list of forward-keyword dicts, one per timestep.")
    return list(inputs)


def _check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(choices)}.")


def _num_frames(transformer, inputs: list[dict]) -> int:
    family = family_for(transformer)
    frames = {family.video_layout(transformer, (), x).num_frames for x in inputs}
    if len(frames) != 1:
        raise ValueError(f"All inputs must have the same number of latent frames, got {sorted(frames)}.")
    return frames.pop()


def _mse(a, b) -> float:
    """Mean squared error over all tensor elements of two outputs (a tensor or a tuple of tensors); ``inf`` when
    either output is not finite (so a NaN never passes a threshold)."""
    if isinstance(a, (tuple, list)):
        sq = sum(float(((x.float() - y.float()) ** 2).sum()) for x, y in zip(a, b))
        value = sq / sum(x.numel() for x in a)
    else:
        value = float(((a.float() - b.float()) ** 2).mean())
    return value if math.isfinite(value) else math.inf


# ----------------------------------------------------------------------------------------------------------------------
# Running the transformer from a block on cached hidden states
# ----------------------------------------------------------------------------------------------------------------------


class _Replay(nn.Module):
    """Stands in for a block: ignores its inputs and returns a cached block output."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, *args, **kwargs):
        return self.value


class BlockRunner:
    """Runs a supported transformer from plan layer ``start`` on cached block inputs, optionally stopping after a
    block, and counts the blocks it runs ("layer forwards").

    Every plan layer's self-attention lives in its own block of a ``nn.ModuleList`` of the transformer; blocks before
    ``start`` are replaced by a stub returning the cached output of block ``start-1`` for the duration of the call.

    Example:
        >>> import torch
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("cogvideox", num_layers=3)
        >>> x = tiny_inputs(t)
        >>> runner = BlockRunner(t)
        >>> with torch.no_grad():
        ...     full = runner.run(x)
        ...     after0 = runner.run(x, stop_after=0)            # output of block 0
        ...     rest = runner.run(x, start=1, cached=after0)    # blocks 1, 2 only
        >>> torch.allclose(full, rest), runner.layer_forwards
        (True, 6)
    """

    def __init__(self, transformer: nn.Module):
        self.transformer = transformer
        self.blocks: list[tuple[nn.ModuleList, int]] = []
        for name, _ in family_for(transformer).attention_modules(transformer):
            container_name, index = name.rsplit(".", 2)[:2]
            container = transformer.get_submodule(container_name)
            if not isinstance(container, nn.ModuleList) or not index.isdigit():
                raise TypeError(f"{name}: the attention is not inside a block of an nn.ModuleList.")
            self.blocks.append((container, int(index)))
        if len({(id(c), i) for c, i in self.blocks}) != len(self.blocks):
            raise TypeError("Two plan layers share a block; running from a block is not possible for this model.")
        self.layer_forwards = 0

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def block(self, layer: int) -> nn.Module:
        container, index = self.blocks[layer]
        return container[index]

    def run(self, inputs: dict, start: int = 0, cached=None, stop_after: int | None = None):
        """Run blocks ``start .. stop_after`` (default: to the end) on ``inputs``.

        ``cached`` is the output of block ``start-1`` (required when ``start > 0``). Returns the output of block
        ``stop_after``, or the model's output sample when running to the end.
        """
        end = self.num_layers - 1 if stop_after is None else stop_after
        if not 0 <= start <= end < self.num_layers:
            raise ValueError(f"Cannot run blocks {start}..{end} of {self.num_layers}.")
        if start > 0 and cached is None:
            raise ValueError(f"Running from block {start} needs the cached output of block {start - 1}.")
        replaced = []
        handle = None
        try:
            for layer in range(start):
                container, index = self.blocks[layer]
                replaced.append((container, index, container[index]))
                container[index] = _Replay(cached)
            if stop_after is not None:

                def stop(module, args, output):
                    raise StopForward(output)

                handle = self.block(stop_after).register_forward_hook(stop)
            out = run_until_stopped(self.transformer, inputs)
        finally:
            if handle is not None:
                handle.remove()
            for container, index, block in replaced:
                container[index] = block
        self.layer_forwards += end - start + 1
        return out


def _capture_block(transformer_call, block: nn.Module):
    """Run ``transformer_call()`` and return ``(model output, output of block)``."""
    captured = {}

    def hook(module, args, output):
        captured["out"] = output

    handle = block.register_forward_hook(hook)
    try:
        out = transformer_call()
    finally:
        handle.remove()
    return out, captured["out"]


class _TrialEngine:
    """Dense references and single-layer trials, with or without the dense-prefix cache."""

    def __init__(self, transformer, inputs, processors, loss: str, prefix_cache: bool):
        self.transformer = transformer
        self.inputs = inputs
        self.processors = processors
        self.loss = loss
        self.prefix_cache = prefix_cache
        self.runner = BlockRunner(transformer)
        self.num_layers = self.runner.num_layers
        self.dense_final: list | None = None
        self.cache_pos = 0  # self.cache[t] is the dense input of block cache_pos
        self.cache: list = [None] * len(inputs)
        self.dense_block: dict[int, list] = {}

    @property
    def layer_forwards(self) -> int:
        return self.runner.layer_forwards

    def _full(self, t):
        return self.runner.run(self.inputs[t])

    def _full_capture(self, t, layer):
        out, block_out = _capture_block(lambda: self.runner.run(self.inputs[t]), self.runner.block(layer))
        return out, block_out

    def start(self):
        if self.loss == "output":
            self.dense_final = [self._full(t) for t in range(len(self.inputs))]

    def enter_layer(self, layer: int):
        """Prepare dense references for trials on ``layer``."""
        n = len(self.inputs)
        if not self.prefix_cache:
            if self.loss == "layer":
                self.dense_block = {layer: [self._full_capture(t, layer)[1] for t in range(n)]}
            return
        prev = self.dense_block.get(layer - 1)
        if prev is not None and self.cache_pos < layer:
            self.cache, self.cache_pos = prev, layer
        if self.cache_pos < layer:
            self.cache = [
                self.runner.run(self.inputs[t], self.cache_pos, self.cache[t], stop_after=layer - 1) for t in range(n)
            ]
            self.cache_pos = layer
        self.dense_block = {}
        if self.loss == "layer":
            self.dense_block[layer] = [
                self.runner.run(self.inputs[t], layer, self.cache[t], stop_after=layer) for t in range(n)
            ]

    def trial(self, layer: int, k: int, stop_at: float | None = None) -> list[float]:
        """Per-input losses of mask ``k`` on ``layer`` (all other layers dense); stops once a loss is >= stop_at."""
        proc = self.processors[layer]
        proc.k = k
        losses = []
        try:
            for t in range(len(self.inputs)):
                if self.prefix_cache:
                    stop_after = layer if self.loss == "layer" else None
                    out = self.runner.run(self.inputs[t], layer, self.cache[t], stop_after=stop_after)
                elif self.loss == "layer":
                    out = self._full_capture(t, layer)[1]
                else:
                    out = self._full(t)
                ref = self.dense_final[t] if self.loss == "output" else self.dense_block[layer][t]
                losses.append(_mse(out, ref))
                if stop_at is not None and losses[-1] >= stop_at:
                    break
        finally:
            proc.k = None
        return losses


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
    _check_choice(loss, LOSSES, "loss")
    return m * L * (1 + M) if prefix_cache else m * L * L * (1 + M)


# ----------------------------------------------------------------------------------------------------------------------
# Greedy threshold search (Algorithm 1)
# ----------------------------------------------------------------------------------------------------------------------


def _runtimes_metadata(runtimes) -> list | None:
    if runtimes is None:
        return None
    return [{("dense" if k is None else str(k)): float(v) for k, v in layer.items()} for layer in runtimes]


def greedy_search(
    transformer: nn.Module,
    inputs: list[dict],
    threshold: float,
    masks: list[int] | None = None,
    loss: str = "output",
    layers: list[int] | None = None,
    kernel: str = "auto",
    prefix_cache: bool = True,
    progress: bool = True,
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
        progress: tqdm progress bar over trials.
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
    from tqdm.auto import tqdm

    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"The loss threshold r must be a number > 0, got {threshold!r}.")
    _check_choice(loss, LOSSES, "loss")
    inputs = _check_inputs(inputs)
    num_frames = _num_frames(transformer, inputs)
    masks = check_masks(masks, num_frames)
    num_layers = len(family_for(transformer).attention_modules(transformer))
    layers = check_layers(layers, num_layers)
    runtimes = None if runtimes is None else _per_layer_runtimes(runtimes, num_layers, masks)

    began = time.perf_counter()
    chosen: list = [None] * num_layers
    trial_losses: dict[str, dict[str, float]] = {}
    done: list[int] = []
    complete = True
    runs = 0
    bar = tqdm(total=len(layers) * len(masks), desc="greedy mask search", disable=not progress)
    with torch.no_grad(), instrument(transformer, None, kernel) as processors:
        engine = _TrialEngine(transformer, inputs, processors, loss, prefix_cache)
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
        metadata["mask_runtimes_s"] = _runtimes_metadata(runtimes)
    return MaskPlan(chosen, type(transformer).__name__, metadata)


# ----------------------------------------------------------------------------------------------------------------------
# Loss table, runtimes and the latency-budget search (Appendix A)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class LossTable:
    """Loss of every (layer, mask): ``losses[l][j]`` for ``masks[j]``, reduced over the inputs.

    Example:
        >>> LossTable(masks=[2, 1], losses=[[0.1, 0.3]], timesteps=[500.0], loss="output", reduce="max",
        ...           layer_forwards=3, complete=True).losses[0][1]
        0.3
    """

    masks: list[int]
    losses: list[list[float]]
    timesteps: list
    loss: str
    reduce: str
    layer_forwards: int
    complete: bool


def mask_loss_table(
    transformer: nn.Module,
    inputs: list[dict],
    masks: list[int] | None = None,
    loss: str = "output",
    reduce: str = "max",
    kernel: str = "auto",
    prefix_cache: bool = True,
    progress: bool = True,
) -> LossTable:
    """Measure the loss of every mask on every layer (one layer sparse at a time), reduced over the inputs by
    ``"max"`` (as Algorithm 1) or ``"mean"``. Interrupting raises ``KeyboardInterrupt`` (no partial table).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan", num_layers=2)
        >>> table = mask_loss_table(t, [tiny_inputs(t)], masks=[3, 1], progress=False)
        >>> len(table.losses), len(table.losses[0])
        (2, 2)
    """
    from tqdm.auto import tqdm

    _check_choice(loss, LOSSES, "loss")
    _check_choice(reduce, REDUCTIONS, "reduction")
    inputs = _check_inputs(inputs)
    masks = check_masks(masks, _num_frames(transformer, inputs))
    table = []
    with torch.no_grad(), instrument(transformer, None, kernel) as processors:
        engine = _TrialEngine(transformer, inputs, processors, loss, prefix_cache)
        engine.start()
        with tqdm(total=len(processors) * len(masks), desc="mask losses", disable=not progress) as bar:
            for layer in range(len(processors)):
                engine.enter_layer(layer)
                row = []
                for k in masks:
                    losses = engine.trial(layer, k)
                    row.append(max(losses) if reduce == "max" else sum(losses) / len(losses))
                    bar.update(1)
                table.append(row)
    return LossTable(masks, table, [input_timestep(x) for x in inputs], loss, reduce, engine.layer_forwards, True)


def measure_mask_runtimes(
    transformer: nn.Module,
    inputs: dict,
    masks: list[int] | None = None,
    kernel: str = "auto",
    repeats: int = 5,
    warmup: int = 2,
) -> list[dict]:
    """Time the tile-attention kernel of every mask (and dense) for each layer's attention shape on ``inputs``.

    Runs :class:`~diffusers_evdit.TileAttention` on random ``[B, H, N, D]`` tensors of the layer's shape, dtype and
    device (layers of one shape are timed once); the median of ``repeats`` calls after ``warmup``. Only the attention
    product is timed: projections and MLPs do not depend on the mask.

    Returns:
        per layer, ``{None: dense seconds, k: seconds}``.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan", num_layers=2)
        >>> rt = measure_mask_runtimes(t, tiny_inputs(t), masks=[1], repeats=1, warmup=0)
        >>> sorted(rt[0], key=str)
        [1, None]
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"Need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    shapes = attention_shapes(transformer, inputs)
    masks = check_masks(masks, shapes[0]["layout"].num_frames)
    attention = TileAttention(kernel)
    timed: dict = {}
    result = []
    for info in shapes:
        key = (info["layout"], info["shape"], info["dtype"], str(info["device"]))
        if key not in timed:
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(*info["shape"], generator=g).to(info["device"], info["dtype"]) for _ in range(3))
            timed[key] = {m: _time_call(lambda m=m: attention(q, k, v, info["layout"], m), q.device, repeats, warmup)
                          for m in [None, *masks]}
        result.append(dict(timed[key]))
    return result


def _time_call(fn, device, repeats, warmup) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _per_layer_runtimes(runtimes, num_layers: int, masks: list[int]) -> list[dict]:
    """Normalise runtimes to one ``{None|k: seconds}`` dict per layer ("dense"/str keys accepted)."""
    if isinstance(runtimes, dict):
        runtimes = [runtimes] * num_layers
    if len(runtimes) != num_layers:
        raise ValueError(f"Got runtimes for {len(runtimes)} layers, the model has {num_layers}.")
    out = []
    for i, layer in enumerate(runtimes):
        norm = {}
        for key, value in layer.items():
            k = None if key in (None, "dense", "None") else int(key)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"Layer {i}: runtime of mask {key!r} must be a finite number >= 0, got {value!r}.")
            norm[k] = float(value)
        missing = [k for k in [None, *masks] if k not in norm]
        if missing:
            names = ", ".join("dense" if k is None else str(k) for k in missing)
            raise ValueError(f"Layer {i}: no runtime for mask(s) {names}; supply one for dense and every mask.")
        out.append(norm)
    return out


@dataclass
class BudgetSolution:
    """One mask choice per layer for a runtime budget.

    Attributes:
        choice: per layer, the column index into the options (losses/runtimes rows).
        loss: summed loss of the choice.
        runtime: summed runtime of the choice (``<= budget``).
        dual_bound: best Lagrangian lower bound on the optimal loss (``None`` for the exact solver).
        gap: ``loss - dual_bound`` (``0`` for the exact solver).
        iterations: subgradient iterations run (0 for the exact solver).
        multiplier: final lambda (Lagrangian only).

    Example:
        >>> BudgetSolution([0], 0.0, 1.0, None, 0.0, 0, None).runtime
        1.0
    """

    choice: list[int]
    loss: float
    runtime: float
    dual_bound: float | None
    gap: float
    iterations: int
    multiplier: float | None


def _as_problem(losses, runtimes, budget) -> tuple[np.ndarray, np.ndarray, float]:
    losses = np.asarray(losses, dtype=np.float64)
    runtimes = np.asarray(runtimes, dtype=np.float64)
    if losses.ndim != 2 or losses.shape != runtimes.shape or losses.size == 0:
        raise ValueError(
            f"losses and runtimes must be [layers, options] arrays of one shape, got {losses.shape} and "
            f"{runtimes.shape}."
        )
    if not (np.isfinite(losses).all() and np.isfinite(runtimes).all()) or (runtimes < 0).any():
        raise ValueError("losses and runtimes must be finite, runtimes >= 0.")
    cheapest = float(runtimes.min(axis=1).sum())
    if not budget >= cheapest - 1e-12 * max(1.0, cheapest):
        raise ValueError(
            f"The runtime budget {budget:.6g} s is below the sparsest plan's runtime {cheapest:.6g} s (every layer "
            "at its fastest mask); no plan meets it. Raise the budget (or lower the target speedup), or add sparser "
            "masks."
        )
    return losses, runtimes, float(budget)


def _repair(choice: np.ndarray, losses: np.ndarray, runtimes: np.ndarray, budget: float) -> np.ndarray:
    """Make an over-budget choice feasible: repeatedly move the layer whose cheaper option costs the least extra
    loss per runtime saved."""
    choice = choice.copy()
    rows = np.arange(len(choice))
    while runtimes[rows, choice].sum() > budget + 1e-12:
        d_loss = losses - losses[rows, choice][:, None]
        saved = runtimes[rows, choice][:, None] - runtimes
        ratio = np.where(saved > 0, np.maximum(d_loss, 0.0) / np.where(saved > 0, saved, 1.0), np.inf)
        layer, option = np.unravel_index(np.argmin(ratio), ratio.shape)
        choice[layer] = option
    return choice


def _improve(choice: np.ndarray, losses: np.ndarray, runtimes: np.ndarray, budget: float,
             max_rounds: int = 1000) -> np.ndarray:
    """Local search on a feasible choice: apply the best improving change of one layer, or of two layers at once
    (one sparser to free runtime, one denser), that keeps the budget; until none improves."""
    choice = choice.copy()
    n_layers, n_opts = losses.shape
    rows = np.arange(n_layers)
    for _ in range(max_rounds):
        slack = budget - runtimes[rows, choice].sum()
        d_loss = (losses - losses[rows, choice][:, None]).ravel()  # < 0 improves
        d_rt = (runtimes - runtimes[rows, choice][:, None]).ravel()
        layer_of = np.repeat(rows, n_opts)
        single = np.where(d_rt <= slack + 1e-12, d_loss, np.inf)
        best_single = single.min()
        pair = d_loss[:, None] + d_loss[None, :]
        ok = (d_rt[:, None] + d_rt[None, :] <= slack + 1e-12) & (layer_of[:, None] != layer_of[None, :])
        pair = np.where(ok, pair, np.inf)
        best_pair = pair.min()
        tol = 1e-12 * max(1.0, float(np.abs(losses).max()))
        if min(best_single, best_pair) >= -tol:
            return choice
        if best_single <= best_pair:
            move = int(np.argmin(single))
            choice[layer_of[move]] = move % n_opts
        else:
            i, j = np.unravel_index(int(np.argmin(pair)), pair.shape)
            choice[layer_of[i]] = i % n_opts
            choice[layer_of[j]] = j % n_opts
    return choice


def solve_budget_lagrangian(losses, runtimes, budget: float, iterations: int = 300,
                            tolerance: float = 1e-9) -> BudgetSolution:
    """Minimise ``sum_l losses[l, c_l]`` s.t. ``sum_l runtimes[l, c_l] <= budget`` by Lagrangian relaxation.

    The dual ``g(lambda) = sum_l min_c (losses[l, c] + lambda runtimes[l, c]) - lambda budget`` is maximised by
    subgradient steps on ``lambda >= 0`` (Polyak step toward the best feasible loss, step scale halved when the dual
    stalls). Each iteration's per-layer minimisers give a primal candidate (made feasible by moving the cheapest
    layers to sparser masks when over budget); the best candidates are polished by a local search over one- and
    two-layer changes. Returns the best feasible choice, the best dual bound and the gap between them.

    Example:
        >>> sol = solve_budget_lagrangian([[0.0, 1.0], [0.0, 3.0]], [[2.0, 1.0], [2.0, 1.0]], budget=3.0)
        >>> sol.choice, sol.loss, sol.runtime      # sparsify the layer that costs least loss
        ([1, 0], 1.0, 3.0)
    """
    losses, runtimes, budget = _as_problem(losses, runtimes, budget)
    rows = np.arange(losses.shape[0])

    def minimiser(lam):
        score = losses + lam * runtimes
        best = score.min(axis=1, keepdims=True)
        ties = score <= best + 1e-12 * np.maximum(1.0, np.abs(best))
        # among tied options, the cheaper one (helps feasibility)
        choice = np.argmin(np.where(ties, runtimes, np.inf), axis=1)
        return choice, float(best.sum()) - lam * budget

    def total(choice):
        return float(losses[rows, choice].sum())

    best_choice = _repair(np.argmin(losses, axis=1), losses, runtimes, budget)
    best_loss = total(best_choice)
    candidates = {tuple(best_choice)}
    best_dual = -np.inf
    lam, theta, stall = 0.0, 1.0, 0
    it = 0
    for it in range(1, iterations + 1):
        choice, dual = minimiser(lam)
        if dual > best_dual + 1e-15:
            best_dual, stall = dual, 0
        else:
            stall += 1
            if stall >= 5:
                theta, stall = theta / 2, 0
        runtime = float(runtimes[rows, choice].sum())
        cand = _repair(choice, losses, runtimes, budget)
        if tuple(cand) not in candidates:
            candidates.add(tuple(cand))
            if total(cand) < best_loss:
                best_choice, best_loss = cand, total(cand)
        sub = runtime - budget
        if best_loss - best_dual <= tolerance * max(1.0, abs(best_loss)) or sub == 0 or theta < 1e-12:
            break
        lam = max(0.0, lam + theta * max(best_loss - dual, tolerance) / sub)
    # polish the few best distinct candidates
    ranked = sorted(candidates, key=lambda c: total(np.array(c)))[:5]
    for cand in ranked:
        polished = _improve(np.array(cand), losses, runtimes, budget)
        if total(polished) < best_loss:
            best_choice, best_loss = polished, total(polished)
    return BudgetSolution(
        choice=[int(c) for c in best_choice],
        loss=best_loss,
        runtime=float(runtimes[rows, best_choice].sum()),
        dual_bound=float(best_dual),
        gap=float(best_loss - best_dual),
        iterations=it,
        multiplier=float(lam),
    )


def _pareto_dp(losses: np.ndarray, runtimes: np.ndarray, budget: float, max_states: int) -> np.ndarray:
    """Exact DP over the Pareto frontier of (summed runtime, summed loss) of the layers so far."""
    n_layers, n_opts = losses.shape
    f_rt, f_loss = np.zeros(1), np.zeros(1)
    parents, options = [], []
    slack = 1e-12 * max(1.0, budget)
    for layer in range(n_layers):
        c_rt = (f_rt[:, None] + runtimes[layer][None, :]).ravel()
        c_loss = (f_loss[:, None] + losses[layer][None, :]).ravel()
        idx = np.nonzero(c_rt <= budget + slack)[0]
        idx = idx[np.lexsort((c_loss[idx], c_rt[idx]))]  # by runtime, then loss
        keep_loss = c_loss[idx]
        prev_min = np.concatenate([[np.inf], np.minimum.accumulate(keep_loss)[:-1]])
        idx = idx[keep_loss < prev_min]  # strictly better loss than every cheaper state
        if len(idx) > max_states:
            raise ValueError(
                f"The exact solver's frontier grew past {max_states} states; pass bins= to discretise the budget."
            )
        f_rt, f_loss = c_rt[idx], c_loss[idx]
        parents.append(idx // n_opts)
        options.append(idx % n_opts)
    state = int(np.argmin(f_loss))
    choice = np.zeros(n_layers, dtype=np.int64)
    for layer in range(n_layers - 1, -1, -1):
        choice[layer] = options[layer][state]
        state = int(parents[layer][state])
    return choice


def _grid_dp(losses: np.ndarray, runtimes: np.ndarray, budget: float, bins: int) -> np.ndarray:
    """DP over the budget split into ``bins`` units, runtimes rounded up."""
    n_layers, n_opts = losses.shape
    unit = budget / bins if budget > 0 else 1.0
    cost = np.ceil(runtimes / unit - 1e-9).astype(np.int64) if budget > 0 else np.where(runtimes > 0, bins + 1, 0)
    if cost.min(axis=1).sum() > bins:
        raise ValueError(
            f"With {bins} budget bins the rounded runtimes of the sparsest plan exceed the budget; use more bins "
            "(or bins=None for the exact frontier solver)."
        )
    dp = np.zeros(bins + 1)  # least loss of the layers so far using at most b units
    picks = np.zeros((n_layers, bins + 1), dtype=np.int64)
    for layer in range(n_layers):
        new = np.full(bins + 1, np.inf)
        for c in range(n_opts):
            w = cost[layer, c]
            if w > bins:
                continue
            cand = np.full(bins + 1, np.inf)
            cand[w:] = dp[: bins + 1 - w] + losses[layer, c]
            better = cand < new
            new[better] = cand[better]
            picks[layer, better] = c
        dp = new
    choice = np.zeros(n_layers, dtype=np.int64)
    b = bins
    for layer in range(n_layers - 1, -1, -1):
        choice[layer] = picks[layer, b]
        b -= cost[layer, choice[layer]]
    return choice


def solve_budget_exact(losses, runtimes, budget: float, bins: int | None = None,
                       max_states: int = 2_000_000) -> BudgetSolution:
    """Exact minimum of the same problem by dynamic programming.

    ``bins=None`` (default): DP over the Pareto frontier of (summed runtime, summed loss) pairs of the layers so far,
    exact for any runtimes (``ValueError`` if the frontier exceeds ``max_states``). ``bins=n``: DP over the budget
    split into ``n`` units with runtimes rounded *up* (always meets the budget; optimal among plans that meet it with
    rounded runtimes, exactly optimal when runtimes are multiples of ``budget / n``), cost
    ``O(layers x options x bins)``.

    Example:
        >>> solve_budget_exact([[0.0, 1.0], [0.0, 3.0]], [[2.0, 1.0], [2.0, 1.0]], budget=3.0).choice
        [1, 0]
    """
    losses, runtimes, budget = _as_problem(losses, runtimes, budget)
    if bins is None:
        choice = _pareto_dp(losses, runtimes, budget, max_states)
    else:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}.")
        choice = _grid_dp(losses, runtimes, budget, bins)
    rows = np.arange(len(choice))
    loss = float(losses[rows, choice].sum())
    return BudgetSolution([int(c) for c in choice], loss, float(runtimes[rows, choice].sum()), None, 0.0, 0, None)


def budget_search(
    transformer: nn.Module,
    inputs: list[dict],
    target_speedup: float | None = None,
    budget_s: float | None = None,
    masks: list[int] | None = None,
    runtimes: list[dict] | dict | None = None,
    loss: str = "output",
    reduce: str = "max",
    solver: str = "lagrangian",
    fixed_runtime_s: float = 0.0,
    kernel: str = "auto",
    prefix_cache: bool = True,
    progress: bool = True,
    iterations: int = 300,
    bins: int | None = None,
    loss_table: LossTable | None = None,
) -> MaskPlan:
    """Pick one mask per layer minimising the summed per-layer loss under a runtime budget (paper, Appendix A).

    Args:
        transformer, inputs: as for :func:`greedy_search`.
        target_speedup: budget = (dense runtime + fixed) / speedup - fixed, where the dense runtime is the summed
            dense attention time of all layers.
        budget_s: or the budget directly, in seconds of summed attention time.
        masks: sparse masks to choose from (default ``F-2 .. 1``); dense is always an option.
        runtimes: per-mask attention runtimes (``{None or "dense": s, k: s}`` shared by all layers, or a list with one
            such dict per layer); default: measured on the current device with :func:`measure_mask_runtimes`.
        loss, reduce: per-layer loss (:func:`mask_loss_table`).
        solver: ``"lagrangian"`` (subgradient, reports the dual gap) or ``"exact"`` (dynamic programming;
            ``bins`` discretises the budget, see :func:`solve_budget_exact`).
        fixed_runtime_s: mask-independent time of one forward (projections, MLPs), for end-to-end speedup targets.
        loss_table: reuse a measured :class:`LossTable` (skips the sweep).

    Returns:
        a :class:`MaskPlan` whose metadata has the budget, dense and achieved runtime and speedup, the summed loss,
        the dual bound and gap, the per-layer loss table, the mask runtimes and the search cost.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan", num_layers=2)
        >>> rt = {"dense": 4.0, 3: 3.0, 1: 1.0}
        >>> plan = budget_search(t, [tiny_inputs(t)], target_speedup=2.0, masks=[3, 1], runtimes=rt, progress=False)
        >>> plan.metadata["achieved_runtime_s"] <= plan.metadata["budget_s"]
        True
    """
    _check_choice(solver, SOLVERS, "solver")
    if (target_speedup is None) == (budget_s is None):
        raise ValueError("Give exactly one of target_speedup and budget_s.")
    if target_speedup is not None and not target_speedup > 0:
        raise ValueError(f"target_speedup must be > 0, got {target_speedup}.")
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s}.")
    if fixed_runtime_s < 0:
        raise ValueError(f"fixed_runtime_s must be >= 0, got {fixed_runtime_s}.")
    inputs = _check_inputs(inputs)
    num_frames = _num_frames(transformer, inputs)
    masks = check_masks(masks, num_frames) if loss_table is None else check_masks(loss_table.masks, num_frames)
    num_layers = len(family_for(transformer).attention_modules(transformer))
    measured = runtimes is None
    if measured:
        runtimes = measure_mask_runtimes(transformer, inputs[0], masks, kernel)
    runtimes = _per_layer_runtimes(runtimes, num_layers, masks)
    options = [None, *masks]
    rt = np.array([[layer[k] for k in options] for layer in runtimes])
    dense_total = float(rt[:, 0].sum())
    if budget_s is None:
        budget_s = (dense_total + fixed_runtime_s) / target_speedup - fixed_runtime_s
    sparsest = float(rt.min(axis=1).sum())
    if budget_s < sparsest:
        raise ValueError(
            f"The runtime budget {budget_s:.6g} s is below the sparsest plan's runtime {sparsest:.6g} s (every layer "
            f"at its fastest mask; dense {dense_total:.6g} s); no plan meets it. Lower the target speedup or raise "
            "the budget."
        )

    began = time.perf_counter()
    if loss_table is None:
        loss_table = mask_loss_table(transformer, inputs, masks, loss, reduce, kernel, prefix_cache, progress)
    if len(loss_table.losses) != num_layers:
        raise ValueError(f"The loss table has {len(loss_table.losses)} layers, the model has {num_layers}.")
    losses = np.array([[0.0, *row] for row in loss_table.losses])
    if not np.isfinite(losses).all():  # non-finite outputs: worse than anything measured, never preferred
        finite = losses[np.isfinite(losses)]
        losses[~np.isfinite(losses)] = 1e6 * (float(finite.max()) + 1.0)
    if solver == "lagrangian":
        sol = solve_budget_lagrangian(losses, rt, budget_s, iterations=iterations)
    else:
        sol = solve_budget_exact(losses, rt, budget_s, bins=bins)
    chosen = [options[c] for c in sol.choice]
    metadata = {
        "method": "latency-budget",
        "solver": solver,
        "budget_s": float(budget_s),
        "target_speedup": None if target_speedup is None else float(target_speedup),
        "fixed_runtime_s": float(fixed_runtime_s),
        "dense_runtime_s": dense_total,
        "achieved_runtime_s": sol.runtime,
        "achieved_speedup": (dense_total + fixed_runtime_s) / (sol.runtime + fixed_runtime_s)
        if sol.runtime + fixed_runtime_s > 0 else None,
        "total_loss": sol.loss,
        "dual_bound": sol.dual_bound,
        "dual_gap": sol.gap,
        "iterations": sol.iterations,
        "loss": loss_table.loss,
        "reduce": loss_table.reduce,
        "timesteps": loss_table.timesteps,
        "num_frames": num_frames,
        "masks": masks,
        "loss_table": loss_table.losses,
        "layer_losses": [float(losses[i, c]) for i, c in enumerate(sol.choice)],
        "mask_runtimes_s": _runtimes_metadata(runtimes),
        "runtimes_measured": measured,
        "layer_forwards": loss_table.layer_forwards,
        "wall_time_s": time.perf_counter() - began,
        "kernel": kernel,
        "complete": loss_table.complete,
    }
    return MaskPlan(chosen, type(transformer).__name__, metadata)


# ----------------------------------------------------------------------------------------------------------------------
# Cost estimate and plot
# ----------------------------------------------------------------------------------------------------------------------


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
    inputs = _check_inputs(inputs)
    num_frames = _num_frames(transformer, inputs)
    masks = check_masks(masks, num_frames)
    _check_choice(loss, LOSSES, "loss")
    num_layers = len(family_for(transformer).attention_modules(transformer))
    check_layers([layer], num_layers)
    check_masks([k], num_frames)
    x = inputs[0]
    device = next(transformer.parameters()).device
    with torch.no_grad(), instrument(transformer, None, kernel) as processors:
        runner = BlockRunner(transformer)
        cached = runner.run(x, stop_after=layer - 1) if layer > 0 else None
        dense_s = _time_call(lambda: runner.run(x), device, repeats, 1)

        def trial():
            processors[layer].k = k
            try:
                return runner.run(x, layer, cached, stop_after=layer if loss == "layer" else None)
            finally:
                processors[layer].k = None

        trial_s = _time_call(trial, device, repeats, 1)
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


def plot_plan(plan: MaskPlan, path: str, num_frames: int | None = None, title: str | None = None) -> str:
    """Bar chart of the chosen ``k`` per layer (the paper's Figure 4); dense layers drawn at ``F`` in gray.

    ``num_frames`` defaults to ``plan.metadata["num_frames"]``. Needs matplotlib. Returns ``path``.

    Example:
        >>> plot_plan(MaskPlan([1, None, 3]), "/tmp/plan.png", num_frames=4)
        '/tmp/plan.png'
    """
    from .analysis import _pyplot

    plt = _pyplot()
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
