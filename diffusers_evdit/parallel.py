"""Tile-sparse attention under diffusers' context parallelism (Ulysses sequence parallelism).

CogVideoX and HunyuanVideo run with the plans below; classes whose diffusers model defines ``_cp_plan`` (Wan,
ChronoEdit, LTX-Video, LTX-2) run with that plan; other supported classes have no context-parallel plan.

Why diffusers' engine
---------------------
diffusers (>= 0.36) ships context parallelism as part of the model: ``transformer.enable_parallelism(config=
ContextParallelConfig(ulysses_degree=N), cp_plan=...)`` builds the device mesh and installs hooks that shard and
gather the sequence at the module boundaries a declarative ``_cp_plan`` names; the attention backends run the Ulysses
all-to-all (``TemplatedUlyssesAttention``) or ring attention. This module adds exactly what the tile mask needs on top
of that engine and nothing else:

* **Plans** (:data:`COGVIDEOX_CP_PLAN`, :func:`hunyuan_video_cp_plan`; Wan, LTX-Video and the others use
  diffusers' own ``_cp_plan``) in diffusers' ``ContextParallelInput`` / ``ContextParallelOutput`` format,
  passed to ``enable_parallelism(cp_plan=...)``. The video tokens are sharded after patch embedding (first block)
  and gathered before ``proj_out``; RoPE tables are sharded alike. **Text tokens are not sharded**: every rank keeps
  the whole (short) text stream, which keeps the tile layout exact, works for any text length (CogVideoX's 226 tokens
  do not divide by 4) and keeps HunyuanVideo's text padding mask whole.
* **Attention**: :func:`ulysses_tile_attention` (in :mod:`diffusers_evdit.processors.ulysses`) is the Ulysses step
  with diffusers' all-to-all helper
  (``attention_dispatch._all_to_all_single``) and its mesh/process groups: each rank sends its video shard of every
  head and receives the whole video sequence of its ``H / N`` heads; it takes its heads of the (local, whole) text;
  so it holds the *global* sequence in the model's order (text first for CogVideoX, last for HunyuanVideo) and the
  ``k:F-k`` tile mask and the kernel choice (``split``, ...) apply unchanged, with the global
  :class:`~diffusers_evdit.TileLayout` that the transformer's layout hook recorded from the full latent (the
  hook is a plain forward pre-hook, so it runs before diffusers' sharding hooks). The output goes back by the inverse
  all-to-all; the text output of the local heads is all-gathered so every rank continues with the whole text.
* Dense entries of Wan (no text in self-attention) keep the model's own attention call and thus diffusers' own
  context-parallel attention, exactly as without a plan.

What is refused (clear errors): ring attention (``ring_degree > 1``) for any sparse entry and for the joint-text
families (a rank would only see a shard of the keys, so the mask would need the full sequence); heads that do not
divide by ``ulysses_degree``; video token counts that do not divide by it unless ``ulysses_anything=True`` (uneven
shards are supported then); HunyuanVideo I2V ``token_replace`` models; gradients through the tile path (inference only);
and removing the mask plan of a CogVideoX/HunyuanVideo transformer after parallelism was enabled (its plan needs the
tile processors; install a dense plan instead).

Example (``torchrun --nproc-per-node 2 script.py``)::

    import torch
    from diffusers_evdit import EfficientVDiTPipeline, MaskPlan
    from diffusers_evdit.parallel import enable_tile_parallelism, init_distributed

    rank, world, device = init_distributed()
    pipe = EfficientVDiTPipeline.from_pretrained("hunyuanvideo-community/HunyuanVideo", dtype=torch.bfloat16)
    pipe.set_mask_plan(MaskPlan.uniform(60, k=1)).to(device)
    enable_tile_parallelism(pipe, ulysses_degree=world)
    video = pipe("a red panda eating bamboo", num_frames=129, generator=torch.Generator().manual_seed(0)).frames[0]
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from .plan import MaskPlan, apply_mask_plan, get_mask_plan, num_plan_layers
from .processors import family_for
from .processors.ulysses import check_local_seq_len, ulysses_tile_attention, video_shard_sizes

#: NCCL / PyTorch / NVSHMEM settings that keep NVLink multicast off (set by :func:`init_distributed` unless given).
SAFE_MULTI_GPU_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

_TEXT_FAMILIES = ("cogvideox", "hunyuan_video")


def _cp_types():
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return ContextParallelInput, ContextParallelOutput


def _cogvideox_plan() -> dict:
    cp_in, cp_out = _cp_types()
    rope = cp_in(split_dim=0, expected_dims=2)
    return {
        # Video tokens: sharded where they enter the first block (after patch embedding; the text stream is separate).
        "transformer_blocks.0": {"hidden_states": cp_in(split_dim=1, expected_dims=3)},
        # RoPE tables are a transformer argument handed unchanged to every block: shard them per block. (A "" entry
        # would break return_dict=True: diffusers' split hook requires tensor outputs.)
        "transformer_blocks.*": {"image_rotary_emb": (rope, rope)},
        "proj_out": cp_out(gather_dim=1, expected_dims=3),
    }


def hunyuan_video_cp_plan(transformer: nn.Module | None = None) -> dict:
    """diffusers context-parallel plan of ``HunyuanVideoTransformer3DModel`` (text tokens replicated, not sharded).

    The video tokens are sharded where they enter the first block (a double-stream block, or the first single-stream
    block of a model without double-stream blocks), the RoPE tables at the output of ``rope``, and the sequence is
    gathered after ``proj_out``. The text padding mask stays global; the tile processors read it as such.

    Example:
        >>> sorted(hunyuan_video_cp_plan())
        ['proj_out', 'rope', 'transformer_blocks.0']
    """
    cp_in, cp_out = _cp_types()
    first = "transformer_blocks.0"
    if transformer is not None and len(transformer.transformer_blocks) == 0:
        first = "single_transformer_blocks.0"
    rope = cp_in(split_dim=0, expected_dims=2, split_output=True)
    return {
        "rope": {0: rope, 1: rope},
        first: {"hidden_states": cp_in(split_dim=1, expected_dims=3)},
        "proj_out": cp_out(gather_dim=1, expected_dims=3),
    }


def cogvideox_cp_plan(transformer: nn.Module | None = None) -> dict:
    """diffusers context-parallel plan of ``CogVideoXTransformer3DModel`` (CogVideoX 1.0 / 1.5; text replicated).

    Example:
        >>> sorted(cogvideox_cp_plan())
        ['proj_out', 'transformer_blocks.*', 'transformer_blocks.0']
    """
    return _cogvideox_plan()


COGVIDEOX_CP_PLAN = _cogvideox_plan()
HUNYUAN_VIDEO_CP_PLAN = hunyuan_video_cp_plan()


def cp_plan_for(transformer: nn.Module) -> dict:
    """The context-parallel plan used for ``transformer``: the plugin's for CogVideoX and HunyuanVideo, diffusers' own
    ``_cp_plan`` for the others that define one (Wan, ChronoEdit, LTX-Video, LTX-2).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> sorted(cp_plan_for(tiny_transformer("cogvideox")))
        ['proj_out', 'transformer_blocks.*', 'transformer_blocks.0']
        >>> cp_plan_for(tiny_transformer("wan")) is type(tiny_transformer("wan"))._cp_plan
        True
    """
    family = family_for(transformer)
    if family.name == "cogvideox":
        return cogvideox_cp_plan(transformer)
    if family.name == "hunyuan_video":
        return hunyuan_video_cp_plan(transformer)
    plan = getattr(type(transformer), "_cp_plan", None)
    if plan is None:
        raise TypeError(
            f"{type(transformer).__name__} has no diffusers context-parallel plan (_cp_plan); tile-sparse context "
            "parallelism runs on CogVideoX, HunyuanVideo and the classes that define one (Wan, ChronoEdit, LTX)."
        )
    return plan


# ---------------------------------------------------------------------------------------------------- enabling


@contextlib.contextmanager
def _accelerator_count_for_cpu():
    """diffusers 0.42 picks the device as ``rank % torch.accelerator.device_count()``, which divides by zero on a
    machine without accelerator (CPU + gloo); count one device there while parallelism is enabled."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


