"""Measure the ways a processor's attention product can be intercepted (docs/processors.md says which one is used).

For one Wan self-attention module (``dispatch_attention_fn``) and one CogVideoX one (``F.scaled_dot_product_attention``)
it times, per call (the fastest of alternating rounds), the stock processor and two interceptions that all run dense
attention, so the numbers compare only the plumbing: the stock ``__call__`` re-bound to a copy of its globals (what
diffusers-evdit does) and the stock processor under a ``TorchFunctionMode`` that catches the SDPA call; and it notes
whether each traces under ``torch.compile(fullgraph=True)``. Prints a table and writes JSON.

    python docs/measure_interception.py --out interception.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from diffusers_evdit.processors.intercept import intercepting_call
from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_transformer


class _SdpaMode(TorchFunctionMode):
    """Catches every ``F.scaled_dot_product_attention`` inside the block (and sees every other torch call too)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        return func(*args, **kwargs)


def _capture(model, module_name, inputs):
    """The (args, kwargs) the attention module receives in a forward."""
    seen = {}
    module = model.get_submodule(module_name)

    def hook(mod, args, kwargs):
        seen.setdefault("call", (args, kwargs))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return module, seen["call"]


def _time(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def _compiles(fn) -> bool:
    torch._dynamo.reset()
    try:
        torch.compile(fn, backend="eager", fullgraph=True)()
        return True
    except Exception:  # any tracing failure counts as "does not compile"
        return False


def measure(repeats: int, rounds: int = 5) -> list[dict]:
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    rows = []
    for family, module_name in (("wan", "blocks.0.attn1"), ("cogvideox", "transformer_blocks.0.attn1")):
        model = tiny_transformer(family)
        small = TinyVideo(frames=2, height=4, width=4, text_tokens=3)  # tiny tensors: the time is the plumbing
        module, (args, kwargs) = _capture(model, module_name, tiny_inputs(model, small))
        stock = module.processor
        twin = intercepting_call(stock, dispatch_attention_fn, F.scaled_dot_product_attention)
        variants = {
            "stock processor": lambda: stock(module, *args, **kwargs),
            "re-bound globals (used)": lambda: twin(stock, module, *args, **kwargs),
        }

        def with_mode():
            with _SdpaMode():
                return stock(module, *args, **kwargs)

        variants["TorchFunctionMode"] = with_mode
        with torch.no_grad():
            best = {name: float("inf") for name in variants}
            for _ in range(rounds):  # alternating rounds, the fastest of each: a shared CPU is noisy
                for name, fn in variants.items():
                    best[name] = min(best[name], _time(fn, repeats))
            for name, fn in variants.items():
                rows.append({"processor": type(stock).__name__, "mechanism": name,
                             "us_per_call": round(best[name], 1), "compiles_fullgraph": _compiles(fn)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the fastest round counts")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.repeats, args.rounds)
    print(f"{'processor':32} {'mechanism':26} {'us/call':>9} fullgraph")
    for row in rows:
        print(f"{row['processor']:32} {row['mechanism']:26} {row['us_per_call']:9.1f} {row['compiles_fullgraph']}")
    if args.out:
        meta = {"torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor()}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
