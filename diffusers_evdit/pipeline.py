"""``EfficientVDiTPipeline``: a supported diffusers video pipeline that runs with mask plans, saved and loaded as one.

Instances are of a per-base class ``EfficientVDiT<Base>(EfficientVDiTPipeline, <Base>)`` made by
:meth:`EfficientVDiTPipeline.subclass_for`: the base pipeline itself (its ``__init__``, ``__call__``, LoRA loader,
offloading; ``isinstance`` holds) plus plan handling, generation defaults (which ``__call__`` fills in for the
arguments a caller leaves out), ``from_pretrained``, ``from_pipe`` and ``save_pretrained``. The saved folder is the base pipeline's diffusers folder plus ``mask_plan.json`` /
``mask_plan_2.json``, an ``"_evdit"`` entry in ``model_index.json``, ``generation_defaults.json``
(:class:`~diffusers_evdit.generation.GenerationDefaults`) and a model card section; docs/pipeline.md describes it.
"""

from __future__ import annotations

import json
import os
import shutil

import diffusers
from diffusers import DiffusionPipeline
from torch import nn

from .atomic import atomic_directory, check_complete
from .generation import GENERATION_DEFAULTS_FILE, GenerationDefaults, with_generation_defaults
from .kernels import check_kernel
from .model_card import CARD_BEGIN, CARD_END, PLAN_FILES, mask_plan_model_card, write_model_card  # noqa: F401
from .plan import MaskPlan, apply_mask_plan, get_mask_plan, num_plan_layers, remove_mask_plan
from .processors import family_for, supported_models
from .students import is_delta_student, load_delta_student

TRANSFORMER_SLOTS = ("transformer", "transformer_2")
MODEL_INDEX_KEY = "_evdit"
PIPELINE_FORMAT = "diffusers-evdit/pipeline"
PIPELINE_FORMAT_VERSION = 1
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")

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


def _user_files(old: str, new: str) -> list[str]:
    """Entries of an existing save folder that a new save keeps: everything but what a save writes or owns."""
    try:
        index = _read_model_index(old)
    except (OSError, ValueError):
        index = {}
    owned = {*PLAN_FILES.values(), GENERATION_DEFAULTS_FILE, "model_index.json"}
    owned |= {k for k, v in index.items() if isinstance(v, list)}  # component folders of the old save
    return [e for e in os.listdir(old) if e not in owned and not os.path.exists(os.path.join(new, e))]


def _read_model_index(folder: str) -> dict:
    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        return json.load(f)


