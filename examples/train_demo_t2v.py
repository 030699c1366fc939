#!/usr/bin/env python
"""Train the demo model's transformer and text encoder with the flow-matching loss, then save the whole pipeline.

Stage 2 of ``examples/train_demo.sh``. Steps:

1. Render training-split clips (29 frames, 128x128, captions) in a process pool and encode them with the trained VAE
   (``--vae_path``, from ``train_demo_vae.py``) on the GPU, keeping only the posterior means (bf16, on the GPU; ~64 KB
   a clip). Stops at ``--num_clips`` or when its share of the time budget is spent.
2. Measure per-channel latent mean / std and store them in the VAE config (``latents_mean`` / ``latents_std``, which
   ``WanPipeline`` uses to de-normalise before decoding).
3. Train ``WanTransformer3DModel`` jointly with the small ``UMT5EncoderModel`` (both from random init) on
   rectified-flow targets: ``x_t = (1 - s) x_0 + s e``, target ``e - x_0``, timestep ``1000 s``, ``s`` logit-normal
   shifted by ``--flow_shift`` (the sampler's shift). Text is encoded exactly as ``WanPipeline`` does (padding to
   ``--max_sequence_length`` and zeroed padding embeddings); ``--caption_dropout`` of the captions are replaced by the
   empty prompt so that classifier-free guidance works; a few batches use longer zero padding so that the model
   tolerates other ``max_sequence_length`` values. Why train the text encoder: a frozen random encoder gives distinct
   word embeddings, but two-object captions such as "a red circle moving left and a green square bouncing" need
   contextual embeddings that bind each colour to its shape and motion; the 0.5M-parameter encoder learns that at no
   measurable cost.
4. Keep an EMA of the weights; save the EMA weights as a diffusers ``WanPipeline`` folder (``--pipeline_dir``:
   transformer and VAE in float16, text encoder in float32, offline word-level tokenizer, UniPC flow scheduler) with
   ``evdit_demo.json`` (the generation settings), and ``OUTPUT_DIR/t2v_log.json`` (losses, timing).

Single GPU (or CPU for ``--smoke``). The run stops at ``--max_train_steps`` or when ``--max_minutes`` (wall clock from
process start) is nearly spent, and always saves.

    python examples/train_demo_t2v.py --vae_path work/vae/vae --output_dir work/t2v --pipeline_dir out --max_minutes 5
    python examples/train_demo_t2v.py --vae_path /tmp/vae/vae --output_dir /tmp/t2v --smoke
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

import numpy as np
import torch

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
    p.add_argument("--vae_path", default=None,
                   help="trained AutoencoderKLWan folder (train_demo_vae.py's vae/); default: INIT_FROM/vae")
    p.add_argument("--init_from", default=None,
                   help="continue training the transformer and text encoder of this saved pipeline folder (its VAE "
                        "and latent statistics are kept; Adam state starts fresh; use another --seed for new clips)")
    p.add_argument("--output_dir", required=True, help="checkpoints and t2v_log.json")
    p.add_argument("--pipeline_dir", default=None, help="final pipeline folder (default OUTPUT_DIR/pipeline)")
    p.add_argument("--architecture", default=None, choices=["demo", "tiny"], help="default: demo (tiny with --smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None, help="default 128 (32 with --smoke)")
    p.add_argument("--num_frames", type=int, default=None, help="default 29 (9 with --smoke)")
    p.add_argument("--num_clips", type=int, default=None, help="training clips to encode (default 24000; 8 smoke)")
    p.add_argument("--encode_batch_size", type=int, default=None, help="default 48 (4 smoke)")
    p.add_argument("--encode_fraction", type=float, default=0.22,
                   help="share of the time left at the start that encoding may use")
    p.add_argument("--latents_cache", default=None, help="load the encoded clips from / save them to this file")
    p.add_argument("--train_batch_size", type=int, default=None, help="default 128 (16 smoke)")
    p.add_argument("--learning_rate", type=float, default=None, help="default 3e-4 (5e-3 smoke)")
    p.add_argument("--adam_weight_decay", type=float, default=0.0)
    p.add_argument("--lr_warmup_steps", type=int, default=None, help="default 200 (2 smoke)")
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--ema_decay", type=float, default=None, help="default 0.998 (0.9 smoke); 0 disables EMA")
    p.add_argument("--caption_dropout", type=float, default=0.1)
    p.add_argument("--max_sequence_length", type=int, default=32)
    p.add_argument("--long_padding_prob", type=float, default=0.05,
                   help="probability of a batch padded to 64-512 text tokens (robustness to max_sequence_length)")
    p.add_argument("--flow_shift", type=float, default=2.0, help="timestep shift of training and of the sampler")
    p.add_argument("--guidance_scale", type=float, default=4.0, help="default guidance written to evdit_demo.json")
    p.add_argument("--num_inference_steps", type=int, default=None, help="default 20 (2 smoke), evdit_demo.json")
    p.add_argument("--max_train_steps", type=int, default=None, help="default: unlimited (30 with --smoke)")
    p.add_argument("--max_minutes", type=float, default=5.0, help="wall-clock budget of the whole process")
    p.add_argument("--checkpointing_steps", type=int, default=None, help="default 1000 (10 smoke)")
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder')
    p.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "bf16", "fp16"])
    p.add_argument("--dataloader_num_workers", type=int, default=None, help="render processes (default: cores - 2)")
    p.add_argument("--logging_steps", type=int, default=None, help="default 50 (5 smoke)")
    p.add_argument("--report_to", default="none", choices=["none", "tensorboard", "wandb"])
    p.add_argument("--smoke", action="store_true", help="tiny model, 32x32 clips, few steps: a CPU test of the script")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = dict(
        architecture="tiny" if smoke else "demo", resolution=32 if smoke else 128, num_frames=9 if smoke else 29,
        num_clips=8 if smoke else 24000, encode_batch_size=4 if smoke else 48,
        train_batch_size=16 if smoke else 128, learning_rate=5e-3 if smoke else 3e-4,
        lr_warmup_steps=2 if smoke else 200, ema_decay=0.9 if smoke else 0.998,
        num_inference_steps=2 if smoke else 20, max_train_steps=30 if smoke else None,
        checkpointing_steps=10 if smoke else 1000, dataloader_num_workers=0 if smoke else default_workers(),
        logging_steps=5 if smoke else 50,
    )
    if args.vae_path is None:
        if not args.init_from:
            p.error("--vae_path is required (or --init_from a pipeline folder)")
        args.vae_path = os.path.join(args.init_from, "vae")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.pipeline_dir is None:
        args.pipeline_dir = os.path.join(args.output_dir, "pipeline")
    if (args.num_frames - 1) % 4 or args.resolution % 16:
        p.error("--num_frames must be 1 + 4n and --resolution a multiple of 16")
    return args


class EMA:
    """Exponential moving average of parameters (fp32), with warm-up ``min(decay, (1 + n) / (10 + n))``."""

    def __init__(self, params, decay: float):
        self.params = [p for p in params]
        self.shadow = [p.detach().clone().float() for p in self.params]
        self.decay = decay
        self.num_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        if self.decay <= 0:
            return
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - d)

    def weights(self) -> list[torch.Tensor]:
        return [p.detach().float() for p in self.params] if self.decay <= 0 else self.shadow

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        for s, v in zip(self.shadow, state["shadow"]):
            s.copy_(v)
        self.num_updates = int(state["num_updates"])


def encode_clips(args, budget, vae, device, autocast, stream) -> tuple[torch.Tensor, list[str]]:
    """Render (``stream``) and VAE-encode training clips (posterior means, bf16 on ``device``) within the encode
    budget, or load them from ``--latents_cache``."""
    if args.latents_cache and os.path.isfile(args.latents_cache):
        data = torch.load(args.latents_cache, map_location=device)
        log(f"loaded {len(data['captions'])} encoded clips from {args.latents_cache}")
        return data["latents"], list(data["captions"])
    deadline = time.time() + args.encode_fraction * budget.left()
    latents, captions = [], []
    t0 = time.time()
    with torch.no_grad():
        while len(captions) < args.num_clips:
            n = min(args.encode_batch_size, args.num_clips - len(captions))
            clips, caps = stream.batch(n)
            x = to_video_tensor(clips, device)
            with autocast():
                mu = vae.encode(x).latent_dist.mode()
            latents.append(mu.to(torch.bfloat16))
            captions += caps
            if len(latents) % 50 == 0:
                log(f"encoded {len(captions)} clips ({len(captions) / (time.time() - t0):.0f}/s)")
            if time.time() >= deadline and len(captions) >= min(args.num_clips, 4 * args.train_batch_size):
                log(f"encode budget spent: keeping {len(captions)} clips")
                break
    bank = torch.cat(latents)
    log(f"encoded {len(captions)} clips -> latents {tuple(bank.shape)} in {time.time() - t0:.1f} s")
    if args.latents_cache:
        torch.save({"latents": bank, "captions": captions}, args.latents_cache)
    return bank, captions


def latent_stats(bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``(N, C, T, H, W)`` latents (float32, chunked)."""
    c = bank.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64, device=bank.device)
    s2 = torch.zeros(c, dtype=torch.float64, device=bank.device)
    n = 0
    for chunk in bank.split(1024):
        x = chunk.double().transpose(0, 1).reshape(c, -1)
        s1 += x.sum(1)
        s2 += x.square().sum(1)
        n += x.shape[1]
    mean = s1 / n
    std = (s2 / n - mean.square()).clamp_min(1e-8).sqrt()
    return mean.float(), std.float()


