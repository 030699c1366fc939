"""The shipped demo model and ``evdit demo`` / ``evdit eval``: a small Wan 2.1-style text-to-video pipeline for the
synthetic videos of :mod:`diffusers_evdit.data`, its distilled students, and the timed, scored comparison of them.

The demo model is a standard diffusers :class:`~diffusers.WanPipeline` of small stock components (Wan VAE, a 2-layer
UMT5 encoder over the caption vocabulary, a 12-layer Wan transformer, UniPC with flow sigmas) generating 29-frame
128x128 clips: 8 latent frames of 64 tokens, the layout the Attention Tile masks work on. It ships in
``diffusers_evdit/demo_model/`` with ``evdit_demo.json`` (:class:`GenerationConfig`); the MLCD and Efficient-vDiT
students ship as small row folders inside it (:mod:`~diffusers_evdit.demo.rows`).

Modules: :mod:`~diffusers_evdit.demo.model` (structure and generation settings), :mod:`~diffusers_evdit.demo.loading`,
:mod:`~diffusers_evdit.demo.rows` (Base / MLCD / Efficient-vDiT), :mod:`~diffusers_evdit.demo.generation` (timed
generation), :mod:`~diffusers_evdit.demo.evaluation` (``evdit eval``), :mod:`~diffusers_evdit.demo.pictures`,
:mod:`~diffusers_evdit.demo.report` and :mod:`~diffusers_evdit.demo.run` (``evdit demo``).

Example::

    >>> from diffusers_evdit.demo import GenerationConfig, build_demo_pipeline
    >>> pipe = build_demo_pipeline("tiny")          # random weights, same structure as the shipped model
    >>> gen = GenerationConfig.tiny()
    >>> video = pipe("a red circle moving left on a dark background", **gen.call_kwargs()).frames[0]
    >>> video.shape
    (13, 64, 64, 3)
"""

from ..data import eval_prompts
from .evaluation import EVAL_KEYS, evaluate_pipeline, metrics_pool, plan_summary, score_videos, strip_private
from .generation import channels_last_convolutions, decode_latents, generate_videos, warm_up
from .loading import DemoModelMissingError, load_pipeline, parse_plan, resolve_model
from .model import (
    ARCHITECTURES,
    DEMO_MODEL_DIR,
    GENERATION_FILE,
    DemoArchitecture,
    GenerationConfig,
    build_demo_pipeline,
    build_scheduler,
    build_text_encoder,
    build_transformer,
    build_vae,
    caption_tokenizer,
)
from .pictures import contact_sheet, labeled_video_grid
from .run import run_demo
from .rows import DEFAULT_ROWS, DemoRow, DemoRowMissingError, load_row

__all__ = [
    "DEMO_MODEL_DIR",
    "GENERATION_FILE",
    "EVAL_KEYS",
    "DemoArchitecture",
    "ARCHITECTURES",
    "GenerationConfig",
    "DemoModelMissingError",
    "caption_tokenizer",
    "build_vae",
    "build_text_encoder",
    "build_transformer",
    "build_scheduler",
    "build_demo_pipeline",
    "resolve_model",
    "load_pipeline",
    "parse_plan",
    "eval_prompts",
    "decode_latents",
    "channels_last_convolutions",
    "generate_videos",
    "metrics_pool",
    "score_videos",
    "evaluate_pipeline",
    "plan_summary",
    "strip_private",
    "contact_sheet",
    "labeled_video_grid",
    "run_demo",
    "DemoRow",
    "DEFAULT_ROWS",
    "DemoRowMissingError",
    "load_row",
    "warm_up",
]
