"""``EfficientVDiTPipeline``: a supported diffusers video pipeline that runs with mask plans, saved and loaded as one.

Design: one subclass per base pipeline class
--------------------------------------------
``EfficientVDiTPipeline`` is a :class:`~diffusers.DiffusionPipeline` subclass holding the mask-plan logic. The
pipelines you run are made from it per base pipeline class, ``EfficientVDiT<Base>`` with bases
``(EfficientVDiTPipeline, <Base>)`` (for example ``EfficientVDiTCogVideoXPipeline``), created on demand by
:meth:`EfficientVDiTPipeline.subclass_for` and cached. Such a class *is* the base pipeline: it has the base class's
``__init__`` (so diffusers' loader, ``components``, ``from_pipe`` and offloading see the base components), the base
class's ``__call__`` (same signature, same code, so a dense plan gives bit-identical output), its LoRA loader mixin
(``load_lora_weights``), its callbacks and ``isinstance(pipe, CogVideoXPipeline)`` holds. A single delegating wrapper
would have to re-export all of that by hand and would still fail ``isinstance`` checks and signature-driven
diffusers code (``_get_signature_keys``, ``from_pipe``, offload sequences). Only plan handling, ``from_pretrained``,
``from_pipe`` and ``save_pretrained`` are added.

Saved folder
------------
``save_pretrained(dir)`` writes the normal diffusers folder of the base pipeline (so
``DiffusionPipeline.from_pretrained(dir)`` still loads the stock, dense pipeline) and adds:

* ``mask_plan.json``: the plan of ``transformer``; ``mask_plan_2.json``: the plan of ``transformer_2`` (Wan 2.2's
  low-noise expert). A transformer without a plan (dense) has no file.
* in ``model_index.json``: ``"_class_name"`` is the *base* class (``"CogVideoXPipeline"``), which is how
  :meth:`EfficientVDiTPipeline.from_pretrained` finds the base pipeline, and a private ``"_evdit"`` entry listing the
  plan files. diffusers ignores keys starting with ``_``.
* ``README.md``: a model card section (between ``<!-- diffusers-evdit:begin -->`` and ``<!-- diffusers-evdit:end -->``)
  with k per layer, the plan's provenance (``plan.metadata``) and measured speedups when the metadata has them.

The scheduler is saved by diffusers as usual (``scheduler/scheduler_config.json``), so a distilled few-step scheduler
set on the pipeline comes back on load.
"""

from __future__ import annotations

import json
import os
from typing import Any

import diffusers
from diffusers import DiffusionPipeline
from torch import nn

from .kernels import check_kernel
from .plan import MaskPlan, apply_mask_plan, get_mask_plan, num_plan_layers, remove_mask_plan
from .processors import family_for, supported_models

TRANSFORMER_SLOTS = ("transformer", "transformer_2")
PLAN_FILES = {"transformer": "mask_plan.json", "transformer_2": "mask_plan_2.json"}
MODEL_INDEX_KEY = "_evdit"
PIPELINE_FORMAT = "diffusers-evdit/pipeline"
PIPELINE_FORMAT_VERSION = 1
CARD_BEGIN = "<!-- diffusers-evdit:begin -->"
CARD_END = "<!-- diffusers-evdit:end -->"
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
_SPEEDUP_KEYS = ("speedup", "speedups")

_SUBCLASSES: dict[type, type] = {}


def _unwrap(module):
    """The module under a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``), else the module itself."""
    return getattr(module, "_orig_mod", module)


def _check_plan_type(plan, name: str) -> None:
    if plan is not None and not isinstance(plan, MaskPlan):
        raise TypeError(
            f"{name} must be a MaskPlan or None (dense), got {type(plan).__name__}; load plan files with "
            "MaskPlan.load(path)."
        )


