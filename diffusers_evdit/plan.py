"""Mask plans: one ``k:F-k`` entry per self-attention layer, saved as JSON and installed on a transformer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from torch import nn

from .kernels import check_kernel
from .layout import TileLayout
from .masks import check_k, element_sparsity, format_mask
from .processors import TileAttentionConfig, TileSparseAttnProcessor, family_for
from .processors.install import STATE_ATTR, attention_modules_with_processors, install_plan, uninstall_plan

PLAN_VERSION = 1


@dataclass(repr=False)
class MaskPlan:
    """Per-layer Attention Tile plan: ``layers[i]`` is the number of reference frames ``k`` of layer ``i``, or
    ``None`` for a dense layer. Layers are the transformer's video self-attentions in execution order
    (HunyuanVideo: double-stream blocks, then single-stream blocks).

    Args:
        layers: one entry per layer, ``None`` or an int ``k >= 1`` (``k >= F`` is dense too).
        model_class: transformer class the plan was made for (checked on apply when set).
        metadata: free-form provenance (search threshold, date, source model, measured speedups).

    Example:
        >>> plan = MaskPlan.uniform(num_layers=4, k=2)
        >>> plan.layers
        [2, 2, 2, 2]
        >>> MaskPlan.from_json(plan.to_json()) == plan
        True
    """

    layers: list
    model_class: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.layers, (list, tuple)):
            raise ValueError(f"MaskPlan.layers must be a list of None/int entries, got {type(self.layers).__name__}.")
        self.layers = list(self.layers)
        for i, k in enumerate(self.layers):
            try:
                check_k(k)
            except ValueError as err:
                raise ValueError(f"MaskPlan layer {i}: {err}") from None

    @classmethod
    def uniform(cls, num_layers: int, k: int | None, model_class: str | None = None) -> "MaskPlan":
        """The same entry ``k`` on every layer (``k=None``: a dense plan)."""
        if num_layers < 1:
            raise ValueError(f"A plan needs at least one layer, got num_layers={num_layers}.")
        return cls([k] * num_layers, model_class)

    @classmethod
    def dense(cls, num_layers: int, model_class: str | None = None) -> "MaskPlan":
        """A plan that keeps every layer dense."""
        return cls.uniform(num_layers, None, model_class)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        """Layers and model class in full; the metadata (search losses, training configs) by its keys only.

        Example:
            >>> MaskPlan([2, None], metadata={"threshold": 0.05, "trial_losses": {"0": {"2": 0.01}}})
            MaskPlan(layers=[2, None], model_class=None, metadata keys=['threshold', 'trial_losses'])
        """
        return f"MaskPlan(layers={self.layers}, model_class={self.model_class!r}, metadata keys={list(self.metadata)})"

    def describe(self, num_frames: int) -> list[str]:
        """The paper's name (``"k:F-k"`` or ``"dense"``) of every layer for ``num_frames`` latent frames."""
        return [format_mask(num_frames, k) for k in self.layers]

    def sparsity(self, layout: TileLayout) -> float:
        """Mean element sparsity over layers on ``layout`` (the fraction of attention work skipped)."""
        return sum(element_sparsity(layout, k) for k in self.layers) / self.num_layers

    def to_dict(self) -> dict:
        return {
            "format": "diffusers-evdit/mask-plan",
            "version": PLAN_VERSION,
            "model_class": self.model_class,
            "num_layers": self.num_layers,
            "layers": self.layers,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "MaskPlan":
        """Build a plan from :meth:`to_dict` output; ``ValueError`` on anything malformed or newer."""
        if not isinstance(data, dict):
            raise ValueError(f"A mask plan must be a JSON object, got {type(data).__name__}.")
        version = data.get("version")
        if not isinstance(version, int):
            raise ValueError(
                "Not a mask plan: the 'version' field is missing or not an integer; load a file written by "
                "MaskPlan.save()."
            )
        if version > PLAN_VERSION:
            raise ValueError(
                f"This mask plan has version {version}, newer than the {PLAN_VERSION} this diffusers-evdit reads; "
                "upgrade diffusers-evdit (pip install -U diffusers-evdit)."
            )
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise ValueError("Not a mask plan: 'layers' must be a list of null/int entries.")
        if "num_layers" in data and data["num_layers"] != len(layers):
            raise ValueError(
                f"Corrupt mask plan: num_layers={data['num_layers']} but {len(layers)} layer entries; re-save the plan "
                "with MaskPlan.save()."
            )
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("Corrupt mask plan: 'metadata' must be an object.")
        return cls(layers, data.get("model_class"), metadata)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "MaskPlan":
        return cls.from_dict(_decode_json(text, "pass the text MaskPlan.to_json() / MaskPlan.save() wrote"))

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON to ``path`` (its folder is created if missing)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MaskPlan":
        """Read a plan written by :meth:`save`."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no mask plan file at {os.fspath(path)!r}; write one with `evdit plan uniform`, `evdit search` or "
                "MaskPlan.save()"
            ) from None
        try:
            return cls.from_dict(_decode_json(text, "re-save the plan with MaskPlan.save()"))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def _decode_json(text: str, fix: str):
    """``json.loads(text)``; text that is not JSON raises ``ValueError`` ending in ``fix``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"Mask plan is not valid JSON: {err}; {fix}") from None


def num_plan_layers(transformer: nn.Module) -> int:
    """How many entries a mask plan for ``transformer`` needs.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> num_plan_layers(tiny_transformer("wan")), num_plan_layers(tiny_transformer("hunyuan_video"))
        (2, 4)
    """
    return len(family_for(transformer).attention_modules(transformer))


