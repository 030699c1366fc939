"""Small helpers shared by the notebooks in this folder (not part of the ``diffusers_evdit`` package).

The notebooks import this module from their own folder (Jupyter starts the kernel there). Everything here is a thin
convenience over public ``diffusers_evdit`` functions:

* :func:`load_demo` loads the shipped demo model, or, when this checkout has no trained weights in
  ``diffusers_evdit/demo_model/`` yet, a random-weight pipeline of the same structure, and says loudly which one;
* :func:`show_video` / :func:`show_image` display a ``uint8 (T, H, W, 3)`` video (animated GIF) or a PIL image inline;
* :func:`gpu_available`, :func:`online` and :func:`skip_unless` decide whether a cell that needs a GPU, a download or
  a Hub token runs (``03_your_model.ipynb``).

Environment variables:

* ``EVDIT_NOTEBOOK_MODEL``: a pipeline folder to use instead of the shipped demo model, or ``tiny`` to force the
  random fallback (the notebook tests use the default: the shipped model when present);
* ``EVDIT_NOTEBOOK_THREADS``: torch CPU threads (default: torch's choice);
* ``EVDIT_ALLOW_DOWNLOADS=1``: let ``03_your_model.ipynb`` download real checkpoints (off by default);
* ``HF_TOKEN`` / ``EVDIT_HUB_REPO``: let ``03_your_model.ipynb`` upload a plan to the Hub (off by default).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch

from diffusers_evdit.demo import DEMO_MODEL_DIR, DemoModelMissingError, load_pipeline

__all__ = ["DemoInfo", "load_demo", "show_video", "show_image", "gpu_available", "online", "skip_unless"]


@dataclass
class DemoInfo:
    """What :func:`load_demo` loaded."""

    source: str  # the folder, or "tiny"
    fallback: bool  # True: random weights, plumbing only (no meaningful quality)
    device: str
    label: str  # one line for titles and printouts


def load_demo(device: str | None = None, seed: int = 0, verbose: bool = True):
    """``(pipe, generation, info)``: the shipped demo model as a dense ``EfficientVDiTPipeline``, or the fallback.

    Order: ``EVDIT_NOTEBOOK_MODEL`` (a folder, or ``tiny``), else the shipped model in
    ``diffusers_evdit/demo_model/``, else (no trained weights in this checkout) the random-weight pipeline of the
    same structure, ``diffusers_evdit.demo.load_pipeline("tiny")``: 2 layers, 13 frames of 64x64. The fallback runs
    every cell the same way, but its videos are noise and its quality numbers mean nothing.
    """
    threads = os.environ.get("EVDIT_NOTEBOOK_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = os.environ.get("EVDIT_NOTEBOOK_MODEL") or None
    try:
        pipe, gen = load_pipeline(spec, device=device, seed=seed)
        source = spec or DEMO_MODEL_DIR
    except DemoModelMissingError:
        pipe, gen = load_pipeline("tiny", device=device, seed=seed)
        source = "tiny"
    fallback = source == "tiny"
    pipe.set_progress_bar_config(disable=True)
    n_layers = pipe.transformer.config.num_layers
    if fallback:
        label = f"FALLBACK: random-weight stand-in of the demo model ({n_layers} layers; videos are noise)"
    else:
        label = f"demo model {os.path.basename(os.path.normpath(source))} ({n_layers} layers)"
    info = DemoInfo(source=source, fallback=fallback, device=str(device), label=label)
    if verbose:
        print(("!" * 100 + "\n") if fallback else "", end="")
        print(f"{label}\n  source: {source}\n  device: {device}, transformer dtype: {pipe.transformer.dtype}\n"
              f"  clips: {gen.num_frames} frames {gen.height}x{gen.width} = {gen.latent_frames} latent frames x "
              f"{gen.tokens_per_frame} tokens, {gen.num_inference_steps} steps, guidance {gen.guidance_scale}")
        if fallback:
            print("  The shipped demo model has no trained weights in this checkout "
                  "(diffusers_evdit/demo_model/ holds only its README).\n"
                  "  Every cell still runs, on random weights: the pictures are noise and the quality numbers\n"
                  "  say nothing. Train the model with `bash examples/train_demo.sh OUTDIR` (one GPU, ~9 min).\n"
                  + "!" * 100)
    return pipe, gen, info


def _gif_bytes(frames: np.ndarray, fps: int) -> bytes:
    from PIL import Image

    frames = np.asarray(frames, dtype=np.uint8)
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def show_video(frames: np.ndarray, fps: int = 8, scale: int = 2):
    """Display a ``uint8 (T, H, W, 3)`` video inline as an animated GIF (``scale``: pixel repeat for small clips)."""
    from IPython.display import Image

    frames = np.asarray(frames, dtype=np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return Image(data=_gif_bytes(frames, fps), format="gif")


def show_image(image, scale: int = 1):
    """Display a PIL image inline as PNG."""
    from IPython.display import Image

    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), resample=0)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Image(data=buf.getvalue(), format="png")


def gpu_available() -> bool:
    """True when a CUDA device is present."""
    return torch.cuda.is_available()


def online() -> bool:
    """True when the notebook may download checkpoints: ``EVDIT_ALLOW_DOWNLOADS=1`` and ``HF_HUB_OFFLINE`` unset."""
    return os.environ.get("EVDIT_ALLOW_DOWNLOADS") == "1" and os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0")


def skip_unless(condition: bool, why: str) -> bool:
    """Print a skip line when ``condition`` is false; return ``condition`` (use as ``if skip_unless(...):``)."""
    if not condition:
        print(f"SKIPPED: {why}")
    return condition
