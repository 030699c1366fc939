"""Every refused input, one case per row of docs/errors.md: the exact message, the fix it names, and nothing changed.

Each case builds its own inputs (tiny models, files in a temporary folder shown as ``<tmp>``), triggers the error and
checks, through :func:`unchanged`, that the model, pipeline or folder it was given is exactly as before. ``fix`` is
the part of the message that tells the user what to do; ``None`` marks a message that does not name a fix yet (the
change needed is in ``TO_IMPROVE``). ``python docs/errors.py`` renders docs/errors.md from :data:`CASES`.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from diffusers_evdit import EfficientVDiTPipeline, MaskPlan, TileLayout, apply_mask_plan, supported_models
from diffusers_evdit.distill import checkpoints, training
from diffusers_evdit.distill.grid import DiffusionGrid, predicted_x0_and_noise
from diffusers_evdit.distill.kd import kd_loss, make_sparse_student
from diffusers_evdit.distill.mlcd import MLCDSchedule, mlcd_loss
from diffusers_evdit.distill.predictors import TransformerPredictor, encode_videos
from diffusers_evdit.kernels import tile_attention
from diffusers_evdit.schedulers import mlcd_scheduler_from
from diffusers_evdit.tiny import tiny_inputs, tiny_pipeline, tiny_transformer
from example_scripts import import_script
from input_state import unchanged

ROOT = Path(__file__).resolve().parents[1]


class UsageError(Exception):
    """An argparse refusal of a training script (exit status 2); the message is its ``error:`` line."""


@dataclass(frozen=True)
class Refusal:
    id: str
    area: str
    given: str  # the refused input, in words (markdown)
    run: Callable[[Path], None]  # builds the inputs in a temporary folder and triggers the error
    error: type
    message: str  # exact; ``<tmp>`` stands for the temporary folder
    fix: str | None  # the part of the message naming the fix


# ------------------------------------------------------------------------------------------------------ inputs


def _planned_wan():
    """A tiny Wan transformer that already runs a valid plan (an error must keep it)."""
    return apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1))


def _layout_inputs():
    layout = TileLayout(3, 4, 2, "first")
    q = torch.randn(1, 2, layout.seq_len, 8, generator=torch.Generator().manual_seed(0))
    return layout, q


def _cli(script: str, argv: list[str]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            import_script(script).parse_args(argv)
        except SystemExit as err:
            assert err.code == 2
            raise UsageError(stderr.getvalue().strip().splitlines()[-1].split("error: ", 1)[1]) from None


def _flow_schedule():
    return MLCDSchedule(DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(), 4), 2)


def _saved_pipeline(tmp: Path) -> Path:
    folder = tmp / "pipe"
    EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=MaskPlan.uniform(2, k=1)).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------------- cases


def _wrong_plan_length(tmp):
    t = _planned_wan()
    with unchanged(t):
        apply_mask_plan(t, MaskPlan.uniform(3, k=1))


def _plan_for_another_class(tmp):
    t = _planned_wan()
    with unchanged(t):
        apply_mask_plan(t, MaskPlan.uniform(2, k=1, model_class="CogVideoXTransformer3DModel"))


def _unsupported_class(tmp):
    model = torch.nn.Linear(2, 2)
    with unchanged(model):
        apply_mask_plan(model, MaskPlan.uniform(2, k=1))


def _pipeline_not_transformer(tmp):
    pipe = tiny_pipeline("wan")
    with unchanged(pipe):
        apply_mask_plan(pipe, MaskPlan.uniform(2, k=1))


def _plan_not_a_maskplan(tmp):
    t = _planned_wan()
    with unchanged(t):
        apply_mask_plan(t, [1, 1])


def _unknown_kernel(tmp):
    t = _planned_wan()
    with unchanged(t):
        apply_mask_plan(t, MaskPlan.uniform(2, k=1), kernel="fast")


def _k_zero(tmp):
    MaskPlan([1, 0])


def _k_not_int(tmp):
    MaskPlan([2.5])


def _no_layers(tmp):
    MaskPlan.uniform(0, k=1)


def _malformed_plan_json(tmp):
    MaskPlan.from_json("{layers: [1, 1]}")


def _newer_plan(tmp):
    MaskPlan.from_dict({"version": 99, "layers": [1, 1]})


def _plan_without_version(tmp):
    MaskPlan.from_dict({"layers": [1, 1]})


def _plan_layer_count_mismatch(tmp):
    MaskPlan.from_dict({"version": 1, "num_layers": 3, "layers": [1, 1]})


def _truncated_plan_file(tmp):
    path = tmp / "plan.json"
    path.write_text(MaskPlan.uniform(2, k=1).to_json()[:40])
    with unchanged(tmp):
        MaskPlan.load(path)


def _truncated_plan_in_pipeline(tmp):
    folder = _saved_pipeline(tmp)
    (folder / "mask_plan.json").write_text('{"version": 1, "layers": [1,')
    with unchanged(folder):
        EfficientVDiTPipeline.from_pretrained(folder)


def _missing_plan_in_pipeline(tmp):
    folder = _saved_pipeline(tmp)
    (folder / "mask_plan.json").unlink()
    with unchanged(folder):
        EfficientVDiTPipeline.from_pretrained(folder)


def _pipeline_plan_wrong_length(tmp):
    pipe = tiny_pipeline("wan")
    with unchanged(pipe):
        EfficientVDiTPipeline.from_pipe(pipe, mask_plan=MaskPlan.uniform(3, k=1))


def _pipeline_built_directly(tmp):
    EfficientVDiTPipeline()


def _empty_layout(tmp):
    TileLayout(0, 4)


def _text_without_position(tmp):
    TileLayout(3, 4, num_text_tokens=5, text_position="none")


def _unexplained_sequence_length(tmp):
    layout, q = _layout_inputs()
    q = q[:, :, :-1]
    with unchanged(q):
        tile_attention(q, q, q, layout, 1)


def _non_boolean_mask(tmp):
    layout, q = _layout_inputs()
    with unchanged(q):
        tile_attention(q, q, q, layout, 1, key_padding_mask=torch.ones(1, layout.seq_len))


def _dtype_mix(tmp):
    layout, q = _layout_inputs()
    with unchanged(q):
        tile_attention(q, q.double(), q, layout, 1, kernel="gathered")


def _device_mix(tmp):
    layout, q = _layout_inputs()
    with unchanged(q):
        tile_attention(q, q.to("meta"), q, layout, 1, kernel="gathered")


def _latent_not_in_patches(tmp):
    t = _planned_wan()
    inputs = tiny_inputs(t)
    inputs["hidden_states"] = inputs["hidden_states"][..., :-1]
    with unchanged(t):
        t(**inputs)


def _attention_called_alone(tmp):
    t = _planned_wan()
    with unchanged(t):
        t.blocks[0].attn1(torch.randn(1, 10, 24))


def _grid_steps(tmp):
    DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(), 0)


def _grid_scheduler(tmp):
    DiffusionGrid.from_scheduler(FlowMatchHeunDiscreteScheduler(), 4)


def _too_many_segments(tmp):
    MLCDSchedule(DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(), 4), 8)


def _rising_sigmas(tmp):
    mlcd_scheduler_from(FlowMatchEulerDiscreteScheduler(), [500.0, 900.0], sigmas=[0.5, 0.9]).set_timesteps(2)


def _stochastic_ddim(tmp):
    sched = mlcd_scheduler_from(CogVideoXDDIMScheduler(timestep_spacing="trailing"), [999, 499])
    sched.set_timesteps(2)
    sample = torch.zeros(1, 2)
    with unchanged(sample):
        sched.step(sample, 999, sample, eta=0.5)


def _prediction_type(tmp):
    predicted_x0_and_noise(torch.zeros(1), torch.zeros(1), 0.5, 0.5, "velocity")


def _loss_type(tmp):
    model = lambda z, t, c: z  # noqa: E731
    mlcd_loss(model, model, model, torch.zeros(1, 4, 2, 4, 4), None, _flow_schedule(), loss_type="l1")


def _walk_student(tmp):
    teacher = tiny_transformer("wan")
    with unchanged(teacher):
        make_sparse_student(teacher, MaskPlan.uniform(2, k=1), kernel="walk")


def _walk_kernel_training(tmp):
    teacher = tiny_transformer("wan")
    student = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1), kernel="walk")
    with unchanged(student, teacher):
        kd_loss(student, teacher, tiny_inputs(teacher))


def _distill_family(tmp):
    transformer = tiny_transformer("mochi")
    with unchanged(transformer):
        TransformerPredictor(transformer)


def _video_frames(tmp):
    pipe = tiny_pipeline("wan")
    videos = torch.zeros(1, 3, 8, 32, 32)
    with unchanged(pipe, videos):
        encode_videos(pipe, videos)


def _incomplete_checkpoint(tmp):
    folder = tmp / "checkpoint-3"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"half")
    with unchanged(tmp):
        checkpoints.find_checkpoint(str(tmp), str(folder))


def _corrupt_checkpoint_marker(tmp):
    folder = tmp / "checkpoint-3"
    folder.mkdir()
    (folder / checkpoints.MARKER).write_text('{"step": ')
    with unchanged(tmp):
        checkpoints.find_checkpoint(str(tmp), str(folder))


def _checkpoint_not_a_folder(tmp):
    checkpoints.find_checkpoint(str(tmp), str(tmp / "checkpoint-9"))


def _ema_mismatch(tmp):
    ema = training.EMATarget([torch.nn.Parameter(torch.zeros(2))], 0.9)
    ema.load_state_dict({"decay": 0.9, "shadow": [torch.zeros(2), torch.zeros(2)]})


def _init_student_missing(tmp):
    student = tiny_transformer("wan")
    with unchanged(student, tmp):
        training.load_student_weights(student, str(tmp))


def _init_student_other_class(tmp):
    (tmp / "transformer").mkdir()
    (tmp / "transformer" / "config.json").write_text('{"_class_name": "CogVideoXTransformer3DModel"}')
    student = tiny_transformer("wan")
    with unchanged(student, tmp):
        training.load_student_weights(student, str(tmp))


def _cli_frames(tmp):
    _cli("train_mlcd", ["--teacher", "tiny:wan", "--output_dir", str(tmp), "--num_frames", "8"])


def _cli_progressive(tmp):
    _cli("train_mlcd", ["--teacher", "tiny:wan", "--output_dir", str(tmp), "--progressive_segments", "4,8"])


def _cli_ema(tmp):
    _cli("train_mlcd", ["--teacher", "tiny:wan", "--output_dir", str(tmp), "--ema_decay", "1"])


def _cli_kd_kernel(tmp):
    _cli("train_kd", ["--teacher", "tiny:wan", "--plan", "uniform:1", "--output_dir", str(tmp), "--kernel", "walk"])


def _cli_kd_weights(tmp):
    _cli("train_kd", ["--teacher", "tiny:wan", "--plan", "uniform:1", "--output_dir", str(tmp), "--kd_weight", "-1"])


CASES = [
    Refusal("plan-length", "mask plans", "`apply_mask_plan` with a plan of 3 layers on a 2-layer transformer",
            _wrong_plan_length, ValueError,
            "The mask plan has 3 layers but WanTransformer3DModel has 2 self-attention layers; make a plan with one "
            "entry per layer (MaskPlan.uniform(2, k)).", "make a plan with one entry per layer"),
    Refusal("plan-model-class", "mask plans", "a plan saved for `CogVideoXTransformer3DModel` applied to Wan",
            _plan_for_another_class, ValueError,
            "The mask plan was made for CogVideoXTransformer3DModel, not WanTransformer3DModel; set "
            "plan.model_class = None to apply it anyway.", "set plan.model_class = None"),
    Refusal("unsupported-class", "mask plans", "`apply_mask_plan` on a model that is not a supported transformer",
            _unsupported_class, TypeError,
            f"Linear is not supported by diffusers-evdit. Supported transformers: {', '.join(supported_models())}. "
            "Pass the pipeline's transformer (pipe.transformer), not the pipeline.", "Pass the pipeline's transformer"),
    Refusal("pipeline-not-transformer", "mask plans", "`apply_mask_plan(pipe, plan)` (the pipeline, not its "
            "transformer)", _pipeline_not_transformer, TypeError,
            f"WanPipeline is not supported by diffusers-evdit. Supported transformers: {', '.join(supported_models())}. "
            "Pass the pipeline's transformer (pipe.transformer), not the pipeline.", "Pass the pipeline's transformer"),
    Refusal("plan-type", "mask plans", "a list `[1, 1]` instead of a `MaskPlan`", _plan_not_a_maskplan, TypeError,
            "plan must be a MaskPlan, got list; load files with MaskPlan.load(path).", "MaskPlan.load(path)"),
    Refusal("kernel-name", "mask plans", "`kernel=\"fast\"`", _unknown_kernel, ValueError,
            "Unknown tile-attention kernel 'fast'; choose one of auto, fastest, dense, gathered, split, flex, walk, "
            "masked, keysets, fa4.",
            "choose one of"),
    Refusal("k-zero", "mask plans", "`k = 0` in a plan entry", _k_zero, ValueError,
            "MaskPlan layer 1: A mask needs k >= 1 reference frames (frame 0 is always one), got k=0. Use None for "
            "a dense layer.", "Use None for a dense layer"),
    Refusal("k-type", "mask plans", "`k = 2.5` in a plan entry", _k_not_int, ValueError,
            "MaskPlan layer 0: A mask entry must be None (dense) or an int number of reference frames, got 2.5.",
            "must be None (dense) or an int"),
    Refusal("plan-empty", "mask plans", "`MaskPlan.uniform(0, k=1)`", _no_layers, ValueError,
            "A plan needs at least one layer, got num_layers=0.", "needs at least one layer"),
    Refusal("plan-json", "plan files", "plan text that is not JSON", _malformed_plan_json, ValueError,
            "Mask plan is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
            "(char 1); pass the text MaskPlan.to_json() / MaskPlan.save() wrote",
            "pass the text MaskPlan.to_json() / MaskPlan.save() wrote"),
    Refusal("plan-newer", "plan files", "a plan file of a newer format version", _newer_plan, ValueError,
            "This mask plan has version 99, newer than the 1 this diffusers-evdit reads; upgrade diffusers-evdit "
            "(pip install -U diffusers-evdit).", "upgrade diffusers-evdit"),
    Refusal("plan-version", "plan files", "a JSON object without `version`", _plan_without_version, ValueError,
            "Not a mask plan: the 'version' field is missing or not an integer; load a file written by "
            "MaskPlan.save().", "load a file written by MaskPlan.save()"),
    Refusal("plan-corrupt", "plan files", "`num_layers` that disagrees with `layers`", _plan_layer_count_mismatch,
            ValueError, "Corrupt mask plan: num_layers=3 but 2 layer entries; re-save the plan with MaskPlan.save().",
            "re-save the plan with MaskPlan.save()"),
    Refusal("plan-truncated", "plan files", "a plan file cut short (`MaskPlan.load`)", _truncated_plan_file,
            ValueError, "<tmp>/plan.json: Mask plan is not valid JSON: Unterminated string starting at: line 2 "
            "column 13 (char 14); re-save the plan with MaskPlan.save()", "re-save the plan with MaskPlan.save()"),
    Refusal("pipeline-plan-truncated", "pipelines", "a saved pipeline whose `mask_plan.json` is cut short",
            _truncated_plan_in_pipeline, ValueError,
            "Corrupt mask plan for transformer: <tmp>/pipe/mask_plan.json: Mask plan is not valid JSON: Expecting "
            "value: line 1 column 29 (char 28); re-save the plan with MaskPlan.save(). Fix or remove the file, or "
            "load with mask_plan=None to run dense.",
            "load with mask_plan=None"),
    Refusal("pipeline-plan-missing", "pipelines", "a saved pipeline whose `mask_plan.json` was deleted",
            _missing_plan_in_pipeline, ValueError,
            "<tmp>/pipe: model_index.json lists mask_plan.json for transformer, but the file is missing; restore "
            "it, or load with mask_plan=None (and mask_plan_2=None) to run dense.", "restore it"),
    Refusal("pipeline-plan-length", "pipelines", "`from_pipe(pipe, mask_plan=<3 layers>)` on a 2-layer model",
            _pipeline_plan_wrong_length, ValueError,
            "The mask plan for transformer has 3 layers but transformer (WanTransformer3DModel) has 2 "
            "self-attention layers; make a plan with one entry per layer (MaskPlan.uniform(2, k)) or pass None to "
            "keep transformer dense.", "make a plan with one entry per layer"),
    Refusal("pipeline-direct", "pipelines", "`EfficientVDiTPipeline()` built from components", _pipeline_built_directly,
            TypeError,
            "EfficientVDiTPipeline is not built from components directly; use EfficientVDiTPipeline.from_pipe(pipe, "
            "mask_plan=plan), EfficientVDiTPipeline.from_pretrained(path), or "
            "EfficientVDiTPipeline.subclass_for(CogVideoXPipeline)(**components).", "use EfficientVDiTPipeline"),
    Refusal("layout-empty", "layouts", "`TileLayout(0, 4)`", _empty_layout, ValueError,
            "TileLayout needs at least one frame and one token per frame, got num_frames=0, tokens_per_frame=4.",
            "needs at least one frame"),
    Refusal("layout-text", "layouts", "text tokens with `text_position=\"none\"`", _text_without_position,
            ValueError, "text_position='none' does not fit num_text_tokens=5: use 'none' exactly when no text "
            "tokens take part in self-attention.", "use 'none' exactly when"),
    Refusal("sequence-length", "kernels", "q, k, v of 13 tokens for a layout of 14", _unexplained_sequence_length,
            ValueError,
            "self-attention received 13 tokens, but the tile layout explains 14 (3 frames x 4 tokens + 2 text "
            "tokens first). The input does not have the frame-major layout the mask plan assumes; call the "
            "transformer with the latents the plan was applied for (the layout comes from its forward).",
            "call the transformer with the latents the plan was applied for"),
    Refusal("mask-dtype", "kernels", "a float key-padding mask", _non_boolean_mask, ValueError,
            "key_padding_mask must be a bool tensor [batch, tokens] = (1, 14), got torch.float32 (1, 14).",
            "must be a bool tensor"),
    Refusal("dtype-mix", "kernels", "q in float32, k in float64", _dtype_mix, ValueError,
            "q, k, v must share one dtype and device, got torch.float32 on cpu, torch.float64 on cpu, torch.float32 "
            "on cpu; cast them to q's (k.to(q)).", "cast them to q's (k.to(q))"),
    Refusal("device-mix", "kernels", "q on the CPU, k on another device", _device_mix, ValueError,
            "q, k, v must share one dtype and device, got torch.float32 on cpu, torch.float32 on meta, torch.float32 "
            "on cpu; cast them to q's (k.to(q)).", "cast them to q's (k.to(q))"),
    Refusal("latent-patches", "transformer calls", "a latent whose width does not divide into patches",
            _latent_not_in_patches, ValueError,
            "Latent of 6 frames x 8 x 7 does not divide into patches of 1 x 2 x 2; use a height / width / frame "
            "count divisible by the patch size.", "use a height / width / frame count divisible by the patch size"),
    Refusal("attention-alone", "transformer calls", "an attention module called on its own after `apply_mask_plan`",
            _attention_called_alone, RuntimeError,
            "wan layer 0: no tile layout is known. Tile-sparse processors get the layout from the transformer's "
            "forward; call the transformer (not an attention module alone), after apply_mask_plan().",
            "call the transformer"),
    Refusal("grid-steps", "distillation", "`DiffusionGrid.from_scheduler(sched, 0)`", _grid_steps, ValueError,
            "num_steps must be a positive int, got 0.", "must be a positive int"),
    Refusal("grid-scheduler", "distillation", "a teacher scheduler MLCD cannot follow (`FlowMatchHeun`)",
            _grid_scheduler, TypeError,
            "FlowMatchHeunDiscreteScheduler is not supported: MLCD needs a flow-matching scheduler "
            "(FlowMatchEulerDiscreteScheduler) or a DDPM-style one with alphas_cumprod and prediction_type epsilon "
            "/ v_prediction / sample (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler).",
            "MLCD needs a flow-matching scheduler"),
    Refusal("segments", "distillation", "8 segments on a 4-step teacher grid", _too_many_segments, ValueError,
            "num_segments=8 is larger than the teacher's 4 steps; use at most 4 segments or more teacher steps.",
            "use at most 4 segments"),
    Refusal("prediction-type", "distillation", "`prediction_type=\"velocity\"`", _prediction_type, ValueError,
            "prediction_type must be one of ('epsilon', 'v_prediction', 'sample', 'flow'), got 'velocity'.",
            "must be one of"),
    Refusal("loss-type", "distillation", "`mlcd_loss(..., loss_type=\"l1\")`", _loss_type, ValueError,
            "loss_type must be 'l2' or 'huber', got 'l1'.", "must be 'l2' or 'huber'"),
    Refusal("walk-student", "distillation", "`make_sparse_student(..., kernel=\"walk\")` (inference only)",
            _walk_student, ValueError,
            "kernel must be one of ('auto', 'split', 'gathered', 'flex', 'fa4') for training (exact gradients), got "
            "'walk'.", "must be one of"),
    Refusal("walk-training", "distillation", "`kd_loss` with gradients on a student running the walk kernel",
            _walk_kernel_training, ValueError,
            "The student's tile kernel is 'walk', whose backward pass is not exact. Train with "
            "apply_mask_plan(student, plan) (kernel='auto' picks an exact one) or kernel='gathered' (or 'flex' on "
            "CUDA); the saved plan runs with the fast kernel at inference.", "Train with"),
    Refusal("distill-family", "distillation", "a Mochi transformer for MLCD / KD (`TransformerPredictor`)",
            _distill_family, NotImplementedError,
            "Distillation (MLCD, KD) supports CogVideoX, Wan, HunyuanVideo, SkyReels-V2, LTX-Video and HunyuanVideo "
            "1.5 transformers, not MochiTransformer3DModel; mask plans (apply_mask_plan, EfficientVDiTPipeline) "
            "still work on it, undistilled.", "mask plans (apply_mask_plan, EfficientVDiTPipeline) still work"),
    Refusal("video-frames", "distillation", "8-frame videos for a video VAE", _video_frames, ValueError,
            "The video VAEs need 4k + 1 frames, got 8; use e.g. 5.", "use e.g. 5"),
    Refusal("scheduler-sigmas", "schedulers", "milestone sigmas that rise (refused by `set_timesteps`)",
            _rising_sigmas, ValueError,
            "mlcd_sigmas must be strictly decreasing in (0, 1], got [0.5, 0.9].", "must be strictly decreasing"),
    Refusal("scheduler-eta", "schedulers", "`MLCDDDIMScheduler.step(..., eta=0.5)`", _stochastic_ddim, ValueError,
            "MLCD sampling is deterministic: call step() with eta=0 (the default), got eta=0.5.",
            "call step() with eta=0"),
    Refusal("checkpoint-incomplete", "checkpoints", "`--resume_from_checkpoint` of a folder whose write was "
            "interrupted", _incomplete_checkpoint, SystemExit,
            "--resume_from_checkpoint <tmp>/checkpoint-3: not a complete checkpoint (no valid evdit_checkpoint.json; "
            "its write was interrupted); pass 'latest' to resume from the newest complete checkpoint",
            "pass 'latest'"),
    Refusal("checkpoint-corrupt", "checkpoints", "a checkpoint whose marker file is cut short",
            _corrupt_checkpoint_marker, SystemExit,
            "--resume_from_checkpoint <tmp>/checkpoint-3: not a complete checkpoint (no valid evdit_checkpoint.json; "
            "its write was interrupted); pass 'latest' to resume from the newest complete checkpoint",
            "pass 'latest'"),
    Refusal("checkpoint-missing", "checkpoints", "`--resume_from_checkpoint` of a folder that does not exist",
            _checkpoint_not_a_folder, SystemExit,
            "--resume_from_checkpoint <tmp>/checkpoint-9: not a folder; pass a checkpoint-<step> folder of "
            "--output_dir or 'latest'", "pass a checkpoint-<step> folder"),
    Refusal("ema-mismatch", "checkpoints", "a checkpoint's EMA of other trainable parameters (LoRA vs full)",
            _ema_mismatch, ValueError,
            "The checkpoint's EMA holds 2 tensors but 1 parameters train here; resume with the --use_lora / --lora_* "
            "settings the checkpoint was trained with.", "resume with the --use_lora / --lora_* settings"),
    Refusal("init-student-missing", "training scripts", "`--init_student` folder without `transformer/`",
            _init_student_missing, SystemExit,
            "--init_student <tmp>: no transformer/ folder (expected a saved pipeline)", "expected a saved pipeline"),
    Refusal("init-student-class", "training scripts", "`--init_student` of another transformer class",
            _init_student_other_class, SystemExit,
            "--init_student <tmp>: its transformer (CogVideoXTransformer3DModel) does not match the teacher's "
            "(WanTransformer3DModel); pass a student distilled from this teacher", "pass a student distilled"),
    Refusal("cli-frames", "training scripts", "`train_mlcd.py --num_frames 8`", _cli_frames, UsageError,
            "--num_frames must be 4k+1 for the video VAEs, got 8", "must be 4k+1"),
    Refusal("cli-progressive", "training scripts", "`train_mlcd.py --progressive_segments 4,8`", _cli_progressive,
            UsageError, "--progressive_segments must be a non-increasing list such as 16,8,4",
            "a non-increasing list such as 16,8,4"),
    Refusal("cli-ema", "training scripts", "`train_mlcd.py --ema_decay 1`", _cli_ema, UsageError,
            "--ema_decay must be in [0, 1)", "must be in [0, 1)"),
    Refusal("cli-kd-kernel", "training scripts", "`train_kd.py --kernel walk`", _cli_kd_kernel, UsageError,
            "argument --kernel: invalid choice: 'walk' (choose from 'auto', 'split', 'gathered', 'flex', 'fa4')",
            "choose from"),
    Refusal("cli-kd-weights", "training scripts", "`train_kd.py --kd_weight -1`", _cli_kd_weights, UsageError,
            "--kd_weight and --task_weight must be >= 0", "must be >= 0"),
]

#: Messages that do not name a fix yet, in files owned elsewhere (or by the standard library / PyTorch): the change.
TO_IMPROVE: dict[str, str] = {}


# ------------------------------------------------------------------------------------------------------- tests


def trigger(case: Refusal, tmp: Path) -> BaseException:
    """Run a case in ``tmp``; return the exception it raised (``AssertionError`` when it raised none)."""
    with pytest.raises(case.error) as info:
        case.run(tmp)
    return info.value


def shown(exc: BaseException, tmp: Path) -> str:
    text = str(exc.code) if isinstance(exc, SystemExit) else str(exc)
    return text.replace(str(tmp), "<tmp>")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_input_has_its_exact_message_and_changes_nothing(case, tmp_path):
    exc = trigger(case, tmp_path)
    assert type(exc) is case.error
    assert shown(exc, tmp_path) == case.message
    if case.fix is not None:
        assert case.fix in case.message
    else:
        assert case.id in TO_IMPROVE, f"{case.id}: name the fix in the message or list the change in TO_IMPROVE"


def test_case_list_is_complete_and_unique():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    assert set(TO_IMPROVE) <= {c.id for c in CASES if c.fix is None}


def test_docs_errors_md_is_up_to_date():
    import importlib.util

    spec = importlib.util.spec_from_file_location("evdit_errors_doc", ROOT / "docs" / "errors.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (ROOT / "docs" / "errors.md").read_text(encoding="utf-8") == generator.render(CASES, TO_IMPROVE), (
        "docs/errors.md is stale: run python docs/errors.py")