class EfficientVDiTPipeline(DiffusionPipeline):
    """A diffusers video pipeline (CogVideoX, Wan 2.1/2.2, HunyuanVideo, ...) that runs with per-layer mask plans.

    Instances are of a per-base subclass ``EfficientVDiT<Base>(EfficientVDiTPipeline, <Base>)``: the base pipeline
    itself (same ``__init__``, ``__call__``, LoRA loading, offloading) plus plan handling; ``__call__`` takes the
    arguments a caller leaves out from :attr:`generation_defaults` when the folder recorded them. Get one with
    :meth:`from_pipe` or :meth:`from_pretrained`, change the plan with :meth:`set_mask_plan` (``mask_plan_2`` for
    Wan 2.2's ``transformer_2``), save with :meth:`save_pretrained`. docs/pipeline.md covers the saved folder and
    ``torch.compile``, offloading, LoRA and cache hooks.

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
                    "__call__": with_generation_defaults(base_class.__call__),
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

    @property
    def generation_defaults(self) -> GenerationDefaults | None:
        """How the model is meant to be called (``generation_defaults.json`` of its folder); ``None``: not recorded.
        ``pipe(prompt)`` takes every call argument it leaves out from here; explicit arguments win."""
        return getattr(self, "_evdit_generation_defaults", None)

    def set_generation_defaults(self, defaults: GenerationDefaults | None = None, **values) -> "EfficientVDiTPipeline":
        """Set the defaults :meth:`save_pretrained` records: a :class:`GenerationDefaults`, ``None``, or values
        (``num_frames=29, height=128, ...``) that update the current ones.

        Example:
            >>> from diffusers_evdit.tiny import tiny_pipeline
            >>> pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan")).set_generation_defaults(num_frames=9)
            >>> pipe.generation_defaults.call_kwargs()
            {'num_frames': 9}
        """
        if defaults is not None and not isinstance(defaults, GenerationDefaults):
            raise TypeError(f"defaults must be a GenerationDefaults or None, got {type(defaults).__name__}.")
        if values:
            defaults = (defaults or self.generation_defaults or GenerationDefaults()).replace(**values)
        self._evdit_generation_defaults = defaults
        return self

    # ------------------------------------------------------------------------------------------------------- plans

    def _transformer_slots(self) -> list[str]:
        return [slot for slot in TRANSFORMER_SLOTS if getattr(self, slot, None) is not None]

    @property
    def mask_plans(self) -> dict[str, MaskPlan | None]:
        """``{slot: plan}`` for every transformer of the pipeline (``None``: dense, stock processors).

        Read from the transformers (direct :func:`apply_mask_plan` calls are seen), with the metadata of the plan set
        through this pipeline.

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

        ``kernel`` is any kernel name of :func:`apply_mask_plan`. Returns the pipeline.

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

        Modules are shared, not copied (``pipeline`` runs with the plan too until ``set_mask_plan(None)``); dtypes
        are kept unless ``dtype`` is given. Generation defaults are carried over unless a component is replaced.

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
        replaced = [k for k in expected if k in kwargs]
        components.update({k: kwargs.pop(k) for k in replaced})
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
        if not replaced:  # a new transformer or scheduler is another model: the old defaults need not fit it
            new._evdit_generation_defaults = getattr(pipeline, "generation_defaults", None)
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

        The base class comes from ``model_index.json``, the plans and :attr:`generation_defaults` from the files
        :meth:`save_pretrained` wrote (a stock diffusers folder loads dense). They are parsed before any weights are
        read; a corrupt file, a plan that does not fit its transformer, or an incomplete save raises ``ValueError``.
        A student shipped as a weight delta inside its base pipeline's folder loads on that base (:mod:`.students`).

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
        if local and is_delta_student(path):  # a distilled student beside its base pipeline (students.py)
            return load_delta_student(cls, path, mask_plan, mask_plan_2, kernel, **kwargs)
        if local:
            if not os.path.isfile(os.path.join(path, "model_index.json")):
                raise ValueError(
                    f"{path} has no model_index.json; point from_pretrained at a diffusers pipeline folder (the one "
                    "save_pretrained wrote)."
                )
            check_complete(path)
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

        derived_2 = mask_plan_2 == "same"
        if derived_2:
            mask_plan_2 = "saved" if mask_plan == "saved" else mask_plan
        need_saved = mask_plan == "saved" or mask_plan_2 == "saved"
        saved = cls._load_saved_plans(path, index, local, hub_kwargs) if need_saved else {}
        defaults = GenerationDefaults.load(path, **hub_kwargs)
        plan_1 = saved.get("transformer") if mask_plan == "saved" else mask_plan
        plan_2 = saved.get("transformer_2") if mask_plan_2 == "saved" else mask_plan_2

        pipe = super(EfficientVDiTPipeline, target).from_pretrained(path, **kwargs)
        pipe._evdit_generation_defaults = defaults
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
        """Save the base pipeline folder, the plan files, the generation defaults, the model_index entry and the
        model card section, atomically (built beside ``save_directory``, then renamed into place; files of an existing
        folder that a save does not write, such as a README's own text, are kept).

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
        defaults = self._defaults_to_save()
        save_directory = os.fspath(save_directory)
        with atomic_directory(save_directory, carry_over=_user_files) as tmp:
            super().save_pretrained(tmp, **kwargs)
            files = {}
            for slot, filename in PLAN_FILES.items():
                if plans.get(slot) is not None:
                    plans[slot].save(os.path.join(tmp, filename))
                    files[slot] = filename
            if defaults is not None:
                defaults.save(tmp)
            index = _read_model_index(tmp)
            index["_class_name"] = self._evdit_base_class.__name__
            index[MODEL_INDEX_KEY] = {"format": PIPELINE_FORMAT, "version": PIPELINE_FORMAT_VERSION,
                                      "mask_plans": files}
            with open(os.path.join(tmp, "model_index.json"), "w", encoding="utf-8") as f:
                f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
            readme = os.path.join(save_directory, "README.md")
            if os.path.isfile(readme):  # keep the user's text around the section
                shutil.copyfile(readme, os.path.join(tmp, "README.md"))
            write_model_card(os.path.join(tmp, "README.md"), self.model_card())

    def _defaults_to_save(self) -> GenerationDefaults | None:
        """The generation defaults, with a few-step (MLCD) scheduler's step count."""
        defaults, scheduler = self.generation_defaults, getattr(self, "scheduler", None)
        steps = getattr(scheduler, "mlcd_num_steps", None) if scheduler is not None else None
        if steps and scheduler.config.get("use_mlcd_steps"):  # the scheduler runs these steps whatever is asked
            defaults = (defaults or GenerationDefaults()).replace(num_inference_steps=int(steps))
        return defaults
