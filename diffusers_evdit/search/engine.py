"""The replay engine of the searches: run a transformer from a block on cached dense hidden states, and measure the
loss of one sparse layer against the dense model (the design is in docs/design.md, "Mask search")."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..analysis.capture import StopForward, instrument, run_until_stopped
from ..plan import MaskPlan
from ..processors import family_for
from .options import REDUCTIONS, check_choice, check_inputs


def _mse(a, b) -> float:
    """Mean squared error over all tensor elements of two outputs (a tensor or a tuple of tensors); ``inf`` when
    either output is not finite (so a NaN never passes a threshold)."""
    if isinstance(a, (tuple, list)):
        sq = sum(float(((x.float() - y.float()) ** 2).sum()) for x, y in zip(a, b))
        value = sq / sum(x.numel() for x in a)
    else:
        value = float(((a.float() - b.float()) ** 2).mean())
    return value if math.isfinite(value) else math.inf


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


class TrialEngine:
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

    def plan_losses(self) -> list[float]:
        """Per-input output losses of the processors' current masks (every layer at once) against the dense output
        (``"output"`` loss, after :meth:`start`)."""
        return [_mse(self._full(t), ref) for t, ref in enumerate(self.dense_final)]

    def trial(self, layer: int, k: int, stop_at: float | None = None) -> list[float]:
        """Per-input losses of mask ``k`` on ``layer`` (the other layers at their processors' masks: dense in the
        searches); stops once a loss is >= stop_at."""
        proc = self.processors[layer]
        previous, proc.k = proc.k, k
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
            proc.k = previous
        return losses


def plan_output_loss(
    transformer: nn.Module,
    inputs: list[dict],
    plan: MaskPlan | list,
    reduce: str = "max",
    kernel: str = "auto",
) -> float | list[float]:
    """The output loss of a whole plan: MSE of the transformer's output with every layer at its plan mask at once,
    against the dense output, reduced over ``inputs`` by ``"max"`` or ``"mean"``.

    The searches measure one sparse layer at a time; the budget search adds those losses up. This measures what the
    plan does with all its layers sparse together, to compare plans (e.g. a searched plan against a uniform one of
    equal sparsity) or to check how far the sum is from the joint loss. The transformer's installed plan, if any, is
    restored afterwards.

    Args:
        transformer, inputs: as for :func:`greedy_search`.
        plan: a :class:`~diffusers_evdit.MaskPlan` or its per-layer ``k`` list (``None`` = dense).
        reduce: ``"max"`` (as Algorithm 1) or ``"mean"`` over the inputs, or ``"none"``: the list of per-input losses
            (one pass for several reductions).
        kernel: tile kernel (all are exact; this only changes speed).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan", num_layers=2)
        >>> plan_output_loss(t, [tiny_inputs(t)], [None, None])
        0.0
    """
    check_choice(reduce, (*REDUCTIONS, "none"), "reduction")
    inputs = check_inputs(inputs)
    layers = list(plan.layers if isinstance(plan, MaskPlan) else plan)
    with torch.no_grad(), instrument(transformer, None, kernel) as processors:
        if len(layers) != len(processors):
            raise ValueError(f"The plan has {len(layers)} layers, the model has {len(processors)} attention layers.")
        engine = TrialEngine(transformer, inputs, processors, "output", prefix_cache=False)
        engine.start()
        for proc, k in zip(processors, layers):
            proc.k = k
        losses = engine.plan_losses()
    if reduce == "none":
        return list(losses)
    return max(losses) if reduce == "max" else sum(losses) / len(losses)
