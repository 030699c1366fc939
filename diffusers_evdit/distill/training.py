"""What the distillation examples (``examples/train_mlcd.py``, ``examples/train_kd.py``) share around their training
loops: argument groups, the accelerator, the LoRA adapter, optimiser and learning-rate schedule, the EMA target
network, teacher loading and validation videos (their data: :mod:`.training_data`).

These helpers read the scripts' ``argparse`` options (the groups defined here); they are library code so that each
script stays a self-contained diffusers-style example without importing the other.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..progress import format_duration
from .checkpoints import trim_loss_log

__all__ = [
    "TINY_HUNYUAN_TEMPLATE",
    "TINY_PREFIX",
    "EMATarget",
    "add_data_args",
    "add_lora_adapter",
    "add_lora_args",
    "add_optimisation_args",
    "add_output_args",
    "add_validation_args",
    "frame_strip",
    "freeze_components",
    "load_pipeline",
    "prepare_optimisation",
    "read_folder_json",
    "stored_dtype",
]

logger = logging.getLogger(__name__)

#: ``--teacher tiny:<family>``: a tiny random pipeline (tests, CPU dry runs).
TINY_PREFIX = "tiny:"
TINY_HUNYUAN_TEMPLATE = {"template": "{}", "crop_start": 0}


# --------------------------------------------------------------------------------------------------------- args


class TrainingHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` of the training scripts: the docstring's line breaks kept in the description and the epilog (the
    example commands stay copyable), flag help wrapped, and each default shown unless the flag's help names it.

    Example:
        >>> p = argparse.ArgumentParser(prog="train", formatter_class=TrainingHelpFormatter)
        >>> _ = p.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
        >>> "peak learning rate (default: 5e-05)" in p.format_help()
        True
    """

    @staticmethod
    def _shows_default(action) -> bool:
        return bool(action.option_strings) and action.default not in (None, False, "", argparse.SUPPRESS)

    def add_argument(self, action):
        if action.help is None and self._shows_default(action):
            action.help = "(default: %(default)s)"  # argparse prints nothing for a flag without help
        super().add_argument(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if self._shows_default(action) and "default" not in text.lower():  # else the help names it in its own words
            text += " (default: %(default)s)"
        return text


def script_parser(doc: str) -> argparse.ArgumentParser:
    """A training script's parser: ``doc``'s first paragraph as the description, the rest (settings and example
    commands) after the flags, defaults shown."""
    head, _, rest = doc.partition("\n\n")
    return argparse.ArgumentParser(description=head, epilog=rest or None, formatter_class=TrainingHelpFormatter)


class StepLog:
    """Which training steps get a log line, and the time left: the first step, every ``every``-th, and any step
    ``seconds`` or more after the last line (slow CPU steps would otherwise leave minutes silent); the estimate runs
    to ``max_steps`` at this run's pace, or to the end of the training budget where that comes first.

    Example:
        >>> log = StepLog(max_steps=100, first_step=0, start=0.0)
        >>> [s for s in range(1, 31) if log.due(s, now=float(s))]  # 1 s a step: the first, then every 10th
        [1, 10, 20, 30]
        >>> log.eta(30, now=30.0), log.eta(30, now=30.0, budget_left_s=12.0)
        ('ETA 1m10s', 'ETA 12s')
    """

    def __init__(self, max_steps: int, first_step: int, start: float, every: int = 10, seconds: float = 10.0):
        self.max_steps, self.first_step, self.start = max_steps, first_step, start
        self.every, self.seconds, self.last = every, seconds, None

    def due(self, step: int, now: float) -> bool:
        due = self.last is None or step % self.every == 0 or now - self.last >= self.seconds
        if due:
            self.last = now
        return due

    def eta(self, step: int, now: float, budget_left_s: float | None = None) -> str:
        done = step - self.first_step
        if done <= 0:
            return "ETA n/a"
        left = (self.max_steps - step) * (now - self.start) / done
        if budget_left_s is not None:
            left = min(left, max(budget_left_s, 0.0))
        return f"ETA {format_duration(left)}"


def add_lora_args(p: argparse.ArgumentParser, use_lora: str) -> None:
    """The LoRA options shared by the distillation examples (``use_lora``: what the flag trains, per script)."""
    g = p.add_argument_group("LoRA")
    g.add_argument("--use_lora", action="store_true", help=use_lora)
    g.add_argument("--lora_rank", type=int, default=64)
    g.add_argument("--lora_alpha", type=float, default=None, help="default: the rank")
    g.add_argument("--lora_target_modules", default="to_q,to_k,to_v,to_out.0")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The data options shared by the distillation examples (train_mlcd.py, train_kd.py)."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", help="'synthetic' or a folder of captioned videos")
    g.add_argument("--num_frames", type=int, default=None,
                   help="frames per clip, 4k+1 (LTX-Video: 8k+1; default: the teacher's evdit_demo.json, else 29)")
    g.add_argument("--height", type=int, default=None,
                   help="a multiple of 16 (LTX-Video, Wan 2.2 TI2V: 32); default: evdit_demo.json, else 128")
    g.add_argument("--width", type=int, default=None, help="as --height")
    g.add_argument("--frame_stride", type=int, default=1, help="folder datasets: take every n-th frame")
    g.add_argument("--synthetic_num_samples", type=int, default=1_000_000)
    g.add_argument("--cache_latents", action="store_true",
                   help="encode each clip with the VAE once and keep its posterior (mean, std) in memory; later "
                        "epochs draw a fresh posterior sample without the VAE (set --synthetic_num_samples to a size "
                        "that fits)")
    g.add_argument("--latent_cache", default=None, metavar="FILE",
                   help="like --cache_latents, for every clip of the dataset up front, kept in FILE: a run that finds "
                        "FILE made from the same data and VAE loads it instead of encoding (runs side by side wait for "
                        "the first to write it), and no clip is rendered or read while training. 0.25 MiB a clip for "
                        "the demo model")
    g.add_argument("--synthetic_split", default="train", choices=("train", "heldout", "all"))
    g.add_argument("--train_batch_size", type=int, default=1, help="per device")
    g.add_argument("--dataloader_num_workers", type=int, default=0)


