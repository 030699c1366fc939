"""Generating videos with a pipeline, timed: denoising steps, transformer calls and VAE decoding."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from .model import GenerationConfig


class _Timer:
    """Per-step wall time (step-end callback) and per-forward transformer time (forward hooks)."""

    def __init__(self, pipe):
        self.cuda = str(pipe._execution_device).startswith("cuda")
        self.step_times: list[float] = []
        self.forward_times: list[float] = []
        self._step_start: float | None = None
        self._fwd_start: float | None = None
        self.layout = None
        module = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
        self._handles = [
            module.register_forward_pre_hook(self._pre, with_kwargs=True),
            module.register_forward_hook(self._post),
        ]

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _pre(self, module, args, kwargs):
        if self.layout is None:
            try:
                from ..processors import family_for

                family = family_for(module)
                layout = family.video_layout(module, args, kwargs)
                text = kwargs.get("encoder_hidden_states")
                if family.text_position != "none" and text is not None:
                    layout = layout.with_text(text.shape[1], family.text_position)
                self.layout = layout
            except (TypeError, ValueError, AttributeError):
                pass
        now = self._now()
        if self._step_start is None:
            self._step_start = now
        self._fwd_start = now

    def _post(self, module, args, output):
        if self._fwd_start is not None:
            self.forward_times.append(self._now() - self._fwd_start)
            self._fwd_start = None

    def callback(self, pipe, step, timestep, callback_kwargs):
        now = self._now()
        if self._step_start is not None:
            self.step_times.append(now - self._step_start)
        self._step_start = None
        return callback_kwargs

    def close(self):
        for h in self._handles:
            h.remove()


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def channels_last_convolutions(module: torch.nn.Module) -> torch.nn.Module:
    """Store the weights of every 2D and 3D convolution in ``module`` channels-last, in place; returns ``module``.

    The memory format only: every result is the same up to float rounding. On a CPU the demo VAE then decodes
    faster: oneDNN's convolutions and the VAE's norms over channels both read channels-last tensors faster
    (BENCHMARKS.md, "VAE decoding on the CPU"). Idempotent.

    Example:
        >>> conv = channels_last_convolutions(torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3)))[0]
        >>> conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
        True
    """
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv3d):
            sub.to(memory_format=torch.channels_last_3d)
        elif isinstance(sub, torch.nn.Conv2d):
            sub.to(memory_format=torch.channels_last)
    return module


def decode_latents(pipe, latents: torch.Tensor, batch_size: int | None = None) -> list[np.ndarray]:
    """Decode ``WanPipeline`` output latents (``output_type="latent"``) to ``uint8 (T, H, W, 3)`` videos.

    The same computation as the end of ``WanPipeline.__call__`` (de-normalise with the VAE's ``latents_mean`` /
    ``latents_std``, decode, post-process), but in batches of ``batch_size`` videos across prompts (default: two on
    a CPU, which decodes two a call faster per video than eight; eight elsewhere). On CPU a single latent is decoded
    as a batch of two: PyTorch runs the VAE's small 3D convolutions on its slow reference path for batch 1. On CPU
    the VAE's convolutions are also switched to channels-last once (:func:`channels_last_convolutions`: same
    results, faster). BENCHMARKS.md, "VAE decoding on the CPU", has the measurements behind these choices.

    Example:
        >>> from diffusers_evdit.demo import load_pipeline
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> lat = pipe("a red circle bouncing on a gray background", output_type="latent", **gen.call_kwargs()).frames
        >>> decode_latents(pipe, lat)[0].shape
        (13, 64, 64, 3)
    """
    vae = pipe.vae
    on_cpu = vae.device.type == "cpu"
    if on_cpu:
        channels_last_convolutions(vae)
    batch_size = max(1, batch_size or (2 if on_cpu else 8))
    z = vae.config.z_dim
    out: list[np.ndarray] = []
    for i in range(0, latents.shape[0], batch_size):
        lat = latents[i : i + batch_size].to(vae.device, vae.dtype)
        n = lat.shape[0]
        if n == 1 and on_cpu:
            lat = torch.cat([lat, lat])
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(lat.device, lat.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(lat.device, lat.dtype)
        with torch.inference_mode():
            video = vae.decode(lat / inv_std + mean, return_dict=False)[0][:n]
        frames = np.asarray(pipe.video_processor.postprocess_video(video, output_type="np"), dtype=np.float32)
        out += [np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8) for v in frames]
    return out


def generate_videos(
    pipe, captions: Sequence[str], generation: GenerationConfig, seeds: Sequence[int] | None = None,
    batch_size: int = 1, progress: bool = True, guidance_scale: float | None = None, decode: bool = True,
) -> tuple[list, dict]:
    """Generate one ``uint8 (T, H, W, 3)`` video per caption (seed ``seeds[i]``, default ``i``).

    Sampling runs ``batch_size`` prompts per pipeline call; decoding (:func:`decode_latents`) batches across calls.
    Videos do not depend on ``batch_size`` (one generator per prompt). Returns the videos and a timing dict:
    ``step_ms`` (median wall time of a denoising step of one batch, classifier-free guidance included),
    ``forward_ms`` (median transformer forward), ``video_s`` (seconds per video: text encoding, sampling and
    decoding), ``decode_s`` (of which decoding), ``denoise_s`` (seconds per video in denoising steps: every
    transformer call and scheduler step, from the first call of a step to its step-end callback).

    ``decode=False`` (a ``WanPipeline``, which this module decodes itself): return each video's output latents
    (``[C, F, H, W]``) in place of the video, undecoded (``timing["latents"]`` is then true and ``decode_s`` is
    ``None``); :func:`decode_latents` decodes them later, e.g. several calls' latents in one batch.

    Example:
        >>> from diffusers_evdit.demo import load_pipeline
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> videos, timing = generate_videos(pipe, ["a red circle bouncing on a gray background"], gen,
        ...                                  progress=False)
        >>> videos[0].shape, videos[0].dtype
        ((13, 64, 64, 3), dtype('uint8'))
    """
    captions = list(captions)
    seeds = list(range(len(captions))) if seeds is None else list(seeds)
    if len(seeds) != len(captions):
        raise ValueError(f"got {len(captions)} captions but {len(seeds)} seeds")
    batch_size = max(1, int(batch_size))
    kwargs = generation.call_kwargs()
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    from diffusers import WanPipeline

    own_decoding = isinstance(pipe, WanPipeline)  # other pipelines decode themselves
    timer = _Timer(pipe)
    latents, videos = [], []
    start = time.perf_counter()
    try:
        for i in range(0, len(captions), batch_size):
            chunk = captions[i : i + batch_size]
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i : i + batch_size]]
            with torch.inference_mode():
                out = pipe(prompt=chunk, generator=gens, output_type="latent" if own_decoding else "np",
                           callback_on_step_end=timer.callback, **kwargs).frames
            if own_decoding:
                latents.append(out)
            else:
                arr = np.asarray(out, dtype=np.float32)
                videos += [np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8) for v in arr]
    finally:
        timer.close()
    t_dec = time.perf_counter()
    if own_decoding:
        videos = decode_latents(pipe, torch.cat(latents)) if decode else list(torch.cat(latents))
    end = time.perf_counter()
    timing = {
        "step_ms": None if not timer.step_times else 1e3 * _median(timer.step_times),
        "forward_ms": None if not timer.forward_times else 1e3 * _median(timer.forward_times),
        "video_s": (end - start) / max(1, len(captions)),
        "denoise_s": sum(timer.step_times) / max(1, len(captions)),
        "decode_s": (end - t_dec) / max(1, len(captions)) if own_decoding and decode else None,
        "latents": own_decoding and not decode,
        "batch_size": batch_size,
        "steps": len(timer.step_times),
        "total_s": end - start,
    }
    if timer.layout is not None:
        timing["layout"] = {"num_frames": timer.layout.num_frames, "tokens_per_frame": timer.layout.tokens_per_frame,
                            "num_text_tokens": timer.layout.num_text_tokens,
                            "text_position": timer.layout.text_position}
    return videos, timing


def merge_timings(timings: Sequence[dict]) -> dict:
    """One timing dict (as :func:`generate_videos` returns) for videos timed in separate calls: per-video seconds
    averaged over the calls (each weighted by its videos), step and forward times the median of the calls' medians,
    counts summed; ``denoise_s_per_call`` keeps each call's seconds per video, for their spread.

    Example:
        >>> merged = merge_timings([{"denoise_s": 1.0, "video_s": 2.0, "decode_s": 0.5, "step_ms": 10.0,
        ...                          "forward_ms": 4.0, "steps": 4, "total_s": 2.0, "batch_size": 1},
        ...                         {"denoise_s": 3.0, "video_s": 4.0, "decode_s": 0.5, "step_ms": 30.0,
        ...                          "forward_ms": 12.0, "steps": 4, "total_s": 4.0, "batch_size": 1}])
        >>> merged["denoise_s"], merged["video_s"], merged["steps"], merged["denoise_s_per_call"]
        (2.0, 3.0, 8, [1.0, 3.0])
    """
    if not timings:
        raise ValueError("no timings to merge")
    videos = [t["total_s"] / t["video_s"] if t["video_s"] else 1.0 for t in timings]
    n = sum(videos)

    def mean(key):
        values = [t[key] for t in timings]
        return None if any(v is None for v in values) else sum(v * w for v, w in zip(values, videos)) / n

    def median(key):
        values = [t[key] for t in timings if t[key] is not None]
        return _median(values) if values else None

    merged = {"step_ms": median("step_ms"), "forward_ms": median("forward_ms"), "video_s": mean("video_s"),
              "denoise_s": mean("denoise_s"), "decode_s": mean("decode_s"), "batch_size": timings[0]["batch_size"],
              "steps": sum(t["steps"] for t in timings), "total_s": sum(t["total_s"] for t in timings),
              "denoise_s_per_call": [t["denoise_s"] for t in timings]}
    if timings[0].get("layout"):
        merged["layout"] = timings[0]["layout"]
    return merged


def warm_up(pipe, generation: GenerationConfig, decode: bool = False) -> None:
    """One transformer forward (and, with ``decode``, one VAE decode) at the generation shape, untimed.

    Allocator and kernel set-up then happen here, not in the first timed row.

    Example:
        >>> from diffusers_evdit.demo import load_pipeline
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> warm_up(pipe, gen, decode=True)
    """
    t = pipe.transformer
    c = t.config
    shape = (1, c.in_channels, generation.latent_frames, generation.height // 8, generation.width // 8)
    device = pipe._execution_device
    try:
        with torch.inference_mode():
            t(hidden_states=torch.zeros(shape, device=device, dtype=t.dtype),
              timestep=torch.full((1,), 500, device=device),
              encoder_hidden_states=torch.zeros(1, generation.max_sequence_length, c.text_dim, device=device,
                                                dtype=t.dtype),
              return_dict=False)
    except (TypeError, ValueError, AttributeError, RuntimeError):
        return  # not a Wan-style transformer: the first steps include the set-up
    if decode and hasattr(pipe, "vae"):
        decode_latents(pipe, torch.zeros(shape, device=device))
