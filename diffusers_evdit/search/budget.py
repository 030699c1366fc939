"""The latency-budget search (paper, Appendix A): the loss of every (layer, mask), per-mask runtimes, and one mask
per layer chosen by a budget solver."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..analysis.capture import instrument
from ..analysis.inputs import input_timestep
from ..plan import MaskPlan
from ..processors import family_for
from .engine import TrialEngine, plan_output_loss
from .options import LOSSES, REDUCTIONS, SOLVERS, check_choice, check_inputs, check_masks, input_frames
from .runtimes import measure_mask_runtimes, per_layer_runtimes, runtimes_metadata
from .refine import refine_budget_plan
from .solvers import finite_losses, solve_budget


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
    progress: bool | str = True,
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
    from ..progress import Progress, as_mode

    check_choice(loss, LOSSES, "loss")
    check_choice(reduce, REDUCTIONS, "reduction")
    inputs = check_inputs(inputs)
    masks = check_masks(masks, input_frames(transformer, inputs))
    table = []
    with torch.no_grad(), instrument(transformer, None, kernel) as processors:
        engine = TrialEngine(transformer, inputs, processors, loss, prefix_cache)
        engine.start()
        with Progress(len(processors) * len(masks), "mask losses", unit="trial", mode=as_mode(progress)) as bar:
            for layer in range(len(processors)):
                engine.enter_layer(layer)
                row = []
                for k in masks:
                    losses = engine.trial(layer, k)
                    row.append(max(losses) if reduce == "max" else sum(losses) / len(losses))
                    bar.update(1)
                table.append(row)
    return LossTable(masks, table, [input_timestep(x) for x in inputs], loss, reduce, engine.layer_forwards, True)


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
    progress: bool | str = True,
    iterations: int = 300,
    bins: int | None = None,
    loss_table: LossTable | None = None,
    refine_rounds: int = 0,
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
        refine_rounds: up to this many rounds of joint refinement (``"output"`` loss only): re-measure every layer's
            losses around the plan found and solve again while the whole plan's output loss falls
            (:func:`refine_budget_plan`; each round costs about one loss-table sweep). The summed single-layer losses
            assume layers do not interact; at high sparsity they do.

    Returns:
        a :class:`MaskPlan` whose metadata has the budget, dense and achieved runtime and speedup, the summed loss
        (``total_loss``, the solver's objective: single-layer losses added up), ``plan_loss`` (the chosen plan's output
        loss with all its layers sparse at once, :func:`plan_output_loss`; ``None`` for the ``"layer"`` loss),
        the dual bound and gap (of the first solve), the per-layer loss table, the mask runtimes, the search cost and
        ``refinement`` (the plans the refinement tried, or ``None``).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan", num_layers=2)
        >>> rt = {"dense": 4.0, 3: 3.0, 1: 1.0}
        >>> plan = budget_search(t, [tiny_inputs(t)], target_speedup=2.0, masks=[3, 1], runtimes=rt, progress=False)
        >>> plan.metadata["achieved_runtime_s"] <= plan.metadata["budget_s"]
        True
    """
    check_choice(solver, SOLVERS, "solver")
    if (target_speedup is None) == (budget_s is None):
        raise ValueError("Give exactly one of target_speedup and budget_s.")
    if target_speedup is not None and not target_speedup > 0:
        raise ValueError(f"target_speedup must be > 0, got {target_speedup}.")
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s}.")
    if fixed_runtime_s < 0:
        raise ValueError(f"fixed_runtime_s must be >= 0, got {fixed_runtime_s}.")
    if isinstance(refine_rounds, bool) or not isinstance(refine_rounds, int) or refine_rounds < 0:
        raise ValueError(f"refine_rounds must be an integer >= 0, got {refine_rounds!r}.")
    if refine_rounds and (loss if loss_table is None else loss_table.loss) != "output":
        raise ValueError("refine_rounds needs the \"output\" loss: refinement compares whole plans by their output.")
    inputs = check_inputs(inputs)
    num_frames = input_frames(transformer, inputs)
    masks = check_masks(masks, num_frames) if loss_table is None else check_masks(loss_table.masks, num_frames)
    num_layers = len(family_for(transformer).attention_modules(transformer))
    measured = runtimes is None
    if measured:
        runtimes = measure_mask_runtimes(transformer, inputs[0], masks, kernel)
    runtimes = per_layer_runtimes(runtimes, num_layers, masks)
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
    losses = finite_losses([[0.0, *row] for row in loss_table.losses])
    sol = solve_budget(losses, rt, budget_s, solver, iterations, bins)
    chosen = [options[c] for c in sol.choice]
    refinement = None
    if refine_rounds:
        chosen, refinement = refine_budget_plan(transformer, inputs, chosen, options, rt, budget_s, refine_rounds,
                                                loss_table.reduce, solver, kernel, prefix_cache, progress)
    picked = [options.index(k) for k in chosen]
    achieved = float(rt[np.arange(num_layers), picked].sum())
    metadata = {
        "method": "latency-budget",
        "solver": solver,
        "budget_s": float(budget_s),
        "target_speedup": None if target_speedup is None else float(target_speedup),
        "fixed_runtime_s": float(fixed_runtime_s),
        "dense_runtime_s": dense_total,
        "achieved_runtime_s": achieved,
        "achieved_speedup": (dense_total + fixed_runtime_s) / (achieved + fixed_runtime_s)
        if achieved + fixed_runtime_s > 0 else None,
        "total_loss": float(losses[np.arange(num_layers), picked].sum()),
        "plan_loss": (next(h for h in reversed(refinement) if h["accepted"])["plan_loss"] if refinement else
                      plan_output_loss(transformer, inputs, chosen, loss_table.reduce, kernel))
        if loss_table.loss == "output" else None,
        "refinement": refinement,
        "dual_bound": sol.dual_bound,
        "dual_gap": sol.gap,
        "iterations": sol.iterations,
        "loss": loss_table.loss,
        "reduce": loss_table.reduce,
        "timesteps": loss_table.timesteps,
        "num_frames": num_frames,
        "masks": masks,
        "loss_table": loss_table.losses,
        "layer_losses": [float(losses[i, j]) for i, j in enumerate(picked)],
        "mask_runtimes_s": runtimes_metadata(runtimes),
        "runtimes_measured": measured,
        "layer_forwards": loss_table.layer_forwards + (refinement[-1]["layer_forwards"] if refinement else 0),
        "wall_time_s": time.perf_counter() - began,
        "kernel": kernel,
        "complete": loss_table.complete,
    }
    return MaskPlan(chosen, type(transformer).__name__, metadata)
