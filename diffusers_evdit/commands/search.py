"""``evdit search``: find a per-layer mask plan (greedy threshold search or latency-budget search).

    evdit search --model tiny:cogvideox --threshold 0.05 --out plan.json                  # CPU, seconds
    evdit search --model THUDM/CogVideoX-5b --device cuda --threshold 0.05 --out plan.json
    evdit search --model THUDM/CogVideoX-5b --device cuda --target-speedup 2.0 --out plan.json
    evdit search --model shape:cogvideox-5b --device cuda --estimate-cost                 # time one trial

Inputs: ``--num-timesteps`` (m, default 4) timesteps drawn uniformly from 0..999 with ``--seed``; at each, random
latents of ``--frames x --height x --width`` pixels (latent size from the VAE's 4x/8x compression) and random text
embeddings of the model's text length (see :func:`diffusers_evdit.analysis.random_inputs`), all from ``--seed``.
``--inputs FILE.pt`` uses recorded transformer calls instead (one per timestep). The plan is written to ``--out``
and its bar chart (chosen k per layer) next to it as ``.png`` unless ``--no-chart``.
"""

from __future__ import annotations

import json
import os
import sys

from ..progress import progress_mode
from . import non_negative_int, positive_int
from .profile import int_list, add_model_arguments, load_model, make_inputs


def _load_runtimes(path: str):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, (dict, list)):
        raise ValueError(f"{path}: runtimes must be a JSON object {{\"dense\": s, \"1\": s, ...}} or a list of them.")
    return data


def _cmd_search(args) -> int:
    from ..search import budget_search, estimate_search_cost, greedy_search, plot_plan, sample_timesteps
    from ..search.options import student_timesteps

    modes = [args.threshold is not None, args.target_speedup is not None, args.budget_ms is not None]
    if not args.estimate_cost and sum(modes) != 1:
        raise ValueError("Give exactly one of --threshold, --target-speedup and --budget-ms (or --estimate-cost).")
    if args.refine_rounds and args.threshold is not None:
        raise ValueError("--refine-rounds refines a budget plan: use it with --target-speedup or --budget-ms.")
    if not args.estimate_cost and not args.out:
        raise ValueError("--out is required (the plan JSON to write).")
    transformer, device, dtype = load_model(args)
    own = student_timesteps(args.model) if args.num_timesteps is None else None
    timesteps = own or sample_timesteps(args.num_timesteps or 4, args.seed)
    if own and not args.quiet:
        print(f"timesteps {own}: the few-step student's own (its scheduler); --num-timesteps M draws M instead")
    inputs = make_inputs(args, transformer, timesteps, [args.seed])
    masks = int_list(args.masks) if args.masks else None
    progress = progress_mode(args.quiet or args.no_progress)  # a bar on a terminal, a line every few seconds in a log

    if args.estimate_cost:
        cost = estimate_search_cost(transformer, inputs, masks=masks, loss=args.loss, layer=args.cost_layer,
                                    kernel=args.kernel)
        cost.update(model=args.model, device=str(device), dtype=str(dtype).replace("torch.", ""))
        print(json.dumps(cost, indent=2))
        return 0

    runtimes = _load_runtimes(args.runtimes) if args.runtimes else None
    try:
        if args.threshold is not None:
            plan = greedy_search(transformer, inputs, args.threshold, masks=masks, loss=args.loss, kernel=args.kernel,
                                 prefix_cache=not args.no_prefix_cache, progress=progress, runtimes=runtimes)
        else:
            plan = budget_search(
                transformer, inputs, target_speedup=args.target_speedup,
                budget_s=None if args.budget_ms is None else args.budget_ms / 1e3, masks=masks, runtimes=runtimes,
                loss=args.loss, reduce=args.reduce, solver=args.solver, fixed_runtime_s=args.fixed_ms / 1e3,
                kernel=args.kernel, prefix_cache=not args.no_prefix_cache, progress=progress, bins=args.bins,
                refine_rounds=args.refine_rounds,
            )
    except KeyboardInterrupt:
        print("evdit: interrupted before the loss table was complete; no plan written.")
        return 130
    plan.metadata.update(model=args.model, device=str(device), dtype=str(dtype).replace("torch.", ""),
                         seed=args.seed, inputs_file=args.inputs)
    plan.save(args.out)
    meta = plan.metadata
    names = plan.describe(meta["num_frames"])
    print(f"{plan.model_class}: {plan.num_layers} layers, {meta['num_frames']} latent frames, "
          f"timesteps {meta['timesteps']}, loss {meta['loss']}")
    for i, name in enumerate(names):
        print(f"  layer {i:3d}: {name:>7s}  loss {meta['layer_losses'][i]:.3e}")
    if meta["method"] == "greedy-threshold":
        print(f"layer forwards: {meta['layer_forwards']} (naive full forwards: {meta['naive_layer_forwards']}), "
              f"wall time {meta['wall_time_s']:.1f} s" + ("" if meta["complete"] else "  [INTERRUPTED: partial plan]"))
    else:
        gap = "" if meta["dual_gap"] is None or meta["dual_bound"] is None else (
            f", dual bound {meta['dual_bound']:.3e}, gap {meta['dual_gap']:.3e}")
        print(f"attention runtime {meta['achieved_runtime_s'] * 1e3:.3f} ms of budget {meta['budget_s'] * 1e3:.3f} ms "
              f"(dense {meta['dense_runtime_s'] * 1e3:.3f} ms, speedup {meta['achieved_speedup']:.2f}x); "
              f"summed loss {meta['total_loss']:.3e}{gap}; layer forwards {meta['layer_forwards']}")
        if meta["plan_loss"] is not None:
            tried = meta["refinement"] or []
            print(f"whole-plan output loss {meta['plan_loss']:.3e}"
                  + (f" after {sum(h['accepted'] for h in tried) - 1} accepted refinement round(s) of {len(tried) - 1}"
                     if tried else ""))
    written = [args.out]
    status = 0
    if not args.no_chart:
        try:
            written.append(plot_plan(plan, args.chart or os.path.splitext(args.out)[0] + ".png"))
        except ImportError as err:
            print(f"evdit: error: {err}", file=sys.stderr)
            status = 2
    print("wrote " + ", ".join(written))
    return status


