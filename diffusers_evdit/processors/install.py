"""Installing and removing tile-sparse processors on a transformer, and binding a drop-in processor on first use."""

from __future__ import annotations

import sys
import threading

import torch
from torch import nn

from .registry import family_for, is_supported_class
from .state import LayoutHook, TileAttentionConfig, TileState

STATE_ATTR = "_evdit_tile_state"
_BIND_LOCK = threading.Lock()


def set_module_processor(module: nn.Module, processor) -> None:
    """``module.set_processor(processor)``, or the plain attribute for attention classes without that method."""
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def attention_modules_with_processors(transformer: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every attention module of ``transformer`` (modules holding a ``processor``), in module order."""
    return [(n, m) for n, m in transformer.named_modules() if n and hasattr(m, "processor")]


def is_tile_processor(processor) -> bool:
    """Whether ``processor`` is a :class:`~diffusers_evdit.TileSparseAttnProcessor` (bound or drop-in)."""
    return getattr(type(processor), "is_tile_processor", False)


def _stock(family, name: str, module: nn.Module):
    current = module.processor
    return family.stock_processor(name, module) if is_tile_processor(current) else current


def install_plan(
    transformer: nn.Module, family, layers: list, config: TileAttentionConfig, metadata: dict
) -> TileState:
    """Install tile processors with entries ``layers`` on ``family.attention_modules(transformer)`` (checked by the
    caller), keeping the stock processors for :func:`uninstall_plan`; returns the new shared state."""
    modules = family.attention_modules(transformer)
    planned = {name for name, _ in modules}
    for name, module in attention_modules_with_processors(transformer):
        if name not in planned and is_tile_processor(module.processor):
            set_module_processor(module, family.stock_processor(name, module))  # a drop-in left on a non-video module
    previous = getattr(transformer, STATE_ATTR, None)
    originals = previous.original_processors if previous is not None else {n: _stock(family, n, m) for n, m in modules}
    state = TileState(attention=config.build(), config=config, family=family, metadata=dict(metadata),
                      original_processors=originals, stock_processors=[originals[name] for name, _ in modules])
    if previous is not None and previous.hook_handle is not None:
        previous.hook_handle.remove()
    state.hook_handle = transformer.register_forward_pre_hook(LayoutHook(family, state), with_kwargs=True)
    for i, ((name, module), k) in enumerate(zip(modules, layers)):
        processor = family.processor_cls(k, state, layer_index=i)
        processor.stock = originals[name]
        for attr in ("_attention_backend", "_parallel_config"):  # settings diffusers put on the stock processor
            if getattr(originals[name], attr, None) is not None:
                setattr(processor, attr, getattr(originals[name], attr))
        processor.prepare()
        set_module_processor(module, processor)
    setattr(transformer, STATE_ATTR, state)
    return state


def uninstall_plan(transformer: nn.Module, family) -> None:
    """Put the stock processors back and remove the layout hook by its handle; a no-op without a plan."""
    state = getattr(transformer, STATE_ATTR, None)
    if state is None:
        return
    for name, module in family.attention_modules(transformer):
        set_module_processor(module, state.original_processors[name])
    if state.hook_handle is not None:
        state.hook_handle.remove()
    delattr(transformer, STATE_ATTR)


def calling_transformer(attn: nn.Module):
    """``(transformer, args, kwargs)`` of the supported transformer call that is running ``attn``, found on the
    Python stack (torch's ``Module._call_impl`` frame keeps the call's own arguments); ``None`` if there is none."""
    frame = sys._getframe(1)
    while frame is not None:
        local = frame.f_locals
        module = local.get("self")
        if (
            frame.f_code.co_name == "_call_impl"
            and isinstance(module, nn.Module)
            and is_supported_class(type(module).__name__)
            and "args" in local
            and "kwargs" in local
            and any(m is attn for m in module.modules())
        ):
            return module, local["args"], local["kwargs"]
        frame = frame.f_back
    return None


def bind_on_first_use(processor, attn: nn.Module):
    """Turn a drop-in ``TileSparseAttnProcessor(k)`` into the plan ``MaskPlan.uniform(L, k)`` on the transformer that
    calls it (once; later calls find the installed processors) and return ``attn``'s processor for this call."""
    line = "apply_mask_plan(transformer, MaskPlan.uniform(num_plan_layers(transformer), k))"
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "A drop-in TileSparseAttnProcessor binds itself to its transformer on the first (eager) call, which "
            f"torch.compile cannot trace. Run one forward before compiling, or install the plan with {line}."
        )
    found = calling_transformer(attn)
    if found is None:
        raise RuntimeError(
            "TileSparseAttnProcessor could not find the diffusers transformer calling it (the tile layout comes from "
            f"the transformer's forward). Install it with {line} instead."
        )
    transformer, args, kwargs = found
    family = family_for(transformer)
    if processor.family_name is not None and processor.family_name != family.name:
        raise TypeError(f"{type(processor).__name__} is for {processor.family_name} models, not "
                        f"{type(transformer).__name__}; use TileSparseAttnProcessor(k).")
    with _BIND_LOCK:
        if attn.processor is processor:
            config = processor.config if processor.config is not None else TileAttentionConfig()
            num_layers = len(family.attention_modules(transformer))
            layers = processor.plan_layers if processor.plan_layers is not None else [processor.k] * num_layers
            if len(layers) != num_layers:
                raise ValueError(f"The processor's plan has {len(layers)} layers but {type(transformer).__name__} "
                                 f"has {num_layers} self-attention layers.")
            install_plan(transformer, family, layers, config, {})
    state = getattr(transformer, STATE_ATTR)
    family.check_call(transformer, args, kwargs)
    # the hook came too late for this call
    layout = family.video_layout(transformer, args, kwargs)
    state.set_video_layout(layout, family.extra_tokens(transformer, args, kwargs))
    if attn.processor is processor:
        raise RuntimeError(f"{type(attn).__name__} is not an attention module of {type(transformer).__name__}.")
    return attn.processor