def add_optimisation_args(p: argparse.ArgumentParser) -> None:
    """Steps, time budget, AdamW, precision and seed options shared by the distillation examples."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--max_train_steps", type=int, default=1000)
    g.add_argument("--max_minutes", type=float, default=None,
                   help="wall-clock budget of the whole run; training stops early so that the final checkpoint, "
                        "validation, evaluation and save fit")
    g.add_argument("--time_reserve_s", type=float, default=None,
                   help="seconds kept for the work after training with --max_minutes (default: estimated from the "
                        "validation time and --eval_prompts)")
    g.add_argument("--learning_rate", type=float, default=5e-5)
    g.add_argument("--lr_scheduler", default="constant",
                   help="diffusers.optimization.get_scheduler name (constant, cosine, linear, ...)")
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=0.0)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                   help="default: accelerate's config")
    g.add_argument("--allow_tf32", action="store_true")
    g.add_argument("--seed", type=int, default=0)


def add_output_args(p: argparse.ArgumentParser, tracker: str):
    """Output, logging and checkpoint options shared by the distillation examples; returns the group."""
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--output_dir", required=True)
    g.add_argument("--logging_dir", default="logs", help="relative to --output_dir")
    g.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none")
    g.add_argument("--tracker_project_name", default=tracker)
    g.add_argument("--checkpointing_steps", type=int, default=500, help="0: no intermediate checkpoints")
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    g.add_argument("--save_dtype", choices=("teacher", "fp32", "fp16", "bf16"), default="teacher",
                   help="dtype of the saved transformer (default: as the teacher was loaded)")
    return g


def add_validation_args(p: argparse.ArgumentParser, validate_teacher: str, eval_prompts: str) -> None:
    """Validation-video and evaluation options shared by the distillation examples."""
    g = p.add_argument_group("validation and evaluation")
    g.add_argument("--validation_steps", type=int, default=250, help="0: only at the end")
    g.add_argument("--validation_prompts", nargs="*", default=None,
                   help="default: 2 held-out synthetic prompts (synthetic data) or the first dataset captions")
    g.add_argument("--validation_seed", type=int, default=0)
    g.add_argument("--validation_fps", type=int, default=None, help="default: evdit_demo.json's, else 8")
    g.add_argument("--validate_teacher", action="store_true", help=validate_teacher)
    g.add_argument("--no_final_validation", action="store_true")
    g.add_argument("--eval_prompts", type=int, default=0, help=eval_prompts)
    g.add_argument("--eval_batch_size", type=int, default=8)
    g.add_argument("--eval_workers", type=int, default=4, help="processes scoring the evaluation videos")



# ------------------------------------------------------------------------------------------------------ helpers


class EMATarget:
    """EMA of the trainable parameters: the target network ``f_target``, swapped in for its forward passes.

    Holding the EMA as shadow tensors (not a third model copy) works the same for full fine-tuning and for LoRA
    (where only the adapter weights move). ``state_dict`` / ``load_state_dict`` make it part of accelerate
    checkpoints (``accelerator.register_for_checkpointing``).
    """

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = float(decay)
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self):
        backup = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, s in zip(self.params, self.shadow):
                    p.copy_(s.to(p.dtype))
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def target(self, predict):
        """``predict`` run with the EMA weights swapped in: the target network ``f_target`` of the MLCD loss."""
        def predict_with_ema(*args, **kwargs):
            with self.swapped():
                return predict(*args, **kwargs)
        return predict_with_ema

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(
                f"The checkpoint's EMA holds {len(state['shadow'])} tensors but {len(self.shadow)} parameters train "
                "here; resume with the --use_lora / --lora_* settings the checkpoint was trained with."
            )
        self.decay = float(state["decay"])
        self.shadow = [s.to(p.device, torch.float32) for s, p in zip(state["shadow"], self.params)]


def setup_accelerator(args, output_dir: str, logger: logging.Logger, find_unused_parameters: bool = False):
    """The scripts' ``accelerate.Accelerator`` from their options (``add_optimisation_args`` / ``add_output_args``):
    trackers (``--report_to``; tensorboard is dropped with a note where it is not installed), mixed precision,
    gradient accumulation and the logging folder; then the log format (``logger`` quiet off the main process), the
    seed, TF32 where asked and the output folder. Returns ``(accelerator, weight_dtype)``, the dtype of the mixed
    precision (float32 without it)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

    report_to = None if args.report_to == "none" else args.report_to
    if report_to in ("tensorboard", "all"):
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            if report_to == "tensorboard":
                print(f"{logger.name}: tensorboard is not installed; logging to losses.jsonl only (--report_to none)",
                      file=sys.stderr)
                report_to = None
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=output_dir,
                                            logging_dir=os.path.join(output_dir, args.logging_dir)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logger.setLevel(logging.WARNING)
    set_seed(args.seed)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    return accelerator, weight_dtype