def text_embeddings(text_encoder, ids, mask, pad_to: int | None = None) -> torch.Tensor:
    """``WanPipeline._get_t5_prompt_embeds`` with gradients: encoder output, padding rows zeroed, optionally
    zero-padded further to ``pad_to`` tokens."""
    emb = text_encoder(ids, mask).last_hidden_state
    emb = emb * mask[..., None].to(emb.dtype)
    if pad_to is not None and pad_to > emb.shape[1]:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], pad_to - emb.shape[1], emb.shape[2])], 1)
    return emb


def sample_sigmas(n: int, shift: float, device) -> torch.Tensor:
    """Logit-normal(0, 1) noise levels, shifted like the sampler: ``shift s / (1 + (shift - 1) s)``."""
    s = torch.sigmoid(torch.randn(n, device=device))
    return shift * s / (1.0 + (shift - 1.0) * s)


def flow_matching_batch(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
    """Rectified-flow training triple ``(x_t, target, timestep)`` as ``WanPipeline``'s flow sampler expects:
    ``x_t = (1 - s) x0 + s noise``, velocity target ``noise - x0``, timestep ``1000 s``."""
    sv = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - sv) * x0 + sv * noise, noise - x0, sigma * 1000.0


def main(argv=None) -> dict:
    args = parse_args(argv)
    budget = Budget(args.max_minutes, reserve_s=4.0 if args.smoke else 25.0, max_steps=args.max_train_steps)
    os.makedirs(args.output_dir, exist_ok=True)
    resume_path = resolve_resume(args.output_dir, args.resume_from_checkpoint)
    state = None
    if resume_path:
        state = load_trainer_state(resume_path)
    # the render pool forks: start it before CUDA is initialised
    stream = ClipStream(args.seed, args.num_frames, args.resolution, args.resolution, args.dataloader_num_workers,
                        prefetch=max(8, 3 * args.encode_batch_size))
    try:
        return _main(args, budget, resume_path, state, stream)
    finally:
        stream.close()