@dataclass
class _ContextParallelGuard:
    """Forward pre-hook checking, per call, what the plugin's context-parallel plan relies on (clear errors instead
    of a failed assertion in diffusers' sharder or silently wrong attention)."""

    family_name: str
    world: int
    uneven: bool

    def __call__(self, module, args, kwargs):
        family = family_for(module)
        if self.family_name in _TEXT_FAMILIES and getattr(module, "_evdit_tile_state", None) is None:
            raise RuntimeError(
                f"{type(module).__name__} runs under diffusers-evdit's context-parallel plan, which needs the "
                "tile-sparse processors (the text tokens are replicated, not sharded), but its mask plan was removed. "
                "Install a dense plan instead: "
                "apply_mask_plan(transformer, MaskPlan.dense(num_plan_layers(transformer)))."
            )
        layout = family.video_layout(module, args, kwargs)
        video_shard_sizes(layout.num_video_tokens, self.world, self.uneven)  # clear error when it does not divide


def _transformers_of(target) -> list[tuple[str, nn.Module]]:
    if isinstance(target, nn.Module):
        return [("transformer", getattr(target, "_orig_mod", target))]
    found = []
    for slot in ("transformer", "transformer_2"):
        module = getattr(target, slot, None)
        if module is not None:
            found.append((slot, getattr(module, "_orig_mod", module)))
    if not found:
        raise TypeError(f"{type(target).__name__} has no transformer; pass a pipeline or a supported transformer.")
    return found


