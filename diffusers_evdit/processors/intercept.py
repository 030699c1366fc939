"""Run a model's stock attention processor with its attention product redirected (the interception mechanism).

A diffusers processor computes its attention product with one of two calls, both looked up as *globals* of the module
that defines the processor: ``dispatch_attention_fn(query, key, value, ...)`` (``[B, N, H, D]``) or
``F.scaled_dot_product_attention(query, key, value, ...)`` (``[B, H, N, D]``). :func:`intercepting_call` copies the
processor's ``__call__`` function with a private copy of those globals in which the two names point to the caller's
functions. Nothing global is patched: the model file, ``torch.nn.functional`` and diffusers stay untouched, and
every other line of the processor (projections, norms, RoPE, output projection) runs as written. Why this route and
not a ``TorchFunctionMode`` or a diffusers attention backend: docs/processors.md.
"""

from __future__ import annotations

import types
from typing import Callable

import torch.nn.functional as F

DISPATCH_NAME = "dispatch_attention_fn"


def attention_call_names(func: Callable) -> tuple[bool, bool]:
    """Whether ``func`` (a processor's ``__call__``) reaches ``dispatch_attention_fn`` and/or
    ``F.scaled_dot_product_attention`` through its module globals.

    Example:
        >>> from diffusers.models.transformers.transformer_wan import WanAttnProcessor
        >>> attention_call_names(WanAttnProcessor.__call__)
        (True, False)
    """
    code_names = set(func.__code__.co_names)
    uses_dispatch = DISPATCH_NAME in code_names and DISPATCH_NAME in func.__globals__
    uses_sdpa = "scaled_dot_product_attention" in code_names and any(
        func.__globals__.get(name) is F for name in code_names
    )
    return uses_dispatch, uses_sdpa


def processor_function(processor) -> Callable:
    """The plain Python ``__call__`` function of a processor; ``TypeError`` naming the processor otherwise."""
    func = getattr(type(processor), "__call__", None)
    if not isinstance(func, types.FunctionType):
        raise TypeError(
            f"{type(processor).__name__} has no plain Python __call__; tile-sparse attention wraps diffusers' own "
            "attention processors. Reset the model's processors (remove_mask_plan or reload it) first."
        )
    return func


def own_code(code: types.CodeType) -> types.CodeType:
    """A copy of ``code`` and of every function code nested in it (new objects, same bytecode).

    torch.compile keeps its compiled frames per code object and looks their helpers up in the globals of the frame
    it compiled; a copy that shared a code object (or a nested ``def``'s) with the stock processor or another copy
    would run those frames with the wrong globals.
    """
    consts = tuple(own_code(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_consts=consts)


def intercepting_call(processor, dispatch: Callable, sdpa: Callable) -> Callable:
    """A copy of ``type(processor).__call__`` whose attention calls go to ``dispatch`` / ``sdpa``.

    ``dispatch`` replaces the module global ``dispatch_attention_fn`` (same signature); ``sdpa`` replaces
    ``scaled_dot_product_attention`` of every global bound to ``torch.nn.functional`` (other ``F.*`` functions stay
    the real ones). Call the result like the original: ``call(processor, attn, *args, **kwargs)``.

    Raises ``TypeError`` when the processor reaches neither call (its attention cannot be intercepted).

    Example:
        >>> from diffusers.models.transformers.transformer_wan import WanAttnProcessor
        >>> from diffusers.models.attention_dispatch import dispatch_attention_fn
        >>> seen = []
        >>> def spy(*args, **kwargs):
        ...     seen.append(args[0].shape)
        ...     return dispatch_attention_fn(*args, **kwargs)
        >>> call = intercepting_call(WanAttnProcessor(), spy, None)
        >>> call.__globals__["dispatch_attention_fn"] is spy, WanAttnProcessor.__call__.__globals__[
        ...     "dispatch_attention_fn"] is dispatch_attention_fn
        (True, True)
    """
    func = processor_function(processor)
    uses_dispatch, uses_sdpa = attention_call_names(func)
    if not (uses_dispatch or uses_sdpa):
        raise TypeError(
            f"{type(processor).__name__}.__call__ calls neither dispatch_attention_fn nor "
            "F.scaled_dot_product_attention, so its attention product cannot be replaced by tile-sparse attention."
        )
    scope = dict(func.__globals__)
    # Without ``__name__`` torch.compile guards these globals as this dict (not as the model file's module); relative
    # imports inside the processor resolve through ``__package__``.
    scope.pop("__name__", None)
    if uses_dispatch:
        scope[DISPATCH_NAME] = dispatch
    if uses_sdpa:
        functional = types.ModuleType(F.__name__)
        functional.__dict__.update(F.__dict__)
        functional.scaled_dot_product_attention = sdpa
        for name, value in func.__globals__.items():
            if value is F:
                scope[name] = functional
    call = types.FunctionType(own_code(func.__code__), scope, func.__name__, func.__defaults__, func.__closure__)
    call.__kwdefaults__ = func.__kwdefaults__
    call.__qualname__ = func.__qualname__
    return call