def _main(args, budget, resume_path, state, stream) -> dict:
    setup_torch(args.seed)
    from accelerate import Accelerator
    from diffusers import AutoencoderKLWan

    from diffusers_evdit.demo import build_text_encoder, build_transformer, caption_tokenizer

    accelerator = Accelerator(
        mixed_precision=mixed_precision(args.mixed_precision), project_dir=args.output_dir,
        log_with=None if args.report_to == "none" else args.report_to,
    )
    device = accelerator.device
    if args.report_to != "none":
        accelerator.init_trackers("evdit-demo-t2v", config=vars(args))

    # 1-2. data
    vae = AutoencoderKLWan.from_pretrained(args.vae_path, torch_dtype=torch.float32).to(device).eval()
    vae.requires_grad_(False)
    log(f"VAE from {args.vae_path}; {budget.left():.0f} s left")
    bank, captions = encode_clips(args, budget, vae, device, accelerator.autocast, stream)
    stream.close()
    if args.init_from:  # keep the normalisation the loaded transformer was trained with
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=bank.device)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=bank.device)
    else:
        mean, std = latent_stats(bank)
    bank = ((bank.float() - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)).to(torch.bfloat16)
    vae.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log(f"latent mean {[round(v, 3) for v in mean.tolist()]}")
    log(f"latent std  {[round(v, 3) for v in std.tolist()]}")

    tokenizer = caption_tokenizer()
    L = args.max_sequence_length
    tok = tokenizer(captions, padding="max_length", max_length=L, truncation=True, return_tensors="pt")
    ids_all, mask_all = tok.input_ids.to(device), tok.attention_mask.to(device)
    empty = tokenizer([""], padding="max_length", max_length=L, truncation=True, return_tensors="pt")
    ids_empty, mask_empty = empty.input_ids.to(device), empty.attention_mask.to(device)

    # 3. models
    prior_steps = 0
    if args.init_from:
        from diffusers import WanTransformer3DModel
        from transformers import UMT5EncoderModel

        from diffusers_evdit.demo import GenerationConfig

        transformer = WanTransformer3DModel.from_pretrained(args.init_from, subfolder="transformer",
                                                            torch_dtype=torch.float32).train()
        text_encoder = UMT5EncoderModel.from_pretrained(args.init_from, subfolder="text_encoder",
                                                        torch_dtype=torch.float32).train()
        prior_steps = int(GenerationConfig.load(args.init_from).extra.get("trained_steps", 0))
        log(f"continuing the transformer and text encoder of {args.init_from} ({prior_steps} steps so far)")
    else:
        transformer = build_transformer(args.architecture, seed=args.seed).train()
        text_encoder = build_text_encoder(args.architecture, seed=args.seed).train()
    args.prior_steps = prior_steps
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    n_params = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(0.9, 0.99), weight_decay=args.adam_weight_decay,
                                  **({"fused": True} if device.type == "cuda" else {}))
    transformer, text_encoder, optimizer = accelerator.prepare(transformer, text_encoder, optimizer)
    ema = EMA(list(accelerator.unwrap_model(transformer).parameters())
              + list(accelerator.unwrap_model(text_encoder).parameters()), args.ema_decay)
    accelerator.register_for_checkpointing(ema)
    step = 0
    if resume_path:
        accelerator.load_state(resume_path)
        step = int(state.get("step", 0))
        log(f"resumed from {resume_path} at step {step}")
    history = LossLog((state or {}).get("history"))
    budget.start_loop(float((state or {}).get("train_seconds", 0.0)))
    N, B = len(captions), args.train_batch_size
    log(f"transformer + text encoder {args.architecture}: {n_params / 1e6:.2f}M trainable parameters on {device} "
        f"(mixed precision {accelerator.mixed_precision}); {N} clips, batch {B}; {budget.left():.0f} s left")
    gen = torch.Generator(device=device).manual_seed(args.seed + step)
    rng = random.Random(args.seed + step)
    t_log, samples = time.time(), 0
    while not budget.done(step):
        idx = torch.randint(0, N, (B,), device=device, generator=gen)
        x0 = bank[idx].float()
        ids, mask = ids_all[idx], mask_all[idx]
        if args.caption_dropout > 0:
            drop = (torch.rand(B, device=device, generator=gen) < args.caption_dropout)[:, None]
            ids = torch.where(drop, ids_empty, ids)
            mask = torch.where(drop, mask_empty, mask)
        pad_to = rng.choice([64, 128, 256, 512]) if rng.random() < args.long_padding_prob else None
        s = sample_sigmas(B, args.flow_shift, device)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        xt, target, timestep = flow_matching_batch(x0, noise, s)
        with accelerator.autocast():
            emb = text_embeddings(text_encoder, ids, mask, pad_to)
            pred = transformer(hidden_states=xt, timestep=timestep, encoder_hidden_states=emb, return_dict=False)[0]
        loss = (pred.float() - target).square().mean()
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, args.max_grad_norm)
        lr = lr_at(budget.progress(step), step, args.learning_rate, args.lr_warmup_steps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update()
        step += 1
        samples += B
        history.add(step, loss=loss)
        if step % args.logging_steps == 0 or step == 1:
            history.flush()
            rate = samples / max(1e-6, time.time() - t_log)
            t_log, samples = time.time(), 0
            log(f"t2v step {step}: loss {history.recent('loss', args.logging_steps):.4f} lr {lr:.2e} "
                f"{rate:.0f} samples/s, {budget.left():.0f} s left")
            if args.report_to != "none":
                accelerator.log({"loss": history.recent("loss", args.logging_steps), "lr": lr}, step=step)
        if step % args.checkpointing_steps == 0 and not budget.done(step):
            path = save_checkpoint(accelerator, args.output_dir, step, _state(step, budget, history),
                                   args.checkpoints_total_limit)
            log(f"saved {path}")
    history.flush()
    if step == 0:
        raise RuntimeError("no training step within --max_minutes; raise the budget")
    train_seconds = budget.train_seconds()
    save_checkpoint(accelerator, args.output_dir, step, _state(step, budget, history), args.checkpoints_total_limit)

    # 4. the pipeline, with EMA weights
    save_pipeline(args, accelerator, transformer, text_encoder, ema, vae, tokenizer, mean, std, step)
    hist = history.to_dict()
    result = {
        "stage": "t2v",
        "steps": step,
        "train_seconds": train_seconds,
        "process_seconds": time.time() - PROCESS_START,
        "trainable_parameters": n_params,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "mixed_precision": accelerator.mixed_precision,
        "num_clips": N,
        "batch_size": B,
        "samples_seen": step * B,
        "epochs": step * B / N,
        "learning_rate": args.learning_rate,
        "ema_decay": args.ema_decay,
        "caption_dropout": args.caption_dropout,
        "flow_shift": args.flow_shift,
        "max_sequence_length": L,
        "final_loss": float(np.mean(hist["values"]["loss"][-50:])),
        "latents_mean": mean.tolist(),
        "latents_std": std.tolist(),
        "losses": {"steps": hist["steps"], "loss": hist["values"]["loss"],
                   "loss_smoothed": smoothed(hist["values"]["loss"])},
        "args": vars(args),
    }
    write_json(os.path.join(args.output_dir, "t2v_log.json"), result)
    log(f"done: {step} steps ({result['epochs']:.1f} epochs of {N} clips), final loss {result['final_loss']:.4f}; "
        f"pipeline in {args.pipeline_dir}")
    if args.report_to != "none":
        accelerator.end_training()
    return result


def _state(step, budget, history) -> dict:
    return {"step": step, "train_seconds": budget.train_seconds(), "history": history.to_dict()}


def _half_except_fp32_modules(model) -> None:
    """Cast to float16 for storage, keeping the modules diffusers wants in float32 (``_keep_in_fp32_modules``)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, param in model.named_parameters():
        if not keep.intersection(name.split(".")):
            param.data = param.data.half()


def save_pipeline(args, accelerator, transformer, text_encoder, ema, vae, tokenizer, mean, std, step) -> None:
    from diffusers import WanPipeline

    from diffusers_evdit.demo import GenerationConfig, build_scheduler, build_text_encoder, build_transformer

    tr = build_transformer(args.architecture)
    te = build_text_encoder(args.architecture)
    targets = list(tr.parameters()) + list(te.parameters())
    with torch.no_grad():
        for dst, src in zip(targets, ema.weights()):
            dst.copy_(src.to("cpu", torch.float32))
    tr.eval()
    te.eval()
    vae = vae.to("cpu").eval()
    vae.register_to_config(latents_mean=[float(v) for v in mean.tolist()], latents_std=[float(v) for v in std.tolist()])
    _half_except_fp32_modules(tr)
    _half_except_fp32_modules(vae)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=te, vae=vae, transformer=tr,
                       scheduler=build_scheduler(args.flow_shift))
    os.makedirs(args.pipeline_dir, exist_ok=True)
    pipe.save_pretrained(args.pipeline_dir, safe_serialization=True)
    GenerationConfig(
        num_frames=args.num_frames, height=args.resolution, width=args.resolution,
        max_sequence_length=args.max_sequence_length, num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        extra={"trained_steps": args.prior_steps + step, "architecture": args.architecture},
    ).save(args.pipeline_dir)
    log(f"saved pipeline to {args.pipeline_dir}")


if __name__ == "__main__":
    main()
