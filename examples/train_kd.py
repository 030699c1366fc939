#!/usr/bin/env python
"""Knowledge distillation of a tile-sparse student from its dense teacher: Efficient-vDiT Stage 3.

The student is a copy of the teacher with a mask plan (from ``evdit search``, or ``uniform:K``); the loss
(:mod:`diffusers_evdit.kd`) is the mean over layers of MSE(attention output) + MSE(MLP output) between student and
teacher, captured with forward hooks, plus ``--task_weight`` (lambda, paper: 100) times a task loss:

* ``diffusion``: the denoising loss on the data (flow velocity / epsilon / v target at a noise level of the
  teacher's sampling grid): for a base (many-step) teacher;
* ``mlcd``: the MLCD loss (:func:`diffusers_evdit.mlcd.mlcd_loss`) with the ODE solver of ``--mlcd_teacher``
  (default: the ``teacher`` recorded in the teacher folder's ``mlcd_config.json``): for an MLCD (few-step) teacher,
  so the student stays a few-step model; the saved pipeline samples in ``S`` steps;
* ``output``: MSE of the final outputs (no data target); ``none``: features only.

Default (``auto``): ``mlcd`` when the teacher folder has an ``mlcd_config.json`` (written by
``examples/train_mlcd.py``), else ``diffusion``. With ``--kd_weight 0 --task_loss mlcd --student DIR`` the script
runs plain MLCD training of a sparse model (the "KD then MLCD" order of the paper's ablation).

The sparse layers train with the ``auto`` kernel (``--kernel``), which picks a kernel with an exact backward pass
under autograd. The result is an :class:`~diffusers_evdit.EfficientVDiTPipeline` folder with the plan
(``mask_plan.json``), the scheduler and ``generation_defaults.json`` (generation settings), loadable with
``EfficientVDiTPipeline.from_pretrained(DIR)`` and ``evdit eval --model DIR``.

Same conventions as ``examples/train_mlcd.py``: ``accelerate`` (mixed precision, gradient accumulation, DDP),
checkpoints (``--checkpointing_steps``, ``--checkpoints_total_limit``, ``--resume_from_checkpoint latest``), LoRA
(peft) or full fine-tuning, ``--max_minutes``, validation GIFs, ``losses.jsonl``.

Examples::

    # MLCD model -> sparse student with a searched plan, one GPU, ~1 minute
    evdit search --model runs/mlcd-s8 --device cuda --threshold 0.005 --out plan.json
    python examples/train_kd.py --teacher runs/mlcd-s8 --plan plan.json --output_dir runs/kd-r0.005 \\
        --train_batch_size 8 --learning_rate 1e-4 --max_train_steps 100000 --max_minutes 1 --allow_tf32

    # base model, uniform 2:6 plan, LoRA, bf16, two GPUs, resumable
    accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16 examples/train_kd.py \\
        --teacher PATH --plan uniform:2 --use_lora --lora_rank 64 --output_dir runs/kd --resume_from_checkpoint latest

    # CPU smoke test on a tiny random pipeline
    OMP_NUM_THREADS=1 python examples/train_kd.py --teacher tiny:wan --plan uniform:1 --output_dir /tmp/kd \\
        --num_frames 9 --height 32 --width 32 --max_train_steps 2 --max_sequence_length 8
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time

import torch

from diffusers_evdit.distill.checkpoints import save_checkpoint
from diffusers_evdit.distill.common import call_default
from diffusers_evdit.distill.kd import TRAINABLE_KERNELS
from diffusers_evdit.distill.training import (
    TINY_HUNYUAN_TEMPLATE,
    TINY_PREFIX,
    StepLog,
    ValidationVideos,
    add_data_args,
    add_lora_adapter,
    add_lora_args,
    add_optimisation_args,
    add_output_args,
    add_validation_args,
    freeze_components,
    generation_settings_of,
    load_pipeline,
    prepare_optimisation,
    read_folder_json,
    resolve_student_plan,
    save_generation_settings,
    script_parser,
    setup_accelerator,
    start_logging,
)
from diffusers_evdit.distill.training_data import build_data, caption_conditions, make_latent_cache

logger = logging.getLogger("train_kd")

TASK_LOSSES = ("auto", "diffusion", "mlcd", "output", "none")
MLCD_CONFIG = "mlcd_config.json"


# --------------------------------------------------------------------------------------------------------- args


def parse_args(argv=None) -> argparse.Namespace:
    p = script_parser(__doc__)
    g = p.add_argument_group("teacher, student and loss")
    g.add_argument("--teacher", default=None,
                   help="dense teacher pipeline: a folder of a pipeline distillation drives (README, Limitations; "
                        "its saved plan is ignored), or tiny:FAMILY, a tiny random pipeline for tests (cogvideox, "
                        "wan, hunyuan_video, skyreels_v2, ltx_video, hunyuan_video15)")
    g.add_argument("--student", default=None,
                   help="pipeline folder to start the student from (default: a copy of --teacher); its saved plan is "
                        "used unless --plan is given")
    g.add_argument("--plan", default=None,
                   help="the student's plan: a plan JSON (evdit search), uniform:K, or 'saved' (the --student folder's "
                        "plan; the default with --student)")
    g.add_argument("--kernel", choices=TRAINABLE_KERNELS, default="auto",
                   help="tile kernel of the sparse layers during training, one with exact gradients (auto: picks "
                        "one under autograd, fa4 on Hopper GPUs where FlashAttention-4 is installed; flex needs CUDA, "
                        "fa4 FlashAttention-4)")
    g.add_argument("--kd_weight", type=float, default=1.0,
                   help="weight of the feature loss mean_l MSE(attn) + MSE(mlp) (0: task loss only)")
    g.add_argument("--task_loss", choices=TASK_LOSSES, default="auto",
                   help="auto: mlcd if the teacher folder has mlcd_config.json, else diffusion")
    g.add_argument("--task_weight", type=float, default=100.0, help="lambda, the task loss weight (paper: 100)")
    g.add_argument("--grid_steps", type=int, default=None,
                   help="diffusion / output / none: noise levels drawn from the teacher's sampling grid with this many "
                        "steps (default: the teacher's default steps)")
    g.add_argument("--uncond_prob", type=float, default=None,
                   help="fraction of captions replaced by --negative_prompt, so the student also learns the "
                        "unconditional branch of classifier-free guidance (default 0.1; 0 with the mlcd task)")
    g.add_argument("--max_sequence_length", type=int, default=None,
                   help="text tokens (default: the folder's generation_defaults.json, else the pipeline's default)")
    g.add_argument("--negative_prompt", default="", help="unconditional prompt (CFG; caption dropout)")

    g = p.add_argument_group("MLCD task loss (--task_loss mlcd)")
    g.add_argument("--mlcd_teacher", default=None,
                   help="the model whose ODE steps MLCD follows (default: 'teacher' of the mlcd_config.json in the "
                        "--teacher / --student folder)")
    g.add_argument("--mlcd_teacher_plan", choices=("dense", "saved"), default="dense",
                   help="run --mlcd_teacher dense (default) or with its saved plan (a sparse model distilled to few "
                        "steps: the KD-then-MLCD order)")
    g.add_argument("--teacher_steps", type=int, default=None, help="N (default: mlcd_config.json, else the "
                   "MLCD teacher's default steps)")
    g.add_argument("--num_segments", type=int, default=None, help="S (default: mlcd_config.json)")
    g.add_argument("--solver_steps", type=int, default=None, help="default: mlcd_config.json, else 1")
    g.add_argument("--guidance_scale", type=float, default=None,
                   help="CFG of the MLCD teacher (default: mlcd_config.json, else its saved default)")
    g.add_argument("--embedded_guidance_scale", type=float, default=None, help="HunyuanVideo (default 6.0)")
    g.add_argument("--ema_decay", type=float, default=0.95, help="EMA target network of the MLCD loss (0: the "
                   "student under no_grad)")
    g.add_argument("--loss_type", choices=("l2", "huber"), default="l2")
    g.add_argument("--huber_c", type=float, default=1e-3)

    add_lora_args(p, use_lora="train a LoRA adapter on the student instead of all weights")
    add_data_args(p)
    add_optimisation_args(p)
    add_output_args(p, tracker="kd")
    add_validation_args(p, validate_teacher="also write the dense teacher's videos (once)",
                        eval_prompts="N > 0: evdit eval metrics of the student and the dense teacher on N held-out "
                                     "synthetic prompts -> eval.json (CogVideoX / Wan)")
    args = p.parse_args(argv)

    if args.teacher is None and args.student is None:
        p.error("give --teacher (and optionally --student)")
    if args.teacher is None and args.kd_weight != 0:
        p.error("the feature loss needs a dense --teacher; pass --teacher or --kd_weight 0")
    if args.plan is None:
        if args.student is None:
            p.error("--plan is required (a plan JSON, uniform:K) unless --student has a saved plan")
        args.plan = "saved"
    if args.kd_weight < 0 or args.task_weight < 0:
        p.error("--kd_weight and --task_weight must be >= 0")
    if args.num_frames is not None and (args.num_frames - 1) % 4:
        p.error(f"--num_frames must be 4k+1 for the video VAEs, got {args.num_frames}")
    if args.uncond_prob is not None and not 0.0 <= args.uncond_prob < 1.0:
        p.error("--uncond_prob must be in [0, 1)")
    if not 0.0 <= args.ema_decay < 1.0:
        p.error("--ema_decay must be in [0, 1)")
    if args.max_train_steps < 1:
        p.error("--max_train_steps must be >= 1")
    return args


# ------------------------------------------------------------------------------------------------------ helpers


# --------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    from diffusers_evdit import kd, mlcd
    from diffusers_evdit.plan import apply_mask_plan, get_mask_plan
    from diffusers_evdit.schedulers import stock_scheduler

    t_start = time.time()
    output_dir = os.path.abspath(args.output_dir)
    task = args.task_loss
    if task == "auto":
        has_mlcd = read_folder_json(args.teacher, MLCD_CONFIG) or read_folder_json(args.student, MLCD_CONFIG)
        task = "mlcd" if has_mlcd else "diffusion"
    use_features = args.kd_weight > 0
    if not use_features and task in ("output", "none"):
        raise SystemExit(f"--kd_weight 0 with --task_loss {task} trains on nothing; use diffusion or mlcd")
    # the feature loss alone leaves the output head unused
    accelerator, weight_dtype = setup_accelerator(args, output_dir, logger, find_unused_parameters=task == "none")
    device = accelerator.device

    # ---- pipelines: the dense teacher, the student's starting point
    teacher_pipe = load_pipeline(args.teacher, mask_plan=None) if args.teacher else None
    if args.student:
        pipe = load_pipeline(args.student, mask_plan="saved")
        saved_plan = pipe.mask_plan
        init_spec = args.student
    else:
        pipe, saved_plan, init_spec = teacher_pipe, None, args.teacher
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "transformer_2", None) is not None:
        raise SystemExit("Pipelines with two transformers (Wan 2.2 A14B) are not supported; distil one transformer.")
    family = mlcd.check_predictor_family(pipe.transformer)  # refuses families distillation cannot drive
    is_tiny = init_spec.startswith(TINY_PREFIX)
    if args.eval_prompts and family in ("hunyuan_video", "hunyuan_video15"):
        raise SystemExit("--eval_prompts (the evdit eval metrics) supports CogVideoX and Wan pipelines only.")
    plan = resolve_student_plan(args.plan, pipe.transformer, saved_plan)
    if teacher_pipe is not None and type(teacher_pipe.transformer) is not type(pipe.transformer):
        raise SystemExit("--teacher and --student hold different transformer classes")

    # generation settings of the student: flags, else its folder's saved defaults, else the pipeline's
    saved = generation_settings_of(init_spec)
    args.num_frames = args.num_frames or saved.get("num_frames", 29)
    args.height = args.height or saved.get("height", 128)
    args.width = args.width or saved.get("width", 128)
    args.validation_fps = args.validation_fps or saved.get("fps", 8)
    if problem := mlcd.clip_size_error(pipe, args.num_frames, args.height, args.width):  # frames, patches
        raise SystemExit(f"--num_frames / --height / --width: {problem}")
    gen_steps = saved.get("num_inference_steps") or call_default(pipe, "num_inference_steps", 50)
    gen_guidance = saved.get("guidance_scale")
    if gen_guidance is None:
        gen_guidance = mlcd.pipeline_guidance_scale(pipe)
    max_seq = args.max_sequence_length or saved.get("max_sequence_length") or call_default(
        pipe, "max_sequence_length", 226)
    prompt_template = TINY_HUNYUAN_TEMPLATE if (is_tiny and family == "hunyuan_video") else None
    uncond_prob = args.uncond_prob if args.uncond_prob is not None else (0.0 if task == "mlcd" else 0.1)

    # ---- task loss setup
    mlcd_cfg = read_folder_json(args.teacher, MLCD_CONFIG) or read_folder_json(args.student, MLCD_CONFIG)
    save_scheduler = pipe.scheduler
    out_steps, out_guidance = gen_steps, gen_guidance
    solver_module = None
    schedule = None
    grid = None
    guidance = 1.0
    embedded = args.embedded_guidance_scale or (gen_guidance if family == "hunyuan_video" else 6.0)
    if task == "mlcd":
        solver_spec = args.mlcd_teacher or mlcd_cfg.get("teacher")
        if not solver_spec:
            raise SystemExit("--task_loss mlcd needs --mlcd_teacher (no mlcd_config.json names the MLCD teacher)")
        solver_saved = generation_settings_of(solver_spec)
        if solver_spec == args.teacher and args.mlcd_teacher_plan == "dense" and teacher_pipe is not None:
            solver_pipe = teacher_pipe
        else:
            solver_pipe = load_pipeline(solver_spec, mask_plan="saved" if args.mlcd_teacher_plan == "saved" else None)
        solver_module = solver_pipe.transformer
        teacher_scheduler = stock_scheduler(solver_pipe.scheduler)
        teacher_steps = (args.teacher_steps or mlcd_cfg.get("teacher_steps") or solver_saved.get("num_inference_steps")
                         or call_default(solver_pipe, "num_inference_steps", 50))
        num_segments = args.num_segments or mlcd_cfg.get("num_segments")
        if not num_segments:
            raise SystemExit("--task_loss mlcd needs --num_segments (no mlcd_config.json gives S)")
        solver_steps = args.solver_steps or mlcd_cfg.get("solver_steps") or 1
        if family == "hunyuan_video":
            guidance = 1.0 if args.guidance_scale is None else args.guidance_scale
            embedded = args.embedded_guidance_scale or mlcd_cfg.get("embedded_guidance_scale") or solver_saved.get(
                "guidance_scale") or 6.0
        else:
            guidance = args.guidance_scale
            if guidance is None:
                guidance = mlcd_cfg.get("teacher_guidance_scale")
            if guidance is None:
                guidance = solver_saved.get("guidance_scale") or mlcd.pipeline_guidance_scale(solver_pipe)
        grid = mlcd.pipeline_grid(solver_pipe, teacher_steps, args.num_frames, args.height, args.width,
                                  teacher_scheduler)
        schedule = mlcd.MLCDSchedule(grid, int(num_segments), int(solver_steps))
        save_scheduler = schedule.inference_scheduler(teacher_scheduler)
        out_steps = int(num_segments)
        out_guidance = embedded if family == "hunyuan_video" else 1.0
    else:
        grid_steps = args.grid_steps or int(gen_steps)
        base_sched = stock_scheduler(pipe.scheduler)
        grid = mlcd.pipeline_grid(pipe, grid_steps, args.num_frames, args.height, args.width, base_sched)
        if family == "hunyuan_video":
            embedded = args.embedded_guidance_scale or gen_guidance or 6.0

    # ---- models
    orig_dtypes = freeze_components(pipe, init_spec, device, weight_dtype)
    teacher_module = None
    if use_features:
        teacher_module = teacher_pipe.transformer
        if getattr(teacher_module, "_evdit_tile_state", None) is not None:
            raise SystemExit("the teacher must be dense")
    master_dtype = weight_dtype if args.use_lora else torch.float32
    if args.student:
        student = pipe.transformer
        student.to(dtype=master_dtype)
        apply_mask_plan(student, plan, kernel=args.kernel)
        student.requires_grad_(True).train()
    else:
        student = kd.make_sparse_student(pipe.transformer, plan, kernel=args.kernel, dtype=master_dtype)
    if teacher_module is not None:
        teacher_module.requires_grad_(False).eval().to(device, dtype=weight_dtype)
    if solver_module is not None and solver_module is not teacher_module:
        solver_module.requires_grad_(False).eval().to(device, dtype=weight_dtype)
    student.to(device)
    if args.use_lora:
        student.requires_grad_(False)
        add_lora_adapter(student, args, weight_dtype)
    student, optimizer, lr_scheduler, ema, unwrapped = prepare_optimisation(args, accelerator, student,
                                                                            use_ema=task == "mlcd")
    kd.check_trainable_kernel(unwrapped)

    base_predictor = mlcd.TransformerPredictor.from_pipeline(pipe, transformer=unwrapped,  # Wan TI2V: per-token t
                                                             embedded_guidance_scale=embedded)
    student_predict = base_predictor.with_transformer(student)
    plain_predict = base_predictor.with_transformer(unwrapped)
    student_capture = kd.LayerOutputCapture(unwrapped)
    teacher_predict = teacher_capture = None
    if teacher_module is not None:
        teacher_predict = base_predictor.with_transformer(teacher_module)
        teacher_capture = kd.LayerOutputCapture(teacher_module)
    solver_predict = base_predictor.with_transformer(solver_module) if solver_module is not None else None
    target_predict = ema.target(plain_predict) if ema is not None else plain_predict

    dataset, validation_prompts, global_step, micro_step, loader = build_data(args, accelerator, output_dir)
    start_logging(args, accelerator, output_dir, global_step)

    # ---- text conditioning (cached by caption)
    conditions = caption_conditions(pipe, device, max_seq, prompt_template)
    latent_cache, loader = make_latent_cache(args, pipe, dataset, loader)

    uncond_one = conditions([args.negative_prompt]) if (task == "mlcd" and guidance != 1.0) else None

    # ---- validation
    validation = ValidationVideos.from_args(args, pipe, accelerator, validation_prompts, output_dir, family, max_seq,
                                            prompt_template)

    def run_validation(step: int) -> float:
        t0 = time.time()
        unwrapped.eval()
        # re-installs the same plan with the training kernel (from_pipe sets the plan of the transformer it gets)
        videos = validation.generate(unwrapped, save_scheduler, out_steps, out_guidance, args.validation_seed,
                                     mask_plan=get_mask_plan(unwrapped), kernel=args.kernel)
        unwrapped.train()
        validation.log("student", videos, step)
        logger.info("validation at step %d: %d videos in %s (%.1f s)", step, len(videos), validation.out_dir,
                    time.time() - t0)
        return time.time() - t0

    if args.validate_teacher and accelerator.is_main_process and teacher_module is not None:
        videos = validation.generate(teacher_module, teacher_pipe.scheduler, gen_steps, gen_guidance,
                                     args.validation_seed)
        validation.log("teacher", videos, 0)

    # ---- training
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** KD: %s -> sparse student (%s, plan k=%s), task %s x %.3g, features x %.3g *****",
                args.teacher or "(no feature teacher)", family, plan.layers, task, args.task_weight, args.kd_weight)
    logger.info("  student init %s, kernel %s, LoRA %s, total batch %d, steps %d -> %d", init_spec, args.kernel,
                args.use_lora, total_batch, global_step, args.max_train_steps)
    loss_log = os.path.join(output_dir, "losses.jsonl")
    budget_s = args.max_minutes * 60.0 if args.max_minutes else None
    validation_s = 0.0
    losses: list[dict] = []
    stopped_by_time = False
    data_iter = iter(loader)
    train_start = time.time()
    step_log = StepLog(args.max_train_steps, global_step, train_start)

    def reserve_s() -> float:
        if args.time_reserve_s is not None:
            return args.time_reserve_s
        extra = 0.0 if args.no_final_validation else 1.5 * validation_s
        return max(10.0, extra + 8.0) + (30.0 + 1.0 * args.eval_prompts if args.eval_prompts else 0.0)

    def step_loss(batch, gen) -> "kd.KDLossOutput":
        latents = latent_cache.latents(batch, gen)
        captions = list(batch["caption"])
        if uncond_prob > 0:
            drop = torch.rand(len(captions), generator=gen) < uncond_prob
            captions = [args.negative_prompt if d else c for c, d in zip(captions, drop.tolist())]
        cond = conditions(captions)
        if task == "mlcd":
            uncond = None
            if uncond_one is not None:
                uncond = {k: v.expand(latents.shape[0], *v.shape[1:]) for k, v in uncond_one.items()}
            return kd.kd_mlcd_loss(student_predict, target_predict, solver_predict, teacher_predict,
                                   student_capture, teacher_capture, latents, cond, schedule,
                                   task_weight=args.task_weight, feature_weight=args.kd_weight, uncond=uncond,
                                   guidance_scale=guidance, generator=gen, loss_type=args.loss_type,
                                   huber_c=args.huber_c)
        z_t, t, target, _ = kd.diffusion_inputs(grid, latents, gen)
        if not use_features:  # diffusion loss only
            out = student_predict(z_t, t, cond)
            loss = (out.float() - target).pow(2).mean()
            zero = loss.new_zeros(len(student_capture.layers))
            return kd.KDLossOutput(args.task_weight * loss, loss.new_zeros(()), zero, zero, loss, out)
        return kd.kd_loss(student_predict, teacher_predict, (z_t, t, cond), student_capture=student_capture,
                          teacher_capture=teacher_capture, task_target=target if task == "diffusion" else None,
                          task="output" if task == "output" else "target", task_weight=args.task_weight,
                          feature_weight=args.kd_weight)

    acc = {k: torch.zeros((), device=device) for k in ("loss", "feature", "attention", "mlp", "task")}
    while global_step < args.max_train_steps:
        batch = next(data_iter)
        gen = torch.Generator().manual_seed((args.seed * 1_000_003 + micro_step) * 4099 + accelerator.process_index)
        with accelerator.accumulate(student):
            with accelerator.autocast():
                out = step_loss(batch, gen)
            accelerator.backward(out.loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(student.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        micro_step += 1
        parts = {"loss": out.loss, "feature": out.feature_loss, "attention": out.attention_losses.mean(),
                 "mlp": out.mlp_losses.mean(), "task": out.task_loss if out.task_loss is not None else out.loss * 0}
        for k, v in parts.items():
            acc[k] += v.detach().float() / args.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.update()
        global_step += 1
        vals = {k: accelerator.reduce(v.clone(), reduction="mean").item() for k, v in acc.items()}
        for v in acc.values():
            v.zero_()
        row = {"step": global_step, "loss": vals["loss"], "feature_loss": vals["feature"],
               "attention_loss": vals["attention"], "mlp_loss": vals["mlp"],
               "task_loss": vals["task"] if (out.task_loss is not None) else None,
               "lr": lr_scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - t_start, 3)}
        if not math.isfinite(row["loss"]):
            raise SystemExit(f"The loss is {row['loss']} at step {global_step}; lower --learning_rate or "
                             "--task_weight.")
        losses.append(row)
        if accelerator.is_main_process:
            with open(loss_log, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            accelerator.log({k: v for k, v in row.items() if isinstance(v, float)}, step=global_step)
            now = time.time()
            if step_log.due(global_step, now):
                left = None if budget_s is None else budget_s - reserve_s() - (now - t_start)
                logger.info("step %d/%d loss %.5f (features %.5f, task %s) (%.1f s, %s)", global_step,
                            args.max_train_steps, row["loss"], row["feature_loss"],
                            "n/a" if row["task_loss"] is None else f"{row['task_loss']:.5f}", row["elapsed_s"],
                            step_log.eta(global_step, now, left))
        stop = torch.tensor(0.0, device=device)
        if budget_s is not None and time.time() - t_start > budget_s - reserve_s():
            stop += 1
        stop = accelerator.reduce(stop, reduction="sum").item() > 0
        last = stop or global_step >= args.max_train_steps
        if args.checkpointing_steps and (global_step % args.checkpointing_steps == 0 or stop):
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
        if (accelerator.is_main_process and args.validation_steps and global_step % args.validation_steps == 0
                and not last):
            validation_s = run_validation(global_step)
        if stop:
            stopped_by_time = True
            logger.info("Stopping at step %d: the --max_minutes budget (%.1f min) is reached.", global_step,
                        args.max_minutes)
            break
    train_s = time.time() - train_start
    accelerator.wait_for_everyone()
    student_capture.remove()
    if teacher_capture is not None:
        teacher_capture.remove()

    # ---- final validation, evaluation, save
    summary = {"output_dir": output_dir, "global_step": global_step, "losses": losses, "task_loss": task,
               "stopped_by_time": stopped_by_time, "train_seconds": round(train_s, 1)}
    if accelerator.is_main_process:
        if not args.no_final_validation:
            run_validation(global_step)
        generation = {"num_frames": args.num_frames, "height": args.height, "width": args.width,
                      "max_sequence_length": max_seq, "fps": args.validation_fps}
        final_plan = copy.deepcopy(plan)
        provenance = {
            "teacher": args.teacher, "student_init": init_spec, "family": family, "plan_layers": plan.layers,
            "kernel": args.kernel, "kd_weight": args.kd_weight, "task_loss": task, "task_weight": args.task_weight,
            "uncond_prob": uncond_prob, "use_lora": args.use_lora, "steps": global_step,
            "learning_rate": args.learning_rate, "train_batch_size": args.train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "final_loss": losses[-1]["loss"] if losses else None,
            "final_feature_loss": losses[-1]["feature_loss"] if losses else None,
            "train_seconds": round(train_s, 1), "stopped_by_time": stopped_by_time,
            "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "frames": args.num_frames, "height": args.height, "width": args.width, "dataset": args.dataset,
            "sampling_steps": out_steps, "sampling_guidance_scale": out_guidance,
        }
        if task == "mlcd":
            provenance.update(mlcd_teacher=args.mlcd_teacher or mlcd_cfg.get("teacher"),
                              mlcd_teacher_plan=args.mlcd_teacher_plan, teacher_steps=grid.num_steps,
                              num_segments=schedule.num_segments, milestones=schedule.milestones,
                              teacher_guidance_scale=guidance, ema_decay=args.ema_decay)
        else:
            provenance["grid_steps"] = grid.num_steps
        metadata = dict(final_plan.metadata)
        if "kd" in metadata:  # a student that went through KD before (e.g. KD, then MLCD): keep its history
            metadata["kd_history"] = list(metadata.get("kd_history", [])) + [metadata.pop("kd")]
        metadata["kd"] = {k: v for k, v in provenance.items() if k != "plan_layers"}
        final_plan.metadata = metadata
        if args.eval_prompts:
            teacher_saved = generation_settings_of(args.teacher) if args.teacher != init_spec else saved
            t_steps = teacher_saved.get("num_inference_steps") or gen_steps
            t_guidance = teacher_saved.get("guidance_scale", gen_guidance)
            summary["eval"] = evaluate(args, pipe, unwrapped, final_plan, teacher_module, teacher_pipe, save_scheduler,
                                       out_steps, out_guidance, t_steps, t_guidance, generation, output_dir)
        save_pipeline(args, pipe, unwrapped, final_plan, save_scheduler, orig_dtypes, output_dir)
        save_generation_settings(output_dir, {"kd_teacher": args.teacher, "kd_student_init": init_spec},
                                 num_frames=args.num_frames, height=args.height, width=args.width,
                                 max_sequence_length=max_seq, num_inference_steps=int(out_steps),
                                 guidance_scale=float(out_guidance), fps=args.validation_fps)
        provenance["total_seconds"] = round(time.time() - t_start, 1)
        with open(os.path.join(output_dir, "kd_config.json"), "w", encoding="utf-8") as f:
            json.dump(provenance, f, indent=2)
        if task == "mlcd":  # the student is a few-step model now: its MLCD settings, for later stages
            mlcd_out = dict(mlcd_cfg)
            mlcd_out.update(teacher=provenance["mlcd_teacher"], teacher_steps=grid.num_steps,
                            num_segments=schedule.num_segments, milestones=schedule.milestones,
                            solver_steps=schedule.solver_steps, teacher_guidance_scale=guidance,
                            prediction_type=grid.prediction_type, family=family)
            with open(os.path.join(output_dir, MLCD_CONFIG), "w", encoding="utf-8") as f:
                json.dump(mlcd_out, f, indent=2)
        logger.info("Saved the sparse student (%d steps, plan %s) to %s (%.1f s in total)", out_steps,
                    final_plan.layers, output_dir, time.time() - t_start)
        summary["plan"] = final_plan.layers
        summary["sampling_steps"] = out_steps
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def save_pipeline(args, pipe, unwrapped, plan, scheduler, orig_dtypes, output_dir: str) -> None:
    """The student as an EfficientVDiTPipeline folder with its plan (and, with LoRA, the adapter alone)."""
    from diffusers_evdit import EfficientVDiTPipeline
    from diffusers_evdit.plan import remove_mask_plan

    transformer = unwrapped
    if args.use_lora:
        from peft.utils import get_peft_model_state_dict

        lora = get_peft_model_state_dict(transformer)
        pipe.__class__.save_lora_weights(os.path.join(output_dir, "lora"), transformer_lora_layers=lora)
        transformer.fuse_lora()
        transformer.unload_lora()
    else:
        remove_mask_plan(transformer)  # copy without the training kernel's state
        transformer = copy.deepcopy(unwrapped)
    transformer.requires_grad_(False).eval()
    if getattr(transformer, "is_gradient_checkpointing", False):
        transformer.disable_gradient_checkpointing()
    save_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
        args.save_dtype, orig_dtypes.get("transformer", torch.float32))
    transformer.to("cpu", dtype=save_dtype)
    components = {name: pipe.components[name].to("cpu", dtype=dtype) for name, dtype in orig_dtypes.items()
                  if name != "transformer"}
    out = EfficientVDiTPipeline.from_pipe(pipe, transformer=transformer, scheduler=scheduler, mask_plan=plan,
                                          **components)
    out.save_pretrained(output_dir)


def evaluate(args, pipe, unwrapped, plan, teacher_module, teacher_pipe, scheduler, steps, guidance, teacher_steps,
             teacher_guidance, generation, output_dir) -> list[dict]:
    """``evdit eval`` metrics of the sparse student and the dense teacher on held-out prompts -> eval.json."""
    from diffusers_evdit import EfficientVDiTPipeline
    from diffusers_evdit.demo import EVAL_KEYS, GenerationConfig, evaluate_pipeline

    def run(name, transformer, sched, n_steps, guidance_scale, mask_plan):
        vpipe = EfficientVDiTPipeline.from_pipe(pipe, transformer=transformer, scheduler=sched, mask_plan=mask_plan,
                                                kernel=args.kernel)
        gen = GenerationConfig(num_frames=generation["num_frames"], height=generation["height"],
                               width=generation["width"], max_sequence_length=generation["max_sequence_length"],
                               num_inference_steps=int(n_steps), guidance_scale=float(guidance_scale),
                               fps=generation["fps"])
        res = evaluate_pipeline(vpipe, gen, num_prompts=args.eval_prompts, seed=args.validation_seed,
                                batch_size=args.eval_batch_size, workers=args.eval_workers, progress=False,
                                reference=False)
        row = {"name": name, "steps": int(n_steps), "guidance_scale": guidance_scale,
               **{k: res.get(k) for k in EVAL_KEYS}, "sparsity": res["plan"]["sparsity"]}
        logger.info("eval %-8s steps %3d final_score %.4f frechet %s", name, n_steps, row["final_score"],
                    row["frechet"])
        return row

    unwrapped.eval()
    rows = [run("student", unwrapped, scheduler, steps, guidance, plan)]
    if teacher_module is not None:
        rows.append(run("teacher", teacher_module, teacher_pipe.scheduler, teacher_steps, teacher_guidance, None))
    with open(os.path.join(output_dir, "eval.json"), "w", encoding="utf-8") as f:
        json.dump({"prompts": args.eval_prompts, "seed": args.validation_seed, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
