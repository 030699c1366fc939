"""Tiny random diffusers video transformers and pipelines for tests, docs and ``evdit smoke`` (no download)."""

from .models import TINY_FAMILIES, TINY_MODELS, TinyModel, TinyVideo, tiny_inputs, tiny_name, tiny_transformer
from .pipelines import (
    TINY_PIPELINES,
    TINY_TEXT_VOCAB_SIZE,
    TINY_VOCAB,
    tiny_pipeline,
    tiny_pipeline_inputs,
    tiny_tokenizer,
    tiny_vae,
)

__all__ = [
    "TINY_FAMILIES",
    "TINY_MODELS",
    "TINY_PIPELINES",
    "TINY_TEXT_VOCAB_SIZE",
    "TINY_VOCAB",
    "TinyModel",
    "TinyVideo",
    "tiny_inputs",
    "tiny_name",
    "tiny_pipeline",
    "tiny_pipeline_inputs",
    "tiny_tokenizer",
    "tiny_transformer",
    "tiny_vae",
]