def register(sub) -> None:
    p = sub.add_parser("search", help="per-layer mask plan: greedy threshold search or latency-budget search")
    add_model_arguments(p)
    mode = p.add_argument_group("search (one of)")
    mode.add_argument("--threshold", type=float, default=None,
                      help="greedy search: max loss r per layer (> 0), the mean squared error against the dense "
                           "output in the output's own units, not a fraction (the shipped demo plan: 0.005)")
    mode.add_argument("--target-speedup", type=float, default=None, help="budget search: attention speedup target")
    mode.add_argument("--budget-ms", type=float, default=None, help="budget search: summed attention time budget")
    mode.add_argument("--estimate-cost", action="store_true",
                      help="time one trial and print the projected cost of a full greedy sweep (JSON); no search")
    p.add_argument("--out", default=None, help="plan JSON to write")
    p.add_argument("--chart", default=None, help="bar chart PNG (default: --out with .png)")
    p.add_argument("--no-chart", action="store_true", help="do not draw the chart (no matplotlib needed)")
    p.add_argument("--num-timesteps", type=positive_int, default=None,
                   help="m timesteps drawn uniformly (default: a few-step MLCD student folder's own timesteps, else 4)")
    p.add_argument("--masks", default=None, help="comma-separated k values to try (default F-2..1)")
    p.add_argument("--loss", choices=("output", "layer"), default="output",
                   help="MSE of the final output (default) or of the layer's block output")
    p.add_argument("--reduce", choices=("max", "mean"), default="max", help="budget search: loss over timesteps")
    p.add_argument("--solver", choices=("lagrangian", "exact"), default="lagrangian", help="budget search solver")
    p.add_argument("--bins", type=positive_int, default=None,
                   help="exact solver: discretise the budget into this many units (default: exact Pareto frontier)")
    p.add_argument("--runtimes", default=None,
                   help="JSON of per-mask attention runtimes in seconds ({\"dense\": s, \"1\": s, ...}, or one per "
                        "layer); default: measured on the device")
    p.add_argument("--fixed-ms", type=float, default=0.0,
                   help="mask-independent time per forward, for end-to-end speedup targets (default 0)")
    p.add_argument("--refine-rounds", type=non_negative_int, default=0,
                   help="budget search: rounds of joint refinement around the plan found (each about one sweep; "
                        "output loss only; default 0)")
    p.add_argument("--no-prefix-cache", action="store_true", help="full forwards per trial (slower; for checking)")
    p.add_argument("--cost-layer", type=non_negative_int, default=0, help="--estimate-cost: layer of the timed trial")
    p.set_defaults(func=_cmd_search)
