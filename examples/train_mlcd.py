#!/usr/bin/env python
"""Multi-step latent consistency distillation (MLCD) of a diffusers video pipeline: Efficient-vDiT Stage 1.

Distils a teacher pipeline (CogVideoX, Wan 2.1 / single-expert Wan 2.2, HunyuanVideo) that samples in ``N`` steps
(``--teacher_steps``, default: the pipeline's default) into a student that samples in ``S`` steps
(``--num_segments``), with the loss of :func:`diffusers_evdit.mlcd.mlcd_loss`. The result is a pipeline folder whose
scheduler samples in ``S`` steps by default::

    from diffusers_evdit import EfficientVDiTPipeline
    import diffusers_evdit.schedulers  # makes the few-step scheduler classes loadable by diffusers
    pipe = EfficientVDiTPipeline.from_pretrained("mlcd-out")      # S steps, no argument needed

Built like diffusers' consistency-distillation examples (``train_lcm_distill_*.py``): ``accelerate`` (mixed
precision, gradient accumulation, multi-GPU with DDP), checkpoints (``--checkpointing_steps``,
``--checkpoints_total_limit``, ``--resume_from_checkpoint latest``), optional LoRA (peft), an EMA target network,
validation GIFs written (and sent to the trackers) during training, and ``save_pretrained`` at the end. Checkpoints
are written atomically (:mod:`diffusers_evdit.distill.checkpoints`): a run killed at any moment continues from its
last complete checkpoint with ``--resume_from_checkpoint latest``, with the losses of an uninterrupted run.

Data (``--dataset``):

* ``synthetic``: the procedural captioned clips of :mod:`diffusers_evdit.data` (unlimited, seeded);
* a folder: :class:`diffusers_evdit.data.VideoFolderDataset` layouts: ``metadata.jsonl`` with ``file_name`` +
  ``text`` lines, or ``videos.txt`` + ``prompts.txt``, or videos with sidecar ``<name>.txt`` captions. GIFs need only
  Pillow; mp4 / webm need ``imageio`` with a video plugin.

Examples::

    # one GPU, the shipped demo model, 8 steps, about 8 minutes in total (training stops early to fit
    # the final validation, the evaluation on 64 held-out prompts and the save into the budget)
    python examples/train_mlcd.py --teacher diffusers_evdit/demo_model --dataset synthetic \\
        --output_dir runs/mlcd-s8 --num_segments 8 --teacher_steps 48 --train_batch_size 8 --learning_rate 1e-4 \\
        --allow_tf32 --mixed_precision no --max_train_steps 100000 --max_minutes 7.5 --dataloader_num_workers 8 \\
        --checkpointing_steps 1000 --checkpoints_total_limit 2 --validation_steps 500 --validate_teacher \\
        --eval_prompts 64

    # several GPUs (DDP), LoRA, bf16, progressive 16 -> 8 segments, resumable
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 examples/train_mlcd.py \\
        --teacher PATH --output_dir runs/mlcd --progressive_segments 16,8 --use_lora --lora_rank 64 \\
        --learning_rate 1e-4 --resume_from_checkpoint latest

    # CPU only (the demo model on 2 cores): --cache_latents runs the VAE once per clip (512 clips), then a step
    # costs only the transformer calls; S = 4 then starts from the S = 8 student (progressive, across runs) at a lower
    # learning rate (on the demo model: 3e-5 reached 0.814 against the teacher's 0.823, 1e-4 plateaued at 0.76-0.77)
    python examples/train_mlcd.py --teacher diffusers_evdit/demo_model --output_dir runs/mlcd-s8 --num_segments 8 \\
        --teacher_steps 48 --train_batch_size 8 --learning_rate 1e-4 --mixed_precision no --cache_latents \\
        --synthetic_num_samples 512 --max_train_steps 100000 --max_minutes 55 --validation_steps 0
    python examples/train_mlcd.py ... --output_dir runs/mlcd-s4 --num_segments 4 --init_student runs/mlcd-s8 \\
        --learning_rate 3e-5

    # the committed table (benchmarks/results/mlcd.json): students vs the teacher at its default and at S steps
    python benchmarks/mlcd_table.py --students runs/mlcd-s8 runs/mlcd-s4 --prompts 64

    # CPU smoke test on a tiny random pipeline (one thread: small ops are slow with several)
    OMP_NUM_THREADS=1 python examples/train_mlcd.py --teacher tiny:wan --output_dir /tmp/mlcd --num_frames 9 \\
        --height 32 --width 32 --teacher_steps 8 --num_segments 2 --max_train_steps 4 --max_sequence_length 8

Each optimisation step appends ``{"step", "loss", "lr", "num_segments", "elapsed_s"}`` to
``<output_dir>/losses.jsonl``; the final folder also holds ``mlcd_config.json`` (settings and provenance) and, with
``--eval_prompts N``, ``eval.json`` (the ``evdit eval`` metrics of the student at S steps, the teacher at S steps and
the teacher at its default steps on N held-out synthetic prompts), and ``generation_defaults.json`` (the student's
generation settings: S steps, no CFG; also in the legacy ``evdit_demo.json``), so ``pipe(prompt)`` and
``evdit eval --model DIR`` run the student as it should run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import time
from pathlib import Path

import torch

from diffusers_evdit.distill.checkpoints import save_checkpoint
from diffusers_evdit.distill.common import call_default
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
    load_student_weights,
    load_pipeline,
    prepare_optimisation,
    read_folder_json,
    save_generation_settings,
    script_parser,
    setup_accelerator,
    start_logging,
)
from diffusers_evdit.distill.training_data import build_data, caption_conditions, make_latent_cache

logger = logging.getLogger("train_mlcd")


# --------------------------------------------------------------------------------------------------------- args


def parse_args(argv=None) -> argparse.Namespace:
    p = script_parser(__doc__)
    g = p.add_argument_group("teacher and distillation")
    g.add_argument("--teacher", required=True,
                   help="teacher pipeline: a folder (or Hub id) of a pipeline distillation drives (README, "
                        "Limitations), or tiny:FAMILY, a tiny random pipeline for tests (cogvideox, wan, "
                        "hunyuan_video, skyreels_v2, ltx_video, hunyuan_video15)")
    g.add_argument("--revision", default=None, help="Hub revision of --teacher")
    g.add_argument("--teacher_steps", type=int, default=None,
                   help="N, the teacher's step count the segments split (default: the teacher's default steps, from "
                        "its saved defaults or the pipeline's __call__; a finer grid, e.g. 48, makes the teacher's "
                        "first-order solver step more accurate)")
    g.add_argument("--num_segments", type=int, default=8, help="S, the student's step count (default 8)")
    g.add_argument("--progressive_segments", default=None,
                   help="progressive reduction, e.g. '16,8,4': train with each count for an equal share of the run "
                        "(by steps, or by time with --max_minutes); the last one is S (overrides --num_segments)")
    g.add_argument("--solver_steps", type=int, default=1,
                   help="teacher grid steps of the solver step t_m -> t_n (default 1)")
    g.add_argument("--guidance_scale", type=float, default=None,
                   help="teacher classifier-free guidance scale w (default for CogVideoX / Wan: the saved default's, "
                        "else the pipeline's default; 1.0, i.e. no true CFG, for HunyuanVideo)")
    g.add_argument("--embedded_guidance_scale", type=float, default=None,
                   help="HunyuanVideo's embedded guidance (default: the pipeline's default guidance_scale, 6.0)")
    g.add_argument("--negative_prompt", default="", help="unconditional prompt of the teacher's CFG (default '')")
    g.add_argument("--loss_type", choices=("l2", "huber"), default="l2")
    g.add_argument("--huber_c", type=float, default=1e-3)
    g.add_argument("--ema_decay", type=float, default=0.95,
                   help="decay of the EMA target network f_target (0: the student itself, under no_grad)")
    g.add_argument("--max_sequence_length", type=int, default=None,
                   help="text tokens (default: the folder's generation_defaults.json, else the pipeline's default)")
    g.add_argument("--init_student", default=None,
                   help="start the student (and its EMA target) from this pipeline folder's transformer instead of "
                        "the teacher's, e.g. an S=8 student when distilling S=4 (the paper's progressive reduction "
                        "across runs; give the later run a lower --learning_rate); the teacher stays --teacher")

    add_lora_args(p, use_lora="train a LoRA adapter instead of all weights; the teacher is then the same transformer "
                              "with the adapter disabled")
    add_data_args(p)
    add_optimisation_args(p)
    g = add_output_args(p, tracker="mlcd")
    g.add_argument("--save_weights", choices=("student", "ema"), default="student",
                   help="weights of the saved pipeline: the student or its EMA (the target network)")
    g.add_argument("--snapshot_steps", type=int, nargs="+", default=(),
                   help="also save the whole pipeline at these global steps as OUTPUT_DIR/snapshot-<step>/ (loadable "
                        "like the final folder: a learning curve of one run; not with --use_lora)")
    add_validation_args(p, validate_teacher="also write the teacher's videos at S steps and at its default steps "
                                            "(once)",
                        eval_prompts="N > 0: the `evdit eval` metrics (diffusers_evdit.demo.evaluate_pipeline) of the "
                                     "student (S steps), the teacher at S steps and the teacher at its default steps "
                                     "on N held-out synthetic prompts -> eval.json (CogVideoX / Wan)")
    args = p.parse_args(argv)

    if args.progressive_segments:
        try:
            args.segment_schedule = [int(v) for v in args.progressive_segments.split(",") if v.strip()]
        except ValueError:
            p.error(f"--progressive_segments must be comma-separated ints, got {args.progressive_segments!r}")
        if not args.segment_schedule or any(b > a for a, b in zip(args.segment_schedule, args.segment_schedule[1:])):
            p.error("--progressive_segments must be a non-increasing list such as 16,8,4")
        args.num_segments = args.segment_schedule[-1]
    else:
        args.segment_schedule = [args.num_segments]
    if args.num_frames is not None and (args.num_frames - 1) % 4:
        p.error(f"--num_frames must be 4k+1 for the video VAEs, got {args.num_frames}")
    if not 0.0 <= args.ema_decay < 1.0:
        p.error("--ema_decay must be in [0, 1)")
    if args.max_train_steps < 1:
        p.error("--max_train_steps must be >= 1")
    return args


# ------------------------------------------------------------------------------------------------------ helpers


# --------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    from diffusers_evdit import mlcd
    from diffusers_evdit.schedulers import stock_scheduler

    t_start = time.time()
    output_dir = os.path.abspath(args.output_dir)
    accelerator, weight_dtype = setup_accelerator(args, output_dir, logger)
    device = accelerator.device

    # ---- teacher pipeline, student, teacher and target predictors
    pipe = load_pipeline(args.teacher, revision=args.revision)
    is_tiny = args.teacher.startswith(TINY_PREFIX)
    pipe.set_progress_bar_config(disable=True)
    base_predictor = mlcd.TransformerPredictor.from_pipeline(pipe)  # refuses unsupported pipelines and families early
    family = base_predictor.family
    # generation settings: flags, else the teacher folder's generation_defaults.json, else the pipeline's defaults
    saved = generation_settings_of(args.teacher)
    args.num_frames = args.num_frames or saved.get("num_frames", 29)
    args.height = args.height or saved.get("height", 128)
    args.width = args.width or saved.get("width", 128)
    args.validation_fps = args.validation_fps or saved.get("fps", 8)
    if problem := mlcd.clip_size_error(pipe, args.num_frames, args.height, args.width):  # frames, patches
        raise SystemExit(f"--num_frames / --height / --width: {problem}")
    base_steps = saved.get("num_inference_steps") or call_default(pipe, "num_inference_steps", 50)
    teacher_steps = args.teacher_steps or base_steps
    if args.eval_prompts and family in ("hunyuan_video", "hunyuan_video15"):
        raise SystemExit("--eval_prompts (the evdit eval metrics) supports CogVideoX and Wan pipelines only.")
    if family == "hunyuan_video":
        guidance = 1.0 if args.guidance_scale is None else args.guidance_scale
        embedded = args.embedded_guidance_scale or saved.get("guidance_scale") or call_default(
            pipe, "guidance_scale", 6.0)
    else:
        guidance = args.guidance_scale
        if guidance is None:
            guidance = saved.get("guidance_scale") or mlcd.pipeline_guidance_scale(pipe)
        embedded = 6.0
    prompt_template = TINY_HUNYUAN_TEMPLATE if (is_tiny and family == "hunyuan_video") else None
    max_seq = args.max_sequence_length or saved.get("max_sequence_length") or call_default(
        pipe, "max_sequence_length", 226)
    teacher_scheduler = stock_scheduler(pipe.scheduler)
    grid = mlcd.pipeline_grid(pipe, teacher_steps, args.num_frames, args.height, args.width, teacher_scheduler)
    schedules = {s: mlcd.MLCDSchedule(grid, s, args.solver_steps) for s in sorted(set(args.segment_schedule))}

    orig_dtypes = freeze_components(pipe, args.teacher, device, weight_dtype)
    student = pipe.transformer
    student.requires_grad_(False)
    if args.use_lora and args.snapshot_steps:
        raise SystemExit("--snapshot_steps saves fused full weights; with --use_lora, save checkpoints instead.")
    if args.use_lora and args.init_student:
        raise SystemExit("--init_student starts full weights; with --use_lora, train from the teacher instead.")
    if args.use_lora:
        student.to(device, dtype=weight_dtype)
        add_lora_adapter(student, args, weight_dtype)
        teacher_module = None
    else:
        teacher_module = copy.deepcopy(student).to(device, dtype=weight_dtype).eval()
        if args.init_student:
            load_student_weights(student, args.init_student)
        student.to(device, dtype=torch.float32).requires_grad_(True)
    student.train()
    student, optimizer, lr_scheduler, ema, unwrapped = prepare_optimisation(args, accelerator, student, use_ema=True)

    student_predict = base_predictor.with_transformer(student)
    student_predict.embedded_guidance_scale = embedded
    plain_predict = base_predictor.with_transformer(unwrapped)
    plain_predict.embedded_guidance_scale = embedded
    if teacher_module is not None:
        teacher_predict = base_predictor.with_transformer(teacher_module)
        teacher_predict.embedded_guidance_scale = embedded
    else:
        def teacher_predict(z, t, c):
            with mlcd.adapters_disabled(unwrapped):
                return plain_predict(z, t, c)

    target_predict = ema.target(plain_predict) if ema is not None else plain_predict

    dataset, validation_prompts, global_step, micro_step, loader = build_data(args, accelerator, output_dir)
    start_logging(args, accelerator, output_dir, global_step)

    # ---- text conditioning (cached by caption)
    conditions = caption_conditions(pipe, device, max_seq, prompt_template)
    latent_cache, loader = make_latent_cache(args, pipe, dataset, loader)

    uncond_one = conditions([args.negative_prompt]) if guidance != 1.0 else None

    # ---- validation
    validation = ValidationVideos.from_args(args, pipe, accelerator, validation_prompts, output_dir, family, max_seq,
                                            prompt_template)
    student_guidance = embedded if family == "hunyuan_video" else 1.0  # HunyuanVideo: embedded guidance
    teacher_guidance = embedded if family == "hunyuan_video" else guidance

    def student_weights():
        return ema.swapped() if (ema is not None and args.save_weights == "ema") else contextlib.nullcontext()

    def run_validation(step: int, num_segments: int) -> float:
        t0 = time.time()
        sched = schedules[num_segments].inference_scheduler(teacher_scheduler)
        unwrapped.eval()
        with student_weights():
            videos = validation.generate(unwrapped, sched, num_segments, student_guidance, args.validation_seed)
        unwrapped.train()
        validation.log(f"student-S{num_segments}", videos, step)
        logger.info("validation at step %d: %d videos in %s (%.1f s)", step, len(videos), validation.out_dir,
                    time.time() - t0)
        return time.time() - t0

    @contextlib.contextmanager
    def teacher_transformer():
        if teacher_module is not None:
            yield teacher_module
        else:
            with mlcd.adapters_disabled(unwrapped) as module:
                yield module

    if args.validate_teacher and accelerator.is_main_process:
        with teacher_transformer() as tmod:
            for steps in sorted({args.num_segments, base_steps}):
                videos = validation.generate(tmod, stock_scheduler(teacher_scheduler), steps, teacher_guidance,
                                             args.validation_seed)
                validation.log(f"teacher-{steps}steps", videos, 0)

    # ---- training
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** MLCD: %s (%s) -> S=%s from N=%d teacher steps *****", args.teacher, family,
                ",".join(map(str, args.segment_schedule)), teacher_steps)
    logger.info("  milestones (grid indices) for S=%d: %s; timesteps: %s", args.num_segments,
                schedules[args.num_segments].milestones,
                [round(float(t), 3) for t in schedules[args.num_segments].milestone_timesteps()])
    logger.info("  teacher CFG %.2f, loss %s, EMA %.3f, LoRA %s, total batch %d, steps %d -> %d", guidance,
                args.loss_type, args.ema_decay, args.use_lora, total_batch, global_step, args.max_train_steps)
    loss_log = os.path.join(output_dir, "losses.jsonl")
    budget_s = args.max_minutes * 60.0 if args.max_minutes else None
    validation_s = 0.0
    losses: list[dict] = []
    stopped_by_time = False
    data_iter = iter(loader)
    train_start = time.time()
    step_log = StepLog(args.max_train_steps, global_step, train_start)

    def current_segments() -> int:
        progress = global_step / args.max_train_steps
        if budget_s:  # the time share of the training part of the budget
            progress = max(progress, (time.time() - t_start) / max(budget_s - reserve_s(), 1e-3))
        return mlcd.progressive_num_segments(args.segment_schedule, progress)

    def reserve_s() -> float:
        if args.time_reserve_s is not None:
            return args.time_reserve_s
        extra = 0.0 if args.no_final_validation else 1.5 * validation_s
        return max(20.0, extra + 10.0) + (30.0 + 1.0 * args.eval_prompts if args.eval_prompts else 0.0)

    def run_record(segments: int, train_seconds: float, stopped: bool) -> dict:
        """mlcd_config.json: how the student was made (what train_kd.py and the model card read)."""
        return {
            "teacher": args.teacher, "init_student": args.init_student, "family": family,
            "teacher_steps": teacher_steps,
            "num_segments": segments, "segment_schedule": args.segment_schedule,
            "solver_steps": args.solver_steps, "milestones": schedules[segments].milestones,
            "milestone_timesteps": [float(t) for t in schedules[segments].milestone_timesteps()],
            "prediction_type": grid.prediction_type, "teacher_guidance_scale": guidance,
            "embedded_guidance_scale": embedded if family == "hunyuan_video" else None,
            "loss_type": args.loss_type, "ema_decay": args.ema_decay, "use_lora": args.use_lora,
            "learning_rate": args.learning_rate, "train_batch_size": args.train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "steps": global_step, "final_loss": losses[-1]["loss"] if losses else None,
            "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - t_start, 1),
            "stopped_by_time": stopped, "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "frames": args.num_frames, "height": args.height, "width": args.width, "dataset": args.dataset,
        }

    def generation_settings() -> dict:
        return {"num_frames": args.num_frames, "height": args.height, "width": args.width,
                "max_sequence_length": max_seq, "fps": args.validation_fps}

    def save_student(folder: str, segments: int, scheduler, record: dict) -> None:
        """The loadable pipeline folder (final or snapshot): weights, scheduler, generation settings, record."""
        save_pipeline(args, pipe, unwrapped, ema, scheduler, orig_dtypes, folder, family)
        write_generation_settings(folder, generation_settings(), segments,
                                  embedded if family == "hunyuan_video" else 1.0, args.teacher)
        with open(os.path.join(folder, "mlcd_config.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)

    num_segments = current_segments()
    acc_loss = torch.zeros((), device=device)
    while global_step < args.max_train_steps:
        batch = next(data_iter)
        num_segments = current_segments()
        schedule = schedules[num_segments]
        gen = torch.Generator().manual_seed(
            (args.seed * 1_000_003 + micro_step) * 4099 + accelerator.process_index)
        with accelerator.accumulate(student):
            latents = latent_cache.latents(batch, gen)
            cond = conditions(batch["caption"])
            uncond = None
            if uncond_one is not None:
                uncond = {k: v.expand(latents.shape[0], *v.shape[1:]) for k, v in uncond_one.items()}
            with accelerator.autocast():
                out = mlcd.mlcd_loss(student_predict, target_predict, teacher_predict, latents, cond, schedule,
                                     uncond=uncond, guidance_scale=guidance, generator=gen,
                                     loss_type=args.loss_type, huber_c=args.huber_c)
            accelerator.backward(out.loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(student.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        micro_step += 1
        acc_loss += out.loss.detach() / args.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.update()
        global_step += 1
        step_loss = accelerator.reduce(acc_loss.clone(), reduction="mean").item()
        acc_loss.zero_()
        row = {"step": global_step, "loss": step_loss, "lr": lr_scheduler.get_last_lr()[0],
               "num_segments": num_segments, "elapsed_s": round(time.time() - t_start, 3)}
        losses.append(row)
        if accelerator.is_main_process:
            with open(loss_log, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            accelerator.log({"loss": step_loss, "lr": row["lr"], "num_segments": num_segments}, step=global_step)
            now = time.time()
            if step_log.due(global_step, now):
                left = None if budget_s is None else budget_s - reserve_s() - (now - t_start)
                logger.info("step %d/%d loss %.5f S=%d (%.1f s, %s)", global_step, args.max_train_steps, step_loss,
                            num_segments, row["elapsed_s"], step_log.eta(global_step, now, left))

        stop = torch.tensor(0.0, device=device)
        if budget_s is not None and time.time() - t_start > budget_s - reserve_s():
            stop += 1
        stop = accelerator.reduce(stop, reduction="sum").item() > 0
        last = stop or global_step >= args.max_train_steps
        if args.checkpointing_steps and (global_step % args.checkpointing_steps == 0 or stop):
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
        if accelerator.is_main_process and global_step in args.snapshot_steps and not last:
            snapshot = os.path.join(output_dir, f"snapshot-{global_step}")
            save_student(snapshot, num_segments, schedules[num_segments].inference_scheduler(teacher_scheduler),
                         run_record(num_segments, time.time() - train_start, False))
            logger.info("Saved the step-%d snapshot to %s", global_step, snapshot)
        if (accelerator.is_main_process and args.validation_steps and global_step % args.validation_steps == 0
                and not last):
            validation_s = run_validation(global_step, num_segments)
        if stop:
            stopped_by_time = True
            logger.info("Stopping at step %d: the --max_minutes budget (%.1f min) is reached.", global_step,
                        args.max_minutes)
            break
    train_s = time.time() - train_start
    accelerator.wait_for_everyone()

    # ---- final validation, evaluation, save
    final_segments = num_segments
    if final_segments != args.num_segments:
        logger.warning("Training stopped in the progressive phase S=%d before reaching S=%d; the saved scheduler "
                       "uses S=%d.", final_segments, args.num_segments, final_segments)
    summary = {"output_dir": output_dir, "global_step": global_step, "num_segments": final_segments,
               "losses": losses, "stopped_by_time": stopped_by_time}
    if accelerator.is_main_process:
        if not args.no_final_validation:
            run_validation(global_step, final_segments)
        final_schedule = schedules[final_segments]
        inference_scheduler = final_schedule.inference_scheduler(teacher_scheduler)
        generation = generation_settings()
        # Saved before the evaluation, which can outlast the budget's reserve (on a CPU): a run stopped then still
        # leaves its student. With LoRA the evaluation comes first: saving fuses the adapter into the weights whose
        # adapter-free view is the teacher of the evaluation's Teacher and Base rows.
        save_first = not args.use_lora
        provenance = run_record(final_segments, train_s, stopped_by_time)
        if save_first:
            save_student(output_dir, final_segments, inference_scheduler, provenance)
            logger.info("Saved the %d-step pipeline to %s", final_segments, output_dir)
        if args.eval_prompts:
            logger.info("Evaluating the student, the teacher at %d steps and at %d steps on %d held-out prompts",
                        final_segments, base_steps, args.eval_prompts)
            summary["eval"] = evaluate(args, pipe, unwrapped, student_weights, teacher_transformer,
                                       inference_scheduler, teacher_scheduler, final_segments, base_steps,
                                       guidance, generation, output_dir)
        if not save_first:
            save_student(output_dir, final_segments, inference_scheduler, provenance)
        append_model_card(output_dir, provenance, summary.get("eval"))
        logger.info("Saved the %d-step pipeline to %s (%.1f s in total)", final_segments, output_dir,
                    time.time() - t_start)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def save_pipeline(args, pipe, unwrapped, ema, scheduler, orig_dtypes, output_dir: str, family: str) -> None:
    """The distilled pipeline folder (EfficientVDiTPipeline layout) with the few-step scheduler; LoRA also alone."""
    from diffusers_evdit import EfficientVDiTPipeline

    ctx = ema.swapped() if (ema is not None and args.save_weights == "ema") else contextlib.nullcontext()
    with ctx:
        transformer = unwrapped
        if args.use_lora:
            from peft.utils import get_peft_model_state_dict

            lora = get_peft_model_state_dict(transformer)
            pipe.__class__.save_lora_weights(os.path.join(output_dir, "lora"), transformer_lora_layers=lora)
            transformer.fuse_lora()
            transformer.unload_lora()
        else:
            transformer = copy.deepcopy(unwrapped)  # the EMA swap ends after the copy
    transformer.requires_grad_(False).eval()
    if getattr(transformer, "is_gradient_checkpointing", False):
        transformer.disable_gradient_checkpointing()
    save_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
        args.save_dtype, orig_dtypes.get("transformer", torch.float32))
    transformer.to("cpu", dtype=save_dtype)
    components, placements = {}, {}
    for name, dtype in orig_dtypes.items():
        if name != "transformer":
            tensor = next(pipe.components[name].parameters(), None)
            placements[name] = (tensor.device, tensor.dtype) if tensor is not None else None
            components[name] = pipe.components[name].to("cpu", dtype=dtype)
    if getattr(pipe, "guider", None) is not None:  # HunyuanVideo 1.5: the student samples without CFG
        components["guider"] = pipe.guider.new(guidance_scale=1.0)
    out = EfficientVDiTPipeline.from_pipe(pipe, transformer=transformer, scheduler=scheduler, **components)
    out.save_pretrained(output_dir)
    for name, placement in placements.items():  # training may go on (a snapshot): the encoders back where they were
        if placement is not None:
            pipe.components[name].to(*placement)


def evaluate(args, pipe, unwrapped, student_weights, teacher_transformer, scheduler, teacher_scheduler,
             num_segments: int, base_steps: int, guidance: float, generation: dict, output_dir: str) -> list[dict]:
    """The ``evdit eval`` metrics (:func:`diffusers_evdit.demo.evaluate_pipeline`) on held-out prompts.

    Rows: ``MLCD`` (student, S steps, no CFG), ``Teacher`` (teacher, S steps, its CFG: the baseline without
    distillation) and ``Base`` (teacher at its default steps). Same prompts and seeds for all rows.
    """
    from diffusers_evdit import EfficientVDiTPipeline
    from diffusers_evdit.demo import EVAL_KEYS, GenerationConfig, evaluate_pipeline
    from diffusers_evdit.schedulers import stock_scheduler

    def run(name, transformer, sched, steps, guidance_scale):
        vpipe = EfficientVDiTPipeline.from_pipe(pipe, transformer=transformer, scheduler=sched)
        gen = GenerationConfig(num_frames=generation["num_frames"], height=generation["height"],
                               width=generation["width"], max_sequence_length=generation["max_sequence_length"],
                               num_inference_steps=steps, guidance_scale=guidance_scale, fps=generation["fps"])
        t0 = time.time()
        res = evaluate_pipeline(vpipe, gen, num_prompts=args.eval_prompts, seed=args.validation_seed,
                                batch_size=args.eval_batch_size, workers=args.eval_workers, progress=False,
                                reference=False)
        row = {"name": name, "steps": steps, "guidance_scale": guidance_scale,
               **{k: res.get(k) for k in EVAL_KEYS}, "num_videos": res.get("num_videos"),
               "step_ms": res.get("timing", {}).get("step_ms"), "eval_seconds": round(time.time() - t0, 1)}
        frechet = "n/a" if row["frechet"] is None else f"{row['frechet']:.4f}"
        logger.info("eval %-8s steps %3d final_score %.4f frechet %s", name, steps, row["final_score"], frechet)
        return row

    unwrapped.eval()
    with student_weights():
        rows = [run("MLCD", unwrapped, scheduler, num_segments, 1.0)]
    with teacher_transformer() as tmod:
        rows.append(run("Teacher", tmod, stock_scheduler(teacher_scheduler), num_segments, guidance))
        rows.append(run("Base", tmod, stock_scheduler(teacher_scheduler), base_steps, guidance))
    unwrapped.train()
    with open(os.path.join(output_dir, "eval.json"), "w", encoding="utf-8") as f:
        json.dump({"prompts": args.eval_prompts, "seed": args.validation_seed, "rows": rows}, f, indent=2)
    return rows


def write_generation_settings(output_dir: str, generation: dict, steps: int, guidance_scale: float,
                              teacher: str) -> None:
    """The student's generation settings: its S steps and no CFG, so ``pipe(prompt)`` and ``evdit`` use them."""
    save_generation_settings(output_dir, {"mlcd_teacher": teacher}, num_inference_steps=steps,
                             guidance_scale=guidance_scale, **generation)


