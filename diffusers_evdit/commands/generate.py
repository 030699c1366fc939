"""``evdit generate``: text-to-video with an :class:`~diffusers_evdit.EfficientVDiTPipeline` folder or repo.

    evdit generate --model ./cogvideox-evdit --prompt "a red panda eating bamboo" --steps 50 --out panda.mp4
    evdit generate --model THUDM/CogVideoX-5b --plan plan.json --prompt "..." --frames 49 --out panda.gif

With no size or step flags it uses the model's own defaults (the folder's ``generation_defaults.json``, or the
legacy ``evdit_demo.json``), then the pipeline's; flags override them, and the command prints what it uses and
from where. Before generating it estimates the work (tokens, steps, transformer calls, time on this device) and
warns, naming the flags, when the request is far from the model's own size or will take very long. Then it prints
the plan (k per layer), the element sparsity on the actual token layout and the mean step time. Progress: a bar on
a terminal, a line every few seconds in a log (``--verbose``: every step's time; ``--quiet``: the result only).

``--cp N`` runs on N GPUs with tile-sparse attention under diffusers' Ulysses context parallelism
(docs/parallel.md): the command relaunches itself under ``torchrun --standalone --nproc-per-node N`` (or, already
under ``torchrun --nproc-per-node N``, runs as one of its ranks); rank 0 prints and writes the video.

    evdit generate --model ./hunyuan-evdit --prompt "..." --frames 129 --height 720 --width 1280 --cp 4 --out a.mp4

``--out``: ``.mp4`` (H.264 through imageio-ffmpeg, a dependency), ``.gif``, or a folder ending in ``/`` for PNG frames.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import time

from ..kernels import KERNELS
from ..video_io import video_format, write_video  # noqa: F401  (write_video: old import path)
from . import positive_int


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "owner/name"


def model_reference(model: str | None) -> str:
    """``--model`` as ``from_pretrained`` takes it: ``None`` or ``"default"`` is the shipped demo model and
    ``"default/mlcd"`` / ``"default/evdit"`` its students, wherever the command runs; an existing folder or a Hub repo
    id is returned as is. A missing path that cannot be a Hub id (absolute, ``./``, ``~``, more than one ``/``, or
    under an existing local folder) is a ``FileNotFoundError`` naming the closest folders there, before any
    download is tried.

    Example:
        >>> model_reference("THUDM/CogVideoX-5b")
        'THUDM/CogVideoX-5b'
        >>> os.path.basename(model_reference("default/evdit"))
        'evdit'
    """
    from ..demo.loading import resolve_model

    if model is None or model == "default" or model.startswith("default/"):
        return resolve_model(model)  # says how to get the weights where a checkout has none
    if os.path.isdir(model):
        return model
    first = model.split("/")[0]
    if _HUB_ID.match(model) and not os.path.isdir(first):
        return model  # a Hub repo id
    parent = os.path.dirname(os.path.abspath(os.path.expanduser(model)))
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    close = difflib.get_close_matches(os.path.basename(model.rstrip("/")), _folders(parent), n=3)
    typed_parent = os.path.dirname(model.rstrip("/")) if parent == os.path.dirname(os.path.abspath(model)) else parent
    hint = f" Did you mean {' or '.join(repr(os.path.join(typed_parent, c)) for c in close)}?" if close else ""
    where = "" if os.path.isabs(model) else f" (relative to {os.getcwd()})"
    raise FileNotFoundError(f"no folder at {model!r}{where}.{hint} Pass a pipeline folder, a Hub repo id, or leave "
                            "--model out for the shipped demo model.")


def _folders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def check_video_path(path: str) -> str:
    """``"mp4"``, ``"gif"`` or ``"png"`` (a folder of frames) for ``--out``; ``ValueError`` naming the choices.

    Example:
        >>> check_video_path("out.gif")
        'gif'
    """
    return video_format(path)


class _StepTimer:
    """Per-step wall time from the transformer calls and the pipeline's step-end callback, and the token layout."""

    def __init__(self, pipe, progress, verbose: bool):
        from ..processors import family_for

        self.progress, self.verbose = progress, verbose
        self.times: list[float] = []
        self.layouts: dict[str, object] = {}
        self._start = None
        self._handles = []
        for slot in pipe._transformer_slots():
            module = getattr(getattr(pipe, slot), "_orig_mod", getattr(pipe, slot))
            family = family_for(module)
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(slot, family), with_kwargs=True))

    def _pre_hook(self, slot, family):
        def hook(module, args, kwargs):
            if self._start is None:
                self._start = time.perf_counter()
            if slot not in self.layouts:
                layout = family.video_layout(module, args, kwargs)
                text = kwargs.get("encoder_hidden_states")
                if family.text_position != "none" and text is not None:
                    layout = layout.with_text(text.shape[1], family.text_position)
                self.layouts[slot] = layout

        return hook

    def callback(self, pipe, step, timestep, callback_kwargs):
        now = time.perf_counter()
        if self._start is not None:
            self.times.append(now - self._start)
            if self.verbose:
                self.progress.write(f"step {step + 1}: {1e3 * self.times[-1]:.1f} ms (t={float(timestep):.1f})")
        self._start = now
        self.progress.update()
        return callback_kwargs

    def close(self):
        for handle in self._handles:
            handle.remove()


