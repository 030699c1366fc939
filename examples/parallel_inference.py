"""Text-to-video with an EfficientVDiTPipeline on N GPUs: tile-sparse attention under diffusers' Ulysses context
parallelism (see docs/parallel.md). Every rank runs the same call; rank 0 prints the per-step times and writes the
video.

    # 4 GPUs, a saved EfficientVDiT folder (its mask plan) or any diffusers repo of a supported pipeline
    torchrun --nproc-per-node 4 examples/parallel_inference.py --model hunyuanvideo-community/HunyuanVideo \\
        --k 1 --frames 129 --height 720 --width 1280 --steps 50 --out panda.mp4

    # CPU check of the code path: 2 processes (gloo), a tiny random pipeline, uniform 1:F-1 plan
    torchrun --nproc-per-node 2 examples/parallel_inference.py --model tiny:cogvideox --k 1

``--model tiny:<family>`` (``cogvideox``, ``wan``, ``hunyuan_video``) builds a tiny random pipeline in code; it
returns latents and, with ``--compare``, also runs the same call without parallelism on rank 0 and prints the
largest difference. Plans: ``--plan plan.json``, ``--k K`` (uniform ``K:F-K``), ``--dense``, or (default) the folder's
saved plan.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys
import time

import torch


def build_pipeline(args, device, dtype):
    """The EfficientVDiTPipeline and its call arguments (plan applied, on ``device``)."""
    from diffusers_evdit import EfficientVDiTPipeline, MaskPlan, num_plan_layers

    if args.model.startswith("tiny:"):
        from diffusers_evdit.tiny import tiny_pipeline, tiny_pipeline_inputs

        family = args.model.split(":", 1)[1]
        pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline(family))
        call = tiny_pipeline_inputs(pipe, seed=args.seed, steps=args.steps or 2)
    else:
        pipe = EfficientVDiTPipeline.from_pretrained(args.model, dtype=dtype, kernel=args.kernel)
        call = {"prompt": args.prompt, "output_type": "pil" if args.out else "latent"}
        optional = {"num_inference_steps": args.steps, "num_frames": args.frames, "height": args.height,
                    "width": args.width, "guidance_scale": args.guidance_scale}
        params = inspect.signature(pipe.__call__).parameters
        call.update({k: v for k, v in optional.items() if v is not None and k in params})
        call["generator"] = torch.Generator("cpu").manual_seed(args.seed)
    if args.plan:
        pipe.set_mask_plan(MaskPlan.load(args.plan), kernel=args.kernel)
    elif args.k is not None:
        pipe.set_mask_plan(MaskPlan.uniform(num_plan_layers(pipe.transformer), args.k), kernel=args.kernel)
    elif args.dense:
        pipe.set_mask_plan(None)
    pipe.to(device)
    return pipe, call


class StepTimes:
    """``callback_on_step_end`` that records the wall time of each denoising step (device synchronized)."""

    def __init__(self, device):
        self.device = device
        self.times: list[float] = []
        self.last = None

    def start(self):
        self._sync()
        self.last = time.perf_counter()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, pipe, step, timestep, callback_kwargs):
        self._sync()
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        return callback_kwargs


def main(argv=None) -> int:
    from diffusers_evdit.kernels import KERNELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pipeline folder / Hub repo, or tiny:<family>")
    plan = parser.add_mutually_exclusive_group()
    plan.add_argument("--plan", default=None, help="mask plan JSON for the transformer(s)")
    plan.add_argument("--k", type=int, default=None, help="uniform K:F-K plan on every layer")
    plan.add_argument("--dense", action="store_true", help="no plan (dense)")
    parser.add_argument("--kernel", default="auto", choices=KERNELS)
    parser.add_argument("--prompt", default="a red panda eating bamboo in a misty forest")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ulysses-degree", type=int, default=None, help="default: the number of processes")
    parser.add_argument("--ulysses-anything", action="store_true", help="allow token counts not divisible by N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--compare", action="store_true", help="also run without parallelism (rank 0) and compare")
    parser.add_argument("--out", default=None, help="video file written by rank 0 (.mp4 or .gif)")
    args = parser.parse_args(argv)

    from diffusers_evdit.parallel import enable_tile_parallelism, init_distributed

    rank, world, device = init_distributed()
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core a process
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    pipe, call = build_pipeline(args, device, getattr(torch, dtype_name))
    single = copy.deepcopy(pipe) if args.compare and rank == 0 else None
    if world > 1:
        enable_tile_parallelism(pipe, ulysses_degree=args.ulysses_degree, ulysses_anything=args.ulysses_anything)
    pipe.set_progress_bar_config(disable=True)

    timer = StepTimes(device)
    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        call["callback_on_step_end"] = timer
    generator = call.get("generator")
    seed_state = generator.get_state() if generator is not None else None
    timer.start()
    output = pipe(**call).frames
    torch.distributed.barrier()

    if rank == 0:
        plans = {slot: (None if p is None else p.layers) for slot, p in pipe.mask_plans.items()}
        print(f"{type(pipe).__name__} on {world} x {device.type} ({dtype_name}), Ulysses degree "
              f"{args.ulysses_degree or world}; plans {plans}")
        for i, t in enumerate(timer.times):
            print(f"step {i + 1}: {1e3 * t:.1f} ms")
        if len(timer.times) > 1:
            steady = timer.times[1:]
            print(f"mean step (after the first): {1e3 * sum(steady) / len(steady):.1f} ms")
        if single is not None:
            if seed_state is not None:
                generator.set_state(seed_state)
            call.pop("callback_on_step_end", None)
            reference = single(**call).frames
            if isinstance(output, torch.Tensor):
                diff = (output.float() - reference.float()).abs().max().item()
                print(f"max |parallel - single process| = {diff:.3g}")
        if args.out and not isinstance(output, torch.Tensor):
            from diffusers_evdit.commands.generate import write_video

            print(f"wrote {write_video(output[0], args.out, fps=8)}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
