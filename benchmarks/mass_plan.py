"""A plan from attention mass: the k:F-k plan at a uniform plan's pair budget that drops the least attention.

    python benchmarks/mass_plan.py --uniform 3 --out PLAN.json   # result: plan-losses-cpu.json, mass_3of8

The budget search of ``equal_sparsity_plan.py`` with another per-layer loss: instead of a layer's output error, the
share of the dense student's attention probability that each ``k:F-k`` mask removes (mean over its queries, heads,
prompts and sampling calls). Tile statistics show this student's layers differ (diagonal / off-diagonal tile ratio
1.5-6.5x between layers, ``evdit profile``), and a layer whose attention stays inside its own frame should get fewer
reference frames. The inputs are the student's own transformer calls while sampling training prompts (never test or
validation prompts); each mask's "runtime" is the share of (query, key) pairs it keeps.
"""

from __future__ import annotations

import os

import torch


def parse_args(argv=None):
    from equal_sparsity_plan import student_search_parser  # beside this script

    return student_search_parser(__doc__.split("\n")[0]).parse_args(argv)


def dropped_mass(q, k, layout, masks) -> list[float]:
    """For each ``k`` in ``masks``: the mean over video queries (and batch, heads) of the attention probability that
    the ``k:F-k`` tile mask removes."""
    from diffusers_evdit.analysis.statistics import attention_probabilities, query_rows
    from diffusers_evdit.masks import tile_mask

    rows = query_rows(layout, None, q.device)
    outside = [~tile_mask(layout, m, q.device)[rows] for m in masks]  # [rows, N] per mask
    totals = [0.0] * len(masks)
    count = 0
    for r, p in attention_probabilities(q, k, layout, rows, None, None, 1024):
        sel = (r - rows[0]).long()
        for j, out in enumerate(outside):
            totals[j] += float((p * out[sel]).sum())
        count += p.shape[0] * p.shape[1]
    return [t / count for t in totals]


def main(argv=None):
    args = parse_args(argv)
    from equal_sparsity_plan import recorded_student_calls  # beside this script

    from diffusers_evdit.analysis import input_timestep, instrument
    from diffusers_evdit.masks import element_sparsity, format_mask
    from diffusers_evdit.search import LossTable, budget_search, plan_output_loss

    rec = recorded_student_calls(args.model, args.row, args.search_prompts, args.seed, device="cpu")
    pipe, calls, layout, masks, num_layers = rec.pipe, rec.calls, rec.layout, rec.masks, rec.num_layers
    sums = [[0.0] * len(masks) for _ in range(num_layers)]

    def observe(proc, q, k, v, seen_layout, key_padding_mask):
        for j, m in enumerate(dropped_mass(q, k, seen_layout, masks)):
            sums[proc.layer_index][j] += m / len(calls)

    with torch.no_grad(), instrument(pipe.transformer, observe):
        for call in calls:
            pipe.transformer(**call)
    table = LossTable(masks, sums, [input_timestep(c) for c in calls], "attention_mass", "mean", len(calls) * num_layers,
                      True)
    plan = budget_search(pipe.transformer, calls, budget_s=num_layers * rec.kept[args.uniform], masks=masks,
                         runtimes=rec.kept, solver="exact", progress=False, loss_table=table)
    uniform_mass = sum(row[masks.index(args.uniform)] for row in sums)
    plan.metadata.update(source=f"{args.row} of {os.path.relpath(rec.path)}", search_prompts=rec.prompts,
                         inputs="recorded sampling calls of the student (training prompts)",
                         loss="attention mass each mask drops (mean over video queries, heads, prompts and calls)",
                         budget="kept (query, key) pairs of the uniform plan " + format_mask(layout.num_frames,
                                                                                              args.uniform),
                         uniform_k=args.uniform, uniform_total_mass=uniform_mass,
                         plan_loss=plan_output_loss(pipe.transformer, calls, plan.layers),
                         uniform_plan_loss=plan_output_loss(pipe.transformer, calls, [args.uniform] * num_layers))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plan.save(args.out)
    for layer, row_mass in enumerate(sums):
        print(f"layer {layer:2d} dropped mass " + " ".join(f"{format_mask(layout.num_frames, m)} {x:.3f}"
                                                           for m, x in zip(masks, row_mass)))
    print(f"k per layer {plan.layers}; sparsity {plan.sparsity(layout):.4f} vs uniform "
          f"{element_sparsity(layout, args.uniform):.4f}; summed dropped mass {plan.metadata['total_loss']:.3f} vs "
          f"uniform {uniform_mass:.3f}; whole-plan output loss {plan.metadata['plan_loss']:.5f} vs uniform "
          f"{plan.metadata['uniform_plan_loss']:.5f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
