"""Attention Tile diagnostics: capture the self-attention of a video transformer and measure its tile structure.

For chosen layers, timesteps and prompts (each a forward-keyword dict of the transformer), :func:`profile_attention`
reports per layer

* the tile-averaged ``F x F`` map ``M[i, j]``: the mean attention probability of a (query in frame ``i``, key in frame
  ``j``) pair, and the **diagonal / off-diagonal ratio** ``mean_i M[i, i] / mean_{i != j} M[i, j]`` (the paper reports
  2.80x on Open-Sora-Plan);
* the **locality curve** ``c(d)``, ``d = 1 .. F-1``: how far the tile of key frame ``d`` is from the tile of key frame 0
  (the reference frame every ``k:F-k`` mask keeps), as the relative Frobenius difference
  ``||B[i, d] - B[i, 0]|| / ||B[i, 0]||`` of the element-level ``T x T`` blocks, averaged over the query frames
  ``i`` for which neither block is a diagonal tile (``i`` not in ``{0, d}``); ``None`` where no such ``i`` exists;
* the attention decay by temporal distance ``m(d) = mean_{|i-j|=d} M[i, j] / mean_i M[i, i]`` (``m(0) = 1``);
* the attention mass video queries give to text tokens (models with text in self-attention);
* **data independence** between two inputs (two prompts at one timestep): for every video query, the smallest set of
  keys holding 90 / 95 / 99 % of its attention mass, compared between the inputs by Jaccard overlap
  ``|A & B| / |A | B|`` and averaged over queries, heads and batch.

Memory: attention probabilities are computed one head and one query chunk at a time (``[batch, chunk, N]``), and
reduced to the statistics at once; an ``N x N`` map is never held, not even for one head. ``max_queries`` samples
evenly spaced video queries for large models.

How q and k are captured. :func:`instrument` installs a dense :class:`~diffusers_evdit.MaskPlan` (so every layer runs
the package's tile-sparse processor with ``k=None``, numerically the model's own attention) and swaps each processor
for an instance of a small subclass of the family's processor class whose ``tile_attention`` first hands the
post-RoPE ``[B, H, N, D]`` q, k, v, the :class:`~diffusers_evdit.TileLayout` and the key-padding mask to an observer,
then runs the normal attention. This was preferred over wrapping the shared ``state.attention`` because the subclass
knows its ``layer_index`` exactly (a wrapper of the shared kernel would have to infer the layer from the call order),
and over forward hooks on the attention modules because those see the pre-projection hidden states, not the q and k
after projections, QK norms and RoPE. No model code is touched and the previous plan (if any) is restored on exit.

The module also holds the input helpers shared by diagnostics and search: :func:`load_transformer` (``tiny:<family>``,
``shape:<name>`` or a diffusers model path), :func:`latent_size`, :func:`random_inputs` and
:func:`record_transformer_inputs` (captures the transformer calls of a real pipeline run).

Example:
    >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
    >>> from diffusers_evdit.analysis import profile_attention
    >>> t = tiny_transformer("cogvideox")
    >>> prof = profile_attention(t, [tiny_inputs(t, seed=0), tiny_inputs(t, seed=1)], layers=[0])
    >>> sorted(prof.layers[0])[:3]
    ['diag_offdiag_ratio', 'locality_curve', 'mass_by_distance']
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Iterator

import torch
from torch import nn

from .layout import TileLayout
from .plan import MaskPlan, apply_mask_plan, get_mask_plan, remove_mask_plan
from .processors import family_for

DEFAULT_LEVELS = (0.9, 0.95, 0.99)

# ----------------------------------------------------------------------------------------------------------------------
# Capturing q, k inside the model
# ----------------------------------------------------------------------------------------------------------------------

Observer = Callable[..., None]


class _ObservedMixin:
    """Mixed in front of a family's processor class: report q, k, v and the layout, then attend as usual."""

    _evdit_observer: Observer | None = None

    def tile_attention(self, q, k, v, layout: TileLayout, key_padding_mask=None, dense_fn=None):
        if self._evdit_observer is not None:
            self._evdit_observer(self, q, k, v, layout, key_padding_mask)
        return super().tile_attention(q, k, v, layout, key_padding_mask, dense_fn)


_OBSERVED_CLASSES: dict[type, type] = {}


def _observed_class(cls: type) -> type:
    if cls not in _OBSERVED_CLASSES:
        _OBSERVED_CLASSES[cls] = type(f"Observed{cls.__name__}", (_ObservedMixin, cls), {})
    return _OBSERVED_CLASSES[cls]


class StopForward(Exception):
    """Raised by an observer or hook to end a transformer forward early; :func:`run_until_stopped` catches it.

    Example:
        >>> try:
        ...     raise StopForward("done")
        ... except StopForward as stop:
        ...     stop.value
        'done'
    """

    def __init__(self, value=None):
        super().__init__("forward stopped early")
        self.value = value


