"""Ulysses (sequence-parallel) tile attention inside a processor, under diffusers' context parallelism.

Each rank holds its shard of the video tokens (and the whole text) for all heads; one all-to-all gives it the whole
sequence for its ``H / N`` heads, the tile kernel runs with the global layout, and the inverse all-to-all (video) and
an all-gather over heads (text) bring the result back. Enabling parallelism: :mod:`diffusers_evdit.parallel`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..layout import TEXT_FIRST, TileLayout
from ..masks import is_dense

def video_shard_sizes(num_video_tokens: int, world: int, uneven: bool = False) -> list[int]:
    """Video tokens held by each rank, as diffusers shards them (``chunk``; ``tensor_split`` with ``uneven``).

    Example:
        >>> video_shard_sizes(96, 4)
        [24, 24, 24, 24]
        >>> video_shard_sizes(45, 2, uneven=True)
        [23, 22]
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}.")
    if not uneven:
        if num_video_tokens % world:
            raise ValueError(
                f"{num_video_tokens} video tokens do not divide over {world} context-parallel ranks; choose a "
                f"resolution/frame count whose token count divides by {world}, or enable uneven shards with "
                "enable_tile_parallelism(..., ulysses_anything=True)."
            )
        return [num_video_tokens // world] * world
    base, extra = divmod(num_video_tokens, world)
    if base == 0:
        raise ValueError(f"{num_video_tokens} video tokens cannot be shared by {world} ranks.")
    return [base + (1 if i < extra else 0) for i in range(world)]


def _is_uneven(cp) -> bool:
    return bool(cp.ulysses_anything or cp.ring_anything)


def _group_rank(mesh) -> tuple[object, int, int]:
    group = mesh.get_group()
    return group, dist.get_rank(group), dist.get_world_size(group)


def check_local_seq_len(layout: TileLayout, seq_len: int, cp, where: str) -> None:
    """Raise a clear error unless a rank's self-attention sequence is its video shard plus the whole text.

    ``cp`` is the ``ContextParallelConfig``; the shard sizes follow diffusers' sharder over the flattened
    (ring x ulysses) mesh.

    Example (on every rank, inside a tile processor under ``torchrun``; a sequence that is not this rank's shard
    raises ``ValueError`` naming the fix)::

        check_local_seq_len(layout, q.shape[2], transformer._parallel_config.context_parallel_config, "attn1")
    """
    _, rank, world = _group_rank(cp._flattened_mesh)
    sizes = video_shard_sizes(layout.num_video_tokens, world, _is_uneven(cp))
    expected = layout.num_text_tokens + sizes[rank]
    if seq_len != expected:
        raise ValueError(
            f"{where}: rank {rank} of {world} received {seq_len} tokens under context parallelism, but its shard of "
            f"the tile layout is {sizes[rank]} video tokens + {layout.num_text_tokens} text tokens = {expected} "
            f"({layout.num_frames} frames x {layout.tokens_per_frame} tokens in all). The transformer was not sharded "
            "by the plugin's context-parallel plan; enable parallelism with "
            "diffusers_evdit.parallel.enable_tile_parallelism()."
        )


def _all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group) -> torch.Tensor:
    """All-to-all along dim 0 (diffusers' helper for equal splits, functional collectives otherwise)."""
    from diffusers.models.attention_dispatch import _all_to_all_single, _wait_tensor

    if len(set(output_splits)) == 1 and output_splits == input_splits:
        return _all_to_all_single(x.contiguous(), group)
    import torch.distributed._functional_collectives as funcol

    return _wait_tensor(funcol.all_to_all_single(x.contiguous(), output_splits, input_splits, group))


def _all_gather(x: torch.Tensor, group) -> torch.Tensor:
    """All-gather along dim 0."""
    import torch.distributed._functional_collectives as funcol
    from diffusers.models.attention_dispatch import _wait_tensor

    gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor  # the newer name
    return _wait_tensor(gather(x.contiguous(), 0, group))


