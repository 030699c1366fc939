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
from reference import attention_f64, masked_sdpa, paper_mask

from diffusers_evdit import EfficientVDiTPipeline, MaskPlan, apply_mask_plan, num_plan_layers
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


# ---------------------------------------------------------------------------------------------------------------------
# 2. Attention backends (CPU ones: "native", "_native_math"; GPU backends such as sage run in benchmarks/stack_bench.py)

VIDEO = TinyVideo(frames=4, height=8, width=8, text_tokens=7, batch=2)


def transformer_tile_mask(model, video: TinyVideo, k: int = K) -> torch.Tensor:
    """The k:F-k mask of ``model``'s self-attention sequence on ``video`` (tiny_inputs), from the paper's rule."""
    pt = getattr(model.config, "patch_size_t", None) or 1
    p = model.config.patch_size
    ph = p[1] if isinstance(p, (tuple, list)) else p
    name = type(model).__name__
    num_text = 0 if name == "WanTransformer3DModel" else video.text_tokens
    return paper_mask(video.frames // pt, (video.height // ph) * (video.width // ph), num_text,
                      name == "CogVideoXTransformer3DModel", k)


def forward(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


def masked_transformer_reference(family: str, per_call: list, video: TinyVideo = VIDEO, prepare=lambda m: None):
    """The stock tiny transformer, set up by ``prepare``, with the tile mask on the self-attention calls marked
    True in ``per_call`` (in execution order; float64)."""
    model = tiny_transformer(family)
    prepare(model)
    with masked_sdpa(transformer_tile_mask(model, video), per_call=per_call) as calls:
        out = forward(model, tiny_inputs(model, video))
    assert len(calls) == len(per_call)
    return out


@pytest.fixture
def backend_spy(monkeypatch):
    """``spy(name)``: wrap diffusers' registered attention backend ``name``; returns the list of (query, key)
    token counts of its calls. Also restores the process-wide active backend, which set_attention_backend changes."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, attention_backend

    def spy(name):
        key = AttentionBackendName(name)
        original = _AttentionBackendRegistry._backends[key]
        calls = []

        def wrapped(**kwargs):
            calls.append((kwargs["query"].shape[1], kwargs["key"].shape[1]))  # [B, N, H, D]
            return original(**kwargs)

        monkeypatch.setitem(_AttentionBackendRegistry._backends, key, wrapped)
        return calls

    with attention_backend("native"):  # restores the active backend on exit
        yield spy


def self_attention_calls(calls: list, n: int) -> int:
    return sum(1 for q, k in calls if q == k == n)


def mixed_plan(family: str) -> MaskPlan:
    """Sparse and dense layers alternating (sparse first) on the tiny transformer of ``family``."""
    n = num_plan_layers(tiny_transformer(family))
    return MaskPlan([K if i % 2 == 0 else None for i in range(n)])


@pytest.mark.parametrize("order", ["plan_first", "backend_first"])
@pytest.mark.parametrize("backend", ["native", "_native_math"])
@pytest.mark.parametrize("family", ["wan", "hunyuan_video"])
def test_set_attention_backend_runs_dense_layers_on_it(family, backend, order, backend_spy):
    """A mixed plan under ``transformer.set_attention_backend``: the dense layers call the chosen backend (sparse
    ones run the tile kernels), and the output equals the stock model under that backend given the tile mask."""
    plan = mixed_plan(family)
    reference = masked_transformer_reference(family, [k is not None for k in plan.layers],
                                             prepare=lambda m: m.set_attention_backend(backend))
    calls = backend_spy(backend)
    model = tiny_transformer(family)
    if order == "backend_first":
        model.set_attention_backend(backend)
        apply_mask_plan(model, plan)
    else:
        apply_mask_plan(model, plan)
        model.set_attention_backend(backend)
    out = forward(model, tiny_inputs(model, VIDEO))
    assert close(out, reference, 1e-5), (out - reference).abs().max()
    n = transformer_tile_mask(model, VIDEO).shape[0]
    assert self_attention_calls(calls, n) == plan.layers.count(None)


@pytest.mark.parametrize("family", ["wan", "hunyuan_video"])
def test_attention_backend_context_manager_runs_dense_layers_on_it(family, backend_spy):
    from diffusers.models.attention_dispatch import attention_backend

    plan = mixed_plan(family)
    reference = masked_transformer_reference(family, [k is not None for k in plan.layers])
    calls = backend_spy("_native_math")
    model = apply_mask_plan(tiny_transformer(family), plan)
    inputs = tiny_inputs(model, VIDEO)
    with attention_backend("_native_math"):
        out = forward(model, inputs)
    n = transformer_tile_mask(model, VIDEO).shape[0]
    assert self_attention_calls(calls, n) == plan.layers.count(None)
    assert close(out, reference, 1e-5)
    forward(model, inputs)  # outside the context: the default backend again
    assert self_attention_calls(calls, n) == plan.layers.count(None)


def test_cogvideox_under_a_backend_equals_masked_reference(backend_spy):
    """diffusers' CogVideoX processor calls SDPA directly (no backend dispatch); with a plan the same holds: the
    backend changes nothing and the output equals the masked reference."""
    plan = mixed_plan("cogvideox")
    reference = masked_transformer_reference("cogvideox", [k is not None for k in plan.layers])
    calls = backend_spy("_native_math")
    model = apply_mask_plan(tiny_transformer("cogvideox"), plan)
    model.set_attention_backend("_native_math")
    out = forward(model, tiny_inputs(model, VIDEO))
    assert close(out, reference, 1e-5) and not calls


# ---------------------------------------------------------------------------------------------------------------------
# 3. torch.compile

COMPILE_BREAKS = (
    "Graph breaks on the planned forward: (1) processors/base.py LayoutHook.__call__ stores a TileLayout (a frozen "
    "dataclass) created inside the traced forward on the shared TileState, a side effect Dynamo cannot replay "
    "(gb0092 'Reconstruction failure ... FrozenDataClassVariable(TileLayout)'); (2) kernels/dispatch.py "
    "TileAttention.indices caches TileIndices in a dict keyed by that in-graph TileLayout (same failure); "
    "(3) HunyuanVideo: bool(mask.all()) in processors/base.py key_padding_from_attention_mask and "
    "bool(key_padding_mask[:, layout.video_slice].all()) in kernels/dispatch.py TileAttention.choose are "
    "data-dependent branches."
)
RECOMPILES = (
    "Python-side caches read inside the compiled forward change between calls, so guards fail on shapes seen "
    "before: the layout stored on TileState by LayoutHook and TileAttention's _indices dict (filled on the first "
    "call). Fix: store plain ints on the state and build the TileLayout in the processors; under "
    "torch.compiler.is_compiling() build tile_indices without the dict (then 1 graph per shape, fullgraph)."
)


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video"])
def test_compile_fullgraph_of_planned_transformer(family):
    """torch.compile(fullgraph=True) of a planned tiny transformer (first call traced, no eager warm-up) compiles
    without graph breaks and computes the eager output."""
    torch._dynamo.reset()
    model = tiny_transformer(family, num_layers=1)  # one block of each kind: tracing is the slow part
    apply_mask_plan(model, uniform_plan(model))
    inputs = tiny_inputs(model, TinyVideo(frames=4, batch=1), padded_text=0)
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=False)
    out = forward(compiled, inputs)
    assert close(out, forward(model, inputs), 1e-5)


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_compiled_planned_transformer_recompiles_only_on_a_new_shape():
    torch._dynamo.reset()
    model = tiny_transformer("wan", num_layers=1)
    apply_mask_plan(model, uniform_plan(model))
    counter = GraphCounter()
    compiled = torch.compile(model, backend=counter, dynamic=False)
    four, six = (tiny_inputs(model, TinyVideo(frames=f, batch=1)) for f in (4, 6))
    out = forward(compiled, four)
    first = counter.graphs
    assert first > 0 and close(out, forward(model, four), 1e-5)
    forward(compiled, four)
    assert counter.graphs == first  # same shape: no recompile
    out = forward(compiled, six)
    second = counter.graphs
    assert second > first and close(out, forward(model, six), 1e-5)  # a new shape compiles, with its own layout
    forward(compiled, four)
    forward(compiled, six)
    assert counter.graphs == second  # both shapes cached


@pytest.mark.parametrize("family", ["wan", "ltx_video"])
def test_regional_compile_traces_the_repeated_block_once_for_every_planned_layer(family):
    """compile_repeated_blocks (diffusers' regional compile) compiles one block and reuses it for every layer; a
    plan must not make each layer a recompile (per-layer processor code did, and past dynamo's recompile limit of 8
    the remaining blocks ran uncompiled: a Wan2.1-1.3B-shaped model compiled 8 of its 30 blocks, stack.json run 0)."""
    graphs = {}
    for planned in (False, True):
        torch._dynamo.reset()
        model = tiny_transformer(family, num_layers=10)
        if planned:
            apply_mask_plan(model, MaskPlan.uniform(num_plan_layers(model), 1))
        inputs = tiny_inputs(model, TinyVideo(frames=8, batch=1))
        counter = GraphCounter()
        model.compile_repeated_blocks(backend=counter)
        out = forward(model, inputs)
        forward(model, inputs)
        graphs[planned] = counter.graphs
        if planned:
            eager = tiny_transformer(family, num_layers=10)
            eager.load_state_dict(model.state_dict())
            apply_mask_plan(eager, MaskPlan.uniform(num_plan_layers(eager), 1))
            assert close(out, forward(eager, inputs), 1e-5)
    assert graphs[True] == graphs[False], graphs


# ---------------------------------------------------------------------------------------------------------------------
# 4. Weights and memory: low-precision weight storage, quantized weights, offloading; CFG batching


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video"])
def test_plan_on_fp8_stored_weights(family):
    """diffusers' layerwise casting (weights stored in float8_e4m3fn, computed in float32) under a plan equals the
    same casting on the stock model given the tile mask, and differs from float32 weights."""
    def fp8(model):
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)

    plan = mixed_plan(family)
    reference = masked_transformer_reference(family, [k is not None for k in plan.layers], prepare=fp8)
    model = tiny_transformer(family)
    fp8(model)
    apply_mask_plan(model, plan)
    out = forward(model, tiny_inputs(model, VIDEO))
    assert close(out, reference, 1e-5), (out - reference).abs().max()
    full = apply_mask_plan(tiny_transformer(family), plan)
    assert (forward(full, tiny_inputs(full, VIDEO)) - out).abs().max() > 1e-3  # fp8 storage really rounded


def test_plan_on_torchao_quantized_transformer(tmp_path):
    """A transformer loaded with torchao int8 weight-only quantization (diffusers' TorchAoConfig) takes a plan."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao)")
    from diffusers import TorchAoConfig, WanTransformer3DModel
    from torchao.quantization import Int8WeightOnlyConfig

    tiny_transformer("wan").save_pretrained(tmp_path)

    plan = mixed_plan("wan")
    model = WanTransformer3DModel.from_pretrained(
        tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()), torch_dtype=torch.float32).eval()
    inputs = tiny_inputs(model, VIDEO)
    with masked_sdpa(transformer_tile_mask(model, VIDEO), per_call=[k is not None for k in plan.layers]):
        reference = forward(model, inputs)
    apply_mask_plan(model, plan)
    out = forward(model, inputs)
    assert close(out, reference, 1e-4)
    full = apply_mask_plan(tiny_transformer("wan"), plan)
    assert (forward(full, inputs) - out).abs().max() > 1e-3  # the weights really are quantized


OFFLOADS = {
    "model_cpu_offload": lambda pipe: pipe.enable_model_cpu_offload(device="cpu"),
    # accelerate's sequential offload fails with device="cpu" on the stock pipelines too (set_module_tensor_to_device:
    # "new() received an invalid combination of arguments"): it runs on CUDA only (a gpu test)
    "sequential_cpu_offload": lambda pipe: pipe.enable_sequential_cpu_offload(device="cuda"),
    "group_offload_block": lambda pipe: pipe.transformer.enable_group_offload(
        torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1),
    "group_offload_leaf": lambda pipe: pipe.transformer.enable_group_offload(torch.device("cpu"),
                                                                            offload_type="leaf_level"),
}


@pytest.mark.parametrize(
    "offload", [pytest.param(name, marks=pytest.mark.gpu) if name == "sequential_cpu_offload" else name
                for name in OFFLOADS])
@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video"])
def test_offloading_keeps_the_planned_output(family, offload):
    """On a CPU-only machine the offload device is the CPU itself: this checks the hooks' plumbing (the plan's
    processors and layout hook run under accelerate / diffusers offload hooks) against the masked reference."""
    reference = masked_reference(family)
    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline(family))
    pipe.set_mask_plan(uniform_plan(pipe.transformer))
    OFFLOADS[offload](pipe)
    out = run(pipe).cpu()
    # on CUDA (sequential offload) convolutions run in TF32 by default: a looser bound, still far below the plan's
    # own effect on the output (> 0.1)
    assert close(out, reference, 1e-2 if offload == "sequential_cpu_offload" else ATOL), (out - reference).abs().max()
    assert pipe.mask_plan == uniform_plan(pipe.transformer)


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video"])
def test_cfg_as_one_batch_of_two_equals_two_calls(family):
    """A planned transformer gives the same output (and the reference's) for [uncond, cond] as one batch of 2 and
    as two batch-1 calls: the layout is per sample, the batch only repeats it."""
    plan = mixed_plan(family)
    model = apply_mask_plan(tiny_transformer(family), plan)
    batch = tiny_inputs(model, VIDEO)  # 2 samples (HunyuanVideo: the second with padded text), as [uncond, cond]
    batched = forward(model, batch)
    split = []
    for i in range(2):
        one = {name: value[i:i + 1] if torch.is_tensor(value) and value.dim() and value.shape[0] == 2 else value
               for name, value in batch.items()}
        split.append(forward(model, one))
    assert close(batched, torch.cat(split), 1e-5)
    reference = masked_transformer_reference(family, [k is not None for k in plan.layers])
    assert close(batched, reference, 1e-5)


CFG = {
    "wan": dict(guidance_scale=5.0),  # WanPipeline: two calls a step (cond, uncond)
    "cogvideox": dict(guidance_scale=6.0),  # CogVideoXPipeline: one call on a batch of 2
    "hunyuan_video": dict(true_cfg_scale=3.0, negative_prompt="a blurry video"),  # two calls a step
}


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan_video"])
def test_cfg_pipelines_equal_masked_reference(family):
    """Each family's own CFG (one batch of 2 or two calls a step) under a plan equals the stock pipeline given the
    tile mask, and differs from the pipeline without CFG."""
    reference = masked_reference(family, **CFG[family])
    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline(family))
    pipe.set_mask_plan(uniform_plan(pipe.transformer))
    out = run(pipe, **CFG[family])
    assert close(out, reference), (out - reference).abs().max()
    no_cfg = dict(guidance_scale=1.0) if family != "hunyuan_video" else dict(true_cfg_scale=1.0)
    assert (run(pipe, **no_cfg) - out).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# 5. benchmarks/stack_bench.py in its tiny CPU mode