def run_until_stopped(transformer: nn.Module, inputs: dict):
    """Call ``transformer(**inputs)``; return the model output, or the value of a :class:`StopForward` raised inside.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> run_until_stopped(t, tiny_inputs(t)).shape
        torch.Size([1, 4, 6, 8, 8])
    """
    try:
        out = transformer(**inputs)
    except StopForward as stop:
        return stop.value
    return model_output(out)


def model_output(out) -> torch.Tensor:
    """The sample tensor of a diffusers transformer output (``.sample``, a tuple's first entry, or a tensor).

    Example:
        >>> import torch
        >>> model_output((torch.zeros(2),)).shape
        torch.Size([2])
    """
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


@contextlib.contextmanager
def instrument(transformer: nn.Module, observer: Observer | None = None, kernel: str = "auto") -> Iterator[list]:
    """Run ``transformer`` with observable tile processors inside the block; restore the previous plan on exit.

    Installs a dense mask plan and replaces every processor by an observing subclass of the family's processor. The
    observer is called as ``observer(processor, q, k, v, layout, key_padding_mask)`` before every self-attention,
    with post-RoPE ``[B, H, N, D]`` tensors; ``processor.layer_index`` and ``processor.k`` say which layer and mask.
    Setting ``processor.k`` on a yielded processor sparsifies that layer (used by the search).

    Yields:
        the processors in plan order.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("cogvideox")
        >>> seen = []
        >>> with instrument(t, lambda p, q, k, v, layout, kpm: seen.append((p.layer_index, tuple(q.shape)))):
        ...     _ = t(**tiny_inputs(t))
        >>> seen
        [(0, (1, 2, 103, 16)), (1, (1, 2, 103, 16))]
    """
    family = family_for(transformer)
    previous = get_mask_plan(transformer)
    previous_kernel = transformer._evdit_tile_state.attention.kernel if previous is not None else None
    modules = family.attention_modules(transformer)
    apply_mask_plan(transformer, MaskPlan.dense(len(modules)), kernel=kernel)
    state = transformer._evdit_tile_state
    cls = _observed_class(family.processor_cls)
    processors = []
    for i, (_, module) in enumerate(modules):
        proc = cls(None, state, layer_index=i)
        proc._evdit_observer = observer
        module.set_processor(proc)
        processors.append(proc)
    try:
        yield processors
    finally:
        if previous is not None:
            apply_mask_plan(transformer, previous, kernel=previous_kernel)
        else:
            remove_mask_plan(transformer)


def check_layers(layers, num_layers: int, what: str = "layer") -> list[int]:
    """Validate a list of plan-layer indices (``None`` = all); ``ValueError`` naming the valid range otherwise.

    Example:
        >>> check_layers([2, 0, 2], 4)
        [0, 2]
        >>> check_layers(None, 3)
        [0, 1, 2]
    """
    if layers is None:
        return list(range(num_layers))
    layers = list(layers)
    if not layers:
        raise ValueError(f"The list of {what}s is empty; pass None for all {num_layers} layers.")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
            raise ValueError(
                f"Unknown {what} index {layer!r}: the model has {num_layers} self-attention layers, indices 0.."
                f"{num_layers - 1} (in mask-plan order)."
            )
    return sorted(set(layers))


def attention_shapes(transformer: nn.Module, inputs: dict) -> list[dict]:
    """Per plan layer: the ``TileLayout``, ``[B, H, N, D]`` shape, dtype and device of its self-attention on ``inputs``.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> attention_shapes(t, tiny_inputs(t))[0]["shape"]
        (1, 2, 96, 12)
    """
    shapes: dict[int, dict] = {}
    num_layers = len(family_for(transformer).attention_modules(transformer))

    def observer(proc, q, k, v, layout, key_padding_mask):
        shapes[proc.layer_index] = dict(layout=layout, shape=tuple(q.shape), dtype=q.dtype, device=q.device)
        if proc.layer_index == num_layers - 1:
            raise StopForward()

    with torch.no_grad(), instrument(transformer, observer):
        run_until_stopped(transformer, inputs)
    return [shapes[i] for i in range(num_layers)]


# ----------------------------------------------------------------------------------------------------------------------
# Model and input helpers
# ----------------------------------------------------------------------------------------------------------------------

# Full-size configurations (random weights, no download) for timing on a GPU.
MODEL_SHAPES: dict[str, tuple[str, dict]] = {
    "cogvideox-5b": (
        "CogVideoXTransformer3DModel",
        dict(
            num_attention_heads=48,
            attention_head_dim=64,
            in_channels=16,
            out_channels=16,
            flip_sin_to_cos=True,
            freq_shift=0,
            time_embed_dim=512,
            text_embed_dim=4096,
            num_layers=42,
            dropout=0.0,
            attention_bias=True,
            sample_width=90,
            sample_height=60,
            sample_frames=49,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=226,
            activation_fn="gelu-approximate",
            timestep_activation_fn="silu",
            norm_elementwise_affine=True,
            norm_eps=1e-5,
            spatial_interpolation_scale=1.875,
            temporal_interpolation_scale=1.0,
            use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=False,
        ),
    ),
    "wan2.1-1.3b": (
        "WanTransformer3DModel",
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        ),
    ),
}


