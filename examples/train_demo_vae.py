#!/usr/bin/env python
"""Train the demo model's video VAE (a small ``AutoencoderKLWan``) on synthetic clips.

Stage 1 of ``examples/train_demo.sh``. Clips come from :mod:`diffusers_evdit.data` (training split, rendered on the fly
by a process pool); the VAE sees random 9-frame windows of 29-frame 128x128 clips (one first frame encoded alone plus
two causal 4-frame chunks: the same computation as on full clips, at a third of the cost), cropped to random
``--crop_size`` squares for most of the run (the VAE is convolutional apart from a per-frame attention block at the
bottleneck, so crops teach the same features at a quarter of the cost) and full-size for the last
``--full_size_fraction`` of it. Loss: foreground-weighted
L1 + MSE on pixels (objects are ~4% of the frame, so their pixels are up-weighted) + a small KL term. The decoder
output is not clamped during training (diffusers clamps it to [-1, 1] in ``decode``, which would stop gradients).

The run stops at ``--max_train_steps`` or when ``--max_minutes`` (wall clock from process start, setup included) is
nearly spent, then saves ``OUTPUT_DIR/vae`` (``save_pretrained``) and ``OUTPUT_DIR/vae_log.json`` (losses, timing,
reconstruction PSNR and the analytic metrics of reconstructed held-out-free clips).

    python examples/train_demo_vae.py --output_dir work/vae --max_minutes 2
    python examples/train_demo_vae.py --output_dir /tmp/vae --smoke          # CPU, seconds, tiny model
    python examples/train_demo_vae.py --output_dir work/vae --resume_from_checkpoint latest
    python examples/train_demo_vae.py --output_dir work/vae29 --init_from work/vae/vae --window_frames 29 \
        --windows_per_clip 1 --train_batch_size 16 --learning_rate 5e-4 --max_minutes 4

Windows shorter than the clips the VAE will see at inference can leave it unable to continue the causal cache past
the training length (a 9-frame-window VAE reconstructed frames 1-12 of 29-frame clips at 33 dB and the rest at
8-11 dB); the demo recipe therefore ends with full-length windows (the fine-tuning call above).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from train_demo_common import (
    PROCESS_START,
    Budget,
    ClipStream,
    LossLog,
    add_repo_to_path,
    default_workers,
    load_trainer_state,
    log,
    lr_at,
    mixed_precision,
    resolve_resume,
    save_checkpoint,
    setup_torch,
    smoothed,
    to_video_tensor,
    write_json,
)

add_repo_to_path()

import diffusers_evdit.data  # noqa: E402,F401  (loaded before the render pool forks)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output_dir", required=True, help="checkpoints, the trained vae/ folder and vae_log.json")
    p.add_argument("--architecture", default=None, choices=["demo", "tiny"], help="default: demo (tiny with --smoke)")
    p.add_argument("--init_from", default=None,
                   help="start from this trained AutoencoderKLWan folder (fine-tuning) instead of a random init")
    p.add_argument("--seed", type=int, default=1, help="seed of the model init and of the training clips")
    p.add_argument("--resolution", type=int, default=None, help="clip height = width (default 128; 32 with --smoke)")
    p.add_argument("--clip_frames", type=int, default=None, help="frames of a rendered clip (default 29; 9 smoke)")
    p.add_argument("--window_frames", type=int, default=None, help="frames of a training window, 1 + 4n (default 9)")
    p.add_argument("--windows_per_clip", type=int, default=2)
    p.add_argument("--crop_size", type=int, default=None,
                   help="train on random square crops of this size (default 64; none with --smoke); 0: full frames")
    p.add_argument("--full_size_fraction", type=float, default=0.2,
                   help="last fraction of the run (by budget progress) trained on full frames, not crops")
    p.add_argument("--num_clips", type=int, default=None,
                   help="cycle over this many clips (default: unlimited; 4 with --smoke)")
    p.add_argument("--train_batch_size", type=int, default=None, help="windows per step (default 32; 2 smoke)")
    p.add_argument("--learning_rate", type=float, default=None, help="default 1e-3 (2e-3 with --smoke)")
    p.add_argument("--adam_weight_decay", type=float, default=0.0)
    p.add_argument("--lr_warmup_steps", type=int, default=None, help="default 100 (2 smoke)")
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--kl_weight", type=float, default=3e-4, help="weight of the mean per-element KL")
    p.add_argument("--mse_weight", type=float, default=1.0)
    p.add_argument("--fg_weight", type=float, default=4.0, help="extra loss weight of object pixels and their edges")
    p.add_argument("--max_train_steps", type=int, default=None, help="default: unlimited (30 with --smoke)")
    p.add_argument("--max_minutes", type=float, default=2.0, help="wall-clock budget of the whole process")
    p.add_argument("--checkpointing_steps", type=int, default=None, help="default 400 (10 smoke)")
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder')
    p.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "bf16", "fp16"])
    p.add_argument("--dataloader_num_workers", type=int, default=None, help="render processes (default: cores - 2)")
    p.add_argument("--logging_steps", type=int, default=None, help="default 25 (5 smoke)")
    p.add_argument("--eval_clips", type=int, default=None, help="29-frame clips reconstructed at the end (default 8)")
    p.add_argument("--report_to", default="none", choices=["none", "tensorboard", "wandb"])
    p.add_argument("--smoke", action="store_true", help="tiny model, 32x32 clips, few steps: a CPU test of the script")
    args = p.parse_args(argv)
    smoke = args.smoke
    if args.init_from and args.architecture:
        p.error("--architecture does not apply with --init_from: the loaded VAE keeps its own configuration")
    defaults = dict(
        architecture="tiny" if smoke else "demo", resolution=32 if smoke else 128, clip_frames=9 if smoke else 29,
        window_frames=5 if smoke else 9, train_batch_size=2 if smoke else 32,
        learning_rate=2e-3 if smoke else 1e-3, lr_warmup_steps=2 if smoke else 100,
        max_train_steps=30 if smoke else None, checkpointing_steps=10 if smoke else 400,
        dataloader_num_workers=0 if smoke else default_workers(), logging_steps=5 if smoke else 25,
        eval_clips=2 if smoke else 16, num_clips=4 if smoke else None, crop_size=0 if smoke else 64,
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if (args.window_frames - 1) % 4 or args.window_frames > args.clip_frames:
        p.error("--window_frames must be 1 + 4n and at most --clip_frames")
    if args.crop_size and (args.crop_size % 16 or not 16 <= args.crop_size <= args.resolution):
        p.error("--crop_size must be a multiple of 16 between 16 and --resolution (or 0 for full frames)")
    return args


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z)`` without the final clamp to [-1, 1] (which zeroes gradients of saturated pixels).

    Mirrors ``AutoencoderKLWan._decode`` (causal, one latent frame at a time with the feature cache); falls back to
    ``vae.decode`` if this diffusers version's internals differ.
    """
    try:
        vae.clear_cache()
        x = vae.post_quant_conv(z)
        outs = []
        for i in range(z.shape[2]):
            vae._conv_idx = [0]
            outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                    first_chunk=(i == 0)))
        vae.clear_cache()
        return torch.cat(outs, 2)
    except (AttributeError, TypeError):
        return vae.decode(z).sample


