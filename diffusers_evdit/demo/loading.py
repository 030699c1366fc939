"""Loading the demo model (or a trained folder, or the random tiny stand-in) and parsing plan specs."""

from __future__ import annotations

import os

import torch

from ..students import base_folder, is_delta_student
from .model import DEMO_MODEL_DIR, GenerationConfig, build_demo_pipeline

class DemoModelMissingError(FileNotFoundError):
    """The shipped demo model has no trained weights (``diffusers_evdit/demo_model/`` holds only its README).

    Example:
        >>> issubclass(DemoModelMissingError, FileNotFoundError)
        True
    """


def _missing_model_message(path: str) -> str:
    return (
        f"The shipped demo model is missing: {path} has no trained pipeline yet (no model_index.json). Train it on a "
        "GPU with `bash examples/train_demo.sh OUTDIR` and copy OUTDIR's contents into "
        "diffusers_evdit/demo_model/, or pass --model PATH to a trained pipeline folder, or --model tiny for a "
        "random-weight run of the same structure (plumbing only, no quality)."
    )


def resolve_model(model: str | os.PathLike | None = None) -> str:
    """The pipeline folder to load: ``None`` / ``"default"`` means the shipped :data:`DEMO_MODEL_DIR`, and
    ``"default/mlcd"`` / ``"default/evdit"`` its students (wherever the command runs).

    ``"tiny"`` is returned as is. Raises :class:`DemoModelMissingError` (a ``FileNotFoundError``) with the way out
    when the shipped model has not been trained yet, ``FileNotFoundError`` for a missing folder.

    Example:
        >>> resolve_model("tiny")
        'tiny'
    """
    if model is None or model == "default":
        path = DEMO_MODEL_DIR
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise DemoModelMissingError(_missing_model_message(path))
        return path
    model = os.fspath(model)
    if model == "tiny":
        return model
    if model.startswith("default/"):
        model = os.path.join(resolve_model(None), model[len("default/"):])
        if not os.path.isdir(model):
            students = [f"default/{e.name}" for e in sorted(os.scandir(DEMO_MODEL_DIR), key=lambda e: e.name)
                        if e.is_dir() and is_delta_student(e.path)]
            raise FileNotFoundError(f"the shipped demo model has no folder {model}; its students: "
                                    f"{', '.join(students) or 'none'}.")
    if not os.path.isdir(model):
        raise FileNotFoundError(f"{model} is not a folder; pass a pipeline folder (save_pretrained) or 'tiny'.")
    if not os.path.isfile(os.path.join(model, "model_index.json")) and not is_delta_student(model):
        raise FileNotFoundError(f"{model} has no model_index.json; it is not a diffusers pipeline folder (nor a "
                                "student folder inside one).")
    return model


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(
    model: str | os.PathLike | None = None, device: str | None = None, dtype: torch.dtype | None = None,
    kernel: str = "auto", seed: int = 0,
):
    """Load the demo model (or a trained folder, or ``"tiny"``) as a dense :class:`EfficientVDiTPipeline`.

    Returns ``(pipe, generation_config)``. Defaults: CUDA when present; float32 on CPU, bfloat16 on CUDA (the VAE
    stays float32). The folder's saved mask plan is *not* applied (dense); use ``pipe.set_mask_plan(plan)``.

    Example:
        >>> pipe, gen = load_pipeline("tiny", device="cpu")
        >>> type(pipe).__name__, gen.num_frames
        ('EfficientVDiTWanPipeline', 13)
    """
    from ..pipeline import EfficientVDiTPipeline

    path = resolve_model(model)
    device = device or _default_device()
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if path == "tiny":
        pipe = EfficientVDiTPipeline.from_pipe(build_demo_pipeline("tiny", seed=seed), kernel=kernel)
        gen = GenerationConfig.tiny()
        if dtype != torch.float32:
            for name in ("transformer", "text_encoder"):
                getattr(pipe, name).to(dtype=dtype)
    else:
        # a student folder (students.py) takes the demo settings of its base; its own defaults come on the pipeline
        gen = GenerationConfig.load(base_folder(path) if is_delta_student(path) else path)
        try:
            # the VAE is small: float32 decoding is cheap and avoids colour banding
            pipe = EfficientVDiTPipeline.from_pretrained(
                path, mask_plan=None, kernel=kernel, dtype={"default": dtype, "vae": torch.float32}
            )
        except OSError as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise ValueError(f"cannot load {path}: {err}") from None
    pipe.to(device)
    return pipe, gen


def parse_plan(spec: str | None, transformer) -> "MaskPlan | None":  # noqa: F821
    """A mask plan from a spec: ``None`` / ``"dense"``, ``"uniform:K"`` or a plan JSON file.

    Example:
        >>> from diffusers_evdit.demo import build_transformer
        >>> parse_plan("uniform:2", build_transformer("tiny")).layers
        [2, 2]
    """
    from ..plan import MaskPlan, num_plan_layers

    if spec is None or spec == "dense":
        return None
    if spec.startswith("uniform:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad plan spec {spec!r}; use uniform:K with an integer K >= 1") from None
        return MaskPlan.uniform(num_plan_layers(transformer), k, model_class=type(transformer).__name__)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"plan {spec!r} is neither 'dense', 'uniform:K' nor an existing plan JSON file")
    return MaskPlan.load(spec)


