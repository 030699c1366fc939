"""The demo model's structure: component builders, architectures and the generation settings it is called with."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

import torch

from ..data import caption_vocabulary

#: Where the trained demo pipeline ships (package data).
DEMO_MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_model")

#: File in a pipeline folder with the :class:`GenerationConfig` the model was trained and evaluated with.
GENERATION_FILE = "evdit_demo.json"


@dataclass(frozen=True)
class DemoArchitecture:
    """Sizes of the demo pipeline's components (the classes are fixed: Wan VAE, UMT5 encoder, Wan transformer).

    ``ARCHITECTURES["demo"]`` is the shipped model; ``ARCHITECTURES["tiny"]`` has the same structure at a size
    that runs in milliseconds, for tests.

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


