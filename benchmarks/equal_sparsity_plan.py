"""A searched mask plan with exactly the pair budget of a uniform plan, for the searched-vs-uniform comparison.

    python benchmarks/equal_sparsity_plan.py --uniform 3 --out benchmarks/results/plans/searched-budget-3of8.json
    python benchmarks/equal_sparsity_plan.py --uniform 3 --refine-rounds 3 \
        --out benchmarks/results/plans/refined-budget-3of8.json

Stage 2's latency-budget search (paper, Appendix A) on the shipped MLCD student (``demo_model/mlcd``), with each
mask's "runtime" set to the share of (query, key) pairs it keeps, so the budget is the uniform ``k:F-k`` plan's kept
pairs: the searched plan skips at least as many pairs as the uniform one and spends them where its layers lose least.
The inputs are the student's own transformer calls while sampling training prompts (never test or validation
prompts), as the greedy search of ``reproduce_tables.py`` records them. ``--refine-rounds`` re-solves around the
plan found while the whole plan's output loss falls (the summed single-layer losses ignore how layers interact).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch


def student_search_parser(description: str) -> argparse.ArgumentParser:
    """The options of a search over the student's recorded calls at a uniform plan's budget (shared with
    ``mass_plan.py``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None, help="base pipeline folder (default: the shipped demo model)")
    p.add_argument("--row", default="mlcd", help="student subfolder of the model whose calls are searched")
    p.add_argument("--uniform", type=int, required=True, help="k of the uniform plan whose sparsity is the budget")
    p.add_argument("--search-prompts", type=int, default=2, help="training prompts whose sampling feeds the search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    return p


def parse_args(argv=None):
    p = student_search_parser(__doc__.split("\n")[0])
    p.add_argument("--refine-rounds", type=int, default=0,
                   help="rounds of joint refinement around the plan found (budget_search's refine_rounds)")
    p.add_argument("--device", default=None)
    return p.parse_args(argv)


@dataclass
class StudentCalls:
    """A student's recorded sampling calls and what a plan search over them needs."""

    path: str  # the base pipeline folder
    pipe: object  # the student pipeline (dense)
    prompts: list  # the training prompts it sampled
    calls: list  # its transformer calls (keyword arguments)
    layout: object  # TileLayout of the demo's generation settings
    masks: list  # the k of each k:F-k option
    kept: dict  # each option's share of kept (query, key) pairs, "dense" included

    @property
    def num_layers(self) -> int:
        return len(self.pipe.transformer.blocks)


def recorded_student_calls(model=None, row="mlcd", search_prompts=2, seed=0, device=None) -> StudentCalls:
    """Sample ``search_prompts`` training prompts with the 4-step student ``row`` of ``model`` (dense) and record its
    transformer calls (shared with ``mass_plan.py``)."""
    from diffusers_evdit import TileLayout
    from diffusers_evdit.analysis import record_transformer_inputs
    from diffusers_evdit.data import SyntheticVideoDataset
    from diffusers_evdit.demo import DemoRow, load_pipeline, load_row, plan_summary, resolve_model
    from diffusers_evdit.masks import element_sparsity
    from diffusers_evdit.search.options import default_masks

    path = resolve_model(model)
    base, gen = load_pipeline(path, device=device)
    demo_row = DemoRow(row, row, steps=4, guidance_scale=1.0)
    pipe = load_row(base, path, demo_row, seed=seed)
    pipe.set_mask_plan(None)
    row_gen = demo_row.generation(gen)
    ds = SyntheticVideoDataset(num_samples=1000, seed=seed + 7, split="train")
    prompts = [ds.scene(i).caption() for i in range(search_prompts)]
    with record_transformer_inputs(pipe.transformer, device=None) as calls, torch.no_grad():
        pipe(prompt=prompts, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
             **row_gen.call_kwargs())
    info = plan_summary(pipe, row_gen)  # the layout of the demo's generation settings
    layout = TileLayout(info["latent_frames"], info["tokens_per_frame"])
    masks = default_masks(layout.num_frames)
    kept = {k: 1.0 - element_sparsity(layout, k) for k in masks}
    kept["dense"] = 1.0
    return StudentCalls(path, pipe, prompts, list(calls), layout, masks, kept)


def main(argv=None):
    args = parse_args(argv)
    from diffusers_evdit.masks import element_sparsity, format_mask
    from diffusers_evdit.search import budget_search, plan_output_loss

    rec = recorded_student_calls(args.model, args.row, args.search_prompts, args.seed, args.device)
    pipe, calls, layout, num_layers = rec.pipe, rec.calls, rec.layout, rec.num_layers
    plan = budget_search(pipe.transformer, calls, budget_s=num_layers * rec.kept[args.uniform], masks=rec.masks,
                         runtimes=rec.kept, solver="exact", progress=True, refine_rounds=args.refine_rounds)
    plan.metadata.update(source=f"{args.row} of {os.path.relpath(rec.path)}", search_prompts=rec.prompts,
                         inputs="recorded sampling calls of the student (training prompts)",
                         budget="kept (query, key) pairs of the uniform plan " + format_mask(layout.num_frames,
                                                                                              args.uniform),
                         uniform_k=args.uniform,
                         uniform_plan_loss=plan_output_loss(pipe.transformer, calls, [args.uniform] * num_layers))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plan.save(args.out)
    print(f"k per layer {plan.layers}; mean sparsity {plan.sparsity(layout):.4f} vs uniform "
          f"{element_sparsity(layout, args.uniform):.4f}; whole-plan output loss {plan.metadata['plan_loss']:.5f} vs "
          f"uniform {plan.metadata['uniform_plan_loss']:.5f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
