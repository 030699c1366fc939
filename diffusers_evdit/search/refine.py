"""Joint refinement of a budget plan: re-measure every layer's mask losses around the plan itself (the other layers
at their plan masks, not dense) and solve the budget again, while the plan's whole output loss falls."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..analysis.capture import instrument
from .engine import TrialEngine
from .solvers import finite_losses, solve_budget


def refine_budget_plan(
    transformer: nn.Module,
    inputs: list[dict],
    layers: list,
    options: list,
    runtimes: np.ndarray,
    budget_s: float,
    rounds: int,
    reduce: str = "max",
    solver: str = "exact",
    kernel: str = "auto",
    prefix_cache: bool = True,
    progress: bool | str = True,
) -> tuple[list, list[dict]]:
    """Refine the per-layer masks ``layers`` (entries of ``options``) under ``budget_s``.

    The budget search adds up single-layer losses measured with every other layer dense; once many layers are
    sparse, a layer's loss depends on the others. Each round measures, for every layer and option, the output loss
    of the current plan with only that layer changed, solves the budget problem on those losses, and keeps the new
    plan only if its whole output loss (all layers at once, reduced over ``inputs`` by ``reduce``) is lower. Stops
    after ``rounds`` rounds, or earlier when a round changes nothing or does not lower the loss.

    Args:
        runtimes: ``[layers, options]`` runtimes, as the budget search uses.

    Returns:
        the refined layers and one record per plan tried: ``round`` (0 = the plan given), ``layers``,
        ``plan_loss``, ``accepted``, ``layer_forwards`` (blocks run so far) and, from round 1, ``losses_around``
        (``[layer][option]``: the output loss of the previous plan with only that layer at that option).

    Example:
        >>> import numpy as np
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan", num_layers=2)
        >>> runtimes = np.array([[4.0, 3.0, 1.0]] * 2)  # options dense, 3:F-3, 1:F-1
        >>> layers, history = refine_budget_plan(t, [tiny_inputs(t)], [None, 1], [None, 3, 1], runtimes, budget_s=5.0,
        ...                                      rounds=2, progress=False)
        >>> history[0]["layers"], bool(sum(runtimes[0][[None, 3, 1].index(k)] for k in layers) <= 5.0)
        ([None, 1], True)
    """
    from ..progress import Progress, as_mode

    num_layers = len(layers)
    reduce_fn = max if reduce == "max" else (lambda xs: sum(xs) / len(xs))
    current = list(layers)
    with torch.no_grad(), instrument(transformer, None, kernel) as processors:
        dense = TrialEngine(transformer, inputs, processors, "output", prefix_cache)
        dense.start()

        def set_plan(plan):
            for proc, k in zip(processors, plan):
                proc.k = k

        def plan_loss(plan) -> float:
            set_plan(plan)
            return reduce_fn(dense.plan_losses())

        current_loss = plan_loss(current)
        trial_forwards = 0  # blocks run by the rounds' trial engines; dense.layer_forwards counts the whole plans
        history = [{"round": 0, "layers": list(current), "plan_loss": current_loss, "accepted": True,
                    "layer_forwards": dense.layer_forwards}]
        bar = Progress(rounds * num_layers * (len(options) - 1), "refining the plan", unit="trial",
                       mode=as_mode(progress))
        try:
            for r in range(1, rounds + 1):
                set_plan(current)  # trials change one layer around the current plan
                engine = TrialEngine(transformer, inputs, processors, "output", prefix_cache)
                engine.dense_final = dense.dense_final
                table = np.empty((num_layers, len(options)))
                for layer in range(num_layers):
                    engine.enter_layer(layer)
                    for j, k in enumerate(options):
                        if k == current[layer]:
                            table[layer, j] = current_loss
                            continue
                        table[layer, j] = reduce_fn(engine.trial(layer, k))
                        bar.update(1)
                losses = finite_losses(table)
                sol = solve_budget(losses - losses.min(axis=1, keepdims=True), runtimes, budget_s, solver)
                new = [options[c] for c in sol.choice]
                new_loss = plan_loss(new)
                accepted = new != current and new_loss < current_loss
                trial_forwards += engine.layer_forwards
                history.append({"round": r, "layers": new, "plan_loss": new_loss, "accepted": accepted,
                                "layer_forwards": dense.layer_forwards + trial_forwards,
                                "losses_around": table.tolist()})
                if not accepted:
                    break
                current, current_loss = new, new_loss
        finally:
            bar.close()
    return current, history
