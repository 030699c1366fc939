"""``evdit profile``: Attention Tile diagnostics of a video transformer (JSON summary + PNG plots).

    evdit profile --model tiny:cogvideox --out profile/                       # tiny random model, CPU, seconds
    evdit profile --model THUDM/CogVideoX-5b --device cuda --layers 0,10,20,41 --timesteps 500,900 --prompts 2 \\
        --max-queries 2048 --out profile/

Inputs are random latents and random text embeddings (see :func:`diffusers_evdit.analysis.random_inputs`); prompt
``p`` uses seed ``seed + p``. For real prompts, record a pipeline run with
:func:`diffusers_evdit.analysis.record_transformer_inputs`, ``torch.save`` the list and pass ``--inputs FILE.pt``.

This module also holds the model and input options shared with ``evdit search``.
"""

from __future__ import annotations

import argparse
import sys

from ..kernels import KERNELS
from ..progress import progress_mode
from . import non_negative_int, positive_int

DTYPES = ("float32", "bfloat16", "float16")


def int_list(text: str) -> list[int]:
    """``"1,2,3"`` as ``[1, 2, 3]``: an argparse type (a clear error for anything else)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _latent(text: str) -> tuple[int, int, int]:
    values = int_list(text)
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--latent takes FRAMES,HEIGHT,WIDTH, got {text!r}")
    return tuple(values)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options naming the transformer and its inputs (shared by ``evdit profile`` and ``evdit search``)."""
    g = parser.add_argument_group("model and inputs")
    g.add_argument("--model", required=True,
                   help="diffusers pipeline/transformer path or Hub id, tiny:cogvideox|wan|hunyuan_video (tiny random "
                        "model), or shape:cogvideox-5b|wan2.1-1.3b (full-size random weights, for timing)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--dtype", choices=DTYPES, default=None, help="default: bfloat16 on cuda, float32 on cpu")
    g.add_argument("--num-layers", type=positive_int, default=None, help="tiny:/shape: models only: number of blocks")
    where = "the model folder's generation_defaults.json, else"
    g.add_argument("--frames", type=positive_int, default=None, help=f"video frames (pixels; default: {where} 49)")
    g.add_argument("--height", type=positive_int, default=None, help=f"video height in pixels (default: {where} 480)")
    g.add_argument("--width", type=positive_int, default=None, help=f"video width in pixels (default: {where} 720)")
    g.add_argument("--latent", type=_latent, default=None,
                   help="latent FRAMES,HEIGHT,WIDTH, overriding --frames/--height/--width (tiny default 6,8,8)")
    g.add_argument("--text-tokens", type=non_negative_int, default=None,
                   help="text length (default: the model's; tiny models 7)")
    g.add_argument("--inputs", default=None,
                   help="torch.save'd list of transformer forward-keyword dicts (record_transformer_inputs) instead "
                        "of random inputs")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--kernel", choices=KERNELS, default="auto")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_model(args):
    """``(transformer, device, dtype)`` from the shared options."""
    import torch

    from ..analysis import load_transformer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    transformer = load_transformer(args.model, device=device, dtype=dtype, num_layers=args.num_layers)
    return transformer, device, dtype


FALLBACK_SIZE = {"frames": 49, "height": 480, "width": 720}  # CogVideoX's video, for models without defaults


def video_size(args) -> tuple[int, int, int]:
    """``(frames, height, width)`` in pixels: each flag given, else the local model folder's generation defaults
    (the size the model is meant for; a student folder's own), else :data:`FALLBACK_SIZE`."""
    import os

    from ..generation import GenerationDefaults

    given = {"frames": args.frames, "height": args.height, "width": args.width}
    defaults = GenerationDefaults.load(args.model) if os.path.isdir(args.model) else None
    if defaults is not None:
        own = defaults.call_kwargs()
        own = {"frames": own.get("num_frames"), "height": own.get("height"), "width": own.get("width")}
        given = {k: v if v is not None else own[k] for k, v in given.items()}
    return tuple(v if v is not None else FALLBACK_SIZE[k] for k, v in given.items())