def check_tile_parallel_support(transformer: nn.Module, config) -> None:
    """Raise a clear error if ``transformer`` with its installed plan cannot run under ``config`` (a diffusers
    ``ContextParallelConfig``). Called by :func:`enable_tile_parallelism` before anything is modified.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> from diffusers_evdit import MaskPlan, apply_mask_plan
        >>> from types import SimpleNamespace
        >>> t = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1))
        >>> check_tile_parallel_support(t, SimpleNamespace(ring_degree=2, ulysses_degree=1))
        Traceback (most recent call last):
        ...
        NotImplementedError: WanTransformer3DModel: ring attention (ring_degree=2) cannot run tile-sparse layers: ...
    """
    family = family_for(transformer)
    name = type(transformer).__name__
    ring = getattr(config, "ring_degree", 1) or 1
    ulysses = getattr(config, "ulysses_degree", 1) or 1
    if ring > 1:
        if family.name in _TEXT_FAMILIES:
            raise NotImplementedError(
                f"{name}: ring attention (ring_degree={ring}) is not supported: the plugin's plan keeps the text "
                "tokens whole on every rank (the tile layout needs them), which ring attention would count once per "
                "rank. Use Ulysses only: enable_tile_parallelism(pipe, ulysses_degree=N)."
            )
        plan = get_mask_plan(transformer)
        if plan is not None and any(k is not None for k in plan.layers):
            raise NotImplementedError(
                f"{name}: ring attention (ring_degree={ring}) cannot run tile-sparse layers: a ring step holds "
                "one shard of the keys, but a k:F-k mask needs the full sequence (reference frames anywhere in the "
                "video). Use Ulysses (each rank gets the full sequence of its heads): "
                "enable_tile_parallelism(pipe, ulysses_degree=N), or a dense plan."
            )
    heads = transformer.config.num_attention_heads
    if heads % ulysses:
        raise ValueError(
            f"{name} has {heads} attention heads, which do not divide over ulysses_degree={ulysses}; the tile "
            "kernels need whole heads per rank. Choose a Ulysses degree that divides the head count."
        )
    if family.name == "hunyuan_video" and getattr(transformer.config, "image_condition_type", None) == "token_replace":
        raise NotImplementedError(
            f"{name} with image_condition_type='token_replace' (HunyuanVideo I2V) is not supported under context "
            "parallelism: its blocks split the first latent frame off the sequence, which a shard does not hold."
        )