def append_model_card(output_dir: str, provenance: dict, eval_rows: list[dict] | None) -> None:
    """Add (or replace) an MLCD section after the pipeline's model card section."""
    path = os.path.join(output_dir, "README.md")
    begin, end = "<!-- diffusers-evdit:mlcd:begin -->", "<!-- diffusers-evdit:mlcd:end -->"
    lines = [begin, "## MLCD few-step distillation", "",
             f"Distilled with `examples/train_mlcd.py` (multi-step latent consistency distillation, Efficient-vDiT "
             f"Stage 1) from `{provenance['teacher']}` ({provenance['teacher_steps']} teacher steps) to "
             f"**{provenance['num_segments']} steps**; the saved scheduler samples with them by default "
             "(`import diffusers_evdit.schedulers` before loading).", "",
             "| setting | value |", "| --- | --- |"]
    for key in ("segment_schedule", "milestone_timesteps", "prediction_type", "teacher_guidance_scale", "loss_type",
                "ema_decay", "use_lora", "steps", "final_loss", "train_seconds", "device", "mixed_precision",
                "dataset"):
        lines.append(f"| {key} | {provenance[key]} |")
    if eval_rows:
        lines += ["", "`evdit eval` metrics on held-out prompts (`eval.json`):", "",
                  "| model | steps | final_score | frechet |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['name']} | {r['steps']} | {r['final_score']:.4f} | {r['frechet']} |" for r in eval_rows]
    lines += [end, ""]
    section = "\n".join(lines)
    text = Path(path).read_text(encoding="utf-8") if os.path.exists(path) else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + section.rstrip("\n") + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    Path(path).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
