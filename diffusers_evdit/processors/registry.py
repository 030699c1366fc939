"""The registry of supported and refused transformer classes (read by the README table, the CLI and the tests)."""

from __future__ import annotations

from torch import nn

from .families import FAMILIES, REFUSED
from .family import ModelFamily


def supported_models() -> list[str]:
    """Transformer class names that accept a mask plan: the registry the README table, the CLI and the tests read.

    Example:
        >>> supported_models()[:3]
        ['CogVideoXTransformer3DModel', 'WanTransformer3DModel', 'HunyuanVideoTransformer3DModel']
    """
    return [name for family in FAMILIES for name in family.class_names]


def refused_models() -> dict[str, str]:
    """Video transformer classes of diffusers that tile-sparse attention refuses, each with the reason.

    Example:
        >>> "linear attention" in refused_models()["SanaVideoTransformer3DModel"]
        True
    """
    return dict(REFUSED)


def is_supported_class(class_name: str) -> bool:
    """Whether ``class_name`` is in :func:`supported_models`.

    Example:
        >>> is_supported_class("LTXVideoTransformer3DModel"), is_supported_class("LatteTransformer3DModel")
        (True, False)
    """
    return any(class_name in family.class_names for family in FAMILIES)


def family_for(transformer: nn.Module) -> ModelFamily:
    """The :class:`ModelFamily` of ``transformer``; ``TypeError`` naming the reason or the supported classes.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> family_for(tiny_transformer("hunyuan_video")).name
        'hunyuan_video'
    """
    name = type(transformer).__name__
    for family in FAMILIES:
        if name in family.class_names:
            return family
    if name in REFUSED:
        raise TypeError(f"{name} is not supported by diffusers-evdit: {REFUSED[name]}.")
    raise TypeError(
        f"{name} is not supported by diffusers-evdit. Supported transformers: {', '.join(supported_models())}. "
        "Pass the pipeline's transformer (pipe.transformer), not the pipeline."
    )