def enable_tile_parallelism(
    target,
    ulysses_degree: int | None = None,
    *,
    ring_degree: int = 1,
    ulysses_anything: bool = False,
    mesh=None,
):
    """Run a pipeline's transformer(s) (or one transformer) under diffusers' Ulysses context parallelism with
    tile-sparse attention.

    Call it on every rank, after :func:`init_distributed` (or ``torch.distributed.init_process_group``), after
    moving the model to the rank's device, and with the same inputs on every rank (same seed): each rank computes
    its shard of the sequence and all ranks return the full output. Mask plans may be set before or after.

    CogVideoX and HunyuanVideo transformers without a plan get a dense plan installed (their context-parallel plan
    needs the tile processors); Wan keeps its stock processors if it has no plan.

    Args:
        target: an :class:`~diffusers_evdit.EfficientVDiTPipeline` (or any diffusers pipeline with supported
            ``transformer`` / ``transformer_2``), or a supported transformer.
        ulysses_degree: Ulysses group size; default: the world size divided by ``ring_degree``.
        ring_degree: diffusers' ring degree; only ``1`` works with tile-sparse or joint-text layers (clear error).
        ulysses_anything: allow video token counts (and RoPE tables) that do not divide by ``ulysses_degree``
            (diffusers' "Ulysses anything" sharding); head counts must still divide.
        mesh: a device mesh with ``("ring", "ulysses")`` dimensions to use instead of a new one.

    Returns:
        ``target``.

    Example (2 processes, CPU; see ``examples/parallel_inference.py`` for a pipeline)::

        rank, world, device = init_distributed()          # torchrun --nproc-per-node 2 ...
        t = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1))
        enable_tile_parallelism(t, ulysses_degree=world)
        out = t(**tiny_inputs(t), return_dict=False)[0]   # the full output on every rank
    """
    from diffusers import ContextParallelConfig

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "torch.distributed is not initialized: launch with torchrun --nproc-per-node N and call "
            "diffusers_evdit.parallel.init_distributed() (or torch.distributed.init_process_group) first."
        )
    world = dist.get_world_size()
    if ring_degree < 1:
        raise ValueError(f"ring_degree must be >= 1, got {ring_degree}.")
    if ulysses_degree is None:
        ulysses_degree = world // ring_degree
    if ulysses_degree * ring_degree < 2:
        raise ValueError(
            f"Context parallelism needs ulysses_degree * ring_degree >= 2 (world size {world}); launch more processes."
        )
    transformers = _transformers_of(target)
    for slot, transformer in transformers:  # every check before anything is changed
        if getattr(transformer, "_parallel_config", None) is not None:
            raise RuntimeError(f"{slot} already runs under diffusers parallelism (enable_parallelism was called).")
        probe = SimpleNamespace(ring_degree=ring_degree, ulysses_degree=ulysses_degree)
        check_tile_parallel_support(transformer, probe)
    for slot, transformer in transformers:
        family = family_for(transformer)
        if family.name in _TEXT_FAMILIES and get_mask_plan(transformer) is None:
            apply_mask_plan(transformer, MaskPlan.dense(num_plan_layers(transformer)))
        config = ContextParallelConfig(
            ulysses_degree=ulysses_degree, ring_degree=ring_degree, ulysses_anything=ulysses_anything, mesh=mesh
        )
        with _accelerator_count_for_cpu():
            transformer.enable_parallelism(config=config, cp_plan=cp_plan_for(transformer))
        uneven = bool(ulysses_anything)
        transformer.register_forward_pre_hook(
            _ContextParallelGuard(family.name, ulysses_degree * ring_degree, uneven), with_kwargs=True
        )
    return target


def init_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Initialize ``torch.distributed`` from the ``torchrun`` environment; return ``(rank, world_size, device)``.

    NCCL on CUDA (one GPU per local rank, set as current), gloo on CPU. Sets :data:`SAFE_MULTI_GPU_ENV` (NVLink
    multicast off) unless the variables are already set. Does nothing but report when already initialized.

    Example::

        rank, world, device = init_distributed()   # under torchrun --nproc-per-node 4
    """
    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        raise RuntimeError(
            "Not launched by torchrun: run e.g. torchrun --nproc-per-node 2 examples/parallel_inference.py ... "
            "(or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)."
        )
    for key, value in SAFE_MULTI_GPU_ENV.items():
        os.environ.setdefault(key, value)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


__all__ = [
    "COGVIDEOX_CP_PLAN",
    "HUNYUAN_VIDEO_CP_PLAN",
    "SAFE_MULTI_GPU_ENV",
    "check_local_seq_len",
    "check_tile_parallel_support",
    "cogvideox_cp_plan",
    "cp_plan_for",
    "enable_tile_parallelism",
    "hunyuan_video_cp_plan",
    "init_distributed",
    "ulysses_tile_attention",
    "video_shard_sizes",
]