def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _cast(model: nn.Module, device, dtype: torch.dtype) -> nn.Module:
    """Move to ``device`` and ``dtype``, keeping the class's ``_keep_in_fp32_modules`` in float32 as
    ``from_pretrained`` does."""
    nn.Module.to(model, device=device, dtype=dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32 and keep:
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_floating_point() and any(m in name.split(".") for m in keep):
                tensor.data = tensor.data.float()
    return model


def load_transformer(
    spec: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_layers: int | None = None,
) -> nn.Module:
    """Load a supported video transformer in eval mode.

    Args:
        spec: ``"tiny:<family>"`` (``cogvideox``, ``wan``, ``hunyuan_video``: a tiny random transformer from
            :mod:`diffusers_evdit.tiny`), ``"shape:<name>"`` (a full-size random transformer of a known architecture,
            :data:`MODEL_SHAPES`, for timing; built directly on ``device``), or a diffusers model path / Hub id: a
            pipeline folder (its ``transformer`` subfolder is used) or a transformer folder.
        device, dtype: where and in which precision the weights live.
        num_layers: tiny and shape models only: number of transformer blocks (tiny default 2, shape default: full).

    Example:
        >>> type(load_transformer("tiny:wan")).__name__
        'WanTransformer3DModel'
    """
    if spec.startswith("tiny:"):
        from .tiny import tiny_transformer

        return _cast(tiny_transformer(spec[5:], num_layers=num_layers or 2), device, dtype).eval()
    if spec.startswith("shape:"):
        name = spec[6:]
        if name not in MODEL_SHAPES:
            raise ValueError(f"Unknown model shape {name!r}; choose one of {', '.join(MODEL_SHAPES)}.")
        cls_name, config = MODEL_SHAPES[name]
        config = dict(config)
        if num_layers:
            config["num_layers"] = num_layers
        with torch.device(device):
            model = _diffusers_class(cls_name)(**config)
        return _cast(model, device, dtype).eval()
    from diffusers import AutoModel

    subfolder = None
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "transformer", "config.json")):
            subfolder = "transformer"
        elif not os.path.isfile(os.path.join(spec, "config.json")):
            raise FileNotFoundError(f"{spec}: neither a transformer folder (config.json) nor a pipeline folder.")
        model = AutoModel.from_pretrained(spec, subfolder=subfolder, torch_dtype=dtype)
    else:
        try:
            model = AutoModel.from_pretrained(spec, subfolder="transformer", torch_dtype=dtype)
        except (OSError, EnvironmentError):
            model = AutoModel.from_pretrained(spec, torch_dtype=dtype)
    family_for(model)  # clear error for unsupported classes
    return model.to(device).eval()


