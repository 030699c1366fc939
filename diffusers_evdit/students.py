"""Distilled students shipped as weight deltas beside their base pipeline, loaded as whole pipelines.

A student folder holds what differs from its base pipeline, which is the folder above it::

    demo_model/                     the base pipeline (model_index.json, transformer/, vae/, text_encoder/, ...)
    demo_model/evdit/               a student of it
        transformer_delta.safetensors   student - base transformer (:mod:`.weight_delta`)
        scheduler/                      its few-step scheduler
        generation_defaults.json        how it is meant to be called (steps, guidance, size)
        mask_plan.json                  its tile plan (optional: a dense student has none)

``EfficientVDiTPipeline.from_pretrained(student_folder)`` loads the base pipeline, adds the delta to its transformer,
and takes the scheduler, defaults and plan from the student folder; no second copy of the base weights exists.
"""

from __future__ import annotations

import json
import os

import diffusers

from . import schedulers
from .generation import GenerationDefaults
from .plan import MaskPlan
from .weight_delta import DELTA_FILE, load_delta

__all__ = ["base_folder", "is_delta_student", "load_delta_student", "student_scheduler", "student_transformer"]


def is_delta_student(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a local student folder shipped as a weight delta (no ``model_index.json`` of its own).

    Example:
        >>> is_delta_student("diffusers_evdit/demo_model/evdit"), is_delta_student("diffusers_evdit/demo_model")
        (True, False)
    """
    path = os.fspath(path)
    return (os.path.isfile(os.path.join(path, DELTA_FILE))
            and not os.path.isfile(os.path.join(path, "model_index.json")))


def base_folder(student: str | os.PathLike) -> str:
    """The base pipeline folder of a student folder: the folder above it, which must hold a ``model_index.json``."""
    base = os.path.dirname(os.path.abspath(os.fspath(student)))
    if not os.path.isfile(os.path.join(base, "model_index.json")):
        raise ValueError(
            f"{student} is a student shipped as a weight delta ({DELTA_FILE}); it loads on top of its base pipeline "
            f"in the folder above it, but {base} has no model_index.json. Keep the student folder inside its base "
            "pipeline folder."
        )
    return base


def student_scheduler(folder: str | os.PathLike):
    """The scheduler saved in ``folder/scheduler/``, of a diffusers class or of :mod:`diffusers_evdit.schedulers`."""
    config = os.path.join(os.fspath(folder), "scheduler", "scheduler_config.json")
    if not os.path.isfile(config):
        raise ValueError(f"{folder} has no scheduler/scheduler_config.json; a student folder ships its scheduler.")
    with open(config, encoding="utf-8") as f:
        name = json.load(f).get("_class_name", "")
    cls = getattr(schedulers, name, None) or getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"{config}: unknown scheduler class {name!r}; expected a diffusers or diffusers_evdit one.")
    return cls.from_pretrained(os.fspath(folder), subfolder="scheduler")


def student_transformer(transformer_class, base: str, folder: str, dtype):
    """The student's transformer in ``dtype``: the base transformer loaded the way a pipeline loads it (diffusers'
    float32 modules stay float32) plus ``folder``'s delta, or ``folder/transformer/`` where it ships whole."""
    if os.path.isfile(os.path.join(folder, DELTA_FILE)):
        transformer = transformer_class.from_pretrained(base, subfolder="transformer", torch_dtype=dtype)
        return load_delta(transformer, folder).eval()
    return transformer_class.from_pretrained(folder, subfolder="transformer", torch_dtype=dtype).eval()


def load_delta_student(pipeline_class, folder: str, mask_plan="saved", mask_plan_2="same", kernel: str = "auto",
                       **kwargs):
    """``pipeline_class.from_pretrained`` of a student folder (see the module docs): the base pipeline with
    ``kwargs``, its transformer plus the delta (in place: the freshly loaded base is not shared), the student's
    scheduler (unless ``kwargs`` passes one) and generation defaults, and its saved plan (``mask_plan="saved"``) or
    the plan given."""
    folder = os.fspath(folder)
    base = base_folder(folder)
    scheduler = kwargs.pop("scheduler", None) or student_scheduler(folder)
    plan_file = os.path.join(folder, "mask_plan.json")
    saved = mask_plan == "saved" and os.path.isfile(plan_file)
    if mask_plan == "saved":
        mask_plan = MaskPlan.load(plan_file) if saved else None
    if mask_plan_2 == "saved":
        raise ValueError(f"{folder}: a student folder saves one plan, for transformer; pass mask_plan_2='same', a "
                         "MaskPlan or None.")
    defaults = GenerationDefaults.load(folder)
    pipe = pipeline_class.from_pretrained(base, mask_plan=None, kernel=kernel, scheduler=scheduler, **kwargs)
    load_delta(pipe.transformer, folder).eval()
    if defaults is not None:
        pipe.set_generation_defaults(defaults)
    pipe.register_to_config(_name_or_path=os.path.abspath(folder))
    try:
        return pipe.set_mask_plan(mask_plan, mask_plan_2, kernel=kernel)
    except ValueError as err:
        if not saved:
            raise
        raise ValueError(f"{plan_file}: {err} Fix or remove the plan file, or load with mask_plan=None to run "
                         "dense.") from None
