"""``evdit smoke``: tiny random CogVideoX / Wan / HunyuanVideo with tile plans; the two sparse kernels must agree."""

from __future__ import annotations

import time

from ..kernels.fa4 import fa4_status
from ..plan import MaskPlan, apply_mask_plan, num_plan_layers, remove_mask_plan
from . import positive_int


def _timed(forward, reps: int = 3):
    """``forward()``'s output and its median wall time in ms over ``reps`` calls, after one untimed call (the first
    call of a shape pays one-time set-up: allocations, kernel choice, mask caches)."""
    out = forward()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = forward()
        times.append(1e3 * (time.perf_counter() - t0))
    return out, sorted(times)[len(times) // 2]


def _cmd_smoke(args) -> int:
    import torch

    from ..tiny import TINY_FAMILIES, TinyVideo, tiny_inputs, tiny_transformer

    video = TinyVideo(frames=args.frames)
    print(f"{'model':32s} {'plan':>6s} {'kernel':>9s} {'max|gathered-flex|':>24s} {'dense ms':>9s} {'sparse ms':>9s}")
    worst = 0.0
    for family in TINY_FAMILIES:
        model = tiny_transformer(family)
        inputs = tiny_inputs(model, video)
        n = num_plan_layers(model)
        with torch.no_grad():
            dense, dense_ms = _timed(lambda: model(**inputs).sample)
            for kernel in ("gathered", "flex"):
                apply_mask_plan(model, MaskPlan.uniform(n, args.k), kernel=kernel)
                sparse, sparse_ms = _timed(lambda: model(**inputs).sample)
                apply_mask_plan(model, MaskPlan.uniform(n, args.k), kernel="flex" if kernel == "gathered" else "gathered")
                other = model(**inputs).sample
                remove_mask_plan(model)
                diff = (sparse - other).abs().max().item()
                worst = max(worst, diff)
                name = type(model).__name__
                print(f"{name:32s} {f'{args.k}:{video.frames - args.k}':>6s} {kernel:>9s} {diff:24.2e} "
                      f"{dense_ms:9.1f} {sparse_ms:9.1f}")
            assert dense.shape == sparse.shape
    ok = worst < 1e-5
    print(f"kernels agree: {'yes' if ok else 'NO'} (worst {worst:.2e}); ms: median of 3 calls after a warm-up; "
          "random weights: timings only, no quality")
    print(fa4_status())
    return 0 if ok else 1


def register(sub) -> None:
    smoke = sub.add_parser("smoke", help="tiny random CogVideoX/Wan/HunyuanVideo: install plans, check, time")
    smoke.add_argument("--frames", type=positive_int, default=6, help="latent frames of the tiny input (default 6)")
    smoke.add_argument("--k", type=positive_int, default=2, help="reference frames of the uniform plan (default 2)")
    smoke.set_defaults(func=_cmd_smoke)