def _describe_plans(pipe) -> list[str]:
    lines = []
    for slot, plan in pipe.mask_plans.items():
        if plan is None:
            lines.append(f"{slot}: dense (no mask plan)")
        else:
            lines.append(f"{slot}: mask plan of {plan.num_layers} layers, k per layer {plan.layers}")
    return lines


def _relaunch_with_torchrun(args) -> int:
    """Run this very command line under ``torchrun --standalone --nproc-per-node args.cp``; return its exit code."""
    import subprocess
    import sys

    from ..parallel import SAFE_MULTI_GPU_ENV

    argv = getattr(args, "command_line", None)
    if argv is None:
        raise ValueError(
            "--cp N relaunches the evdit command line under torchrun, but this call did not come from the command "
            "line; launch it yourself: torchrun --nproc-per-node N -m diffusers_evdit.cli generate ... --cp N."
        )
    env = dict(os.environ)
    for key, value in SAFE_MULTI_GPU_ENV.items():
        env.setdefault(key, value)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.cp}",
           "-m", "diffusers_evdit.cli", *argv]
    print("running: " + " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd, env=env)


SOURCES = {"argument": "flag", "model": "model default", "pipeline": "pipeline default"}
FLAGS = {"num_frames": "--frames", "height": "--height", "width": "--width", "num_inference_steps": "--steps",
         "guidance_scale": "--guidance-scale", "fps": "--fps"}
#: A request is "far outside" the model's own size beyond this token ratio; "very long" beyond this many seconds.
TOKEN_RATIO_WARN = 2.0
LONG_RUN_S = 600.0
#: Fraction of the measured matmul FLOP/s a whole transformer call reaches (small matrices, norms, RoPE): rough.
EFFICIENCY = 0.25


def _settings_line(settings: dict, sources: dict) -> str:
    shown = [k for k in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "fps",
                         "max_sequence_length") if k in settings]
    parts = [f"{k}={settings[k]} ({SOURCES[sources[k]]})" for k in shown]
    return "settings: " + ", ".join(parts)


def work_warnings(pipe, settings: dict, sources: dict, work, seconds: float | None, device: str) -> list[str]:
    """Warnings for a request far from the model's own size or very long on ``device``, naming the flags."""
    from ..generation import estimate_work, pipeline_call_defaults

    warnings = []
    defaults = pipe.generation_defaults
    own = defaults.call_kwargs(pipe) if defaults is not None else {}
    what = "its generation defaults" if own else "the pipeline's defaults"
    reference = {**pipeline_call_defaults(pipe), **own}
    if all(reference.get(k) for k in ("num_frames", "height", "width")):
        ref = estimate_work(pipe, {**settings, **{k: reference[k] for k in ("num_frames", "height", "width")}})
        ratio = work.tokens / max(1, ref.tokens)
        if ratio > TOKEN_RATIO_WARN or ratio < 1 / (2 * TOKEN_RATIO_WARN):
            warnings.append(
                f"{work.tokens} tokens a call is {ratio:.2g}x the {ref.tokens} of the model's own size "
                f"({reference['num_frames']} frames, {reference['height']}x{reference['width']}, {what}); output "
                "quality is untested that far out. Change --frames/--height/--width (or drop them to use the model's)."
            )
    if seconds is not None and seconds > LONG_RUN_S:
        flags = [FLAGS[k] for k in ("num_inference_steps", "num_frames", "height", "width") if k in settings]
        hint = "" if device.startswith("cuda") else "; a GPU (--device cuda) is much faster"
        warnings.append(
            f"this will take roughly {seconds / 60:.0f} min on {device} ({work.transformer_calls} transformer calls of "
            f"{work.tokens} tokens). Lower {'/'.join(flags)}{hint}, or stop with Ctrl-C."
        )
    return warnings