def _check_plan_fits(transformer: nn.Module, plan: MaskPlan | None, slot: str) -> None:
    """Raise the error :func:`apply_mask_plan` would raise, before anything is modified."""
    if plan is None:
        return
    family_for(transformer)
    n = num_plan_layers(transformer)
    name = type(transformer).__name__
    if plan.num_layers != n:
        raise ValueError(
            f"The mask plan for {slot} has {plan.num_layers} layers but {slot} ({name}) has {n} self-attention "
            f"layers; make a plan with one entry per layer (MaskPlan.uniform({n}, k)) or pass None to keep {slot} "
            "dense."
        )
    if plan.model_class is not None and plan.model_class != name:
        raise ValueError(
            f"The mask plan for {slot} was made for {plan.model_class}, not {name}; set plan.model_class = None to "
            "apply it anyway."
        )


def _run_lengths(layers: list) -> list[tuple[int, int, Any]]:
    runs = []
    for i, k in enumerate(layers):
        if runs and runs[-1][2] == k:
            runs[-1] = (runs[-1][0], i, k)
        else:
            runs.append((i, i, k))
    return runs


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _format_speedup(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f}x"
    return _format_value(value)


def mask_plan_model_card(
    plans: dict[str, MaskPlan | None],
    pipeline_class: str | None = None,
    transformer_classes: dict[str, str] | None = None,
    scheduler_class: str | None = None,
) -> str:
    """The model card (README) section describing the mask plans of a pipeline, as Markdown.

    It states, per transformer, the plan file and k per layer, the provenance recorded in ``plan.metadata`` and the
    measured speedups when the metadata has a ``"speedup"`` (number or text) or ``"speedups"`` (``{setting: value}``)
    entry. The section is wrapped in ``<!-- diffusers-evdit:begin/end -->`` markers so that a later save replaces it.

    Args:
        plans: ``{"transformer": plan, "transformer_2": plan_or_None}``; ``None`` means dense.
        pipeline_class: base diffusers pipeline class name, for the loading note.
        transformer_classes: ``{slot: transformer class name}``.
        scheduler_class: the saved scheduler's class name.

    Example:
        >>> plan = MaskPlan([2, 2, None], metadata={"source": "search", "speedup": 1.8})
        >>> card = mask_plan_model_card({"transformer": plan}, "CogVideoXPipeline")
        >>> "1.80x" in card and "| 0-1 | 2 |" in card
        True
    """
    transformer_classes = transformer_classes or {}
    lines = [CARD_BEGIN, "## Efficient-vDiT attention tile plan", ""]
    lines += [
        "This pipeline runs with *Attention Tile* sparse attention from diffusers-evdit "
        "(`pip install diffusers-evdit`; Efficient-vDiT, arXiv 2502.06155): in each planned layer, latent "
        "frames attend only to themselves, `k` reference frames and the text (`k:F-k` masks).",
        "",
        "```python",
        "from diffusers_evdit import EfficientVDiTPipeline",
        "",
        'pipe = EfficientVDiTPipeline.from_pretrained("<this folder or repo id>")  # plans applied',
        "```",
        "",
    ]
    if pipeline_class:
        lines += [
            f"`DiffusionPipeline.from_pretrained` loads the same folder as a stock `{pipeline_class}` (dense "
            "attention, no plan).",
            "",
        ]
    if scheduler_class:
        lines += [f"Scheduler saved with the pipeline: `{scheduler_class}` (`scheduler/scheduler_config.json`).", ""]
    for slot, plan in plans.items():
        cls = transformer_classes.get(slot)
        title = f"### `{slot}`" + (f" ({cls})" if cls else "")
        lines += [title, ""]
        if plan is None:
            lines += ["Dense: no mask plan (stock attention).", ""]
            continue
        sparse = sum(1 for k in plan.layers if k is not None)
        lines += [
            f"Plan file `{PLAN_FILES.get(slot, slot + '.json')}`: {plan.num_layers} layers, {sparse} tile-sparse, "
            f"{plan.num_layers - sparse} dense. `k` is the number of reference frames (`dense`: full attention; "
            "`k >= F` latent frames is dense too).",
            "",
            "| layers | k |",
            "| --- | --- |",
        ]
        for start, end, k in _run_lengths(plan.layers):
            span = str(start) if start == end else f"{start}-{end}"
            lines.append(f"| {span} | {'dense' if k is None else k} |")
        lines += ["", f"k per layer: `{json.dumps(plan.layers)}`", ""]
        provenance = {key: v for key, v in plan.metadata.items() if key not in _SPEEDUP_KEYS}
        lines.append("**Provenance** (`plan.metadata`):")
        lines.append("")
        if plan.model_class:
            provenance = {"model_class": plan.model_class, **provenance}
        if provenance:
            lines += ["| key | value |", "| --- | --- |"]
            lines += [f"| {key} | {_format_value(v)} |" for key, v in provenance.items()]
        else:
            lines.append("Not recorded (the plan's metadata is empty).")
        lines += ["", "**Measured speedups:**", ""]
        speedups = []
        if "speedup" in plan.metadata:
            speedups.append(f"- {_format_speedup(plan.metadata['speedup'])}")
        if isinstance(plan.metadata.get("speedups"), dict):
            speedups += [f"- {key}: {_format_speedup(v)}" for key, v in plan.metadata["speedups"].items()]
        elif "speedups" in plan.metadata:
            speedups.append(f"- {_format_value(plan.metadata['speedups'])}")
        lines += speedups or ["Not measured yet (record them as `plan.metadata[\"speedups\"] = {setting: x}`)."]
        lines.append("")
    lines.append(CARD_END)
    return "\n".join(lines) + "\n"


