"""Generation defaults that travel with a pipeline folder, and the work a call implies.

A saved :class:`~diffusers_evdit.EfficientVDiTPipeline` folder records how the model is meant to be called (frames,
size, steps, guidance, fps, text length, a distilled model's few-step schedule) in ``generation_defaults.json``, a
diffusers :class:`~diffusers.configuration_utils.ConfigMixin` config (``save_config`` / ``load_config``). Folders
written before it existed are read from the legacy ``evdit_demo.json``. Explicit arguments override the defaults;
what is still unset falls back to the pipeline's own ``__call__`` defaults. An ``EfficientVDiTPipeline`` applies its
defaults in ``__call__`` itself (:func:`with_generation_defaults`), as transformers' ``generate`` applies a model's
``generation_config.json``.

    >>> defaults = GenerationDefaults(num_frames=29, height=128, width=128, num_inference_steps=20, guidance_scale=4.0)
    >>> defaults.call_kwargs()["num_frames"], defaults.fps
    (29, 8)
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from dataclasses import dataclass

from diffusers.configuration_utils import ConfigMixin, register_to_config

__all__ = [
    "GENERATION_DEFAULTS_FILE",
    "LEGACY_GENERATION_FILE",
    "GenerationDefaults",
    "WorkEstimate",
    "call_arguments",
    "device_flops",
    "estimate_work",
    "guider_scale",
    "missing_call_defaults",
    "pipeline_call_defaults",
    "resolve_call",
    "token_patch",
    "vae_compression",
    "with_generation_defaults",
]

#: The defaults file of a pipeline folder (written by ``EfficientVDiTPipeline.save_pretrained``).
GENERATION_DEFAULTS_FILE = "generation_defaults.json"
#: The older file of the demo model's training scripts (``diffusers_evdit.demo.GenerationConfig``), still read.
LEGACY_GENERATION_FILE = "evdit_demo.json"
#: Keys of the defaults that are ``__call__`` arguments (``fps`` is for the video file).
CALL_KEYS = ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "max_sequence_length",
             "timesteps", "sigmas", "negative_prompt")
DEFAULT_FPS = 8


class GenerationDefaults(ConfigMixin):
    """How a pipeline is meant to be called; ``None`` leaves a value to the pipeline's own ``__call__`` default.

    Args:
        num_frames, height, width: the video the model was trained for.
        num_inference_steps, guidance_scale: sampling defaults (a distilled few-step model: its step count, and the
            guidance it was distilled for).
        fps: frame rate of written videos.
        max_sequence_length: text length the model was trained with (Wan pads prompts to it).
        timesteps, sigmas: a distilled model's explicit schedule, passed to pipelines whose ``__call__`` takes them.
        negative_prompt: default negative prompt.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> path = GenerationDefaults(num_frames=9, num_inference_steps=4).save(folder)
        >>> GenerationDefaults.load(folder).config.num_inference_steps
        4
    """

    config_name = GENERATION_DEFAULTS_FILE

    @register_to_config
    def __init__(
        self,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        fps: int | None = None,
        max_sequence_length: int | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        negative_prompt: str | None = None,
    ):
        for name in ("num_frames", "height", "width", "num_inference_steps", "fps", "max_sequence_length"):
            value = locals()[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"GenerationDefaults: {name} must be a positive integer or None, got {value!r}.")
        if guidance_scale is not None and not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"GenerationDefaults: guidance_scale must be a number or None, got {guidance_scale!r}.")

    @property
    def fps(self) -> int:
        """Frame rate for written videos (8 when unset)."""
        return self.config.fps or DEFAULT_FPS

    def to_dict(self) -> dict:
        """The set values (``None`` left out), without diffusers' private ``_`` keys."""
        return {k: v for k, v in self.config.items() if not k.startswith("_") and v is not None}

    def call_kwargs(self, pipe=None) -> dict:
        """The set ``__call__`` arguments; with ``pipe``, only those its ``__call__`` takes."""
        out = {k: v for k, v in self.to_dict().items() if k in CALL_KEYS}
        if pipe is not None:
            params = inspect.signature(pipe.__call__).parameters
            out = {k: v for k, v in out.items() if k in params}
        return out

    def replace(self, **changes) -> "GenerationDefaults":
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        values = self.to_dict()
        values.update({k: v for k, v in changes.items() if v is not None})
        return GenerationDefaults(**values)

    def apply_to(self, config):
        """Copy the set values onto the same-named attributes of ``config`` (e.g. the demo's ``GenerationConfig``);
        returns ``config``."""
        for key, value in self.to_dict().items():
            if hasattr(config, key):
                setattr(config, key, value)
        return config

    def save(self, folder: str | os.PathLike) -> str:
        """Write ``generation_defaults.json`` into ``folder``; returns its path."""
        self.save_config(os.fspath(folder))
        return os.path.join(os.fspath(folder), GENERATION_DEFAULTS_FILE)

    @classmethod
    def from_dict(cls, data: dict, source: str = "defaults") -> "GenerationDefaults":
        """Build from a dict; unknown keys (``extra``, ``_class_name``, ...) are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(data).__name__}.")
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except ValueError as err:
            raise ValueError(f"{source}: {err} Fix or delete the file.") from None

    @classmethod
    def load(cls, folder: str | os.PathLike, **hub_kwargs) -> "GenerationDefaults | None":
        """The defaults of a pipeline folder or Hub repo: ``generation_defaults.json`` over the legacy
        ``evdit_demo.json`` (values set in the first win; a training script may still write only the second);
        ``None`` when it has neither. A corrupt file raises ``ValueError`` naming it."""
        folder = os.fspath(folder)
        values, found = {}, False
        for name in (LEGACY_GENERATION_FILE, GENERATION_DEFAULTS_FILE):
            path = _find_file(folder, name, hub_kwargs)
            if path is None:
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{path} is not a readable JSON file ({err}); fix or delete it.") from None
            values.update(cls.from_dict(data, source=path).to_dict())
            found = True
        return cls(**values) if found else None


def _find_file(folder: str, name: str, hub_kwargs: dict) -> str | None:
    if os.path.isdir(folder):
        path = os.path.join(folder, name)
        return path if os.path.isfile(path) else None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(folder, name, **hub_kwargs)
    except Exception:  # noqa: BLE001  no such file in the repo, or offline: no defaults
        return None


#: Call keys that together set the sampling schedule: a caller who gives one of them gets none of the others from the
#: defaults (``num_inference_steps=8`` on a model whose defaults hold a 4-step ``sigmas`` means 8 steps).
SCHEDULE_KEYS = ("num_inference_steps", "timesteps", "sigmas")


def missing_call_defaults(defaults: GenerationDefaults, parameters, given) -> dict:
    """The values of ``defaults`` for the ``__call__`` ``parameters`` a caller did not give (names in ``given``).

    Example:
        >>> d = GenerationDefaults(num_frames=29, num_inference_steps=4, sigmas=[1.0, 0.5], guidance_scale=1.0)
        >>> missing_call_defaults(d, ["prompt", "num_frames", "num_inference_steps", "sigmas", "guidance_scale"],
        ...                       {"prompt", "num_inference_steps"})
        {'num_frames': 29, 'guidance_scale': 1.0}
    """
    values = {k: v for k, v in defaults.call_kwargs().items() if k in parameters and k not in given}
    if set(given) & set(SCHEDULE_KEYS):
        values = {k: v for k, v in values.items() if k not in SCHEDULE_KEYS}
    return values


def with_generation_defaults(call):
    """Wrap a pipeline class's ``__call__`` so that the arguments a caller leaves out come from the instance's
    ``generation_defaults`` (:func:`missing_call_defaults`), then from ``__call__``'s own defaults. Explicit arguments
    always win; an instance whose ``generation_defaults`` is ``None`` calls ``call`` unchanged. The wrapper keeps
    ``call``'s name, docstring and signature (``inspect.signature`` follows ``__wrapped__``).

    Example:
        >>> from diffusers_evdit import EfficientVDiTPipeline
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan")).set_generation_defaults(
        ...     num_frames=9, height=32, width=32, num_inference_steps=2, max_sequence_length=8)
        >>> pipe.set_progress_bar_config(disable=True)
        >>> pipe("a red circle", output_type="latent").frames.shape  # 9 frames of 32 x 32: 3 latent frames of 4 x 4
        torch.Size([1, 4, 3, 4, 4])
    """
    signature = inspect.signature(call)

    @functools.wraps(call)
    def __call__(self, *args, **kwargs):
        defaults = getattr(self, "generation_defaults", None)
        if defaults is not None:
            given = signature.bind_partial(self, *args, **kwargs).arguments
            kwargs.update(missing_call_defaults(defaults, signature.parameters, given))
        return call(self, *args, **kwargs)

    return __call__


def pipeline_call_defaults(pipe) -> dict:
    """The pipeline's own ``__call__`` defaults for the generation keys, with the size filled in from the
    transformer's sample size where ``__call__`` computes it (CogVideoX: ``height=None``).

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipeline_call_defaults(tiny_pipeline("wan"))["num_frames"]
        81
    """
    params = inspect.signature(pipe.__call__).parameters
    out = {k: params[k].default for k in CALL_KEYS if k in params and params[k].default is not inspect.Parameter.empty}
    cfg = getattr(pipe, "transformer", None)
    cfg = getattr(cfg, "config", {}) if cfg is not None else {}
    temporal, spatial = vae_compression(pipe)
    for key, sample in (("height", "sample_height"), ("width", "sample_width")):
        if out.get(key) is None and cfg.get(sample):
            out[key] = int(cfg[sample]) * spatial
    if out.get("num_frames") is None and cfg.get("sample_frames"):
        out["num_frames"] = (int(cfg["sample_frames"]) - 1) * temporal + 1
    return out


def guider_scale(pipe) -> float | None:
    """The guidance scale of a pipeline whose classifier-free guidance is a component (``pipe.guider``: HunyuanVideo
    1.5) rather than a ``__call__`` argument; ``None`` for other pipelines.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> guider_scale(tiny_pipeline("wan")) is None
        True
    """
    guider = getattr(pipe, "guider", None)
    if guider is None or not hasattr(guider, "guidance_scale"):
        return None
    if "guidance_scale" in inspect.signature(pipe.__call__).parameters:
        return None
    return float(guider.guidance_scale)


def call_arguments(pipe, settings: dict) -> dict:
    """``pipe(**call_arguments(pipe, settings))``: the settings of :func:`resolve_call` as call arguments. A guider
    pipeline's ``guidance_scale`` is not an argument: it goes onto ``pipe.guider`` (a new guider, ``guider.new``).

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("wan")
        >>> sorted(call_arguments(pipe, {"num_frames": 9, "guidance_scale": 5.0, "fps": 8}))
        ['guidance_scale', 'num_frames']
    """
    call = {k: v for k, v in settings.items() if k != "fps"}
    current = guider_scale(pipe)
    if current is not None and "guidance_scale" in call:
        scale = float(call.pop("guidance_scale"))
        if scale != current:
            pipe.guider = pipe.guider.new(guidance_scale=scale)
    return call


def resolve_call(pipe, defaults: GenerationDefaults | None = None, **overrides) -> tuple[dict, dict]:
    """The generation settings of one call and where each came from.

    Order: ``overrides`` (not ``None``) > ``defaults`` (default: ``pipe.generation_defaults``) > the pipeline's
    ``__call__`` defaults. Returns ``(settings, sources)``: ``settings`` has the call keys the pipeline takes plus
    ``fps`` (and ``guidance_scale`` for a pipeline with a guider, see :func:`call_arguments`); ``sources[key]`` is
    ``"argument"``, ``"model"`` or ``"pipeline"``. Raises ``ValueError`` for an override the pipeline does not take.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> settings, sources = resolve_call(tiny_pipeline("wan"), GenerationDefaults(num_frames=9), height=32)
        >>> settings["num_frames"], sources["num_frames"], sources["height"], sources["width"]
        (9, 'model', 'argument', 'pipeline')
    """
    if defaults is None:
        defaults = getattr(pipe, "generation_defaults", None)
    params = set(inspect.signature(pipe.__call__).parameters)
    settings, sources = {}, {}
    for key, value in pipeline_call_defaults(pipe).items():
        settings[key], sources[key] = value, "pipeline"
    guided = guider_scale(pipe)
    if guided is not None:
        params.add("guidance_scale")
        settings["guidance_scale"], sources["guidance_scale"] = guided, "pipeline"
    if defaults is not None:
        for key, value in defaults.call_kwargs().items():
            if key in params:
                settings[key], sources[key] = value, "model"
    settings["fps"], sources["fps"] = (defaults.fps, "model") if defaults and defaults.config.fps else (DEFAULT_FPS,
                                                                                                      "pipeline")
    for key, value in overrides.items():
        if value is None:
            continue
        if key != "fps" and key not in params:
            raise ValueError(f"{type(pipe).__name__} does not take {key}; drop --{key.replace('_', '-')}.")
        settings[key], sources[key] = value, "argument"
    return settings, sources


# ---------------------------------------------------------------------------------------------------------------------
# Work estimate


@dataclass
class WorkEstimate:
    """The size of one generation call: tokens, steps and transformer calls (a classifier-free guidance pair counts
    as two calls), and a rough FLOP count of the transformer work.

    Example:
        >>> WorkEstimate(8, 64, 0, 20, 2, 6.7e11).describe()
        '8 latent frames x 64 tokens = 512 tokens a call; 20 steps x 2 = 40 transformer calls, about 0.67 TFLOP'
    """

    latent_frames: int
    tokens_per_frame: int
    text_tokens: int
    steps: int
    calls_per_step: int
    flops: float

    @property
    def tokens(self) -> int:
        """Self-attention sequence length (video tokens plus text in self-attention)."""
        return self.latent_frames * self.tokens_per_frame + self.text_tokens

    @property
    def transformer_calls(self) -> int:
        return self.steps * self.calls_per_step

    def describe(self) -> str:
        text = f" + {self.text_tokens} text" if self.text_tokens else ""
        return (f"{self.latent_frames} latent frames x {self.tokens_per_frame} tokens{text} = {self.tokens} tokens a "
                f"call; {self.steps} steps x {self.calls_per_step} = {self.transformer_calls} transformer calls, "
                f"about {self.flops / 1e12:.2g} TFLOP")


def token_patch(config) -> tuple[int, int, int]:
    """``(t, h, w)``: the latent frames, rows and columns one token of a transformer with ``config`` covers (a
    ``patch_size`` tuple, or an int with ``patch_size_t``).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> token_patch(tiny_transformer("wan").config), token_patch(tiny_transformer("cogvideox").config)
        ((1, 2, 2), (1, 2, 2))
    """
    p = config.get("patch_size", 1)
    if isinstance(p, (list, tuple)):
        return tuple(int(x or 1) for x in p)
    return (int(config.get("patch_size_t") or 1), int(p), int(p))


def vae_compression(pipe) -> tuple[int, int]:
    """``(temporal, spatial)`` compression of ``pipe``'s VAE: diffusers calls them ``vae_scale_factor_temporal`` /
    ``_spatial`` on most video pipelines and ``vae_temporal_compression_ratio`` / ``vae_spatial_compression_ratio``
    on LTX-Video's; ``(4, 8)`` where the pipeline names neither.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> vae_compression(tiny_pipeline("wan")), vae_compression(tiny_pipeline("ltx_video"))
        ((4, 8), (4, 4))
    """
    temporal = getattr(pipe, "vae_scale_factor_temporal", None) or getattr(pipe, "vae_temporal_compression_ratio", None)
    spatial = getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_spatial_compression_ratio", None)
    return int(temporal or 4), int(spatial or 8)


def _uses_cfg(pipe, settings: dict) -> bool:
    guided = guider_scale(pipe)
    if guided is not None:  # guidance is a component (HunyuanVideo 1.5)
        return float(settings.get("guidance_scale", guided)) > 1.0
    if "true_cfg_scale" in inspect.signature(pipe.__call__).parameters:  # HunyuanVideo: embedded guidance
        return False
    return float(settings.get("guidance_scale") or 0) > 1.0


def estimate_work(pipe, settings: dict, sparsity: float = 0.0) -> WorkEstimate:
    """The :class:`WorkEstimate` of calling ``pipe`` with ``settings`` (as :func:`resolve_call` returns them).

    ``sparsity`` is the mask plan's element sparsity (it scales the attention FLOPs).

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> work = estimate_work(tiny_pipeline("wan"), {"num_frames": 9, "height": 32, "width": 32,
        ...                                              "num_inference_steps": 2, "guidance_scale": 5.0})
        >>> work.latent_frames, work.tokens_per_frame, work.transformer_calls
        (3, 4, 4)
    """
    from .processors import family_for

    transformer = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    config = transformer.config
    pt, ph, pw = token_patch(config)
    st, ss = vae_compression(pipe)
    frames = (int(settings["num_frames"]) - 1) // st + 1
    frames = -(-frames // pt)
    tokens_per_frame = (int(settings["height"]) // ss // ph) * (int(settings["width"]) // ss // pw)
    text = 0
    if family_for(transformer).text_position != "none":
        # the call's text length, else a fixed one the pipeline keeps (HunyuanVideo 1.5: 1000), else CogVideoX's 226
        text = int(settings.get("max_sequence_length") or getattr(pipe, "tokenizer_max_length", None) or 226)
    steps = int(settings.get("num_inference_steps") or 50)
    calls = 2 if _uses_cfg(pipe, settings) else 1
    n = frames * tokens_per_frame + text
    params = sum(p.numel() for p in transformer.parameters())
    heads = config.get("num_attention_heads", 1) * config.get("attention_head_dim", 64)
    from .plan import num_plan_layers

    layers = num_plan_layers(transformer)
    attention = 4.0 * layers * n * n * heads * (1.0 - sparsity)
    flops = (2.0 * params * n + attention) * steps * calls
    return WorkEstimate(frames, tokens_per_frame, text, steps, calls, flops)


def device_flops(device, dtype=None, size: int = 1024, reps: int = 3) -> float:
    """Matrix-multiply FLOP/s measured on ``device`` in ``dtype`` (a fraction of a second), for time estimates.

    Example:
        >>> device_flops("cpu", size=64, reps=1) > 0
        True
    """
    import time

    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    a @ a  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ a
    sync()
    return 2.0 * size**3 * reps / max(time.perf_counter() - start, 1e-9)
