"""Solvers of the latency-budget problem: one option per layer, least summed loss, summed runtime within a budget.

Pure numpy on ``[layers, options]`` arrays of losses and runtimes; :func:`solve_budget_lagrangian` (Lagrangian
relaxation, reports the dual gap) and :func:`solve_budget_exact` (dynamic programming).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def finite_losses(losses) -> np.ndarray:
    """``losses`` as a float array whose non-finite entries are worse than anything measured (never preferred)."""
    losses = np.array(losses, dtype=np.float64)
    bad = ~np.isfinite(losses)
    if bad.any():
        finite = losses[~bad]
        losses[bad] = 1e6 * (float(np.abs(finite).max()) + 1.0 if finite.size else 1.0)
    return losses


def solve_budget(losses, runtimes, budget_s: float, solver: str, iterations: int = 300, bins: int | None = None):
    """One mask per layer under the budget with the chosen solver (``"lagrangian"`` or ``"exact"``)."""
    if solver == "lagrangian":
        return solve_budget_lagrangian(losses, runtimes, budget_s, iterations=iterations)
    return solve_budget_exact(losses, runtimes, budget_s, bins=bins)