def random_crops(clips: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One random ``size x size`` crop per window of ``uint8 (N, T, H, W, 3)`` clips (the same crop for all frames)."""
    n, _, h, w, _ = clips.shape
    ys = rng.integers(0, h - size + 1, size=n)
    xs = rng.integers(0, w - size + 1, size=n)
    return np.stack([c[:, y : y + size, x : x + size] for c, y, x in zip(clips, ys, xs)])


def foreground_weight(x: torch.Tensor, extra: float) -> torch.Tensor:
    """``1 + extra`` on object pixels (and a 2-pixel ring around them), 1 on the solid background.

    The background colour of a clip is its top-left pixel (backgrounds are solid; objects rarely reach the corner).
    """
    if extra <= 0:
        return torch.ones_like(x[:, :1])
    bg = x[:, :, :, :1, :1]
    fg = ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()
    fg = F.max_pool3d(fg, kernel_size=(1, 5, 5), stride=1, padding=(0, 2, 2))
    return 1.0 + extra * fg


@torch.no_grad()
def evaluate_reconstruction(vae, args, device, dtype_ctx) -> dict:
    """PSNR and analytic metrics of reconstructed full-length training-split clips (not seen in training)."""
    from diffusers_evdit.data import tensor_to_frames
    from diffusers_evdit.metrics import evaluate, psnr

    stream = ClipStream(args.seed + 1000, args.clip_frames, args.resolution, args.resolution, workers=0)
    clips, caps = stream.batch(args.eval_clips)
    x = to_video_tensor(clips, device)
    vae.eval()
    recs = []
    for i in range(0, len(x), 4):
        with dtype_ctx():
            mu = vae.encode(x[i : i + 4]).latent_dist.mode()
            recs.append(vae.decode(mu).sample.float())
    rec = torch.cat(recs)
    frames = [tensor_to_frames(r) for r in rec]
    scores = evaluate(frames, caps)
    scores["psnr"] = float(np.mean([psnr(f, c) for f, c in zip(frames, clips)]))
    scores["real_psnr_note"] = "reconstructions of 29-frame training-split clips from an unseen index range"
    vae.train()
    return scores


def main(argv=None) -> dict:
    args = parse_args(argv)
    budget = Budget(args.max_minutes, reserve_s=3.0 if args.smoke else 15.0, max_steps=args.max_train_steps)
    os.makedirs(args.output_dir, exist_ok=True)
    # the render pool forks: start it before CUDA is initialised
    resume_path = resolve_resume(args.output_dir, args.resume_from_checkpoint)
    state = load_trainer_state(resume_path) if resume_path else {}
    clips_per_step = math.ceil(args.train_batch_size / args.windows_per_clip)
    stream = ClipStream(args.seed, args.clip_frames, args.resolution, args.resolution, args.dataloader_num_workers,
                        start=int(state.get("next_clip", 0)), windows=args.windows_per_clip,
                        window_frames=args.window_frames, num_clips=args.num_clips)
    try:
        setup_torch(args.seed)
        return _train(args, budget, stream, resume_path, state, clips_per_step)
    finally:
        stream.close()


def _train(args, budget, stream, resume_path, state, clips_per_step) -> dict:
    from accelerate import Accelerator

    from diffusers_evdit.demo import build_vae

    accelerator = Accelerator(
        mixed_precision=mixed_precision(args.mixed_precision), project_dir=args.output_dir,
        log_with=None if args.report_to == "none" else args.report_to,
    )
    device = accelerator.device
    if args.report_to != "none":
        accelerator.init_trackers("evdit-demo-vae", config=vars(args))
    if args.init_from:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(args.init_from).train()
        log(f"fine-tuning the VAE of {args.init_from}")
    else:
        vae = build_vae(args.architecture, seed=args.seed).train()
    n_params = sum(p.numel() for p in vae.parameters())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, betas=(0.9, 0.99),
                                  weight_decay=args.adam_weight_decay)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    raw = accelerator.unwrap_model(vae)
    step = 0
    if resume_path:
        accelerator.load_state(resume_path)
        step = int(state.get("step", 0))
        log(f"resumed from {resume_path} at step {step}")
    history = LossLog(state.get("history"))
    budget.start_loop(float(state.get("train_seconds", 0.0)))
    log(f"VAE {args.init_from or args.architecture}: {n_params / 1e6:.2f}M parameters on {device} "
        f"(mixed precision {accelerator.mixed_precision}); batch {args.train_batch_size} windows of "
        f"{args.window_frames} frames {args.resolution}x{args.resolution}; {budget.left():.0f} s left")
    t_log, samples = time.time(), 0
    crop_rng = np.random.default_rng([args.seed, step, 11])
    while not budget.done(step):
        clips, _ = stream.batch(clips_per_step)
        clips = clips.reshape(-1, *clips.shape[2:])[: args.train_batch_size]
        if args.crop_size and args.crop_size < args.resolution and budget.progress(step) < 1 - args.full_size_fraction:
            clips = random_crops(clips, args.crop_size, crop_rng)
        x = to_video_tensor(clips, device)
        with accelerator.autocast():
            dist = raw.encode(x).latent_dist
            mu, logvar = dist.mean.float(), dist.logvar.float()
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            rec = decode_unclamped(raw, z)
        rec = rec.float()
        w = foreground_weight(x, args.fg_weight)
        err = rec - x
        l1 = (w * err.abs()).sum() / (w.sum() * 3)
        mse = (w * err.square()).sum() / (w.sum() * 3)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).mean()
        loss = l1 + args.mse_weight * mse + args.kl_weight * kl
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(vae.parameters(), args.max_grad_norm)
        lr = lr_at(budget.progress(step), step, args.learning_rate, args.lr_warmup_steps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        samples += len(x)
        history.add(step, loss=loss, l1=l1, mse=mse, kl=kl)
        if step % args.logging_steps == 0 or step == 1:
            history.flush()
            rate = samples / max(1e-6, time.time() - t_log)
            t_log, samples = time.time(), 0
            log(f"vae step {step} ({x.shape[-1]}px): loss {history.recent('loss', args.logging_steps):.4f} "
                f"(l1 {history.recent('l1', args.logging_steps):.4f}, "
                f"kl {history.recent('kl', args.logging_steps):.2f})"
                f" lr {lr:.2e} {rate:.1f} windows/s, {budget.left():.0f} s left")
            if args.report_to != "none":
                accelerator.log({"loss": history.recent("loss", args.logging_steps), "lr": lr}, step=step)
        if step % args.checkpointing_steps == 0 and not budget.done(step):
            path = save_checkpoint(accelerator, args.output_dir, step, _state(step, budget, history, stream),
                                   args.checkpoints_total_limit)
            log(f"saved {path}")
    history.flush()
    if step == 0:
        raise RuntimeError("the VAE made no training step within --max_minutes; raise the budget")
    save_checkpoint(accelerator, args.output_dir, step, _state(step, budget, history, stream),
                    args.checkpoints_total_limit)
    raw.eval()
    vae_dir = os.path.join(args.output_dir, "vae")
    raw.save_pretrained(vae_dir)
    log(f"saved {vae_dir} after {step} steps ({budget.train_seconds():.0f} s of training)")
    recon = {}
    try:
        recon = evaluate_reconstruction(raw, args, device, accelerator.autocast)
        log(f"reconstruction of {args.eval_clips} unseen clips: PSNR {recon['psnr']:.2f} dB, colour "
            f"{recon['color_accuracy']:.3f}, shape {recon['shape_accuracy']:.3f}, "
            f"motion {recon['motion_accuracy']:.3f}")
    except Exception as err:  # diagnostics only: never lose the trained VAE over them
        log(f"reconstruction check failed: {err!r}")
    hist = history.to_dict()
    result = {
        "stage": "vae",
        "steps": step,
        "train_seconds": budget.train_seconds(),
        "process_seconds": time.time() - PROCESS_START,
        "parameters": n_params,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "mixed_precision": accelerator.mixed_precision,
        "batch_size": args.train_batch_size,
        "window_frames": args.window_frames,
        "resolution": args.resolution,
        "crop_size": args.crop_size,
        "full_size_fraction": args.full_size_fraction,
        "windows_seen": step * args.train_batch_size,
        "learning_rate": args.learning_rate,
        "kl_weight": args.kl_weight,
        "init_from": args.init_from,
        "final_loss": float(np.mean(hist["values"]["loss"][-20:])),
        "reconstruction": recon,
        "losses": {"steps": hist["steps"], "loss": hist["values"]["loss"],
                   "loss_smoothed": smoothed(hist["values"]["loss"]), "l1": hist["values"]["l1"],
                   "kl": hist["values"]["kl"]},
        "args": vars(args),
    }
    write_json(os.path.join(args.output_dir, "vae_log.json"), result)
    if args.report_to != "none":
        accelerator.end_training()
    return result


def _state(step, budget, history, stream) -> dict:
    return {"step": step, "train_seconds": budget.train_seconds(), "history": history.to_dict(),
            "next_clip": stream.next_index - len(stream.pending)}


if __name__ == "__main__":
    main()