def test_stack_bench_tiny_mode_writes_its_rows(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "stack_bench.py"
    spec = importlib.util.spec_from_file_location("stack_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "stack.json"
    data = bench.main(["--tiny", "--reps", "1", "--steps", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(data))
    assert {"device", "torch", "diffusers", "date", "plan", "total_s"} <= set(data) and data["plan"] == "uniform 1:5"
    rows = {(r["part"], r["config"]): r for r in data["rows"]}
    assert set(rows) == {("eager", "dense"), ("eager", "plan"), ("compile_regional", "dense"),
                         ("compile_regional", "plan"), ("sage", "dense"), ("sage", "plan"), ("cache", "dense"),
                         ("cache", "plan"), ("cache", "fbc"), ("cache", "fbc+plan")}
    assert rows["eager", "plan"]["rel_err"] > 1e-3  # the plan changes the output...
    for config in ("dense", "plan"):  # ...and the compiled model computes the eager one
        assert rows["compile_regional", config]["rel_err"] < 1e-5 and rows["compile_regional", config]["compile_s"] >= 0
    plan_row = rows["eager", "plan"]
    assert plan_row["speedup"] == pytest.approx(rows["eager", "dense"]["step_s"] / plan_row["step_s"])
    assert rows["cache", "dense"]["rel_err"] == 0 and rows["cache", "plan"]["rel_err"] > 1e-3  # loop vs dense loop
    if not data["sageattention"]:
        assert rows["sage", "plan"]["skipped"]