def get_mask_plan(transformer: nn.Module) -> MaskPlan | None:
    """The plan installed on ``transformer``, or ``None`` when it runs its stock processors.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = tiny_transformer("wan")
        >>> get_mask_plan(t) is None
        True
        >>> get_mask_plan(apply_mask_plan(t, MaskPlan([1, None]))).layers
        [1, None]
    """
    state = getattr(transformer, STATE_ATTR, None)
    if state is None:
        return None
    family = family_for(transformer)
    layers = [module.processor.num_reference_frames for _, module in family.attention_modules(transformer)]
    return MaskPlan(layers, type(transformer).__name__, dict(state.metadata))


def apply_mask_plan(
    transformer: nn.Module, plan: MaskPlan, kernel: str | None = None, *, config: TileAttentionConfig | None = None
) -> nn.Module:
    """Install tile-sparse processors following ``plan`` on ``transformer`` and return it.

    The transformer keeps its stock processors' math; only the attention product of each planned layer becomes the
    exact ``k:F-k`` tile attention. Applying a new plan replaces the previous one. Nothing is modified when the plan
    does not fit (wrong layer count, other model class, unsupported transformer).

    Args:
        transformer: a supported diffusers transformer (``pipe.transformer``), see
            :func:`~diffusers_evdit.supported_models`.
        plan: the :class:`MaskPlan`, one entry per video self-attention layer.
        kernel: shortcut for ``config=TileAttentionConfig(kernel=...)``: ``"auto"`` (default: the fastest exact kernel
            for the plan's masks), ``"fastest"``, ``"dense"``, ``"gathered"``, ``"split"``, ``"flex"`` or ``"walk"``.
        config: how the sparse layers run (kernel and its options), a :class:`TileAttentionConfig`.

    Example:
        >>> from diffusers import WanTransformer3DModel
        >>> from diffusers_evdit import MaskPlan, TileAttentionConfig, apply_mask_plan, remove_mask_plan
        >>> t = WanTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        ...     text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
        >>> t = apply_mask_plan(t, MaskPlan.uniform(2, k=1), config=TileAttentionConfig(kernel="split"))
        >>> t = remove_mask_plan(t)
    """
    family = family_for(transformer)
    if not isinstance(plan, MaskPlan):
        raise TypeError(f"plan must be a MaskPlan, got {type(plan).__name__}; load files with MaskPlan.load(path).")
    if config is None:
        config = TileAttentionConfig(check_kernel(kernel or "auto"))
    elif not isinstance(config, TileAttentionConfig):
        raise TypeError(f"config must be a TileAttentionConfig, got {type(config).__name__}.")
    elif kernel is not None and kernel != config.kernel:
        raise ValueError(f"kernel={kernel!r} contradicts config.kernel={config.kernel!r}; pass one of them.")
    modules = family.attention_modules(transformer)
    if plan.num_layers != len(modules):
        raise ValueError(
            f"The mask plan has {plan.num_layers} layers but {type(transformer).__name__} has {len(modules)} "
            "self-attention layers; make a plan with one entry per layer "
            f"(MaskPlan.uniform({len(modules)}, k))."
        )
    if plan.model_class is not None and plan.model_class != type(transformer).__name__:
        raise ValueError(
            f"The mask plan was made for {plan.model_class}, not {type(transformer).__name__}; set "
            "plan.model_class = None to apply it anyway."
        )
    install_plan(transformer, family, plan.layers, config, plan.metadata)
    return transformer


def mask_plan_processors(transformer: nn.Module, plan: MaskPlan, config: TileAttentionConfig | None = None) -> dict:
    """A per-layer plan as processors for ``transformer.set_attn_processor(...)`` (a dict over every attention module).

    The video self-attentions get one drop-in :class:`~diffusers_evdit.TileSparseAttnProcessor` carrying the plan,
    which binds it on the first forward exactly as :func:`apply_mask_plan` would; every other attention module keeps
    its current processor.

    Example:
        >>> import torch
        >>> from diffusers_evdit.tiny import tiny_inputs, tiny_transformer
        >>> t = tiny_transformer("wan")
        >>> t.set_attn_processor(mask_plan_processors(t, MaskPlan([1, None])))
        >>> with torch.no_grad():
        ...     _ = t(**tiny_inputs(t))
        >>> get_mask_plan(t).layers
        [1, None]
    """
    family = family_for(transformer)
    modules = family.attention_modules(transformer)
    if plan.num_layers != len(modules):
        raise ValueError(
            f"The mask plan has {plan.num_layers} layers but {type(transformer).__name__} has {len(modules)} "
            f"self-attention layers; make a plan with one entry per layer (MaskPlan.uniform({len(modules)}, k))."
        )
    video = {name for name, _ in modules}
    processor = TileSparseAttnProcessor(plan_layers=plan.layers, config=config)
    return {f"{name}.processor": processor if name in video else module.processor
            for name, module in attention_modules_with_processors(transformer)}


def remove_mask_plan(transformer: nn.Module) -> nn.Module:
    """Restore the stock processors that :func:`apply_mask_plan` replaced; a no-op without a plan.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1))
        >>> type(remove_mask_plan(t).blocks[0].attn1.processor).__name__, get_mask_plan(t)
        ('WanAttnProcessor', None)
    """
    if getattr(transformer, STATE_ATTR, None) is not None:
        uninstall_plan(transformer, family_for(transformer))
    return transformer
