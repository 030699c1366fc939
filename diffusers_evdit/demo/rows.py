"""The rows of ``evdit demo``: Base, the MLCD student and the Efficient-vDiT student, and their loader.

A student row ships as a small folder inside the base model folder (``demo_model/mlcd/``, ``demo_model/evdit/``)::

    evdit/
      transformer_delta.safetensors   the student's weights as a 4-bit delta from the base transformer
                          (:mod:`diffusers_evdit.weight_delta`), or transformer/ (config.json + weights)
      scheduler/          scheduler_config.json (the few-step MLCD scheduler)
      mask_plan.json      the searched plan (Efficient-vDiT row only)

The VAE, text encoder and tokenizer are the base folder's, shared in memory between rows.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch

from ..students import student_scheduler, student_transformer
from ..weight_delta import DELTA_FILE
from .loading import parse_plan
from .model import GenerationConfig, build_transformer


@dataclass(frozen=True)
class DemoRow:
    """One row of the demo: which transformer and scheduler, how many steps, which guidance and plan.

    Attributes:
        name: the row's label (``"Base"``, ``"MLCD"``, ``"Efficient-vDiT"``).
        folder: subfolder of the base model folder with the row's ``transformer/`` and ``scheduler/`` (an absolute
            path also works); ``None``: the base model itself.
        steps: denoising steps; ``None``: the model's generation settings.
        guidance_scale: classifier-free guidance scale (1.0: none); ``None``: the model's.
        plan: ``"saved"`` (the folder's ``mask_plan.json``), ``"uniform:K"``, a plan file, or ``None`` (dense).

    Example:
        >>> [(r.name, r.steps, r.plan) for r in DEFAULT_ROWS]
        [('Base', None, None), ('MLCD', 4, None), ('Efficient-vDiT', 4, 'saved')]
    """

    name: str
    folder: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    plan: str | None = None

    def generation(self, base: GenerationConfig) -> GenerationConfig:
        """``base`` with this row's steps and guidance.

        Example:
            >>> DEFAULT_ROWS[1].generation(GenerationConfig()).num_inference_steps
            4
        """
        gen = copy.deepcopy(base)
        if self.steps is not None:
            gen.num_inference_steps = int(self.steps)
        if self.guidance_scale is not None:
            gen.guidance_scale = float(self.guidance_scale)
        return gen


#: The default rows: Base (the model's own call: 20 steps with CFG, dense), MLCD (4 steps, no CFG, dense) and
#: Efficient-vDiT (4 steps, no CFG, the searched plan, after KD).
DEFAULT_ROWS: tuple[DemoRow, ...] = (
    DemoRow("Base"),
    DemoRow("MLCD", folder="mlcd", steps=4, guidance_scale=1.0),
    DemoRow("Efficient-vDiT", folder="evdit", steps=4, guidance_scale=1.0, plan="saved"),
)


class DemoRowMissingError(FileNotFoundError):
    """A student row's folder (``transformer/`` + ``scheduler/``) is not there.

    Example:
        >>> issubclass(DemoRowMissingError, FileNotFoundError)
        True
    """


def row_folder(base_path: str, row: DemoRow) -> str | None:
    """The folder of ``row`` for the base model folder ``base_path`` (``None`` for the base row).

    Example:
        >>> row_folder("/models/demo", DEFAULT_ROWS[2])
        '/models/demo/evdit'
    """
    if row.folder is None:
        return None
    return row.folder if os.path.isabs(row.folder) else os.path.join(os.fspath(base_path), row.folder)


def check_row_folder(folder: str, row: DemoRow) -> None:
    """Raise :class:`DemoRowMissingError` naming what is missing and how to get it.

    Example:
        >>> try:
        ...     check_row_folder("/nonexistent/evdit", DEFAULT_ROWS[2])
        ... except DemoRowMissingError as err:
        ...     print(str(err).split(":")[0])
        The Efficient-vDiT row is missing
    """
    need = ["scheduler/scheduler_config.json"]
    if not os.path.isfile(os.path.join(folder, DELTA_FILE)):
        need.insert(0, "transformer/config.json")
    if row.plan == "saved":
        need.append("mask_plan.json")
    missing = [p for p in need if not os.path.isfile(os.path.join(folder, p))]
    if missing:
        raise DemoRowMissingError(
            f"The {row.name} row is missing: {folder} lacks {', '.join(missing)}. Ship the distilled student there "
            "(transformer_delta.safetensors or transformer/, scheduler/, and mask_plan.json for a searched plan; the base folder's VAE and "
            "text encoder are reused), pass another folder, or run with --model tiny for random stand-ins."
        )


def load_row(base_pipe, base_path: str, row: DemoRow, kernel: str = "auto", seed: int = 0):
    """The pipeline of ``row``: the base pipeline's VAE, text encoder and tokenizer with the row's transformer,
    scheduler and plan.

    ``base_path == "tiny"`` builds a random stand-in instead (transformer seed ``seed + 1 + ...``, the base
    scheduler, and ``uniform:1`` for a saved plan): plumbing only. The base row returns ``base_pipe`` with its plan
    set. Raises :class:`DemoRowMissingError` when the row's folder is incomplete.

    Example:
        >>> from diffusers_evdit.demo import load_pipeline
        >>> base, gen = load_pipeline("tiny", device="cpu")
        >>> pipe = load_row(base, "tiny", DEFAULT_ROWS[2])
        >>> pipe.vae is base.vae, pipe.transformer is base.transformer, pipe.mask_plan.layers
        (True, False, [1, 1])
    """
    from ..pipeline import EfficientVDiTPipeline

    if row.folder is None:
        base_pipe.set_mask_plan(parse_plan(row.plan, base_pipe.transformer) if row.plan != "saved" else None,
                                kernel=kernel)
        return base_pipe
    dtype, device = base_pipe.transformer.dtype, base_pipe.transformer.device
    if base_path == "tiny":
        arch_seed = seed + 1 + sum(map(ord, row.name)) % 97
        transformer = build_transformer("tiny", seed=arch_seed, zero_init_output=False).eval()
        scheduler = type(base_pipe.scheduler).from_config(base_pipe.scheduler.config)
        plan_spec = "uniform:1" if row.plan == "saved" else row.plan
        folder = None
    else:
        folder = row_folder(base_path, row)
        check_row_folder(folder, row)
        # in the row's dtype as Base is (diffusers keeps its float32 modules float32): base + delta, or shipped whole
        transformer = student_transformer(type(base_pipe.transformer), base_path, folder, dtype)
        scheduler = student_scheduler(folder)
        plan_spec = os.path.join(folder, "mask_plan.json") if row.plan == "saved" else row.plan
    if folder is None and dtype != torch.float32:
        transformer.to(dtype=dtype)  # the tiny stand-in, cast as load_pipeline casts the tiny Base
    transformer.to(device)
    pipe = EfficientVDiTPipeline.from_pipe(base_pipe, transformer=transformer, scheduler=scheduler, kernel=kernel)
    pipe.set_mask_plan(parse_plan(plan_spec, transformer), kernel=kernel)
    if folder is not None:
        pipe.register_to_config(_name_or_path=folder)
    return pipe