def latent_size(transformer: nn.Module, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent ``(frames, height, width)`` of a ``frames x height x width`` pixel video for the supported families.

    All three use a VAE with 4x temporal (first frame kept) and 8x spatial compression; CogVideoX 1.5 pads the latent
    frames to a multiple of its temporal patch size, as its pipeline does.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> latent_size(tiny_transformer("cogvideox"), 49, 480, 720)
        (13, 60, 90)
    """
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"A video needs >= 1 frame and >= 8 x 8 pixels, got {frames} x {height} x {width}.")
    latent_frames = (frames - 1) // 4 + 1
    p_t = getattr(transformer.config, "patch_size_t", None)
    if type(transformer).__name__ == "CogVideoXTransformer3DModel" and p_t:
        latent_frames += (-latent_frames) % p_t
    return latent_frames, height // 8, width // 8


def random_inputs(
    transformer: nn.Module,
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    timestep: float = 500,
    seed: int = 0,
    text_tokens: int | None = None,
    batch_size: int = 1,
    device=None,
    dtype=None,
) -> dict:
    """Forward keyword arguments for ``transformer`` with random latents and random text embeddings.

    Documented inputs (no text encoder, no VAE): the latent ``x_t`` is standard normal noise of shape
    ``latent_frames x latent_height x latent_width`` (channels from the config), the text embeddings are standard
    normal with the model's own text length (CogVideoX ``max_text_seq_length`` = 226, Wan 512, HunyuanVideo 256; or
    ``text_tokens``) and width, all text tokens valid; HunyuanVideo gets random pooled projections and guidance 6.0
    (x1000, as its pipeline passes it), CogVideoX its pipeline's 3D RoPE. The same ``seed`` gives the same tensors on
    every device. For real prompts and trajectories, capture the calls of a pipeline run with
    :func:`record_transformer_inputs` instead.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = tiny_transformer("hunyuan_video")
        >>> sorted(random_inputs(t, 4, 8, 8, timestep=900, seed=1))[:3]
        ['encoder_attention_mask', 'encoder_hidden_states', 'guidance']
    """
    param = next(transformer.parameters())
    device = param.device if device is None else torch.device(device)
    dtype = param.dtype if dtype is None else dtype
    cfg = transformer.config
    name = type(transformer).__name__
    g = torch.Generator().manual_seed(int(seed))

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    b = batch_size
    f, h, w = latent_frames, latent_height, latent_width
    if name == "CogVideoXTransformer3DModel":
        from diffusers import CogVideoXPipeline

        inputs = dict(
            hidden_states=randn(b, f, cfg.in_channels, h, w),
            encoder_hidden_states=randn(b, text_tokens or cfg.max_text_seq_length, cfg.text_embed_dim),
            timestep=torch.full((b,), int(timestep), dtype=torch.long, device=device),
        )
        if cfg.use_rotary_positional_embeddings:
            fake_pipe = SimpleNamespace(vae_scale_factor_spatial=1, transformer=transformer)
            rope = CogVideoXPipeline._prepare_rotary_positional_embeddings(fake_pipe, h, w, f, device)
            inputs["image_rotary_emb"] = tuple(r.to(device) for r in rope)
        if getattr(transformer, "ofs_embedding", None) is not None:
            inputs["ofs"] = torch.full((b,), 2.0, device=device, dtype=dtype)
        return inputs
    if name == "WanTransformer3DModel":
        inputs = dict(
            hidden_states=randn(b, cfg.in_channels, f, h, w),
            encoder_hidden_states=randn(b, text_tokens or 512, cfg.text_dim),
            timestep=torch.full((b,), float(timestep), device=device),
        )
        if getattr(cfg, "image_dim", None):
            inputs["encoder_hidden_states_image"] = randn(b, 257, cfg.image_dim)
        return inputs
    if name == "HunyuanVideoTransformer3DModel":
        n_text = text_tokens or 256
        inputs = dict(
            hidden_states=randn(b, cfg.in_channels, f, h, w),
            encoder_hidden_states=randn(b, n_text, cfg.text_embed_dim),
            encoder_attention_mask=torch.ones(b, n_text, dtype=torch.long, device=device),
            pooled_projections=randn(b, cfg.pooled_projection_dim),
            timestep=torch.full((b,), int(timestep), dtype=torch.long, device=device),
        )
        if cfg.guidance_embeds:
            inputs["guidance"] = torch.full((b,), 6000.0, device=device, dtype=dtype)
        return inputs
    family_for(transformer)  # raises the supported-models error
    raise TypeError(f"No random inputs for {name}.")  # pragma: no cover


def input_timestep(inputs: dict) -> float | None:
    """The (first) timestep value of a forward-keyword dict, as a float (``None`` when absent).

    Example:
        >>> import torch
        >>> input_timestep({"timestep": torch.tensor([250, 250])})
        250.0
    """
    t = inputs.get("timestep")
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return float(t.flatten()[0])
    return float(t)


@contextlib.contextmanager
def record_transformer_inputs(transformer: nn.Module, device: str | torch.device | None = "cpu") -> Iterator[list]:
    """Record the keyword arguments of every ``transformer`` call inside the block (e.g. a pipeline run).

    Positional arguments are bound to their names; tensors are detached and copied (to ``device``; ``None`` keeps
    them where they are). ``return_dict`` and ``attention_kwargs`` are dropped. Each entry can be passed to
    :func:`profile_attention` or the searches as one input (a prompt at a timestep), or saved with ``torch.save``
    for ``evdit profile/search --inputs``.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> with record_transformer_inputs(t) as calls:
        ...     _ = t(**tiny_inputs(t))
        >>> len(calls), sorted(calls[0])
        (1, ['encoder_hidden_states', 'hidden_states', 'timestep'])
    """
    calls: list[dict] = []
    signature = inspect.signature(transformer.forward)

    def copy(x):
        if isinstance(x, torch.Tensor):
            x = x.detach()
            return x.to(device).clone() if device is not None else x.clone()
        if isinstance(x, (tuple, list)):
            return type(x)(copy(y) for y in x)
        return x

    def hook(module, args, kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments
        calls.append({k: copy(v) for k, v in bound.items() if k not in ("return_dict", "attention_kwargs")})

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def move_inputs(inputs: dict, device=None, dtype=None) -> dict:
    """``inputs`` with tensors moved to ``device`` and floating tensors cast to ``dtype`` (``None``: unchanged).

    Example:
        >>> import torch
        >>> move_inputs({"x": torch.zeros(1, dtype=torch.float64), "t": torch.ones(1, dtype=torch.long)},
        ...             dtype=torch.float32)["t"].dtype
        torch.int64
    """

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device=device, dtype=dtype if (dtype is not None and x.is_floating_point()) else None)
        if isinstance(x, (tuple, list)):
            return type(x)(move(y) for y in x)
        return x

    return {k: move(v) for k, v in inputs.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Statistics of one attention map, streamed per head and query chunk
# ----------------------------------------------------------------------------------------------------------------------


def _query_rows(layout: TileLayout, max_queries: int | None, device) -> torch.Tensor:
    """Video query positions to evaluate: all, or ``max_queries`` evenly spaced ones."""
    nv = layout.num_video_tokens
    if max_queries is None or max_queries >= nv:
        local = torch.arange(nv, device=device)
    else:
        if max_queries < 1:
            raise ValueError(f"max_queries must be >= 1 (or None for all queries), got {max_queries}.")
        local = torch.linspace(0, nv - 1, max_queries, device=device).round().long().unique()
    return local + layout.video_start


def _probabilities(q, k, layout, rows, key_padding_mask, scale, query_chunk,
                   gathered: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(row_positions [c], P [B, c, N])`` (float32; float64 for float64 inputs) for every head and query chunk of ``rows``.

    With ``gathered``, ``q`` holds only the rows (``q[:, :, i]`` is position ``rows[i]``)."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must both be [batch, heads, tokens, head_dim], got {tuple(q.shape)}, {tuple(k.shape)}.")
    layout.check_seq_len(k.shape[2], "attention statistics")
    if not gathered:
        layout.check_seq_len(q.shape[2], "attention statistics")
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}.")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    pad = None if key_padding_mask is None else ~key_padding_mask.to(q.device)[:, None, :]
    dtype = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    for h in range(q.shape[1]):
        k_h = k[:, h].to(dtype)
        for start in range(0, rows.numel(), query_chunk):
            r = rows[start : start + query_chunk]
            q_h = q[:, h, start : start + query_chunk] if gathered else q[:, h, r]
            scores = (q_h.to(dtype) @ k_h.transpose(-1, -2)) * scale
            if pad is not None:
                scores = scores.masked_fill(pad, float("-inf"))
            yield r, torch.softmax(scores, dim=-1)


def _membership(p: torch.Tensor, levels) -> list[torch.Tensor]:
    """For each level, bool ``[..., N]``: the smallest key set (largest probabilities first) holding that mass."""
    vals, idx = p.sort(dim=-1, descending=True)
    csum = vals.cumsum(-1)
    ranks = torch.arange(p.shape[-1], device=p.device)
    out = []
    for level in levels:
        n_keep = (csum < level * csum[..., -1:]).sum(-1, keepdim=True) + 1
        keep_sorted = ranks < n_keep
        out.append(torch.zeros_like(keep_sorted).scatter_(-1, idx, keep_sorted))
    return out


@dataclass
class TileAccumulator:
    """Running sums of the tile statistics of one layer over heads, query chunks, batch and inputs.

    Feed it probabilities with :meth:`add` (or whole q, k with :meth:`add_qk`), read :meth:`summary`.

    Example:
        >>> import torch
        >>> from diffusers_evdit import TileLayout
        >>> layout = TileLayout(num_frames=3, tokens_per_frame=2)
        >>> acc = TileAccumulator(layout)
        >>> acc.add_qk(torch.zeros(1, 1, 6, 4), torch.zeros(1, 1, 6, 4))   # uniform attention
        >>> acc.summary()["diag_offdiag_ratio"]
        1.0
    """

    layout: TileLayout
    tile_sum: torch.Tensor = field(default=None, repr=False)  # [F, F] attention mass from frame-i rows to frame j
    rows: torch.Tensor = field(default=None, repr=False)  # [F] (batch, head, query) rows of frame i
    text_mass: float = 0.0
    diff2: torch.Tensor = field(default=None, repr=False)  # [F, F] sum (P[q, j, t] - P[q, 0, t])^2 over frame-i rows
    norm2: torch.Tensor = field(default=None, repr=False)  # [F] sum P[q, 0, t]^2 over frame-i rows
    overlap_sum: dict = field(default_factory=dict)
    overlap_rows: int = 0

    def __post_init__(self):
        f = self.layout.num_frames
        zeros = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.tile_sum = zeros(f, f) if self.tile_sum is None else self.tile_sum
        self.rows = zeros(f) if self.rows is None else self.rows
        self.diff2 = zeros(f, f) if self.diff2 is None else self.diff2
        self.norm2 = zeros(f) if self.norm2 is None else self.norm2

    def add(self, row_positions: torch.Tensor, p: torch.Tensor) -> None:
        """Add attention probabilities ``p`` (``[B, c, N]``) of the video queries at ``row_positions`` (``[c]``)."""
        layout = self.layout
        f, t = layout.num_frames, layout.tokens_per_frame
        frames = layout.token_frames(p.device)[row_positions]
        if (frames < 0).any():
            raise ValueError("TileAccumulator.add takes video query rows only.")
        onehot = torch.nn.functional.one_hot(frames, f).to(torch.float64)  # c, F
        pv = p[..., layout.video_slice].unflatten(-1, (f, t))  # B, c, F, T (per-row sums in p's dtype)
        per_row = lambda x: x.sum(-1).to(torch.float64).sum(0)  # noqa: E731  [B, c, ...] -> [c, ...] float64
        self.tile_sum += (onehot.T @ per_row(pv)).cpu()
        self.rows += (onehot.sum(0) * p.shape[0]).cpu()
        if layout.num_text_tokens:
            self.text_mass += float(p[..., layout.text_slice].to(torch.float64).sum())
        self.diff2 += (onehot.T @ per_row((pv - pv[:, :, :1]) ** 2)).cpu()
        self.norm2 += (onehot.T @ per_row(pv[:, :, 0] ** 2)).cpu()

    def add_qk(self, q, k, key_padding_mask=None, scale=None, max_queries=None, query_chunk: int = 1024) -> None:
        """Add the attention of ``[B, H, N, D]`` q and k (all heads; video queries, optionally sampled)."""
        rows = _query_rows(self.layout, max_queries, q.device)
        for r, p in _probabilities(q, k, self.layout, rows, key_padding_mask, scale, query_chunk):
            self.add(r, p)

    def add_overlap(self, p_a: torch.Tensor, p_b: torch.Tensor, levels=DEFAULT_LEVELS) -> None:
        """Add the per-row Jaccard overlaps of the top-mass key sets of two ``[B, c, N]`` probability blocks."""
        for level, ma, mb in zip(levels, _membership(p_a, levels), _membership(p_b, levels)):
            inter = (ma & mb).sum(-1).double()
            union = (ma | mb).sum(-1).double()
            self.overlap_sum[level] = self.overlap_sum.get(level, 0.0) + float((inter / union).sum())
        self.overlap_rows += p_a.shape[0] * p_a.shape[1]

    def tile_map(self) -> torch.Tensor:
        """``[F, F]`` mean attention probability of a (frame-i query, frame-j key) pair."""
        return self.tile_sum / (self.rows[:, None].clamp_min(1) * self.layout.tokens_per_frame)

    def summary(self) -> dict:
        """JSON-ready statistics (see the module docstring for the definitions)."""
        f = self.layout.num_frames
        m = self.tile_map()
        diag = torch.diagonal(m)
        out: dict = {"tile_map": m.tolist()}
        off = ~torch.eye(f, dtype=torch.bool)
        out["diag_offdiag_ratio"] = float(diag.mean() / m[off].mean()) if f > 1 and m[off].mean() > 0 else None
        idx = torch.arange(f)
        dist = (idx[:, None] - idx[None, :]).abs()
        out["mass_by_distance"] = [float(m[dist == d].mean() / diag.mean()) for d in range(f)]
        curve = []
        for d in range(1, f):
            qs = [i for i in range(f) if i not in (0, d) and self.norm2[i] > 0]
            curve.append(float(sum(math.sqrt(self.diff2[i, d] / self.norm2[i]) for i in qs) / len(qs)) if qs else None)
        out["locality_curve"] = curve
        total_rows = float(self.rows.sum())
        out["text_mass"] = self.text_mass / total_rows if self.layout.num_text_tokens and total_rows else None
        if self.overlap_rows:
            out["overlap"] = {f"{lvl:g}": s / self.overlap_rows for lvl, s in sorted(self.overlap_sum.items())}
        return out


def tile_statistics(q, k, layout: TileLayout, key_padding_mask=None, scale=None, max_queries=None,
                    query_chunk: int = 1024) -> dict:
    """Tile statistics of the attention ``softmax(q k^T * scale)`` of ``[B, H, N, D]`` tensors on ``layout``.

    Returns a dict with ``tile_map`` (``F x F``), ``diag_offdiag_ratio``, ``mass_by_distance``, ``locality_curve``
    and ``text_mass`` (definitions in the module docstring); computed per head and query chunk.

    Example:
        >>> import torch
        >>> from diffusers_evdit import TileLayout
        >>> layout = TileLayout(num_frames=2, tokens_per_frame=1)
        >>> q = k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])   # each token prefers itself: score 1 vs 0
        >>> round(tile_statistics(q, k, layout, scale=1.0)["diag_offdiag_ratio"], 4)   # e^1
        2.7183
    """
    acc = TileAccumulator(layout)
    acc.add_qk(q, k, key_padding_mask, scale, max_queries, query_chunk)
    return acc.summary()


def attention_mass_overlap(q_a, k_a, q_b, k_b, layout: TileLayout, levels=DEFAULT_LEVELS, key_padding_mask_a=None,
                           key_padding_mask_b=None, scale=None, max_queries=None, query_chunk: int = 1024) -> dict:
    """Data independence of two attentions on one layout: mean Jaccard overlap of the key sets holding each level of
    every video query's attention mass (``{"0.9": ..., "0.95": ..., "0.99": ...}``; 1 = same positions).

    Example:
        >>> import torch
        >>> from diffusers_evdit import TileLayout
        >>> layout = TileLayout(num_frames=2, tokens_per_frame=2)
        >>> q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
        >>> attention_mass_overlap(q, k, q, k, layout)["0.9"]
        1.0
    """
    if q_a.shape != q_b.shape:
        raise ValueError(f"The two inputs must have the same shape, got {tuple(q_a.shape)} and {tuple(q_b.shape)}.")
    levels = _check_levels(levels)
    acc = TileAccumulator(layout)
    rows = _query_rows(layout, max_queries, q_a.device)
    gen_a = _probabilities(q_a, k_a, layout, rows, key_padding_mask_a, scale, query_chunk)
    gen_b = _probabilities(q_b, k_b, layout, rows, key_padding_mask_b, scale, query_chunk)
    for (_, pa), (_, pb) in zip(gen_a, gen_b):
        acc.add_overlap(pa, pb, levels)
    return acc.summary()["overlap"]


def _check_levels(levels) -> tuple[float, ...]:
    levels = tuple(float(x) for x in levels)
    if not levels or any(not 0.0 < x <= 1.0 for x in levels):
        raise ValueError(f"Mass levels must be in (0, 1], got {levels}.")
    return levels


# ----------------------------------------------------------------------------------------------------------------------
# Profiling a model
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class AttentionProfile:
    """Result of :func:`profile_attention`: per-layer statistics and provenance; :meth:`save` writes JSON + PNGs.

    Attributes:
        layers: ``{layer index: statistics dict}`` (see :meth:`TileAccumulator.summary`).
        meta: model class, layout, inputs (timesteps), pairs compared, query sampling, levels.

    Example:
        >>> AttentionProfile(layers={}, meta={"model_class": "X"}).to_dict()["meta"]["model_class"]
        'X'
    """

    layers: dict
    meta: dict

    def to_dict(self) -> dict:
        return {"format": "diffusers-evdit/attention-profile", "meta": self.meta,
                "layers": {str(k): v for k, v in sorted(self.layers.items())}}

    def save(self, out_dir: str | os.PathLike, plots: bool = True) -> list[str]:
        """Write ``summary.json`` and (with ``plots``) ``heatmap_layer{l}.png`` per layer and ``curves.png`` to
        ``out_dir``; return the written paths. Plots need matplotlib."""
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "summary.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
        paths = [path]
        if plots:
            for layer, stats in sorted(self.layers.items()):
                paths.append(plot_tile_heatmap(stats, os.path.join(out_dir, f"heatmap_layer{layer}.png"), layer))
            paths.append(plot_profile_curves(self, os.path.join(out_dir, "curves.png")))
        return paths


def profile_attention(
    transformer: nn.Module,
    inputs: list[dict],
    layers: list[int] | None = None,
    pairs: list[tuple[int, int]] | None = None,
    levels=DEFAULT_LEVELS,
    max_queries: int | None = None,
    query_chunk: int = 1024,
    kernel: str = "auto",
    progress: bool = False,
) -> AttentionProfile:
    """Capture the self-attention of ``layers`` on every input and measure its Attention Tile structure.

    Args:
        transformer: a supported diffusers video transformer (any installed plan is restored afterwards).
        inputs: forward-keyword dicts, one per (prompt, timestep); all with the same latent shape.
        layers: plan-layer indices (``None``: all).
        pairs: input index pairs compared for data independence; default ``(0, 1), (2, 3), ...`` (so order inputs
            as prompt A, prompt B at each timestep). An input may be in at most one pair; ``[]`` skips the overlap.
        levels: attention-mass levels of the overlap.
        max_queries: evaluate this many evenly spaced video queries per layer (``None``: all).
        query_chunk: queries per probability block (memory ``batch x query_chunk x N`` floats).
        kernel: tile kernel of the (dense) plan installed while profiling.
        progress: show a progress bar over inputs.

    The forward stops right after the last requested layer's attention inputs are seen. For each pair the first
    input's q (sampled rows) and k of the requested layers stay in memory until the second input has run.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> prof = profile_attention(t, [tiny_inputs(t, seed=0), tiny_inputs(t, seed=1)])
        >>> sorted(prof.layers), sorted(prof.layers[1]["overlap"])
        ([0, 1], ['0.9', '0.95', '0.99'])
    """
    from tqdm.auto import tqdm

    if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(x, dict) for x in inputs):
        raise ValueError("inputs must be a non-empty list of forward-keyword dicts (one per prompt and timestep).")
    levels = _check_levels(levels)
    num_layers = len(family_for(transformer).attention_modules(transformer))
    layers = check_layers(layers, num_layers)
    last = max(layers)
    if pairs is None:
        pairs = [(i, i + 1) for i in range(0, len(inputs) - 1, 2)]
    partner: dict[int, int] = {}
    for pair in pairs:
        a, b = sorted(pair)
        if a == b or not (0 <= a < len(inputs) and 0 <= b < len(inputs)):
            raise ValueError(f"Bad input pair {pair}: need two different indices below {len(inputs)}.")
        if a in partner or b in partner:
            raise ValueError(f"Input pairs must be disjoint; {pair} reuses an input.")
        partner[a], partner[b] = b, a

    accs: dict[int, TileAccumulator] = {}
    stored: dict[int, tuple] = {}  # layer -> (rows, q rows, k, key_padding_mask) of the pending first input
    current = {"index": 0}

    def observer(proc, q, k, v, layout, key_padding_mask):
        layer = proc.layer_index
        if layer in layers:
            acc = accs.setdefault(layer, TileAccumulator(layout))
            if acc.layout != layout:
                raise ValueError(f"Layer {layer}: inputs have different layouts ({acc.layout} vs {layout}).")
            rows = _query_rows(layout, max_queries, q.device)
            probs = _probabilities(q, k, layout, rows, key_padding_mask, None, query_chunk)
            i = current["index"]
            if i in partner and partner[i] < i:  # second input of a pair: tile statistics and overlap in one pass
                q_a, k_a, kpm_a = stored.pop(layer)
                probs_a = _probabilities(q_a, k_a, layout, rows, kpm_a, None, query_chunk, gathered=True)
                for (r, p), (_, p_a) in zip(probs, probs_a):
                    acc.add(r, p)
                    acc.add_overlap(p_a, p, levels)
            else:
                for r, p in probs:
                    acc.add(r, p)
                if i in partner:
                    stored[layer] = (q[:, :, rows], k, key_padding_mask)
        if layer == last:
            raise StopForward()

    with torch.no_grad(), instrument(transformer, observer, kernel):
        for i in tqdm(range(len(inputs)), desc="profile", disable=not progress):
            current["index"] = i
            run_until_stopped(transformer, inputs[i])

    first = accs[layers[0]].layout
    meta = {
        "model_class": type(transformer).__name__,
        "layout": {"num_frames": first.num_frames, "tokens_per_frame": first.tokens_per_frame,
                   "num_text_tokens": first.num_text_tokens, "text_position": first.text_position},
        "num_inputs": len(inputs),
        "timesteps": [input_timestep(x) for x in inputs],
        "pairs": [list(sorted(p)) for p in pairs],
        "levels": list(levels),
        "max_queries": max_queries,
        "layers": layers,
    }
    return AttentionProfile({layer: accs[layer].summary() for layer in layers}, meta)


# ----------------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "Plots need matplotlib: pip install matplotlib (or pass plots=False / --no-plots for the JSON only)."
        ) from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_tile_heatmap(stats: dict, path: str | os.PathLike, layer: int | None = None) -> str:
    """Save the tile-averaged ``F x F`` attention map of one layer's statistics as a PNG; return ``path``.

    Example:
        >>> plot_tile_heatmap({"tile_map": [[0.2, 0.1], [0.1, 0.2]], "diag_offdiag_ratio": 2.0}, "/tmp/h.png", 0)
        '/tmp/h.png'
    """
    plt = _pyplot()
    tile_map = torch.tensor(stats["tile_map"])
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    im = ax.imshow(tile_map.numpy(), cmap="viridis")
    fig.colorbar(im, ax=ax, label="mean attention probability")
    ratio = stats.get("diag_offdiag_ratio")
    title = f"layer {layer}" if layer is not None else "attention tiles"
    if ratio is not None:
        title += f": diag/off-diag {ratio:.2f}x"
    ax.set_title(title)
    ax.set_xlabel("key frame")
    ax.set_ylabel("query frame")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_profile_curves(profile: AttentionProfile, path: str | os.PathLike) -> str:
    """Save the per-layer curves of a profile (locality curve, attention by frame distance, diag/off-diag ratio,
    mass overlap between inputs) as one PNG; return ``path``.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> t = tiny_transformer("wan")
        >>> plot_profile_curves(profile_attention(t, [tiny_inputs(t)]), "/tmp/c.png")
        '/tmp/c.png'
    """
    plt = _pyplot()
    layers = sorted(profile.layers)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    ax = axes[0, 0]
    for layer in layers:
        curve = profile.layers[layer]["locality_curve"]
        xs = [d for d, c in enumerate(curve, start=1) if c is not None]
        ax.plot(xs, [c for c in curve if c is not None], marker="o", label=f"layer {layer}")
    ax.set_title("locality: ||B[i,d] - B[i,0]|| / ||B[i,0]||")
    ax.set_xlabel("key-frame distance d from frame 0")
    ax = axes[0, 1]
    for layer in layers:
        curve = profile.layers[layer]["mass_by_distance"]
        ax.plot(range(len(curve)), curve, marker="o", label=f"layer {layer}")
    ax.set_title("attention by frame distance (diagonal = 1)")
    ax.set_xlabel("|query frame - key frame|")
    ax = axes[1, 0]
    ratios = [profile.layers[layer]["diag_offdiag_ratio"] or float("nan") for layer in layers]
    ax.bar([str(layer) for layer in layers], ratios, color="tab:blue")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_title("diagonal / off-diagonal tile ratio")
    ax.set_xlabel("layer")
    ax = axes[1, 1]
    levels = [f"{x:g}" for x in profile.meta.get("levels", DEFAULT_LEVELS)]
    has_overlap = any("overlap" in profile.layers[layer] for layer in layers)
    for level in levels if has_overlap else []:
        ax.plot([str(layer) for layer in layers],
                [profile.layers[layer].get("overlap", {}).get(level, float("nan")) for layer in layers],
                marker="o", label=f"{float(level):.0%} mass")
    ax.set_ylim(0, 1.05)
    ax.set_title("data independence: overlap of top-mass keys" + ("" if has_overlap else " (no input pair)"))
    ax.set_xlabel("layer")
    for a in (axes[0, 0], axes[0, 1]):
        if len(layers) <= 12:
            a.legend(fontsize=7)
    if has_overlap:
        axes[1, 1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