def freeze_components(pipe, spec: str, device, weight_dtype: torch.dtype) -> dict:
    """Freeze every pipeline module but the transformer on ``device`` (bfloat16 when training in bfloat16, else
    float32: T5 and the video VAEs overflow in float16). Returns each module's dtype to save in, as ``spec``'s files
    store it (diffusers loads them upcast to float32)."""
    save_dtypes = {name: stored_dtype(spec, name) or c.dtype for name, c in pipe.components.items()
                   if isinstance(c, torch.nn.Module)}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and name != "transformer":
            module.requires_grad_(False).eval()
            module.to(device, dtype=torch.bfloat16 if weight_dtype == torch.bfloat16 else torch.float32)
    return save_dtypes


def add_lora_adapter(student: torch.nn.Module, args, weight_dtype: torch.dtype) -> None:
    """A LoRA adapter on ``student`` from the ``add_lora_args`` options (peft, Gaussian init); its weights train in
    float32 under mixed precision."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    student.add_adapter(LoraConfig(
        r=args.lora_rank, lora_alpha=args.lora_alpha or args.lora_rank, init_lora_weights="gaussian",
        target_modules=[m.strip() for m in args.lora_target_modules.split(",") if m.strip()],
    ))
    if weight_dtype != torch.float32:
        cast_training_params(student, dtype=torch.float32)


def prepare_optimisation(args, accelerator, student: torch.nn.Module, use_ema: bool):
    """Gradient checkpointing (``--gradient_checkpointing``), the EMA target (``use_ema`` and ``--ema_decay`` > 0),
    AdamW over the trainable parameters and the learning-rate schedule (``add_optimisation_args``), all through
    ``accelerator.prepare`` (the EMA registered for checkpointing). Returns ``(student, optimizer, lr_scheduler,
    ema, unwrapped)``: the prepared student and the plain module inside it."""
    from diffusers.optimization import get_scheduler

    if args.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise SystemExit("No trainable parameters (check --lora_target_modules).")
    ema = EMATarget(params, args.ema_decay) if (use_ema and args.ema_decay > 0) else None
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    student, optimizer, lr_scheduler = accelerator.prepare(student, optimizer, lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    return student, optimizer, lr_scheduler, ema, accelerator.unwrap_model(student)


def start_logging(args, accelerator, output_dir: str, global_step: int) -> None:
    """Before the first step: drop the loss-log rows a killed run wrote past the checkpoint it resumes from, and
    start the trackers with the run's options (main process)."""
    if not accelerator.is_main_process:
        return
    if args.resume_from_checkpoint:
        trim_loss_log(os.path.join(output_dir, "losses.jsonl"), global_step)
    config = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in vars(args).items()}
    accelerator.init_trackers(args.tracker_project_name, config=config)


