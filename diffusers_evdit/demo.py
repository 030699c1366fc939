"""The shipped demo model: a small Wan 2.1-style text-to-video pipeline for the synthetic videos, and ``evdit demo``.

The demo model is a standard diffusers :class:`~diffusers.WanPipeline` whose components are small configs of the stock
classes: :class:`~diffusers.AutoencoderKLWan` (4x temporal, 8x spatial, 16 latent channels), a 2-layer
:class:`~transformers.UMT5EncoderModel` with a word-level tokenizer over
:func:`diffusers_evdit.data.caption_vocabulary`, a 12-layer :class:`~diffusers.WanTransformer3DModel` (patch
``(1, 2, 2)``) and :class:`~diffusers.UniPCMultistepScheduler` with flow sigmas. It generates the 29-frame 128x128
clips of :mod:`diffusers_evdit.data`: 8 latent frames of 64 tokens, the layout the Attention Tile masks work on.
``examples/train_demo.sh`` trains it (VAE, then transformer and text encoder) on one GPU in minutes; the trained
folder ships in ``diffusers_evdit/demo_model/`` and loads offline with ``DiffusionPipeline.from_pretrained``.

The folder also holds ``evdit_demo.json`` (:class:`GenerationConfig`): the frame count, size, text length, steps
and guidance scale the model was trained and evaluated with. Call the pipeline with them::

    >>> from diffusers_evdit.demo import GenerationConfig, build_demo_pipeline
    >>> pipe = build_demo_pipeline("tiny")          # random weights, same structure as the shipped model
    >>> gen = GenerationConfig.tiny()
    >>> video = pipe("a red circle moving left on a dark background", **gen.call_kwargs()).frames[0]
    >>> video.shape
    (13, 64, 64, 3)

Main entry points: :func:`build_demo_pipeline` (random components, for training), :func:`load_pipeline` (the
shipped or a trained folder, as an :class:`~diffusers_evdit.EfficientVDiTPipeline`), :func:`generate_videos`,
:func:`evaluate_pipeline` (the ``evdit eval`` metrics table) and :func:`run_demo` (``evdit demo``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .data import caption_vocabulary, heldout_prompts, render, sample_scene, video_grid
from .metrics import (
    evaluate_video,
    frechet_distance,
    psnr,
    ssim,
    video_features,
)

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
    "generate_videos",
    "score_videos",
    "evaluate_pipeline",
    "contact_sheet",
    "labeled_video_grid",
    "run_demo",
]

#: Where the trained demo pipeline ships (package data). Holds only a README until the weights are committed.
DEMO_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_model")

#: File in a pipeline folder with the :class:`GenerationConfig` the model was trained and evaluated with.
GENERATION_FILE = "evdit_demo.json"

#: Metric keys of ``evdit eval`` (0-1 scores, higher is better, except ``frechet``) and their source in
#: :class:`diffusers_evdit.metrics.VideoScores` (``None``: computed over the set).
EVAL_KEYS: dict[str, str | None] = {
    "color_accuracy": "color_accuracy",
    "object_class_accuracy": "shape_accuracy",
    "motion_direction_accuracy": "motion_accuracy",
    "dynamic_degree": "dynamic_degree",
    "motion_smoothness": "motion_smoothness",
    "temporal_flickering": "temporal_flickering",
    "subject_consistency": "subject_consistency",
    "final_score": "final_score",
    "frechet": None,
}

_EVAL_SEED = 20250214  # held-out scenes beyond the fixed 24 of heldout_prompts()


class DemoModelMissingError(FileNotFoundError):
    """The shipped demo model has no trained weights (``diffusers_evdit/demo_model/`` holds only its README).

    Example:
        >>> issubclass(DemoModelMissingError, FileNotFoundError)
        True
    """


# ---------------------------------------------------------------------------------------------------------------------
# Architecture


@dataclass(frozen=True)
class DemoArchitecture:
    """Sizes of the demo pipeline's components (the classes are fixed: Wan VAE, UMT5 encoder, Wan transformer).

    ``ARCHITECTURES["demo"]`` is the shipped model (~17M parameters, ~35 MB with the transformer and VAE stored in
    float16); ``ARCHITECTURES["tiny"]`` has the same structure in a size that runs in milliseconds, for tests.

    Example:
        >>> ARCHITECTURES["demo"].num_layers, ARCHITECTURES["demo"].dim
        (12, 256)
    """

    vae_base_dim: int = 16
    vae_dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    vae_res_blocks: int = 1
    z_dim: int = 16
    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 512
    dim: int = 256
    heads: int = 4
    num_layers: int = 12
    ffn_dim: int = 1024
    freq_dim: int = 256


ARCHITECTURES: dict[str, DemoArchitecture] = {
    "demo": DemoArchitecture(),
    "tiny": DemoArchitecture(
        vae_base_dim=4, vae_dim_mult=(1, 1, 1, 1), vae_res_blocks=1, z_dim=4,
        text_dim=16, text_layers=1, text_heads=2, text_ff=32,
        dim=24, heads=2, num_layers=2, ffn_dim=48, freq_dim=16,
    ),
}


def _arch(arch: str | DemoArchitecture) -> DemoArchitecture:
    if isinstance(arch, DemoArchitecture):
        return arch
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown demo architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[arch]


@dataclass
class GenerationConfig:
    """How the demo model is called: clip size, text length, steps, guidance. Saved as ``evdit_demo.json``.

    ``max_sequence_length`` matters for Wan pipelines: the prompt embedding is zero-padded to it and the transformer
    cross-attends to the padding, so use the length the model was trained with.

    Example:
        >>> gen = GenerationConfig()
        >>> gen.latent_frames, gen.tokens_per_frame
        (8, 64)
        >>> sorted(gen.call_kwargs())[:3]
        ['guidance_scale', 'height', 'max_sequence_length']
    """

    num_frames: int = 29
    height: int = 128
    width: int = 128
    max_sequence_length: int = 32
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    fps: int = 8
    extra: dict = field(default_factory=dict)

    @classmethod
    def tiny(cls) -> "GenerationConfig":
        """Small clips for random tiny pipelines: 13 frames of 64x64 (4 latent frames of 16 tokens), 4 steps."""
        return cls(num_frames=13, height=64, width=64, num_inference_steps=4, guidance_scale=2.0)

    @property
    def latent_frames(self) -> int:
        """Latent frames with the demo VAE's 4x temporal compression."""
        return (self.num_frames - 1) // 4 + 1

    @property
    def tokens_per_frame(self) -> int:
        """Transformer tokens per latent frame (8x spatial VAE compression, 2x2 patches)."""
        return (self.height // 16) * (self.width // 16)

    def call_kwargs(self) -> dict:
        """Keyword arguments for ``WanPipeline.__call__``."""
        return dict(
            num_frames=self.num_frames, height=self.height, width=self.width,
            max_sequence_length=self.max_sequence_length, num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationConfig":
        known = {f.name for f in fields(cls)}
        extra = dict(data.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        return cls(**{k: v for k, v in data.items() if k in known and k != "extra"}, extra=extra)

    def save(self, folder: str | os.PathLike) -> str:
        """Write ``evdit_demo.json`` into ``folder``; returns the path."""
        path = os.path.join(os.fspath(folder), GENERATION_FILE)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "GenerationConfig":
        """Read ``evdit_demo.json`` from ``folder``; the defaults when the folder has none."""
        path = os.path.join(os.fspath(folder), GENERATION_FILE)
        if not os.path.isfile(path):
            return cls()
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


def caption_tokenizer():
    """Offline word-level tokenizer (``PreTrainedTokenizerFast``) for the synthetic captions.

    Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then :func:`~diffusers_evdit.data.caption_vocabulary` in order;
    lower-cased, split on whitespace and punctuation, ``</s>`` appended (T5 style). Saved with the pipeline
    (``tokenizer/tokenizer.json``), so ``from_pretrained`` needs no download.

    Example:
        >>> tok = caption_tokenizer()
        >>> ids = tok("a red circle", padding="max_length", max_length=6).input_ids
        >>> ids[-3:], tok.decode(ids, skip_special_tokens=True)
        ([1, 0, 0], 'a red circle')
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in caption_vocabulary():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512,
    )


def _vocab_size() -> int:
    return 3 + len(caption_vocabulary())


def build_vae(arch: str | DemoArchitecture = "demo", seed: int = 0):
    """A randomly initialised :class:`~diffusers.AutoencoderKLWan` (4x temporal, 8x spatial compression).

    ``latents_mean`` / ``latents_std`` are 0 / 1 until training measures them.

    Example:
        >>> build_vae("tiny").config.z_dim
        4
    """
    from diffusers import AutoencoderKLWan

    a = _arch(arch)
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=a.vae_base_dim, z_dim=a.z_dim, dim_mult=list(a.vae_dim_mult), num_res_blocks=a.vae_res_blocks,
        attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0,
        latents_mean=[0.0] * a.z_dim, latents_std=[1.0] * a.z_dim,
    )


def build_text_encoder(arch: str | DemoArchitecture = "demo", seed: int = 0):
    """A randomly initialised :class:`~transformers.UMT5EncoderModel` over the caption vocabulary.

    Example:
        >>> build_text_encoder("tiny").config.d_model
        16
    """
    from transformers import UMT5Config, UMT5EncoderModel

    a = _arch(arch)
    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=_vocab_size(), d_model=a.text_dim, d_kv=a.text_dim // a.text_heads, d_ff=a.text_ff,
        num_layers=a.text_layers, num_heads=a.text_heads, relative_attention_num_buckets=16,
        relative_attention_max_distance=32, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False,
    )
    return UMT5EncoderModel(config)


def build_transformer(arch: str | DemoArchitecture = "demo", seed: int = 0, zero_init_output: bool = True):
    """A randomly initialised :class:`~diffusers.WanTransformer3DModel`.

    ``zero_init_output`` zero-initialises the output projection (as for training from scratch: the model starts by
    predicting zero velocity); a random pipeline for plumbing tests wants ``False`` so that outputs depend on the
    attention.

    Example:
        >>> build_transformer("tiny").config.num_layers
        2
    """
    from diffusers import WanTransformer3DModel

    a = _arch(arch)
    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=a.heads, attention_head_dim=a.dim // a.heads,
        in_channels=a.z_dim, out_channels=a.z_dim, text_dim=a.text_dim, freq_dim=a.freq_dim, ffn_dim=a.ffn_dim,
        num_layers=a.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        rope_max_seq_len=1024,
    )
    if zero_init_output:
        torch.nn.init.zeros_(model.proj_out.weight)
        torch.nn.init.zeros_(model.proj_out.bias)
    return model


def build_scheduler(flow_shift: float = 2.0):
    """The demo sampler: :class:`~diffusers.UniPCMultistepScheduler` with flow sigmas (as Wan 2.1).

    Example:
        >>> build_scheduler().config.prediction_type
        'flow_prediction'
    """
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift,
    )


def build_demo_pipeline(arch: str | DemoArchitecture = "demo", seed: int = 0, components: dict | None = None):
    """A :class:`~diffusers.WanPipeline` of the demo structure with random weights (float32, eval mode).

    ``components`` replaces built components (``{"vae": trained_vae}``). ``build_demo_pipeline("tiny")`` is the
    random stand-in used by the tests and ``evdit demo --model tiny``; it says nothing about quality.

    Example:
        >>> pipe = build_demo_pipeline("tiny")
        >>> type(pipe).__name__, type(pipe.transformer).__name__
        ('WanPipeline', 'WanTransformer3DModel')
    """
    from diffusers import WanPipeline

    parts = dict(
        tokenizer=caption_tokenizer(),
        text_encoder=build_text_encoder(arch, seed),
        vae=build_vae(arch, seed),
        transformer=build_transformer(arch, seed, zero_init_output=False),
        scheduler=build_scheduler(),
    )
    parts.update(components or {})
    for name in ("text_encoder", "vae", "transformer"):
        parts[name].eval()
    return WanPipeline(**parts)


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def _missing_model_message(path: str) -> str:
    return (
        f"The shipped demo model is missing: {path} has no trained pipeline yet (no model_index.json). Train it on a "
        "GPU with `bash examples/train_demo.sh OUTDIR` (about 9 minutes on one H100) and copy OUTDIR's contents into "
        "diffusers_evdit/demo_model/, or pass --model PATH to a trained pipeline folder, or --model tiny for a "
        "random-weight run of the same structure (plumbing only, no quality)."
    )


def resolve_model(model: str | os.PathLike | None = None) -> str:
    """The pipeline folder to load: ``None`` / ``"default"`` means the shipped :data:`DEMO_MODEL_DIR`.

    ``"tiny"`` is returned as is. Raises :class:`DemoModelMissingError` (a ``FileNotFoundError``) with the way out
    when the shipped model has not been trained yet, ``FileNotFoundError`` for a missing folder.

    Example:
        >>> resolve_model("tiny")
        'tiny'
    """
    if model is None or model == "default":
        path = DEMO_MODEL_DIR
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise DemoModelMissingError(_missing_model_message(path))
        return path
    model = os.fspath(model)
    if model == "tiny":
        return model
    if not os.path.isdir(model):
        raise FileNotFoundError(f"{model} is not a folder; pass a pipeline folder (save_pretrained) or 'tiny'.")
    if not os.path.isfile(os.path.join(model, "model_index.json")):
        raise FileNotFoundError(f"{model} has no model_index.json; it is not a diffusers pipeline folder.")
    return model


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(
    model: str | os.PathLike | None = None, device: str | None = None, dtype: torch.dtype | None = None,
    kernel: str = "auto", seed: int = 0,
):
    """Load the demo model (or a trained folder, or ``"tiny"``) as a dense :class:`EfficientVDiTPipeline`.

    Returns ``(pipe, generation_config)``. Defaults: CUDA when present; float32 on CPU, bfloat16 on CUDA (the VAE
    stays float32). The folder's saved mask plan is *not* applied (dense); use ``pipe.set_mask_plan(plan)``.

    Example:
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> type(pipe).__name__, gen.num_frames
        ('EfficientVDiTWanPipeline', 13)
    """
    from .pipeline import EfficientVDiTPipeline

    path = resolve_model(model)
    device = device or _default_device()
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if path == "tiny":
        pipe = EfficientVDiTPipeline.from_pipe(build_demo_pipeline("tiny", seed=seed), kernel=kernel)
        gen = GenerationConfig.tiny()
        if dtype != torch.float32:
            for name in ("transformer", "text_encoder"):
                getattr(pipe, name).to(dtype=dtype)
    else:
        gen = GenerationConfig.load(path)
        try:
            # the VAE is small: float32 decoding is cheap and avoids colour banding
            pipe = EfficientVDiTPipeline.from_pretrained(
                path, mask_plan=None, kernel=kernel, dtype={"default": dtype, "vae": torch.float32}
            )
        except OSError as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise ValueError(f"cannot load {path}: {err}") from None
    pipe.to(device)
    return pipe, gen


def parse_plan(spec: str | None, transformer) -> "MaskPlan | None":  # noqa: F821
    """A mask plan from a spec: ``None`` / ``"dense"``, ``"uniform:K"`` or a plan JSON file.

    Example:
        >>> parse_plan("uniform:2", build_transformer("tiny")).layers
        [2, 2]
    """
    from .plan import MaskPlan, num_plan_layers

    if spec is None or spec == "dense":
        return None
    if spec.startswith("uniform:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad plan spec {spec!r}; use uniform:K with an integer K >= 1") from None
        return MaskPlan.uniform(num_plan_layers(transformer), k, model_class=type(transformer).__name__)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"plan {spec!r} is neither 'dense', 'uniform:K' nor an existing plan JSON file")
    return MaskPlan.load(spec)


# ---------------------------------------------------------------------------------------------------------------------
# Prompts, generation and scoring


def eval_prompts(n: int, seed: int | None = None) -> list[tuple[str, Any]]:
    """``n`` held-out ``(caption, scene)`` pairs; every scene has a (colour, shape, motion) triple never trained on.

    ``seed=None`` (the standard evaluation set): the 24 fixed prompts of
    :func:`~diffusers_evdit.data.heldout_prompts`, then held-out scenes sampled with a fixed seed. An explicit
    ``seed`` gives only sampled held-out scenes of that seed (for example a validation set to tune sampling on).

    Example:
        >>> pairs = eval_prompts(30)
        >>> len(pairs), all(scene.is_heldout for _, scene in pairs)
        (30, True)
        >>> eval_prompts(2)[0][0] == heldout_prompts()[0][0]
        True
    """
    if n < 1:
        raise ValueError(f"need at least one prompt, got {n}")
    out = list(heldout_prompts())[:n] if seed is None else []
    seed = _EVAL_SEED if seed is None else int(seed)
    i = 0
    while len(out) < n:
        scene = sample_scene(np.random.default_rng([seed, i]), split="heldout")
        out.append((scene.caption(), scene))
        i += 1
    return out


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
                from .processors import family_for

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


def decode_latents(pipe, latents: torch.Tensor, batch_size: int = 8) -> list[np.ndarray]:
    """Decode ``WanPipeline`` output latents (``output_type="latent"``) to ``uint8 (T, H, W, 3)`` videos.

    The same computation as the end of ``WanPipeline.__call__`` (de-normalise with the VAE's ``latents_mean`` /
    ``latents_std``, decode, post-process), but in batches of ``batch_size`` videos across prompts. On CPU a
    single latent is decoded as a batch of two: PyTorch runs the VAE's small 3D convolutions on its slow reference
    path for batch 1 (about 3x slower than oneDNN).

    Example:
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> lat = pipe("a red circle bouncing on a gray background", output_type="latent", **gen.call_kwargs()).frames
        >>> decode_latents(pipe, lat)[0].shape
        (13, 64, 64, 3)
    """
    vae = pipe.vae
    z = vae.config.z_dim
    out: list[np.ndarray] = []
    for i in range(0, latents.shape[0], max(1, batch_size)):
        lat = latents[i : i + max(1, batch_size)].to(vae.device, vae.dtype)
        n = lat.shape[0]
        if n == 1 and lat.device.type == "cpu":
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
    batch_size: int = 1, progress: bool = True, guidance_scale: float | None = None,
) -> tuple[list[np.ndarray], dict]:
    """Generate one ``uint8 (T, H, W, 3)`` video per caption (seed ``seeds[i]``, default ``i``).

    Sampling runs ``batch_size`` prompts per pipeline call; decoding (:func:`decode_latents`) batches across calls.
    Videos do not depend on ``batch_size`` (one generator per prompt). Returns the videos and a timing dict:
    ``step_ms`` (median wall time of a denoising step of one batch, classifier-free guidance included),
    ``forward_ms`` (median transformer forward), ``video_s`` (seconds per video: text encoding, sampling and
    decoding), ``decode_s`` (of which decoding).

    Example:
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
        videos = decode_latents(pipe, torch.cat(latents), batch_size=max(batch_size, 8))
    end = time.perf_counter()
    timing = {
        "step_ms": None if not timer.step_times else 1e3 * _median(timer.step_times),
        "forward_ms": None if not timer.forward_times else 1e3 * _median(timer.forward_times),
        "video_s": (end - start) / max(1, len(captions)),
        "decode_s": (end - t_dec) / max(1, len(captions)) if own_decoding else None,
        "batch_size": batch_size,
        "steps": len(timer.step_times),
        "total_s": end - start,
    }
    if timer.layout is not None:
        timing["layout"] = {"num_frames": timer.layout.num_frames, "tokens_per_frame": timer.layout.tokens_per_frame,
                            "num_text_tokens": timer.layout.num_text_tokens,
                            "text_position": timer.layout.text_position}
    return videos, timing


def _score_one(args) -> dict:
    video, caption = args
    s = evaluate_video(video, caption)
    row = s.as_dict()
    row["detected"] = {"colors": list(s.detected_colors), "shapes": list(s.detected_shapes),
                       "motions": list(s.detected_motions)}
    return row


def score_videos(
    videos: Sequence[np.ndarray], captions: Sequence[str], real: Sequence[np.ndarray] | None = None,
    workers: Any = 1,
) -> tuple[dict, list[dict]]:
    """The ``evdit eval`` metrics of a video set: ``(summary, per_video_rows)``.

    ``summary`` has every key of :data:`EVAL_KEYS` (``frechet`` between :func:`video_features` of ``videos`` and
    of ``real``, ``None`` without ``real`` or with fewer than two videos), plus ``dynamic_agreement`` and
    ``num_videos``. ``workers > 1`` scores in a new process pool; ``workers`` may also be a
    ``multiprocessing.Pool`` to reuse (create it before CUDA is initialised).

    Example:
        >>> pairs = eval_prompts(2)
        >>> real = [render(s, 13, 64, 64) for _, s in pairs]
        >>> summary, rows = score_videos(real, [c for c, _ in pairs], real=real)
        >>> summary["color_accuracy"], summary["frechet"] < 1e-6
        (1.0, True)
    """
    if len(videos) != len(captions):
        raise ValueError(f"got {len(videos)} videos but {len(captions)} captions")
    if not videos:
        raise ValueError("no videos to score")
    jobs = list(zip(videos, captions))
    if hasattr(workers, "map"):
        rows = workers.map(_score_one, jobs)
    elif workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(min(workers, len(jobs))) as pool:
            rows = pool.map(_score_one, jobs)
    else:
        rows = [_score_one(j) for j in jobs]
    summary: dict[str, Any] = {}
    for key, src in EVAL_KEYS.items():
        if src is not None:
            summary[key] = float(np.mean([r[src] for r in rows]))
    summary["dynamic_agreement"] = float(np.mean([r["dynamic_agreement"] for r in rows]))
    summary["frechet"] = None
    if real is not None and len(videos) >= 2:
        if len(real) != len(videos):
            raise ValueError(f"got {len(videos)} videos but {len(real)} real videos")
        summary["frechet"] = frechet_distance(
            np.stack([video_features(v) for v in videos]), np.stack([video_features(v) for v in real])
        )
    summary["num_videos"] = len(videos)
    for row, cap in zip(rows, captions):
        row["prompt"] = cap
    return summary, rows


def _layout_for(pipe, generation: GenerationConfig):
    """The self-attention layout of a Wan-style transformer for ``generation`` (no text in self-attention)."""
    from .layout import layout_from_latents

    sf_t = getattr(pipe, "vae_scale_factor_temporal", 4)
    sf_s = getattr(pipe, "vae_scale_factor_spatial", 8)
    latent = ((generation.num_frames - 1) // sf_t + 1, generation.height // sf_s, generation.width // sf_s)
    patch = pipe.transformer.config.patch_size
    return layout_from_latents(latent, tuple(patch) if isinstance(patch, (list, tuple)) else patch)


def plan_summary(pipe, generation: GenerationConfig, layout=None) -> dict:
    """The installed plan of ``pipe.transformer`` on a layout: k per layer, names, element sparsity.

    ``layout`` is a :class:`~diffusers_evdit.TileLayout` or the ``timing["layout"]`` dict of
    :func:`generate_videos` (the layout seen by the transformer); default: derived from ``generation`` for a
    Wan-style transformer.

    Example:
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> plan_summary(pipe, gen)["sparsity"]
        0.0
    """
    from .layout import TileLayout

    if isinstance(layout, dict):
        layout = TileLayout(**layout)
    if layout is None:
        layout = _layout_for(pipe, generation)
    plan = pipe.mask_plan
    info = {
        "latent_frames": layout.num_frames,
        "tokens_per_frame": layout.tokens_per_frame,
        "layers": None if plan is None else plan.layers,
        "masks": None if plan is None else sorted(set(plan.describe(layout.num_frames))),
        "sparsity": 0.0 if plan is None else float(plan.sparsity(layout)),
    }
    return info


def evaluate_pipeline(
    pipe, generation: GenerationConfig, num_prompts: int = 16, seed: int = 0, batch_size: int = 1,
    workers: Any = 1, progress: bool = True, prompts: Sequence[tuple[str, Any]] | None = None,
    guidance_scale: float | None = None, reference: bool = True,
) -> dict:
    """The ``evdit eval`` result for ``pipe`` (with whatever plan is installed) on held-out prompts.

    Generates one video per prompt of :func:`eval_prompts` (seed ``seed + i``), scores them with
    :func:`score_videos` against real synthetic videos of the same scenes and, with ``reference=True``, scores
    those real videos too (``"reference"``: near-perfect by construction, the ceiling of each metric).

    Returns the :data:`EVAL_KEYS` metrics at the top level plus ``dynamic_agreement``, ``num_videos``,
    ``reference``, ``timing``, ``plan``, ``generation`` and ``per_video``.

    Example:
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> res = evaluate_pipeline(pipe, gen, num_prompts=2, progress=False)
        >>> set(EVAL_KEYS) <= set(res)
        True
    """
    pairs = list(prompts) if prompts is not None else eval_prompts(num_prompts)
    captions = [c for c, _ in pairs]
    seeds = [seed + i for i in range(len(pairs))]
    videos, timing = generate_videos(pipe, captions, generation, seeds, batch_size, progress, guidance_scale)
    real = [render(s, generation.num_frames, generation.height, generation.width) for _, s in pairs]
    summary, rows = score_videos(videos, captions, real=real, workers=workers)
    result: dict[str, Any] = dict(summary)
    if reference:
        ref, _ = score_videos(real, captions, real=None, workers=workers)
        ref.pop("frechet", None)
        result["reference"] = ref
    gen = generation.to_dict()
    if guidance_scale is not None:
        gen["guidance_scale"] = guidance_scale
    result.update(timing=timing, plan=plan_summary(pipe, generation, timing.get("layout")), generation=gen,
                  seed=seed, per_video=rows)
    result["_videos"] = videos  # removed before JSON; kept for callers that write samples
    result["_real"] = real
    return result


def strip_private(result: dict) -> dict:
    """``result`` without the in-memory ``_videos`` / ``_real`` entries (JSON-ready)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------------------------------
# Pictures


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], num_columns: int = 8, pad: int = 2,
):
    """A PNG-ready contact sheet (``PIL.Image``): per prompt a caption line, then one strip of ``num_columns``
    evenly spaced frames per labelled video.

    ``rows`` is ``[(caption, [(label, video), ...]), ...]`` with ``uint8 (T, H, W, 3)`` videos.

    Example:
        >>> v = render(sample_scene(0), 9, 32, 32)
        >>> contact_sheet([("a caption", [("real", v), ("copy", v)])], num_columns=4).size[1]  # caption + 2 strips
        86
    """
    from PIL import Image, ImageDraw

    font = _font()
    label_w, text_h = 60, 16
    first = rows[0][1][0][1]
    t, h, w, _ = first.shape
    cols = min(num_columns, t)
    idx = np.linspace(0, t - 1, cols).round().astype(int)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(probe.textlength(caption, font=font)) for caption, _ in rows) + 8
    width = max(label_w + cols * (w + pad) + pad, text_w)
    height = sum(text_h + len(vids) * (h + pad) + pad for _, vids in rows)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for caption, vids in rows:
        draw.text((4, y + 2), caption, fill=(0, 0, 0), font=font)
        y += text_h
        for label, video in vids:
            draw.text((4, y + h // 2 - 6), label, fill=(0, 0, 0), font=font)
            for j, fi in enumerate(idx):
                sheet.paste(Image.fromarray(np.asarray(video[fi], dtype=np.uint8)), (label_w + pad + j * (w + pad), y))
            y += h + pad
        y += pad
    return sheet


def labeled_video_grid(videos: Sequence[np.ndarray], ncols: int, labels: Sequence[str]) -> np.ndarray:
    """:func:`~diffusers_evdit.data.video_grid` with a header strip naming the ``ncols`` columns.

    Example:
        >>> v = render(sample_scene(0), 9, 32, 32)
        >>> labeled_video_grid([v, v], 2, ["real", "dense"]).shape
        (9, 50, 70, 3)
    """
    from PIL import Image, ImageDraw

    grid = video_grid(videos, ncols=ncols)
    t, gh, gw, _ = grid.shape
    w = videos[0].shape[2]
    header = Image.new("RGB", (gw, 14), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    font = _font()
    for j, label in enumerate(labels[:ncols]):
        draw.text((2 + j * (w + 2) + 2, 1), label, fill=(0, 0, 0), font=font)
    head = np.broadcast_to(np.asarray(header, dtype=np.uint8)[None], (t, 14, gw, 3))
    return np.concatenate([head, grid], axis=1)


def _write_video(frames: np.ndarray, path: str, fps: int) -> str:
    from .data import save_video

    try:
        save_video(frames, path, fps=fps)
    except RuntimeError as err:  # .mp4 without imageio-ffmpeg
        raise ValueError(f"{err} (or run with --video-format gif)") from None
    return path


# ---------------------------------------------------------------------------------------------------------------------
# evdit demo


def _fmt(value, spec: str = ".3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return format(value, spec)


def _markdown_report(report: dict) -> str:
    d, s, r = report["dense"], report["sparse"], report["reference"]
    gen = report["generation"]
    lines = [
        "# Efficient-vDiT demo",
        "",
        f"Model: `{report['model']}` ({report['pipeline_class']}) on {report['device']} ({report['dtype']}); "
        f"{len(report['prompts'])} held-out prompts, {gen['num_frames']} frames {gen['height']}x{gen['width']}, "
        f"{gen['num_inference_steps']} steps, guidance {gen['guidance_scale']}. Total {report['total_s']:.1f} s.",
        "",
        f"Tile plan `{report['plan']['spec']}`: k per layer {report['plan']['layers']} "
        f"({', '.join(report['plan']['masks'] or ['dense'])}) on {report['plan']['latent_frames']} latent frames x "
        f"{report['plan']['tokens_per_frame']} tokens; attention sparsity {report['plan']['sparsity']:.1%}.",
        "",
        "![contact sheet](contact_sheet.png)",
        "",
        f"Side by side (real synthetic | dense | sparse): [{report['files']['video']}]({report['files']['video']})",
        "",
        "## Speed",
        "",
        "| | step (ms) | transformer forward (ms) | s / video | attention sparsity |",
        "| --- | --- | --- | --- | --- |",
        f"| dense | {_fmt(d['timing']['step_ms'], '.1f')} | {_fmt(d['timing']['forward_ms'], '.1f')} | "
        f"{d['timing']['video_s']:.2f} | 0.0% |",
        f"| sparse | {_fmt(s['timing']['step_ms'], '.1f')} | {_fmt(s['timing']['forward_ms'], '.1f')} | "
        f"{s['timing']['video_s']:.2f} | {report['plan']['sparsity']:.1%} |",
        "",
        f"Speedup (median step time, dense / sparse): **{_fmt(report['speedup']['step'], '.2f')}x**; transformer "
        f"forward: {_fmt(report['speedup']['forward'], '.2f')}x. Step times are medians over all steps"
        + (" (each step runs the transformer twice: classifier-free guidance)" if gen["guidance_scale"] > 1 else "")
        + ". At this size (few hundred tokens) attention is a minor part of a step, so the speedup is small; it grows "
        "with the number of tokens.",
        "",
        "## Quality",
        "",
        "| metric | real videos | dense | sparse |",
        "| --- | --- | --- | --- |",
    ]
    for key in EVAL_KEYS:
        lines.append(f"| {key} | {_fmt(r.get(key))} | {_fmt(d['metrics'].get(key))} | {_fmt(s['metrics'].get(key))} |")
    lines += [
        "",
        f"Fidelity of sparse to dense (same seeds): PSNR {_fmt(report['fidelity']['psnr'], '.2f')} dB, "
        f"SSIM {_fmt(report['fidelity']['ssim'])}.",
        "",
        "Scores are 0-1 (higher is better) except `frechet` (Frechet distance between analytic video features of "
        "generated and real videos of the same prompts; lower is better, and with a handful of videos only "
        "indicative). Real videos are rendered from the prompts' scenes.",
        "",
        "## Prompts",
        "",
        "| # | prompt | dense final | sparse final | dense detected motions | sparse detected motions |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, p in enumerate(report["prompts"]):
        dr, sr = d["per_video"][i], s["per_video"][i]
        lines.append(
            f"| {i} | {p} | {dr['final_score']:.3f} | {sr['final_score']:.3f} | "
            f"{', '.join(dr['detected']['motions'])} | {', '.join(sr['detected']['motions'])} |"
        )
    if report.get("note"):
        lines += ["", f"**Note:** {report['note']}"]
    return "\n".join(lines) + "\n"


def _warm_up(pipe, generation: GenerationConfig) -> None:
    """One transformer forward at the generation shape (allocator and kernel set-up happen here, not in timings)."""
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
        pass  # not a Wan-style transformer: the first dense steps include the set-up


def run_demo(
    out_dir: str | os.PathLike, model: str | None = None, num_prompts: int = 2, steps: int | None = None,
    plan: str = "uniform:2", seed: int = 0, device: str | None = None, video_format: str = "gif",
    guidance_scale: float | None = None, progress: bool = True, log: Callable[[str], None] = print,
    generation: GenerationConfig | None = None,
) -> dict:
    """``evdit demo``: generate held-out prompts densely and with a tile plan, write videos, sheet and report.

    Writes into ``out_dir``: ``side_by_side.gif`` (or ``.mp4``; rows = prompts, columns = real | dense | sparse),
    ``contact_sheet.png``, ``report.md`` and ``report.json`` (per-step time, transformer time, attention sparsity,
    speedup, the :data:`EVAL_KEYS` metrics of dense and sparse videos and of the real videos, PSNR/SSIM of
    sparse vs dense). Returns the report dict.

    Args:
        out_dir: output folder (created).
        model: pipeline folder; ``None``: the shipped demo model; ``"tiny"``: random weights (no quality).
        num_prompts: held-out prompts (:func:`eval_prompts`).
        steps: denoising steps (default: the model's ``evdit_demo.json``).
        plan: ``"uniform:K"`` or a plan JSON file for the sparse run.
        generation: override the model's :class:`GenerationConfig` entirely.

    Example:
        >>> import tempfile
        >>> rep = run_demo(tempfile.mkdtemp(), model="tiny", num_prompts=2, steps=2, plan="uniform:1",
        ...                progress=False, log=lambda s: None)
        >>> sorted(rep["files"])
        ['contact_sheet', 'report_json', 'report_md', 'video']
    """
    t0 = time.perf_counter()
    if video_format not in ("gif", "mp4"):
        raise ValueError(f"video format must be gif or mp4, got {video_format!r}")
    if num_prompts < 1:
        raise ValueError("--prompts must be >= 1")
    out_dir = os.fspath(out_dir)
    path = resolve_model(model)  # clear error before anything is loaded
    pipe, gen = load_pipeline(path, device=device)
    if generation is not None:
        gen = generation
    if steps is not None:
        gen.num_inference_steps = int(steps)
    if guidance_scale is not None:
        gen.guidance_scale = float(guidance_scale)
    sparse_plan = parse_plan(plan, pipe.transformer)
    if sparse_plan is None:
        raise ValueError("the demo compares dense with a tile plan; pass --plan uniform:K or a plan file")
    os.makedirs(out_dir, exist_ok=True)
    device_name = str(pipe._execution_device)
    log(f"model {path if path != 'tiny' else 'tiny (random weights)'}: {type(pipe).__name__} on {device_name}, "
        f"{gen.num_frames} frames {gen.height}x{gen.width}, {gen.num_inference_steps} steps, "
        f"guidance {gen.guidance_scale}")
    pairs = eval_prompts(num_prompts)
    captions = [c for c, _ in pairs]
    seeds = [seed + i for i in range(len(pairs))]
    real = [render(s, gen.num_frames, gen.height, gen.width) for _, s in pairs]

    _warm_up(pipe, gen)  # one-time kernel set-up must not count as dense step time
    log(f"dense: {len(captions)} prompts")
    dense, dense_t = generate_videos(pipe, captions, gen, seeds, progress=progress)
    pipe.set_mask_plan(sparse_plan)
    info = plan_summary(pipe, gen)
    info["spec"] = plan
    log(f"sparse ({plan}, sparsity {info['sparsity']:.1%}): {len(captions)} prompts")
    sparse, sparse_t = generate_videos(pipe, captions, gen, seeds, progress=progress)
    if sparse_t.get("layout"):
        info.update({k: v for k, v in plan_summary(pipe, gen, sparse_t["layout"]).items()})
    pipe.set_mask_plan(None)

    log("scoring")
    d_sum, d_rows = score_videos(dense, captions, real=real)
    s_sum, s_rows = score_videos(sparse, captions, real=real)
    r_sum, _ = score_videos(real, captions)
    r_sum.pop("frechet", None)
    fidelity = {
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(sparse, dense)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(sparse, dense)])),
    }

    def ratio(a, b):
        return None if not a or not b else float(a / b)

    video_name = f"side_by_side.{video_format}"
    k_label = f"sparse {plan}" if plan.startswith("uniform:") else "sparse (plan)"
    tiles = [v for trio in zip(real, dense, sparse) for v in trio]
    _write_video(labeled_video_grid(tiles, 3, ["real", "dense", k_label]), os.path.join(out_dir, video_name), gen.fps)
    sheet = contact_sheet([(c, [("real", r), ("dense", d), ("sparse", s)])
                           for c, r, d, s in zip(captions, real, dense, sparse)])
    sheet.save(os.path.join(out_dir, "contact_sheet.png"))

    report = {
        "model": path,
        "pipeline_class": type(pipe).__name__,
        "device": device_name,
        "dtype": str(pipe.transformer.dtype).replace("torch.", ""),
        "generation": gen.to_dict(),
        "prompts": captions,
        "seeds": seeds,
        "plan": info,
        "dense": {"metrics": d_sum, "timing": dense_t, "per_video": d_rows},
        "sparse": {"metrics": s_sum, "timing": sparse_t, "per_video": s_rows},
        "reference": r_sum,
        "speedup": {"step": ratio(dense_t["step_ms"], sparse_t["step_ms"]),
                    "forward": ratio(dense_t["forward_ms"], sparse_t["forward_ms"])},
        "fidelity": fidelity,
        "files": {"video": video_name, "contact_sheet": "contact_sheet.png", "report_md": "report.md",
                  "report_json": "report.json"},
    }
    if path == "tiny":
        report["note"] = "random-weight tiny pipeline: checks the plumbing only; the scores say nothing about quality."
    report["total_s"] = time.perf_counter() - t0
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(_markdown_report(report))
    log(f"speedup {_fmt(report['speedup']['step'], '.2f')}x per step at {info['sparsity']:.1%} attention sparsity; "
        f"final score dense {d_sum['final_score']:.3f}, sparse {s_sum['final_score']:.3f}; "
        f"sparse vs dense PSNR {fidelity['psnr']:.2f} dB")
    log(f"wrote {out_dir}/{{{video_name}, contact_sheet.png, report.md, report.json}} in {report['total_s']:.1f} s")
    return report

