"""``evdit generate``: text-to-video with an :class:`~diffusers_evdit.EfficientVDiTPipeline` folder or repo.

    evdit generate --model ./cogvideox-evdit --prompt "a red panda eating bamboo" --steps 50 --out panda.mp4
    evdit generate --model THUDM/CogVideoX-5b --plan plan.json --prompt "..." --frames 49 --out panda.gif

Prints the plan (k per layer), the element sparsity on the actual token layout, and the time of every denoising
step; diffusers' progress bar shows the progress. ``--cp N`` runs on N GPUs with tile-sparse attention under
diffusers' Ulysses context parallelism (docs/parallel.md): the command relaunches itself under ``torchrun
--standalone --nproc-per-node N`` (or, already under ``torchrun --nproc-per-node N``, runs as one of its ranks);
rank 0 prints and writes the video.

    evdit generate --model ./hunyuan-evdit --prompt "..." --frames 129 --height 720 --width 1280 --cp 4 --out a.mp4
 ``.gif`` is written with Pillow; ``.mp4`` needs ``imageio`` with
``imageio-ffmpeg``, or ``opencv-python``.
"""

from __future__ import annotations

import inspect
import os
import time

from ..kernels import KERNELS

GIF_EXTENSIONS = (".gif",)
VIDEO_EXTENSIONS = (".mp4",)


def check_video_path(path: str) -> str:
    """Return how ``path`` will be written (``"gif"`` or ``"video"``); ``ValueError`` saying what to install or which
    extension to use when it cannot be written here.

    Example:
        >>> check_video_path("out.gif")
        'gif'
    """
    from diffusers.utils.import_utils import is_imageio_available, is_opencv_available

    ext = os.path.splitext(path)[1].lower()
    if ext in GIF_EXTENSIONS:
        return "gif"
    if ext in VIDEO_EXTENSIONS:
        if is_imageio_available():
            try:
                import imageio_ffmpeg  # noqa: F401
            except ImportError:
                if not is_opencv_available():
                    raise ValueError(
                        f"Writing {ext} with imageio needs its ffmpeg backend: pip install imageio-ffmpeg (or write a "
                        ".gif with --out video.gif)."
                    ) from None
            return "video"
        if is_opencv_available():
            return "video"
        raise ValueError(
            f"Cannot write {ext} here: install imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg) or "
            "opencv-python, or write a .gif with --out video.gif (Pillow)."
        )
    raise ValueError(
        f"Cannot write {path!r}: the extension {ext or '(none)'} is not supported; use .mp4 (imageio/opencv) or .gif."
    )


