"""A model family as data: which attention modules are video self-attention, where the layout comes from, where
the extra (text, image, reference) tokens sit, and the model's own processors."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..layout import TEXT_FIRST, TEXT_LAST, TEXT_NONE, TileLayout, layout_from_latents


def forward_arg(args: tuple, kwargs: dict, name: str, index: int = 0):
    """A forward argument given by position or by keyword."""
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    raise ValueError(f"The transformer was called without {name!r}; the tile layout cannot be derived.")


def attention_blocks(*paths: str) -> Callable[[nn.Module], list[tuple[str, nn.Module]]]:
    """``transformer -> [(name, module)]`` for paths like ``"blocks.*.attn1"`` (``*``: every block of that
    ``nn.ModuleList``, in order), the lists one after the other (execution order).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> [name for name, _ in attention_blocks("blocks.*.attn1")(tiny_transformer("wan"))]
        ['blocks.0.attn1', 'blocks.1.attn1']
    """

    def modules(transformer: nn.Module) -> list[tuple[str, nn.Module]]:
        found = []
        for path in paths:
            container_name, attr = path.split(".*.")
            container = getattr(transformer, container_name, None)
            for i, block in enumerate(container or ()):
                found.append((f"{container_name}.{i}.{attr}", block.get_submodule(attr)))
        return found

    return modules


def _patch(config, patch_attr: str, patch_t_attr: str | None) -> tuple[int, int, int]:
    p = getattr(config, patch_attr)
    if isinstance(p, (tuple, list)):
        return tuple(p) if len(p) == 3 else (1, p[0], p[1])
    pt = getattr(config, patch_t_attr, None) if patch_t_attr else None
    return (pt or 1, p, p)


def latent_layout(dims: str = "BCFHW", arg: str = "hidden_states", patch: str = "patch_size",
                  patch_t: str | None = "patch_size_t") -> Callable[[nn.Module, tuple, dict], TileLayout]:
    """Layout source for latents passed as ``arg`` with axes ``dims`` (``"BCFHW"``, ``"BFCHW"``, ``"BFHWC"``) and
    the patch size from the config (``patch``: an int or a ``(t, h, w)`` tuple; ``patch_t``: the temporal one).

    Example:
        >>> import torch
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> latent_layout("BFCHW")(tiny_transformer("cogvideox"), (), {"hidden_states": torch.zeros(1, 4, 4, 8, 8)})
        TileLayout(num_frames=4, tokens_per_frame=16, num_text_tokens=0, text_position='none')
    """

    def layout(transformer: nn.Module, args: tuple, kwargs: dict) -> TileLayout:
        shape = dict(zip(dims, forward_arg(args, kwargs, arg).shape))
        return layout_from_latents((shape["F"], shape["H"], shape["W"]), _patch(transformer.config, patch, patch_t))

    return layout


def packed_layout(patch: str = "patch_size", patch_t: str | None = "patch_size_t"):
    """Layout source for packed ``[B, N, C]`` latents with ``num_frames``, ``height`` and ``width`` forward arguments
    (latent sizes, as LTX-Video takes them)."""

    def layout(transformer: nn.Module, args: tuple, kwargs: dict) -> TileLayout:
        sizes = []
        for name in ("num_frames", "height", "width"):
            value = kwargs.get(name)
            if value is None:
                raise ValueError(
                    f"{type(transformer).__name__} was called without {name}=...; the tile layout of packed latents "
                    "needs num_frames, height and width (the latent sizes, as the pipelines pass them)."
                )
            sizes.append(int(value))
        return layout_from_latents(tuple(sizes), _patch(transformer.config, patch, patch_t))

    return layout


def _resolve(cls):
    """A processor class, or its dotted path (imported on use, so that model files load only when needed)."""
    if isinstance(cls, str):
        import importlib

        module, _, name = cls.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return cls


def no_check(transformer, args, kwargs) -> None:
    return None


def unknown_extra_tokens(transformer, args, kwargs) -> None:
    return None


def tokens_of(arg: str, index: int = 1):
    """Extra-token count source: the sequence length of forward argument ``arg`` (e.g. the text embeddings)."""

    def count(transformer, args, kwargs) -> int:
        return forward_arg(args, kwargs, arg, index).shape[1]

    return count


@dataclass(frozen=True)
class ModelFamily:
    """How one or more diffusers transformer classes become tile-sparse: data, no model code.

    Attributes:
        name: short family name (``"wan"``).
        class_names: transformer class names of this family.
        attention_modules: ``transformer -> [(name, module)]``, the video self-attentions in execution order.
        video_layout: ``(transformer, forward args, forward kwargs) -> TileLayout`` of the video tokens.
        text_position: where extra tokens (text, image, reference) sit in self-attention: ``"first"``, ``"last"``
            or ``"none"``; they are always global (every token attends to them and they attend to every token).
        stock_processors: ``(module-name pattern, processor class or its dotted path)`` pairs: the model's own
            processor of each attention module (first match wins; a pattern with ``":Class"`` also matches the module
            class; else the module class's ``_default_processor_cls``).
        check_call: ``(transformer, args, kwargs) -> None``, raises for forward modes the family refuses.
        extra_tokens: ``(transformer, args, kwargs) -> int | None``: how many extra tokens self-attention will see
            (checked per call when known; otherwise every token beyond the video is taken as extra).
        mask: how the model's own self-attention mask combines with the tile mask, in words (for the docs).
        processor: dotted path of the :class:`~diffusers_evdit.TileSparseAttnProcessor` class plans install
            (``processor_cls`` resolves it).

    Example:
        >>> from diffusers_evdit.processors import family_for
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> family = family_for(tiny_transformer("cogvideox"))
        >>> family.name, family.text_position, family.processor_cls.__name__
        ('cogvideox', 'first', 'CogVideoXTileSparseAttnProcessor')
    """

    name: str
    class_names: tuple[str, ...]
    attention_modules: Callable[[nn.Module], list[tuple[str, nn.Module]]]
    video_layout: Callable[[nn.Module, tuple, dict], TileLayout]
    text_position: str = TEXT_NONE
    stock_processors: tuple = ()
    check_call: Callable = no_check
    extra_tokens: Callable = unknown_extra_tokens
    mask: str = "none"
    processor: str = "diffusers_evdit.processors.base.TileSparseAttnProcessor"

    def __post_init__(self):
        if self.text_position not in (TEXT_FIRST, TEXT_LAST, TEXT_NONE):
            raise ValueError(f"text_position must be 'first', 'last' or 'none', got {self.text_position!r}.")

    @property
    def processor_cls(self) -> type:
        """The :class:`~diffusers_evdit.TileSparseAttnProcessor` class plans install (named by ``processor``)."""
        return _resolve(self.processor)

    def stock_processor(self, name: str, module: nn.Module):
        """A new instance of the model's own processor for attention module ``name``."""
        import diffusers.models.attention_processor as attention_processor

        for pattern, cls in self.stock_processors:
            if fnmatch.fnmatchcase(name if ":" not in pattern else f"{name}:{type(module).__name__}", pattern):
                return _resolve(cls)()
        cls = getattr(type(module), "_default_processor_cls", None)
        if cls is None and isinstance(module, attention_processor.Attention):
            cls = attention_processor.AttnProcessor2_0
        if cls is None:
            raise TypeError(f"{self.name}: no stock processor is known for {name} ({type(module).__name__}).")
        return cls()