def make_inputs(args, transformer, timesteps: list, seeds: list[int]) -> list[dict]:
    """Random inputs for every (timestep, seed), timestep-major; or the ``--inputs`` file."""
    import torch

    from ..analysis import latent_size, move_inputs, random_inputs

    param = next(transformer.parameters())
    if args.inputs:
        inputs = torch.load(args.inputs, map_location="cpu", weights_only=False)
        if isinstance(inputs, dict):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, dict) for x in inputs):
            raise ValueError(f"{args.inputs}: expected a list of forward-keyword dicts (record_transformer_inputs).")
        return [move_inputs(x, param.device, param.dtype) for x in inputs]
    tiny = args.model.startswith("tiny:")
    if args.latent is not None:
        latent = args.latent
    elif tiny:
        from ..tiny import TinyVideo

        v = TinyVideo()
        latent = (v.frames, v.height, v.width)
    else:
        latent = latent_size(transformer, *video_size(args))
    text = args.text_tokens if args.text_tokens is not None else (7 if tiny else None)
    return [random_inputs(transformer, *latent, timestep=t, seed=s, text_tokens=text) for t in timesteps for s in seeds]


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def _cmd_profile(args) -> int:
    from ..analysis import profile_attention

    transformer, device, dtype = load_model(args)
    seeds = [args.seed + p for p in range(args.prompts)]
    inputs = make_inputs(args, transformer, args.timesteps, seeds)
    if args.inputs:
        pairs = None
    else:
        pairs = [(g * args.prompts, g * args.prompts + 1) for g in range(len(args.timesteps))] if args.prompts >= 2 else []
    layers = None if args.layers in (None, "all") else int_list(args.layers)
    profile = profile_attention(
        transformer, inputs, layers=layers, pairs=pairs, max_queries=args.max_queries, query_chunk=args.query_chunk,
        kernel=args.kernel, progress=progress_mode(args.quiet or args.no_progress) == "bar",
    )
    profile.meta.update(model=args.model, device=str(device), dtype=str(dtype).replace("torch.", ""),
                        seeds=seeds if not args.inputs else None)
    try:
        paths = profile.save(args.out, plots=not args.no_plots)
    except ImportError as err:
        print(f"evdit: error: {err} (summary.json was written)", file=sys.stderr)
        return 2
    lay = profile.meta["layout"]
    print(f"{profile.meta['model_class']}: {lay['num_frames']} latent frames x {lay['tokens_per_frame']} tokens, "
          f"{lay['num_text_tokens']} text tokens; {len(inputs)} inputs")
    print(f"{'layer':>5s} {'diag/off':>9s} {'text mass':>9s} {'loc d=1':>8s} {'loc d=F-1':>9s} "
          f"{'ovl 90%':>8s} {'ovl 95%':>8s} {'ovl 99%':>8s}")
    for layer, s in sorted(profile.layers.items()):
        ovl = s.get("overlap", {})
        curve = s["locality_curve"] or [None]
        print(f"{layer:5d} {_fmt(s['diag_offdiag_ratio'], '9.3f')} {_fmt(s['text_mass'], '9.3f')} "
              f"{_fmt(curve[0], '8.3f')} {_fmt(curve[-1], '9.3f')} {_fmt(ovl.get('0.9'), '8.3f')} "
              f"{_fmt(ovl.get('0.95'), '8.3f')} {_fmt(ovl.get('0.99'), '8.3f')}")
    ratios = [s["diag_offdiag_ratio"] for s in profile.layers.values() if s["diag_offdiag_ratio"] is not None]
    if ratios:
        print(f"mean diagonal/off-diagonal tile ratio: {sum(ratios) / len(ratios):.3f}x")
    print("wrote " + ", ".join(paths))
    return 0


def register(sub) -> None:
    p = sub.add_parser("profile", help="Attention Tile diagnostics: tile heatmaps, locality, data independence")
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="output folder (summary.json, heatmap_layer*.png, curves.png)")
    p.add_argument("--layers", default=None, help="comma-separated plan-layer indices (default: all)")
    p.add_argument("--timesteps", type=int_list, default=[500], help="comma-separated timesteps (default 500)")
    p.add_argument("--prompts", type=positive_int, default=2,
                   help="random prompts per timestep; the first two are compared for data independence (default 2)")
    p.add_argument("--max-queries", type=positive_int, default=None,
                   help="evenly spaced video queries per layer (default all)")
    p.add_argument("--query-chunk", type=positive_int, default=1024,
                   help="queries per probability block (default 1024)")
    p.add_argument("--no-plots", action="store_true", help="JSON only (no matplotlib needed)")
    p.set_defaults(func=_cmd_profile)
