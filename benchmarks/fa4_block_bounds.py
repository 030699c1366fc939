"""How close can a block-sparse kernel (FlashAttention-4, FlexAttention) get to the ideal speedup of a ``k:F-k`` mask?

A kernel that computes whole ``q_block x kv_block`` tiles does at least the work of every tile holding a kept pair.
Two ways to lay out the tokens, counted exactly from the layouts (no GPU, no timing):

* as the model orders them: frames straddle blocks, those tiles are computed whole (partial, through the mask_mod);
  ``straddle_bound_pct`` = 100 * kept pairs / pairs in the kept tiles;
* every frame (and the text) padded to whole blocks: no tile straddles, but the padding is computed too;
  ``padded_bound_pct`` = 100 * kept pairs / kept pairs of the padded layout.

Either bound caps ``pct_of_ideal`` of ``evdit bench kernels`` for such a kernel before any kernel inefficiency.

    python benchmarks/fa4_block_bounds.py --json FILE   # kept as block_bounds in benchmarks/results/kernels-fa4-h100.json
"""

from __future__ import annotations

import argparse
import json
import math

from diffusers_evdit.bench.kernels import SHAPES, SMALL_SHAPES
from diffusers_evdit.kernels.fa4 import block_sparsity
from diffusers_evdit.layout import TileLayout
from diffusers_evdit.masks import allowed_pairs, format_mask

BLOCKS = ((128, 128), (128, 64), (64, 64))


def bounds(layout: TileLayout, k_ref: int, q_block: int, kv_block: int) -> dict:
    kept = allowed_pairs(layout, k_ref)
    sp = block_sparsity(layout, k_ref, q_block, kv_block)
    step = math.lcm(q_block, kv_block)

    def pad(x):
        return -(-x // step) * step

    padded = TileLayout(layout.num_frames, pad(layout.tokens_per_frame), pad(layout.num_text_tokens),
                        layout.text_position)
    return {"straddle_bound_pct": 100 * kept / sp.computed_pairs(),
            "partial_tile_share": float(sp.partial.sum()) / max(float((sp.full | sp.partial).sum()), 1.0),
            "padded_bound_pct": 100 * kept / allowed_pairs(padded, k_ref)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    rows = []
    for shape in SMALL_SHAPES + SHAPES:
        for k_ref in shape.masks:
            for q_block, kv_block in BLOCKS:
                row = {"shape": shape.name, "mask": format_mask(shape.frames, k_ref), "seq_len": shape.layout.seq_len,
                       "q_block": q_block, "kv_block": kv_block, **bounds(shape.layout, k_ref, q_block, kv_block)}
                rows.append(row)
                print(f"{row['shape']:>24} {row['mask']:>6} {q_block:>4}x{kv_block:<4} straddling "
                      f"{row['straddle_bound_pct']:5.1f}% (partial tiles {100 * row['partial_tile_share']:4.1f}%), "
                      f"padded {row['padded_bound_pct']:5.1f}%")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"benchmark": "fa4-block-bounds", "note": "counted from the layouts (no GPU, no timing)",
                       "blocks": BLOCKS, "rows": rows}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
