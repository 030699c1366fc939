"""Mask plans stacked with what a diffusers user already runs: cache hooks, attention backends, ``torch.compile``,
low-precision weight storage, offloading and classifier-free guidance (docs/stacking.md lists every row).

The reference for every combination is the same combination on the *stock* model whose video self-attention is
given the explicit ``k:F-k`` boolean tile mask (the paper's rule, :func:`reference.paper_mask`) and computed in
float64; every other attention call (cross-attention, text encoders) runs unchanged.
"""

import contextlib

import pytest
import torch
from diffusers import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    SeaCacheConfig,
    TaylorSeerCacheConfig,
    TextKVCacheConfig,
)
from reference import attention_f64, paper_mask

from diffusers_evdit import EfficientVDiTPipeline, MaskPlan, apply_mask_plan, num_plan_layers, remove_mask_plan
from diffusers_evdit.tiny import TinyVideo, tiny_inputs, tiny_pipeline, tiny_pipeline_inputs, tiny_transformer

K = 1  # 1:3 on the 4 latent frames of the tiny pipelines: every layer skips a real share of the attention
STEPS = 4
# tiny_pipeline_inputs: 13 frames -> 4 latent frames of 4x4 latent pixels -> 4 tokens a frame after 2x2 patches;
# max_sequence_length=8 text tokens, in self-attention before the video (CogVideoX), after it (HunyuanVideo) or not
# at all (Wan attends to text by cross-attention).
LATENT_FRAMES, TOKENS_PER_FRAME = 4, 4
TEXT = {"wan": (0, False), "cogvideox": (8, True), "hunyuan_video": (8, False)}
ATOL = 1e-4  # float32 kernels against float64 reference attention, through a few denoising steps


def pipeline_tile_mask(family: str, k: int = K) -> torch.Tensor:
    num_text, text_first = TEXT[family]
    return paper_mask(LATENT_FRAMES, TOKENS_PER_FRAME, num_text, text_first, k)


@contextlib.contextmanager
def tile_masked_self_attention(tile_mask: torch.Tensor):
    """Within the block, SDPA calls over the self-attention sequence (query and key length = the mask's size) run
    as float64 attention under ``tile_mask`` AND the caller's own mask; all other calls run the original SDPA.
    Yields the list of masked calls (one entry per call)."""
    original = torch.nn.functional.scaled_dot_product_attention
    n = tile_mask.shape[0]
    calls = []

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.shape[-2] != n or key.shape[-2] != n:
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        assert dropout_p == 0.0 and not is_causal
        calls.append(query.shape)
        mask = tile_mask.to(query.device)
        if attn_mask is not None:
            mask = attn_mask & mask if attn_mask.dtype == torch.bool else attn_mask.masked_fill(~mask, float("-inf"))
        return attention_f64(query, key, value, mask, scale).to(query.dtype)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield calls
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def run(pipe, **overrides) -> torch.Tensor:
    return pipe(**{**tiny_pipeline_inputs(pipe, steps=STEPS), **overrides}).frames


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= atol


def uniform_plan(transformer, k: int | None = K) -> MaskPlan:
    return MaskPlan.uniform(num_plan_layers(transformer), k)


def masked_reference(family: str, prepare=lambda pipe: None, **overrides) -> torch.Tensor:
    """The stock tiny pipeline of ``family``, set up by ``prepare(pipe)``, run with the tile mask given to SDPA."""
    pipe = tiny_pipeline(family)
    prepare(pipe)
    with tile_masked_self_attention(pipeline_tile_mask(family)) as calls:
        out = run(pipe, **overrides)
    assert len(calls) >= num_plan_layers(pipe.transformer)  # the mask reached the self-attention layers
    return out


# ---------------------------------------------------------------------------------------------------------------------
# 1. Cache hooks. Each case: the families diffusers supports it on, and a config factory taking the current-timestep
# callable of the pipeline being run. The settings make every cache skip work on some steps, deterministically.


def _first_block_cache(timestep):
    return FirstBlockCacheConfig(threshold=10.0)  # the first block's residual always "changes little": reuse


def _mag_cache(timestep):
    return MagCacheConfig(threshold=0.5, max_skip_steps=1, retention_ratio=0.0, num_inference_steps=STEPS,
                          mag_ratios=[1.0] * STEPS)  # skips every other step


