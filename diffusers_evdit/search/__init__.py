"""Layer-wise mask search: the paper's greedy threshold search (Algorithm 1) and latency-budget search (Appendix A).

Both take a transformer and a list of *inputs*, forward-keyword dicts, one per timestep (from
:func:`diffusers_evdit.analysis.random_inputs` at :func:`sample_timesteps`, or recorded from a pipeline run with
:func:`diffusers_evdit.analysis.record_transformer_inputs`), and return a :class:`~diffusers_evdit.MaskPlan` whose
``metadata`` records how it was found. Trials run only the blocks after the dense prefix (:class:`BlockRunner`); the
design is in docs/design.md.

Modules: ``options`` (timesteps, mask lists, checks), ``engine`` (replay from a block, single-layer trials, the
output loss of a whole plan), ``greedy`` (Algorithm 1), ``budget`` (loss table and the budget search), ``refine``
(joint refinement of a budget plan around itself), ``solvers`` (Lagrangian and exact budget solvers), ``runtimes``
(per-mask attention runtimes), ``cost`` (search cost), ``plots`` (the plan chart).

Example:
    >>> from diffusers_evdit.tiny import tiny_transformer
    >>> from diffusers_evdit.analysis import random_inputs
    >>> from diffusers_evdit.search import greedy_search, sample_timesteps
    >>> t = tiny_transformer("cogvideox")
    >>> inputs = [random_inputs(t, 6, 8, 8, timestep=s, seed=0) for s in sample_timesteps(2, seed=0)]
    >>> plan = greedy_search(t, inputs, threshold=1e9, progress=False)
    >>> plan.layers, plan.metadata["method"]
    ([1, 1], 'greedy-threshold')
"""

from .budget import LossTable, budget_search, mask_loss_table
from .cost import estimate_search_cost, greedy_cost_units
from .engine import BlockRunner, plan_output_loss
from .greedy import greedy_search
from .options import LOSSES, REDUCTIONS, SOLVERS, check_masks, default_masks, sample_timesteps
from .plots import plot_plan
from .refine import refine_budget_plan
from .runtimes import measure_mask_runtimes
from .solvers import BudgetSolution, solve_budget_exact, solve_budget_lagrangian

__all__ = [
    "sample_timesteps",
    "default_masks",
    "check_masks",
    "BlockRunner",
    "plan_output_loss",
    "greedy_cost_units",
    "greedy_search",
    "LossTable",
    "mask_loss_table",
    "measure_mask_runtimes",
    "BudgetSolution",
    "solve_budget_lagrangian",
    "solve_budget_exact",
    "budget_search",
    "refine_budget_plan",
    "estimate_search_cost",
    "plot_plan",
    "LOSSES",
    "REDUCTIONS",
    "SOLVERS",
]