def load_student_weights(student: torch.nn.Module, folder: str) -> None:
    """Copy the transformer of pipeline ``folder`` (same architecture as the teacher's) into ``student``."""
    path = os.path.join(folder, "transformer")
    if not os.path.isdir(path):
        raise SystemExit(f"--init_student {folder}: no transformer/ folder (expected a saved pipeline)")
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        saved_class = json.load(f).get("_class_name")
    if saved_class != type(student).__name__:
        raise SystemExit(f"--init_student {folder}: its transformer ({saved_class}) does not match the teacher's "
                         f"({type(student).__name__}); pass a student distilled from this teacher")
    init = type(student).from_pretrained(path, torch_dtype=torch.float32)
    try:
        student.load_state_dict(init.state_dict())
    except RuntimeError as err:
        raise SystemExit(f"--init_student {folder}: its transformer does not match the teacher's ({err})") from None
    logger.info("Student initialised from %s", path)


def resolve_student_plan(spec: str, transformer, saved):
    """train_kd.py's student plan from ``--plan`` (``"saved"``: ``saved``, the --student folder's plan; ``uniform:K`` or
    a plan file); a missing saved plan or a dense one ends the script with the way out."""
    from ..demo import parse_plan

    if spec == "saved":
        if saved is None:
            raise SystemExit("--plan saved: the --student folder has no saved plan; pass --plan FILE or uniform:K")
        return copy.deepcopy(saved)
    plan = parse_plan(spec, transformer)
    if plan is None:
        raise SystemExit("--plan dense: a dense student needs no distillation; pass a sparse plan")
    return plan