def write_video(frames, path: str, fps: int) -> str:
    """Write a list of PIL frames to ``path`` (``.gif`` with Pillow, ``.mp4`` with diffusers' ``export_to_video``).

    Example:
        >>> from PIL import Image
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "v.gif")
        >>> write_video([Image.new("RGB", (8, 8))] * 3, path, fps=8) == path
        True
    """
    from diffusers.utils import export_to_gif, export_to_video

    kind = check_video_path(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if kind == "gif":
        return export_to_gif(list(frames), path, fps=fps)
    return export_to_video(list(frames), path, fps=fps)


class _StepTimer:
    """Per-step wall time from the transformer calls and the pipeline's step-end callback, and the token layout."""

    def __init__(self, pipe, write):
        from ..processors import family_for

        self.write = write
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
            self.write(f"step {step + 1}: {1e3 * self.times[-1]:.1f} ms (t={float(timestep):.1f})")
        self._start = now
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

    from ..cli import build_parser
    from ..parallel import SAFE_MULTI_GPU_ENV

    argv = sys.argv[1:]
    try:
        same = vars(build_parser().parse_args(argv)) == vars(args)
    except SystemExit:
        same = False
    if not same:
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


def _cmd_generate(args) -> int:
    import torch

    from ..pipeline import EfficientVDiTPipeline
    from ..plan import MaskPlan

    check_video_path(args.out)  # before loading anything
    if args.plan and args.dense:
        raise ValueError("--plan and --dense exclude each other.")
    if args.cp < 1:
        raise ValueError(f"--cp must be >= 1, got {args.cp}.")
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

    def say(*parts, **kwargs):
        if rank == 0:
            print(*parts, **kwargs)

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
    pipe.set_progress_bar_config(disable=rank != 0)
    if args.cp > 1:
        from ..parallel import enable_tile_parallelism

        enable_tile_parallelism(pipe, ulysses_degree=args.cp)

    call = {"prompt": args.prompt, "output_type": "pil"}
    optional = {
        "negative_prompt": args.negative_prompt,
        "num_inference_steps": args.steps,
        "num_frames": args.frames,
        "height": args.height,
        "width": args.width,
        "guidance_scale": args.guidance_scale,
    }
    params = inspect.signature(pipe.__call__).parameters
    for name, value in optional.items():
        if value is None:
            continue
        if name not in params:
            raise ValueError(f"{type(pipe).__name__} does not take {name}; drop --{name.replace('_', '-')}.")
        call[name] = value
    if args.seed is None and args.cp > 1:
        args.seed = 0  # every rank must start from the same noise
        say("--cp: no --seed given, using seed 0 on every rank")
    if args.seed is not None:
        call["generator"] = torch.Generator("cpu").manual_seed(args.seed)

    from tqdm.auto import tqdm

    say(f"model {args.model}: {type(pipe).__name__} on {device} ({dtype_name})")
    for line in _describe_plans(pipe):
        say(line)
    timer = _StepTimer(pipe, tqdm.write if rank == 0 else (lambda line: None))
    if "callback_on_step_end" in params:
        call["callback_on_step_end"] = timer.callback
    try:
        start = time.perf_counter()
        frames = pipe(**call).frames[0]
        total = time.perf_counter() - start
    finally:
        timer.close()

    for slot, plan in pipe.mask_plans.items():
        layout = timer.layouts.get(slot)
        if layout is None:
            continue
        shape = (
            f"{layout.num_frames} latent frames x {layout.tokens_per_frame} tokens"
            + (f" + {layout.num_text_tokens} text tokens" if layout.num_text_tokens else "")
        )
        if plan is None:
            say(f"{slot}: sparsity 0.0% (dense) on {shape}")
        else:
            names = sorted(set(plan.describe(layout.num_frames)))
            say(f"{slot}: sparsity {plan.sparsity(layout):.1%} ({', '.join(names)}) on {shape}")
    if timer.times:
        mean = sum(timer.times) / len(timer.times)
        say(
            f"{len(timer.times)} steps, mean {1e3 * mean:.1f} ms/step; "
            f"total {total:.2f} s with text encoding and decoding"
        )
    if rank == 0:
        path = write_video(frames, args.out, fps=args.fps)
        say(f"wrote {path} ({len(frames)} frames)")
    if args.cp > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def register(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="text-to-video with an EfficientVDiT pipeline folder or repo (progress, per-step time, sparsity)",
    )
    gen.add_argument("--model", required=True, help="pipeline folder (save_pretrained) or Hub repo id")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--plan", default=None, help="mask plan JSON for transformer (default: the folder's saved plan)")
    gen.add_argument("--plan-2", default=None, help="mask plan JSON for transformer_2 (Wan 2.2; default: as --plan)")
    gen.add_argument("--dense", action="store_true", help="ignore saved plans, run dense")
    gen.add_argument("--kernel", default="auto", choices=KERNELS)
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    gen.add_argument("--frames", type=int, default=None, help="video frames (default: the pipeline's)")
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--guidance-scale", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--fps", type=int, default=8)
    gen.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    gen.add_argument(
        "--cp",
        type=int,
        default=1,
        metavar="N",
        help="run on N GPUs (N processes) with tile-sparse attention under diffusers' Ulysses context parallelism; "
        "relaunches itself with torchrun unless already under torchrun --nproc-per-node N (docs/parallel.md)",
    )
    gen.add_argument("--out", required=True, help="output video: .mp4 (imageio/opencv) or .gif (Pillow)")
    gen.set_defaults(func=_cmd_generate)