def _write_model_card(path: str, section: str) -> None:
    """Insert or replace the diffusers-evdit section of the README at ``path``."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        begin, end = text.find(CARD_BEGIN), text.find(CARD_END)
        if begin != -1 and end > begin:
            text = text[:begin] + section.rstrip("\n") + text[end + len(CARD_END) :]
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        front = "---\nlibrary_name: diffusers\ntags:\n- diffusers-evdit\n- efficient-vdit\n- text-to-video\n---\n\n"
        text = front + section
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _read_model_index(folder: str) -> dict:
    path = os.path.join(folder, "model_index.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class EfficientVDiTPipeline(DiffusionPipeline):
    """A diffusers video pipeline (CogVideoX, Wan 2.1/2.2, HunyuanVideo, ...) that runs with per-layer mask plans.

    Instances are of a per-base subclass ``EfficientVDiT<Base>`` with bases ``(EfficientVDiTPipeline, <Base>)``: the
    base pipeline itself (same ``__init__``, ``__call__``, LoRA loading, offloading) plus plan handling. This was
    chosen over a delegating wrapper so that the base ``__call__`` signature, ``isinstance`` checks and every
    signature-driven diffusers feature keep working unchanged; see the module docstring for the saved folder layout.

    Get one with :meth:`from_pipe` (from a pipeline you hold) or :meth:`from_pretrained` (a saved folder or any
    diffusers repo of a supported pipeline), change the plan with :meth:`set_mask_plan`, read it with
    :attr:`mask_plan` (``None``: dense, stock processors) and save with :meth:`save_pretrained`.

    Pipelines with two transformers (Wan 2.2 A14B: ``transformer`` for high noise, ``transformer_2`` for low noise)
    take one plan per transformer: ``mask_plan`` and ``mask_plan_2``.

    Combining with other features (see ``docs/pipeline.md``): set the plan before ``torch.compile`` of the
    transformer (a later plan change recompiles); ``enable_model_cpu_offload`` and LoRA adapters (``load_lora_weights``)
    work in any order with the plan; diffusers cache hooks (``transformer.enable_cache(FirstBlockCacheConfig(...))``)
    run on top of the plan.

    Example:
        >>> from diffusers_evdit import EfficientVDiTPipeline, MaskPlan
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=MaskPlan.uniform(2, k=1))
        >>> type(pipe).__name__, pipe.mask_plan.layers
        ('EfficientVDiTWanPipeline', [1, 1])
    """

    _evdit_base_class: type | None = None

    def __init__(self, *args, **kwargs):
        raise TypeError(
            "EfficientVDiTPipeline is not built from components directly; use EfficientVDiTPipeline.from_pipe(pipe, "
            "mask_plan=plan), EfficientVDiTPipeline.from_pretrained(path), or "
            "EfficientVDiTPipeline.subclass_for(CogVideoXPipeline)(**components)."
        )

    # ----------------------------------------------------------------------------------------------------- classes

    @classmethod
    def subclass_for(cls, base_class: type) -> type:
        """The ``EfficientVDiT<Base>`` pipeline class for a diffusers pipeline class (created once, then cached).

        Example:
            >>> from diffusers import WanPipeline
            >>> EfficientVDiTPipeline.subclass_for(WanPipeline).__name__
            'EfficientVDiTWanPipeline'
        """
        if isinstance(base_class, type) and issubclass(base_class, EfficientVDiTPipeline):
            base_class = base_class._evdit_base_class or base_class
            if base_class is EfficientVDiTPipeline:
                raise TypeError("subclass_for needs a diffusers pipeline class such as CogVideoXPipeline.")
        if not (isinstance(base_class, type) and issubclass(base_class, DiffusionPipeline)):
            raise TypeError(
                f"subclass_for needs a diffusers pipeline class (e.g. CogVideoXPipeline), got {base_class!r}."
            )
        expected, _ = base_class._get_signature_keys(base_class)
        if "transformer" not in expected:
            raise TypeError(
                f"{base_class.__name__} has no 'transformer' component; EfficientVDiTPipeline wraps video pipelines "
                f"whose transformer is one of: {', '.join(supported_models())}."
            )
        sub = _SUBCLASSES.get(base_class)
        if sub is None:
            name = f"EfficientVDiT{base_class.__name__}"
            sub = type(
                name,
                (EfficientVDiTPipeline, base_class),
                {
                    "__init__": base_class.__init__,
                    "__module__": __name__,
                    "__qualname__": name,
                    "__doc__": f"{base_class.__name__} with Efficient-vDiT mask plans (see EfficientVDiTPipeline).",
                    "_evdit_base_class": base_class,
                },
            )
            _SUBCLASSES[base_class] = sub
            globals().setdefault(name, sub)  # importable by name, so that instances pickle
        return sub

    @property
    def base_pipeline_class(self) -> type:
        """The wrapped diffusers pipeline class (``CogVideoXPipeline``, ``WanPipeline``, ...)."""
        return self._evdit_base_class

    # ------------------------------------------------------------------------------------------------------- plans

    def _transformer_slots(self) -> list[str]:
        return [slot for slot in TRANSFORMER_SLOTS if getattr(self, slot, None) is not None]

    @property
    def mask_plans(self) -> dict[str, MaskPlan | None]:
        """``{slot: plan}`` for every transformer of the pipeline (``None``: dense, stock processors).

        The plan is read from the transformer, so changes made with :func:`apply_mask_plan` /
        :func:`remove_mask_plan` directly are seen; the metadata is that of the plan set through this pipeline.

        Example:
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan", two_transformers=True)).mask_plans
            {'transformer': None, 'transformer_2': None}
        """
        stored = getattr(self, "_evdit_plans", {})
        plans = {}
        for slot in self._transformer_slots():
            installed = get_mask_plan(_unwrap(getattr(self, slot)))
            plan = stored.get(slot)
            if installed is None:
                plans[slot] = None
            elif plan is not None and plan.layers == installed.layers:
                plans[slot] = plan
            else:
                plans[slot] = installed
        return plans

    @property
    def mask_plan(self) -> MaskPlan | None:
        """The plan of ``transformer``, ``None`` when it runs dense (stock processors).

        Example:
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("cogvideox"), mask_plan=MaskPlan.uniform(2, 1))
            >>> pipe.mask_plan.layers
            [1, 1]
        """
        return self.mask_plans.get("transformer")

    @property
    def mask_plan_2(self) -> MaskPlan | None:
        """The plan of ``transformer_2`` (Wan 2.2's low-noise expert); ``None`` when dense or absent.

        Example:
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan", two_transformers=True),
            ...     mask_plan=MaskPlan.uniform(2, 1), mask_plan_2=None)
            >>> pipe.mask_plan_2 is None
            True
        """
        return self.mask_plans.get("transformer_2")

    def set_mask_plan(
        self, mask_plan: MaskPlan | None, mask_plan_2: MaskPlan | None | str = "same", kernel: str = "auto"
    ) -> "EfficientVDiTPipeline":
        """Install ``mask_plan`` on ``transformer`` (and ``mask_plan_2`` on ``transformer_2``); ``None``: dense.

        All plans are checked against their transformers first (layer count, model class, supported transformer);
        on any error nothing is changed. ``mask_plan_2="same"`` (default) uses ``mask_plan`` for ``transformer_2``
        too when the pipeline has one; pass ``None`` to keep ``transformer_2`` dense. A transformer wrapped by
        ``torch.compile`` gets the plan on its original module (which makes the compiled one recompile).

        Args:
            mask_plan: plan for ``transformer`` or ``None``.
            mask_plan_2: plan for ``transformer_2``, ``None``, or ``"same"``.
            kernel: ``"auto"``, ``"fastest"``, ``"dense"``, ``"gathered"``, ``"split"``, ``"flex"`` or ``"walk"``
                (see :func:`apply_mask_plan`).

        Returns:
            The pipeline.

        Example:
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("hunyuan_video"))
            >>> pipe = pipe.set_mask_plan(MaskPlan.uniform(4, k=1))
            >>> pipe = pipe.set_mask_plan(None)  # stock processors again
            >>> pipe.mask_plan is None
            True
        """
        check_kernel(kernel)
        plans = self._resolve_plans(mask_plan, mask_plan_2)
        for slot, plan in plans.items():
            _check_plan_fits(_unwrap(getattr(self, slot)), plan, slot)
        for slot, plan in plans.items():
            transformer = _unwrap(getattr(self, slot))
            if plan is None:
                remove_mask_plan(transformer)
            else:
                apply_mask_plan(transformer, plan, kernel=kernel)
        self._evdit_plans = plans
        return self

    def _resolve_plans(self, mask_plan, mask_plan_2) -> dict[str, MaskPlan | None]:
        _check_plan_type(mask_plan, "mask_plan")
        slots = self._transformer_slots()
        if isinstance(mask_plan_2, str):
            if mask_plan_2 != "same":
                raise ValueError(f"mask_plan_2 must be a MaskPlan, None or 'same', got {mask_plan_2!r}.")
            mask_plan_2 = mask_plan if "transformer_2" in slots else None
        else:
            _check_plan_type(mask_plan_2, "mask_plan_2")
        wanted = {"transformer": mask_plan, "transformer_2": mask_plan_2}
        for slot, plan in wanted.items():
            if plan is not None and slot not in slots:
                raise ValueError(
                    f"{type(self).__name__} has no {slot} (it is None or not a component); pass "
                    f"{'mask_plan' if slot == 'transformer' else 'mask_plan_2'}=None."
                )
        for slot in slots:
            family_for(_unwrap(getattr(self, slot)))  # TypeError naming the supported transformers
        return {slot: wanted[slot] for slot in slots}

    # ------------------------------------------------------------------------------------------------ construction

    @classmethod
    def _target_class(cls, base_class: type) -> type:
        return cls.subclass_for(base_class) if cls._evdit_base_class is None else cls

    @classmethod
    def from_pipe(
        cls,
        pipeline: DiffusionPipeline,
        mask_plan: MaskPlan | None = None,
        mask_plan_2: MaskPlan | None | str = "same",
        kernel: str = "auto",
        **kwargs,
    ) -> "EfficientVDiTPipeline":
        """An Efficient-vDiT pipeline sharing the components of ``pipeline``, with ``mask_plan`` installed.

        As with diffusers' ``from_pipe``, the modules are shared, not copied: the plan is installed on the shared
        transformer, so ``pipeline`` runs with it too until ``set_mask_plan(None)`` / ``remove_mask_plan``. Unlike
        diffusers' ``from_pipe``, component dtypes are left as they are unless ``dtype`` is given.

        Args:
            pipeline: a diffusers pipeline whose transformer is supported (or another Efficient-vDiT pipeline).
            mask_plan: plan for ``transformer``; ``None`` (default): dense.
            mask_plan_2: plan for ``transformer_2``; ``"same"`` (default): ``mask_plan``.
            kernel: kernel of the sparse layers (see :func:`apply_mask_plan`).
            **kwargs: components or config options to replace (``scheduler=...``), and ``dtype`` to cast to.

        Example:
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> base = tiny_pipeline("cogvideox")
            >>> pipe = EfficientVDiTPipeline.from_pipe(base, mask_plan=MaskPlan.uniform(2, k=1))
            >>> pipe.transformer is base.transformer
            True
        """
        if not isinstance(pipeline, DiffusionPipeline):
            raise TypeError(f"from_pipe needs a diffusers pipeline, got {type(pipeline).__name__}.")
        base = pipeline._evdit_base_class if isinstance(pipeline, EfficientVDiTPipeline) else type(pipeline)
        target = cls._target_class(base)
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        dtype = dtype if dtype is not None else torch_dtype
        expected, optional = target._get_signature_keys(target)
        components = {k: v for k, v in pipeline.components.items() if k in expected}
        components.update({k: kwargs.pop(k) for k in expected if k in kwargs})
        options = {k: pipeline.config[k] for k in optional if k in pipeline.config}
        options.update({k: kwargs.pop(k) for k in optional if k in kwargs})
        if kwargs:
            raise TypeError(
                f"from_pipe got unexpected arguments {sorted(kwargs)}; {target._evdit_base_class.__name__} takes the "
                f"components {sorted(expected)} and the options {sorted(optional)}."
            )
        missing = sorted(set(expected) - set(components) - set(optional))
        if missing:
            raise ValueError(
                f"{target._evdit_base_class.__name__} needs the components {missing}, which {type(pipeline).__name__} "
                "does not have; pass them as keyword arguments to from_pipe."
            )
        new = target(**components, **options)
        name_or_path = pipeline.config.get("_name_or_path")
        if name_or_path is not None:
            new.register_to_config(_name_or_path=name_or_path)
        if dtype is not None:
            new.to(dtype=dtype)
        if isinstance(getattr(pipeline, "_progress_bar_config", None), dict):
            new.set_progress_bar_config(**pipeline._progress_bar_config)
        new.set_mask_plan(mask_plan, mask_plan_2, kernel=kernel)
        return new

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        mask_plan: MaskPlan | None | str = "saved",
        mask_plan_2: MaskPlan | None | str = "same",
        kernel: str = "auto",
        **kwargs,
    ) -> "EfficientVDiTPipeline":
        """Load a pipeline folder (or Hub repo) with its mask plans applied.

        The base pipeline class comes from ``model_index.json`` (``"_class_name"``); the plans from the files that
        :meth:`save_pretrained` wrote (``mask_plan.json``, ``mask_plan_2.json``). A stock diffusers folder or repo
        loads with no plan (dense) unless you pass one. Plan files are parsed before any weights are read; a corrupt
        plan file, or a plan whose layer count does not match its transformer, raises ``ValueError`` and no pipeline
        is returned.

        Args:
            pretrained_model_name_or_path: a local folder or a Hub repo id.
            mask_plan: ``"saved"`` (default): the saved plan of ``transformer`` (``None`` if none); or a
                :class:`MaskPlan` / ``None`` (dense) to use instead.
            mask_plan_2: ``"same"`` (default): chosen like ``mask_plan`` (the saved ``transformer_2`` plan when
                ``mask_plan="saved"``, else ``mask_plan`` itself); ``"saved"``, a plan or ``None``.
            kernel: kernel of the sparse layers.
            **kwargs: passed to diffusers' ``from_pretrained`` (``dtype``, ``device_map``, ``revision``, ...).

        Example:
            >>> import tempfile
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=MaskPlan.uniform(2, k=1))
            >>> folder = tempfile.mkdtemp()
            >>> pipe.save_pretrained(folder)
            >>> EfficientVDiTPipeline.from_pretrained(folder).mask_plan.layers
            [1, 1]
        """
        check_kernel(kernel)
        for name, value in (("mask_plan", mask_plan), ("mask_plan_2", mask_plan_2)):
            if isinstance(value, str) and value not in ("saved", "same"):
                raise ValueError(f"{name} must be a MaskPlan, None, 'saved' or 'same', got {value!r}.")
        _check_plan_type(None if isinstance(mask_plan, str) else mask_plan, "mask_plan")
        _check_plan_type(None if isinstance(mask_plan_2, str) else mask_plan_2, "mask_plan_2")
        if mask_plan == "same":
            raise ValueError("mask_plan cannot be 'same'; use 'saved', a MaskPlan or None.")

        path = os.fspath(pretrained_model_name_or_path)
        local = os.path.isdir(path)
        if not local and (os.path.exists(path) or os.path.isabs(path) or path.startswith((".", "~"))):
            raise FileNotFoundError(
                f"{path} is not a folder; pass the folder that save_pretrained wrote, or a Hub repo id."
            )
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        if local:
            if not os.path.isfile(os.path.join(path, "model_index.json")):
                raise ValueError(
                    f"{path} has no model_index.json; point from_pretrained at a diffusers pipeline folder (the one "
                    "save_pretrained wrote)."
                )
            index = _read_model_index(path)
        else:
            index = dict(DiffusionPipeline.load_config(path, **hub_kwargs))
        base = cls._base_class_from_index(index, path)
        target = cls._target_class(base)
        if target._evdit_base_class is not base:
            raise ValueError(
                f"{path} holds a {base.__name__}, not a {target._evdit_base_class.__name__}; load it with "
                "EfficientVDiTPipeline.from_pretrained(path)."
            )
        for slot in TRANSFORMER_SLOTS:
            entry = index.get(slot)
            if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None:
                if entry[1] not in supported_models():
                    raise TypeError(
                        f"{path}: {slot} is a {entry[1]}, which diffusers-evdit does not support; supported: "
                        f"{', '.join(supported_models())}."
                    )

        if mask_plan_2 == "same":
            mask_plan_2 = "saved" if mask_plan == "saved" else mask_plan
            derived_2 = True
        else:
            derived_2 = False
        need_saved = mask_plan == "saved" or mask_plan_2 == "saved"
        saved = cls._load_saved_plans(path, index, local, hub_kwargs) if need_saved else {}
        plan_1 = saved.get("transformer") if mask_plan == "saved" else mask_plan
        plan_2 = saved.get("transformer_2") if mask_plan_2 == "saved" else mask_plan_2

        pipe = super(EfficientVDiTPipeline, target).from_pretrained(path, **kwargs)
        if derived_2 and "transformer_2" not in pipe._transformer_slots():
            plan_2 = None
        try:
            pipe.set_mask_plan(plan_1, plan_2, kernel)
        except ValueError as err:
            sources = [PLAN_FILES[s] for s, p in saved.items() if p is not None and p in (plan_1, plan_2)]
            where = f"{path} ({', '.join(sources)})" if sources else path
            raise ValueError(
                f"{where}: {err} Fix or remove the plan file, or load with mask_plan=None to run dense."
            ) from None
        return pipe

    @staticmethod
    def _base_class_from_index(index: dict, path: str) -> type:
        class_name = index.get("_class_name")
        if not isinstance(class_name, str):
            raise ValueError(
                f"{path}: model_index.json has no usable '_class_name' ({class_name!r}); EfficientVDiTPipeline loads "
                "folders of built-in diffusers pipelines such as CogVideoXPipeline or WanPipeline."
            )
        if class_name.startswith("EfficientVDiT"):
            class_name = class_name[len("EfficientVDiT") :]
        base = getattr(diffusers, class_name, None)
        if not (isinstance(base, type) and issubclass(base, DiffusionPipeline)):
            raise ValueError(
                f"{path}: model_index.json names {class_name!r}, which is not a diffusers pipeline class in diffusers "
                f"{diffusers.__version__}; upgrade diffusers or fix '_class_name'."
            )
        return base

    @staticmethod
    def _load_saved_plans(path: str, index: dict, local: bool, hub_kwargs: dict) -> dict[str, MaskPlan | None]:
        """Parse the plan files a folder lists (or, locally, holds) without touching any weights."""
        entry = index.get(MODEL_INDEX_KEY)
        if entry is None:
            if not local:
                return {}
            files = {slot: f for slot, f in PLAN_FILES.items() if os.path.isfile(os.path.join(path, f))}
        else:
            files = entry.get("mask_plans") if isinstance(entry, dict) else None
            if not isinstance(files, dict) or not all(
                slot in PLAN_FILES and isinstance(f, str) and os.path.basename(f) == f for slot, f in files.items()
            ):
                raise ValueError(
                    f"{path}: model_index.json has a corrupt '{MODEL_INDEX_KEY}' entry ({entry!r}); it must be "
                    f'{{"mask_plans": {{"transformer": "mask_plan.json", ...}}}}. Re-save the pipeline or delete '
                    "the entry."
                )
            version = entry.get("version", PIPELINE_FORMAT_VERSION)
            if not isinstance(version, int) or version > PIPELINE_FORMAT_VERSION:
                raise ValueError(
                    f"{path}: saved by a newer diffusers-evdit (pipeline format {version!r}); upgrade diffusers-evdit."
                )
        plans = {}
        for slot, filename in files.items():
            if local:
                file = os.path.join(path, filename)
                if not os.path.isfile(file):
                    raise ValueError(
                        f"{path}: model_index.json lists {filename} for {slot}, but the file is missing; restore it, "
                        "or load with mask_plan=None (and mask_plan_2=None) to run dense."
                    )
            else:
                from huggingface_hub import hf_hub_download

                file = hf_hub_download(path, filename, **hub_kwargs)
            try:
                plans[slot] = MaskPlan.load(file)
            except ValueError as err:
                raise ValueError(
                    f"Corrupt mask plan for {slot}: {err}. Fix or remove the file, or load with mask_plan=None to "
                    "run dense."
                ) from None
        return plans

    # ------------------------------------------------------------------------------------------------------ saving

    def model_card(self) -> str:
        """The README section :meth:`save_pretrained` writes (plans, provenance, measured speedups), as Markdown.

        Example:
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=MaskPlan.uniform(2, k=1))
            >>> "| 0-1 | 1 |" in pipe.model_card()
            True
        """
        return mask_plan_model_card(
            self.mask_plans,
            pipeline_class=self._evdit_base_class.__name__,
            transformer_classes={s: type(_unwrap(getattr(self, s))).__name__ for s in self._transformer_slots()},
            scheduler_class=type(self.scheduler).__name__ if getattr(self, "scheduler", None) is not None else None,
        )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the base pipeline folder, the plan files, the model_index entry and the model card section.

        ``DiffusionPipeline.from_pretrained(save_directory)`` loads the result as the stock base pipeline (dense);
        :meth:`from_pretrained` loads it with the plans. ``push_to_hub=True`` is refused: save locally, then upload
        the folder (``huggingface_hub.upload_folder``) so that the plan files travel with it.

        Example:
            >>> import os, tempfile
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("cogvideox"), mask_plan=MaskPlan.uniform(2, 1))
            >>> folder = tempfile.mkdtemp()
            >>> pipe.save_pretrained(folder)
            >>> sorted(f for f in os.listdir(folder) if not os.path.isdir(os.path.join(folder, f)))
            ['README.md', 'mask_plan.json', 'model_index.json']
        """
        if kwargs.get("push_to_hub"):
            raise ValueError(
                "EfficientVDiTPipeline.save_pretrained does not support push_to_hub=True: save locally, then upload "
                "the whole folder with huggingface_hub.upload_folder(repo_id=..., folder_path=save_directory)."
            )
        plans = self.mask_plans
        for plan in plans.values():
            if plan is not None:
                json.dumps(plan.to_dict())  # fail before writing anything when the metadata is not JSON
        save_directory = os.fspath(save_directory)
        super().save_pretrained(save_directory, **kwargs)
        files = {}
        for slot, filename in PLAN_FILES.items():
            file = os.path.join(save_directory, filename)
            plan = plans.get(slot)
            if plan is None:
                if os.path.exists(file):
                    os.remove(file)  # a stale plan from an earlier save into this folder
            else:
                plan.save(file)
                files[slot] = filename
        index_path = os.path.join(save_directory, "model_index.json")
        index = _read_model_index(save_directory)
        index["_class_name"] = self._evdit_base_class.__name__
        index[MODEL_INDEX_KEY] = {"format": PIPELINE_FORMAT, "version": PIPELINE_FORMAT_VERSION, "mask_plans": files}
        with open(index_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
        _write_model_card(os.path.join(save_directory, "README.md"), self.model_card())