def load_pipeline(spec: str, mask_plan: str | None = None, revision: str | None = None):
    """An ``EfficientVDiT<Base>`` pipeline from a pipeline folder or Hub id (``mask_plan="saved"`` installs the
    folder's saved plan, ``None`` loads it dense) or from ``tiny:<family>`` (a tiny random pipeline: tests, CPU dry
    runs). The few-step MLCD schedulers a distilled folder names load too."""
    from .. import schedulers  # noqa: F401  (MLCD schedulers load by name)
    from ..pipeline import EfficientVDiTPipeline

    if spec.startswith(TINY_PREFIX):
        from ..tiny import TINY_PIPELINES, tiny_pipeline

        family = spec[len(TINY_PREFIX):]
        if family not in TINY_PIPELINES:
            raise SystemExit(f"{spec}: unknown tiny family; use one of "
                             f"{', '.join(TINY_PREFIX + f for f in TINY_PIPELINES)}")
        return EfficientVDiTPipeline.from_pipe(tiny_pipeline(family))
    if os.path.isdir(spec) and not os.path.isfile(os.path.join(spec, "model_index.json")):
        raise SystemExit(f"{spec}: not a pipeline folder (no model_index.json)")
    kwargs = {"revision": revision} if revision else {}
    return EfficientVDiTPipeline.from_pretrained(spec, mask_plan=mask_plan, **kwargs)


def read_folder_json(spec: str | None, name: str) -> dict:
    """``spec/name`` (e.g. the generation settings ``evdit_demo.json``) as a dict; {} when absent, without a
    folder, or for ``tiny:<family>``."""
    if not spec or spec.startswith(TINY_PREFIX):
        return {}
    path = os.path.join(spec, name)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise SystemExit(f"{path} must hold a JSON object")
    return data


def generation_settings_of(spec: str | None) -> dict:
    """How a local pipeline folder is meant to be called (``generation_defaults.json`` over the legacy
    ``evdit_demo.json``, as :meth:`~diffusers_evdit.generation.GenerationDefaults.load` merges them), as a dict of the
    set values; {} for ``tiny:<family>``, a Hub id or a folder that records none.

    Example:
        >>> generation_settings_of("tiny:wan")
        {}
    """
    from ..generation import GenerationDefaults

    if not spec or spec.startswith(TINY_PREFIX) or not os.path.isdir(spec):
        return {}
    found = GenerationDefaults.load(spec)
    return found.to_dict() if found is not None else {}


def save_generation_settings(folder: str, extra: dict, **values) -> None:
    """Record how a trained folder is meant to be called: ``generation_defaults.json`` (what
    ``EfficientVDiTPipeline`` and the ``evdit`` commands read) and, with the run's ``extra`` provenance, the legacy
    ``evdit_demo.json``, both with the same ``values`` (``num_frames``, ``height``, ``width``, ``num_inference_steps``,
    ``guidance_scale``, ``max_sequence_length``, ``fps``)."""
    from ..demo import GenerationConfig
    from ..generation import GenerationDefaults

    GenerationConfig(**values, extra=extra).save(folder)
    GenerationDefaults(**values).save(folder)


def stored_dtype(spec: str, component: str) -> torch.dtype | None:
    """The dtype of a component's saved safetensors weights in a local pipeline folder (``None`` if unknown)."""
    folder = os.path.join(spec, component)
    if spec.startswith(TINY_PREFIX) or not os.path.isdir(folder):
        return None
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    with safe_open(os.path.join(folder, files[0]), framework="pt") as f:
        for key in f.keys():
            t = f.get_slice(key)
            dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(t.get_dtype())
            if dtype is not None:
                return dtype
    return None



def frame_strip(frames: np.ndarray, max_frames: int = 8) -> np.ndarray:
    """Up to ``max_frames`` evenly spaced frames side by side, uint8 ``(H, k W, 3)`` (for image trackers)."""
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    arr = frames[idx]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return np.concatenate(list(arr), axis=1)