def _taylorseer(timestep):
    # diffusers' default identifiers ("^blocks.*attn", matched with re.fullmatch) miss Wan's and CogVideoX's
    # "...attn1": name the video self-attentions explicitly.
    return TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1, max_order=1,
                                 taylor_factors_dtype=torch.float32,
                                 cache_identifiers=[r"(transformer_|single_transformer_)?blocks\.\d+\.attn1?"])


def _pyramid_attention_broadcast(timestep):
    return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                           spatial_attention_timestep_skip_range=(-1, 1001),
                                           current_timestep_callback=timestep)


def _faster_cache(timestep):
    return FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
                             unconditional_batch_skip_range=2, unconditional_batch_timestep_skip_range=(-1, 1001),
                             attention_weight_callback=lambda _: 0.5, tensor_format="BFCHW",
                             current_timestep_callback=timestep)


def _sea_cache(timestep):
    return SeaCacheConfig(threshold=100.0, retention_steps=1, cache_end_steps=0, max_consecutive_cached=1)


CACHES = {
    "FirstBlockCache": (_first_block_cache, ("wan", "cogvideox", "hunyuan_video")),
    "MagCache": (_mag_cache, ("wan", "cogvideox", "hunyuan_video")),
    "TaylorSeer": (_taylorseer, ("wan", "cogvideox", "hunyuan_video")),
    "PyramidAttentionBroadcast": (_pyramid_attention_broadcast, ("wan", "cogvideox", "hunyuan_video")),
    # FasterCache approximates the unconditional half of a batched [uncond, cond] CFG input: CogVideoXPipeline runs
    # CFG as one batch of 2. WanPipeline calls the transformer once per branch and HunyuanVideo is guidance-
    # distilled; with is_guidance_distilled=True diffusers 0.42 fails on their *stock* models (state.cache is None).
    "FasterCache": (_faster_cache, ("cogvideox",)),
    # SeaCache has a built-in adapter for Wan text-to-video only (other models need a raw_vision_callback).
    "SeaCache": (_sea_cache, ("wan",)),
}
CACHE_CASES = [(name, family) for name, (_, families) in CACHES.items() for family in families]


def cache_config(name: str, timestep):
    return CACHES[name][0](timestep)


@pytest.mark.parametrize("order", ["plan_first", "cache_first"])
@pytest.mark.parametrize("cache,family", CACHE_CASES)
def test_cache_on_planned_pipeline_equals_cache_on_masked_stock_pipeline(cache, family, order):
    """EfficientVDiTPipeline + a diffusers cache = the same cache on the stock model given the tile mask, whichever
    of the two is applied first; and the cache really skips work (its output differs from the uncached one)."""
    reference = masked_reference(
        family, lambda pipe: pipe.transformer.enable_cache(cache_config(cache, lambda: pipe.current_timestep)))

    holder = []
    timestep = lambda: holder[0].current_timestep  # noqa: E731  (the pipeline object that runs)
    base = tiny_pipeline(family)
    if order == "cache_first":
        base.transformer.enable_cache(cache_config(cache, timestep))
        pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=uniform_plan(base.transformer))
    else:
        pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=uniform_plan(base.transformer))
        pipe.transformer.enable_cache(cache_config(cache, timestep))
    holder.append(pipe)
    cached = run(pipe)
    assert close(cached, reference), (cached - reference).abs().max()

    pipe.transformer.disable_cache()
    assert (run(pipe) - cached).abs().max() > 1e-3  # the cache changed the result: it skipped work


def test_text_kv_cache_leaves_planned_pipeline_unchanged():
    """TextKVCache hooks only NucleusMoE-Image blocks: on the supported families it is a no-op, with or without plan."""
    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=MaskPlan.uniform(2, K))
    expected = run(pipe)
    pipe.transformer.enable_cache(TextKVCacheConfig())
    assert torch.equal(run(pipe), expected)


def test_remove_plan_under_a_cache_restores_the_stock_cached_output():
    base = tiny_pipeline("wan")
    base.transformer.enable_cache(_first_block_cache(None))
    stock_cached = run(base)
    pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=uniform_plan(base.transformer))
    assert not torch.allclose(run(pipe), stock_cached)
    pipe.set_mask_plan(None)
    assert torch.equal(run(pipe), stock_cached)