def ulysses_tile_attention(
    processor, q, k, v, layout: TileLayout, key_padding_mask, dense_fn, config, inner_dense_fn=None
) -> torch.Tensor:
    """Tile attention of one layer under diffusers' Ulysses context parallelism.

    Args:
        processor: the :class:`~diffusers_evdit.TileSparseAttnProcessor` (its ``k``, kernel state, backend).
        q, k, v: this rank's ``[B, H, S_local, D]`` tensors: the whole text segment (if any) and this rank's shard of
            the video tokens, in the model's order (text first or last), all heads.
        layout: the *global* :class:`~diffusers_evdit.TileLayout`.
        key_padding_mask: ``[B, N]`` bool over the global sequence, or ``None``.
        dense_fn: the processor's own dense call on the local tensors (diffusers' context-parallel attention), or
            ``None`` (plain SDPA).
        config: the diffusers ``ParallelConfig``.
        inner_dense_fn: the model's own dense call on the gathered tensors (no parallelism), or ``None``.

    Returns:
        ``[B, H, S_local, D]``: this rank's rows of the exact tile attention over the global sequence.

    The all-to-all gives each rank the global sequence for ``H / ulysses_degree`` heads, the tile kernel runs on it
    with the global layout, and the inverse all-to-all (video) and an all-gather over heads (text) bring the result
    back. Refuses ring attention, gradients, and head counts that do not divide by the Ulysses degree.

    Example (called for you by every tile processor once parallelism is enabled; run with
    ``torchrun --nproc-per-node 2 script.py``)::

        rank, world, device = init_distributed()
        plan = MaskPlan.uniform(2, k=1)
        pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("cogvideox"), mask_plan=plan).to(device)
        enable_tile_parallelism(pipe, ulysses_degree=world)   # tile layers now run ulysses_tile_attention
        latents = pipe(**tiny_pipeline_inputs(pipe)).frames   # the same on every rank
    """
    cp = config.context_parallel_config
    has_text = layout.num_text_tokens > 0
    dense = is_dense(layout.num_frames, processor.k)

    def where() -> str:  # built only on the way to an error: under torch.compile each read value is a per-layer guard
        return f"{type(processor).__name__} (layer {processor.layer_index})"

    if dense and not has_text and dense_fn is not None:
        return dense_fn(q, k, v)  # the model's own call: diffusers' Ulysses / ring attention, as without a plan
    if cp.ring_degree > 1:
        reason = (
            "the text tokens are replicated on every rank, which ring attention would count once per rank"
            if has_text
            else f"its k:F-k mask (k={processor.k}) needs the full key sequence, which a ring step never holds"
        )
        raise NotImplementedError(
            f"{where()}: ring attention (ring_degree={cp.ring_degree}) is not supported by tile-sparse attention: "
            f"{reason}. Use Ulysses only: ContextParallelConfig(ulysses_degree=N), e.g. "
            "enable_tile_parallelism(pipe, ulysses_degree=N)."
        )
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError(
            f"{where()}: tile-sparse attention under context parallelism is inference-only; run the model under "
            "torch.no_grad() (pipelines do)."
        )
    group, rank, world = _group_rank(cp._ulysses_mesh)
    batch, heads, seq_local, head_dim = q.shape
    if heads % world:
        raise ValueError(
            f"{where()}: {heads} attention heads do not divide over ulysses_degree={world}; choose a Ulysses degree "
            "that divides the head count."
        )
    h_local = heads // world
    my_heads = slice(rank * h_local, (rank + 1) * h_local)
    sizes = video_shard_sizes(layout.num_video_tokens, world, _is_uneven(cp))
    sv_local = sizes[rank]
    num_text = layout.num_text_tokens
    if seq_local != num_text + sv_local:
        check_local_seq_len(layout, seq_local, cp, where())
    text_first = layout.text_position == TEXT_FIRST
    local_video = slice(num_text, num_text + sv_local) if text_first else slice(0, sv_local)
    local_text = slice(0, num_text) if text_first else slice(sv_local, sv_local + num_text)

    def to_global(x: torch.Tensor) -> torch.Tensor:
        """[B, H, S_local, D] -> [B, H_local, N, D] (memory [B, N, H_local, D]), the global sequence in model order."""
        x = x.transpose(1, 2)  # [B, S_local, H, D]
        send = x[:, local_video].unflatten(2, (world, h_local)).permute(2, 1, 0, 3, 4)  # [W, Sv_l, B, h, D]
        video = _all_to_all(send.flatten(0, 1), sizes, [sv_local] * world, group)  # [Sv, B, h, D], source order
        video = video.permute(1, 0, 2, 3)  # [B, Sv, h, D]
        if num_text:
            text = x[:, local_text, my_heads]
            full = torch.cat([text, video] if text_first else [video, text], dim=1)
        else:
            full = video.contiguous()
        return full.transpose(1, 2)

    qg, kg, vg = to_global(q), to_global(k), to_global(v)
    inner = inner_dense_fn
    out = processor.state.attention(qg, kg, vg, layout, processor.k, key_padding_mask=key_padding_mask, dense_fn=inner)
    out = out.transpose(1, 2)  # [B, N, h, D]

    result = out.new_empty(batch, seq_local, heads, head_dim)
    send = out[:, layout.video_slice].permute(1, 0, 2, 3)  # [Sv, B, h, D]: seq chunk r goes back to rank r
    back = _all_to_all(send, [sv_local] * world, sizes, group)  # [W (head block), Sv_l, B, h, D]
    back = back.view(world, sv_local, batch, h_local, head_dim).permute(2, 1, 0, 3, 4)
    result[:, local_video].unflatten(2, (world, h_local)).copy_(back)
    if num_text:
        text = out[:, layout.text_slice].permute(2, 0, 1, 3)  # [h, B, T, D]
        result[:, local_text].copy_(_all_gather(text, group).permute(1, 2, 0, 3))  # heads in rank order
    return result.transpose(1, 2)


def local_video_tokens(layout: TileLayout, cp) -> int:
    """Video tokens of this rank's shard of ``layout`` under the ``ContextParallelConfig`` ``cp``."""
    _, rank, world = _group_rank(cp._flattened_mesh)
    return video_shard_sizes(layout.num_video_tokens, world, _is_uneven(cp))[rank]