@dataclass
class ValidationVideos:
    """The validation videos of a training run: generated from its pipeline with a given transformer, scheduler and
    guidance, saved as GIFs under ``out_dir`` and sent to the run's trackers (tensorboard: frame strips; wandb: the
    GIFs with their prompts).

    Args:
        pipe: the run's pipeline (its text encoder and VAE are reused; the transformer and scheduler are swapped in).
        accelerator: the run's ``accelerate.Accelerator`` (autocast and trackers).
        prompts: the validation prompts, one video each.
        out_dir: where the GIFs go (``<output_dir>/validation``).
        call_kwargs: the pipeline call's fixed arguments (frames, size, text length, ...).
        negative_prompt: the unconditional prompt where guidance is above 1.
        fps: frames per second of the GIFs.
        family: the model family; HunyuanVideo's ``guidance_scale`` is embedded guidance, so it gets no negative
            prompt.
    """

    pipe: Any
    accelerator: Any
    prompts: list[str]
    out_dir: str
    call_kwargs: dict
    negative_prompt: str = ""
    fps: int = 8
    family: str | None = None

    @classmethod
    def from_args(cls, args, pipe, accelerator, prompts, output_dir: str, family: str, max_sequence_length: int,
                  prompt_template=None) -> "ValidationVideos":
        """From the scripts' options (``add_data_args`` / ``add_validation_args`` groups)."""
        call_kwargs = dict(num_frames=args.num_frames, height=args.height, width=args.width,
                           max_sequence_length=max_sequence_length, output_type="np")
        if prompt_template is not None:
            call_kwargs["prompt_template"] = prompt_template
        return cls(pipe, accelerator, prompts, os.path.join(output_dir, "validation"), call_kwargs,
                   args.negative_prompt, args.validation_fps, family)

    def generate(self, transformer, scheduler, steps: int, guidance_scale: float, seed: int, mask_plan=None,
                 kernel: str = "auto") -> np.ndarray:
        """One video per prompt, float32 ``[V, F, H, W, 3]`` in [0, 1]; ``mask_plan`` is installed on
        ``transformer`` with ``kernel`` (``None``: dense)."""
        from ..generation import call_arguments
        from ..pipeline import EfficientVDiTPipeline

        vpipe = EfficientVDiTPipeline.from_pipe(self.pipe, transformer=transformer, scheduler=scheduler,
                                                mask_plan=mask_plan, kernel=kernel)
        vpipe.set_progress_bar_config(disable=True)
        # a guider pipeline (HunyuanVideo 1.5) takes its scale on pipe.guider; arguments it lacks (text length) drop
        kw = call_arguments(vpipe, dict(self.call_kwargs, num_inference_steps=steps, guidance_scale=guidance_scale))
        if self.family != "hunyuan_video" and guidance_scale > 1.0:
            kw["negative_prompt"] = [self.negative_prompt] * len(self.prompts)
        takes = inspect.signature(type(vpipe).__call__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values()):
            kw = {k: v for k, v in kw.items() if k in takes}
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad(), self.accelerator.autocast():
            frames = vpipe(prompt=list(self.prompts), generator=gen, **kw).frames
        return np.asarray(frames, dtype=np.float32)

    def log(self, tag: str, videos: np.ndarray, step: int) -> list[str]:
        """Save ``videos`` as ``<out_dir>/<tag>-step<step>-<i>.gif`` and send them to the trackers; the paths."""
        from ..data import save_video

        os.makedirs(self.out_dir, exist_ok=True)
        paths = []
        for i, frames in enumerate(videos):
            paths.append(os.path.join(self.out_dir, f"{tag}-step{step:06d}-{i}.gif"))
            save_video(frames, paths[-1], fps=self.fps)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images(f"validation/{tag}", np.stack([frame_strip(v) for v in videos]), step,
                                          dataformats="NHWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log({f"validation/{tag}": [wandb.Video(p, fps=self.fps, format="gif", caption=c)
                                                   for p, c in zip(paths, self.prompts)]}, step=step)
        return paths