def generate_frames(pipe, call: dict) -> list:
    """The frames of ``pipe(**call).frames[0]``. On a CPU a ``WanPipeline`` asked for PIL frames returns its latents
    and :func:`~diffusers_evdit.demo.decode_latents` decodes them: the pipeline's own decoding computation, run as a
    batch of two with channels-last convolutions, which on a CPU is faster than diffusers' single-video
    decode (BENCHMARKS.md, "VAE decoding on the CPU"). The frames agree with the pipeline's to one level of 255."""
    from diffusers import WanPipeline

    if call.get("output_type") == "pil" and isinstance(pipe, WanPipeline) and pipe._execution_device.type == "cpu":
        from PIL import Image

        from ..demo.generation import decode_latents

        latents = pipe(**{**call, "output_type": "latent"}).frames
        return [Image.fromarray(frame) for frame in decode_latents(pipe, latents)[0]]
    return pipe(**call).frames[0]


def _cmd_generate(args) -> int:
    import sys

    import torch

    from ..generation import call_arguments, device_flops, estimate_work, resolve_call
    from ..layout import TileLayout
    from ..pipeline import EfficientVDiTPipeline
    from ..plan import MaskPlan
    from ..progress import Progress, configure_pipeline_progress, progress_mode

    check_video_path(args.out)  # before loading anything
    args.model = model_reference(args.model)
    if args.plan and args.dense:
        raise ValueError("--plan and --dense exclude each other.")
    rank = 0
    if args.cp > 1:
        if "WORLD_SIZE" not in os.environ:
            return _relaunch_with_torchrun(args)
        if int(os.environ["WORLD_SIZE"]) != args.cp:
            raise ValueError(f"--cp {args.cp} but torchrun started {os.environ['WORLD_SIZE']} processes.")
        from ..parallel import init_distributed

        rank, _, cp_device = init_distributed(backend="gloo" if args.device == "cpu" else None)
        if cp_device.type == "cpu":
            torch.set_num_threads(1)
        args.device = str(cp_device)

    def say(*parts):
        if rank == 0 and not args.quiet:
            print(*parts, flush=True)

    def warn(line):
        if rank == 0:
            print(f"evdit: warning: {line}", file=sys.stderr, flush=True)

    plan_kwargs = {}
    if args.plan:
        plan_kwargs["mask_plan"] = MaskPlan.load(args.plan)
    if args.plan_2:
        plan_kwargs["mask_plan_2"] = MaskPlan.load(args.plan_2)
    if args.dense:
        plan_kwargs.update(mask_plan=None, mask_plan_2=None)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    try:
        pipe = EfficientVDiTPipeline.from_pretrained(
            args.model, dtype=getattr(torch, dtype_name), kernel=args.kernel, **plan_kwargs
        )
    except OSError as err:  # Hub/cache errors from diffusers and huggingface_hub
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"cannot load {args.model}: {err}") from None
    pipe.to(device)
    mode = progress_mode(args.quiet) if rank == 0 else "off"
    configure_pipeline_progress(pipe, mode, args.verbose)
    if args.cp > 1:
        from ..parallel import enable_tile_parallelism

        enable_tile_parallelism(pipe, ulysses_degree=args.cp)

    settings, sources = resolve_call(
        pipe, num_frames=args.frames, height=args.height, width=args.width, num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale, negative_prompt=args.negative_prompt, fps=args.fps,
    )
    fps = int(settings.pop("fps"))
    call = {"prompt": args.prompt, "output_type": "pil", **call_arguments(pipe, settings)}
    if args.seed is None and args.cp > 1:
        args.seed = 0  # every rank must start from the same noise
        say("--cp: no --seed given, using seed 0 on every rank")
    if args.seed is not None:
        call["generator"] = torch.Generator("cpu").manual_seed(args.seed)

    say(f"model {args.model}: {type(pipe).__name__} on {device} ({dtype_name})")
    say(_settings_line({**settings, "fps": fps}, sources))
    for line in _describe_plans(pipe):
        say(line)
    try:
        work = estimate_work(pipe, settings)
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a pipeline whose size is not read this way
        work = None
        say(f"work: not estimated ({type(err).__name__}: {err})")
    if work is not None:
        plan = pipe.mask_plan
        if plan is not None and work.latent_frames > 1:
            from ..processors import family_for

            position = family_for(getattr(pipe.transformer, "_orig_mod", pipe.transformer)).text_position
            layout = TileLayout(work.latent_frames, work.tokens_per_frame, work.text_tokens,
                                position if work.text_tokens else "none")
            work = estimate_work(pipe, settings, sparsity=plan.sparsity(layout))
        seconds = None
        if rank == 0 and args.cp == 1:
            seconds = work.flops / (EFFICIENCY * device_flops(pipe._execution_device, pipe.transformer.dtype))
        say(f"work: {work.describe()}" + (f"; roughly {seconds:.0f} s on {device}" if seconds is not None else ""))
        for line in work_warnings(pipe, settings, sources, work, seconds, device):
            warn(line)

    steps = settings.get("num_inference_steps") or (work.steps if work is not None else 0)
    progress = Progress(steps, "denoising", unit="step", mode=mode)
    timer = _StepTimer(pipe, progress, args.verbose and rank == 0)
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        call["callback_on_step_end"] = timer.callback
    try:
        start = time.perf_counter()
        frames = generate_frames(pipe, call)
        total = time.perf_counter() - start
    finally:
        timer.close()
        progress.close()

    for slot, slot_plan in pipe.mask_plans.items():
        layout = timer.layouts.get(slot)
        if layout is None:
            continue
        shape = (
            f"{layout.num_frames} latent frames x {layout.tokens_per_frame} tokens"
            + (f" + {layout.num_text_tokens} text tokens" if layout.num_text_tokens else "")
        )
        if slot_plan is None:
            say(f"{slot}: sparsity 0.0% (dense) on {shape}")
        else:
            names = sorted(set(slot_plan.describe(layout.num_frames)))
            say(f"{slot}: sparsity {slot_plan.sparsity(layout):.1%} ({', '.join(names)}) on {shape}")
    if timer.times:
        mean = sum(timer.times) / len(timer.times)
        say(
            f"{len(timer.times)} steps, mean {1e3 * mean:.1f} ms/step; "
            f"total {total:.2f} s with text encoding and decoding"
        )
    if rank == 0:
        path = write_video(frames, args.out, fps=fps)
        width, height = frames[0].size
        asked = settings.get("num_frames")
        rounded = f"; {type(pipe).__name__} made {len(frames)} of the {asked} frames asked for (the frame counts its " \
                  "VAE takes)" if asked and asked != len(frames) else ""
        print(f"wrote {path} ({len(frames)} frames of {width}x{height}, {fps} fps{rounded})", flush=True)
    if args.cp > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def register(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="text-to-video with an EfficientVDiT pipeline folder or repo, at the model's own defaults",
    )
    gen.add_argument("--model", default=None,
                     help="pipeline folder (save_pretrained) or Hub repo id (default: the shipped demo model; "
                          "default/mlcd and default/evdit: its students)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--plan", default=None, help="mask plan JSON for transformer (default: the folder's saved plan)")
    gen.add_argument("--plan-2", default=None, help="mask plan JSON for transformer_2 (Wan 2.2; default: as --plan)")
    gen.add_argument("--dense", action="store_true", help="ignore saved plans, run dense")
    gen.add_argument("--kernel", default="auto", choices=KERNELS)
    model_default = "default: the model's generation_defaults.json, else the pipeline's"
    gen.add_argument("--steps", type=positive_int, default=None, help=f"denoising steps ({model_default})")
    gen.add_argument("--frames", type=positive_int, default=None, help=f"video frames ({model_default})")
    gen.add_argument("--height", type=positive_int, default=None, help=f"pixels ({model_default})")
    gen.add_argument("--width", type=positive_int, default=None, help=f"pixels ({model_default})")
    gen.add_argument("--guidance-scale", type=float, default=None,
                     help=f"classifier-free guidance; set on pipe.guider where the pipeline has one ({model_default})")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--fps", type=positive_int, default=None,
                     help="frames per second of the file (default: the model's, 8)")
    gen.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    gen.add_argument(
        "--cp",
        type=positive_int,
        default=1,
        metavar="N",
        help="run on N GPUs (N processes) with tile-sparse attention under diffusers' Ulysses context parallelism; "
        "relaunches itself with torchrun unless already under torchrun --nproc-per-node N (docs/parallel.md)",
    )
    gen.add_argument("--out", required=True,
                     help="output: .mp4 (H.264, default choice), .gif, or a folder ending in / for PNG frames")
    gen.set_defaults(func=_cmd_generate)
