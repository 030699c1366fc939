#!/usr/bin/env python
"""Evaluate the freshly trained demo pipeline and write its model card, loss curves and samples.

Stage 3 of ``examples/train_demo.sh``. On the pipeline folder written by ``train_demo_t2v.py``:

1. picks the classifier-free guidance scale with the best final score on a validation set of held-out scenes
   (``eval_prompts(n, split="validation")``, disjoint from the test prompts) and writes it to ``evdit_demo.json``;
2. evaluates the dense model on ``--eval_prompts`` held-out prompts (the ``evdit eval`` table, with the real
   synthetic videos of the same scenes as reference) and, time permitting, a uniform tile plan (``--sparse_plan``)
   on the same seeds with PSNR/SSIM against dense;
3. writes into the folder: ``README.md`` (model card: data, architecture, steps, losses, device, time, metrics),
   ``training_log.json`` (VAE and transformer loss curves, settings, timings, evaluation), ``eval.json``,
   ``samples.png`` / ``samples.gif`` (real | dense | sparse) and ``loss_curves.png``.

Every part after loading is optional under the time budget (``--max_minutes``): when time runs short the card is
written with what was measured. The weights are never touched.

    python examples/train_demo_card.py --pipeline_dir out --vae_log work/vae/vae_log.json \\
        --t2v_log work/t2v/t2v_log.json --max_minutes 1.3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback

import numpy as np
import torch

from train_demo_common import PROCESS_START, add_repo_to_path, log, write_json

add_repo_to_path()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pipeline_dir", required=True)
    p.add_argument("--vae_log", default=None)
    p.add_argument("--t2v_log", default=None)
    p.add_argument("--eval_prompts", type=int, default=None, help="held-out prompts evaluated (default 64; 2 smoke)")
    p.add_argument("--select_prompts", type=int, default=None, help="validation prompts for guidance (default 24)")
    p.add_argument("--guidance_scales", default=None, help="comma list tried (default 1,2.5,4,6; 1,4 smoke)")
    p.add_argument("--sparse_plan", default="uniform:2", help="plan evaluated next to dense ('none' to skip)")
    p.add_argument("--batch_size", type=int, default=None, help="videos per pipeline call (default 32 on CUDA)")
    p.add_argument("--workers", type=int, default=None, help="metric processes (default: cores - 2)")
    p.add_argument("--max_minutes", type=float, default=1.5, help="wall-clock budget of this process")
    p.add_argument("--started_at", type=float, default=None, help="epoch seconds when the whole run started")
    p.add_argument("--device", default=None)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and (args.device is None or args.device.startswith("cuda"))
    defaults = dict(
        eval_prompts=2 if args.smoke else 64, select_prompts=2 if args.smoke else 24,
        guidance_scales="1,4" if args.smoke else "1,2.5,4,6", batch_size=32 if cuda else 2,
        workers=0 if args.smoke else max(1, min(16, (os.cpu_count() or 2) - 2)),
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def _read(path):
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {}


def _size_mb(folder: str) -> dict:
    sizes, total = {}, 0
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".safetensors"):
                n = os.path.getsize(os.path.join(root, f))
                sizes[os.path.relpath(os.path.join(root, f), folder)] = round(n / 2**20, 2)
                total += n
    return {"files": sizes, "total_mb": round(total / 2**20, 2)}


def _metrics_table(columns: list[tuple[str, dict]]) -> list[str]:
    from diffusers_evdit.demo import EVAL_KEYS

    lines = ["| metric | " + " | ".join(name for name, _ in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for key in list(EVAL_KEYS) + ["dynamic_agreement"]:
        cells = []
        for _, res in columns:
            v = res.get(key)
            cells.append("n/a" if v is None else f"{v:.3f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _loss_plot(path: str, vae_log: dict, t2v_log: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, lg, title in ((axes[0], vae_log, "VAE loss"), (axes[1], t2v_log, "flow-matching loss")):
        losses = lg.get("losses") or {}
        if losses.get("steps"):
            ax.plot(losses["steps"], losses["loss"], lw=0.4, alpha=0.4, label="per step")
            ax.plot(losses["steps"], losses["loss_smoothed"], lw=1.5, label="mean of 50")
            ax.set_yscale("log")
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _fmt_s(x) -> str:
    return "n/a" if x is None else f"{x:.0f} s"


def model_card(info: dict) -> str:
    """The README.md of the trained demo pipeline."""
    gen, vae_log, t2v_log = info["generation"], info["vae_log"], info["t2v_log"]
    arch, dense, sparse = info["architecture"], info.get("dense"), info.get("sparse")
    recon = vae_log.get("reconstruction") or {}
    L = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-video",
        "license: apache-2.0",
        "tags:",
        "- diffusers-evdit",
        "- efficient-vdit",
        "- text-to-video",
        "- wan",
        "- synthetic-data",
        "---",
        "",
        "# diffusers-evdit demo model: a small Wan text-to-video pipeline for synthetic moving shapes",
        "",
        "A standard diffusers `WanPipeline` trained from scratch by `examples/train_demo.sh` on procedurally generated "
        "captioned clips (`diffusers_evdit.data`): one or two circles, squares or triangles in six colours moving "
        "left, right, up, down, bouncing or standing still on a dark, gray or light background. It is the default "
        "model of `evdit demo` and `evdit eval`: small enough for a CPU, trained enough that its attention has the "
        "frame-tile structure Efficient-vDiT exploits, with exact, weight-free metrics (`diffusers_evdit.metrics`).",
        "",
        "## Use",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        "",
        'pipe = DiffusionPipeline.from_pretrained("diffusers_evdit/demo_model")  # offline, float32 by default',
        "video = pipe(",
        '    "a red circle moving left on a dark background",',
        f"    num_frames={gen['num_frames']}, height={gen['height']}, width={gen['width']},",
        f"    max_sequence_length={gen['max_sequence_length']}, num_inference_steps={gen['num_inference_steps']}, "
        f"guidance_scale={gen['guidance_scale']},",
        f").frames[0]  # ({gen['num_frames']}, {gen['height']}, {gen['width']}, 3) floats in [0, 1]",
        "```",
        "",
        "These settings are also in `evdit_demo.json`. Pass `max_sequence_length` as trained: Wan pipelines zero-pad "
        "the prompt embedding to it and the transformer attends to the padding (training used "
        f"{gen['max_sequence_length']} tokens, with a few batches padded up to 512). With diffusers-evdit: "
        "`evdit demo --out demo/`, `evdit eval --prompts 64 --json eval.json`, or "
        f"`EfficientVDiTPipeline.from_pretrained(path, mask_plan=MaskPlan.uniform({arch['num_layers']}, k=2))`.",
        "",
        "## Components",
        "",
        "| component | class | configuration | parameters | stored |",
        "| --- | --- | --- | --- | --- |",
        f"| transformer | `WanTransformer3DModel` | {arch['num_layers']} layers, dim {arch['dim']} "
        f"({arch['heads']} heads), "
        f"FFN {arch['ffn_dim']}, patch (1, 2, 2), text dim {arch['text_dim']} | {info['params']['transformer']:,} | "
        "float16 (float32 norms/time embedding) |",
        f"| vae | `AutoencoderKLWan` | base dim {arch['vae_base_dim']}, mult {list(arch['vae_dim_mult'])}, "
        f"{arch['vae_res_blocks']} res block, z {arch['z_dim']}, 4x temporal / 8x spatial | "
        f"{info['params']['vae']:,} | float16 |",
        f"| text_encoder | `UMT5EncoderModel` | {arch['text_layers']} layers, d_model {arch['text_dim']}, "
        f"{arch['text_heads']} heads | {info['params']['text_encoder']:,} | float32 |",
        f"| tokenizer | `PreTrainedTokenizerFast` | word level, {info['vocab_size']} tokens (caption vocabulary) | - | "
        "tokenizer.json |",
        "| scheduler | `UniPCMultistepScheduler` | flow prediction, flow sigmas, shift "
        f"{t2v_log.get('flow_shift', 'n/a')} | - | - |",
        "",
        f"Weights: {info['sizes']['total_mb']} MB of safetensors. A clip of {gen['num_frames']} frames at "
        f"{gen['height']}x{gen['width']} is {gen['latent_frames']} latent frames x {gen['tokens_per_frame']} tokens "
        "(the `F` and tokens-per-frame of the Attention Tile masks; no text tokens in Wan self-attention).",
        "",
        "## Data",
        "",
        f"`diffusers_evdit.data`: seeded synthetic clips, {gen['num_frames']} frames {gen['height']}x{gen['width']}, "
        "captions from templates "
        "(\"a green square bouncing and a blue triangle standing still on a light background\"). Training used the "
        "`train` split only: the 12 held-out (colour, shape, motion) triples of `data.HELDOUT_COMBOS` never occur "
        "in it, so every evaluation prompt below is a composition the model has not seen.",
        "",
        "## Training",
        "",
        f"Device: {info['device']}. Total wall time of `examples/train_demo.sh` (data generation, both stages, "
        f"evaluation, this card): {_fmt_s(info.get('total_seconds'))}.",
        "",
        "| stage | steps | batch | data | lr | time | final loss |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| VAE (`train_demo_vae.py`) | {vae_log.get('steps', 'n/a')} | {vae_log.get('batch_size', 'n/a')} windows "
        f"of {vae_log.get('window_frames', 'n/a')} frames | {vae_log.get('windows_seen', 'n/a')} windows of fresh "
        f"clips | {vae_log.get('learning_rate', 'n/a')} | {_fmt_s(vae_log.get('train_seconds'))} | "
        f"{vae_log.get('final_loss', float('nan')):.4f} |",
        f"| transformer + text encoder (`train_demo_t2v.py`) | {t2v_log.get('steps', 'n/a')} | "
        f"{t2v_log.get('batch_size', 'n/a')} clips | {t2v_log.get('num_clips', 'n/a')} clips, "
        f"{t2v_log.get('epochs', float('nan')):.1f} epochs | {t2v_log.get('learning_rate', 'n/a')} | "
        f"{_fmt_s(t2v_log.get('train_seconds'))} | {t2v_log.get('final_loss', float('nan')):.4f} |",
        "",
        "VAE: foreground-weighted L1 + MSE + KL (weight "
        f"{vae_log.get('kl_weight', 'n/a')}), random {vae_log.get('window_frames', 'n/a')}-frame windows, mixed "
        f"precision {vae_log.get('mixed_precision', 'n/a')}. Reconstruction of unseen {gen['num_frames']}-frame "
        f"clips: PSNR {recon.get('psnr', float('nan')):.2f} dB, colour accuracy "
        f"{recon.get('color_accuracy', float('nan')):.3f}, object class accuracy "
        f"{recon.get('shape_accuracy', float('nan')):.3f}, motion accuracy "
        f"{recon.get('motion_accuracy', float('nan')):.3f}.",
        "",
        "Transformer and text encoder: trained jointly from random init with the rectified-flow loss on the VAE "
        "posterior means (per-channel normalised; `latents_mean`/`latents_std` in the VAE config), logit-normal "
        f"timesteps shifted by {t2v_log.get('flow_shift', 'n/a')}, {t2v_log.get('caption_dropout', 'n/a')} caption "
        f"dropout (for classifier-free guidance), AdamW, cosine schedule to the time budget, EMA "
        f"{t2v_log.get('ema_decay', 'n/a')} (the saved weights), mixed precision "
        f"{t2v_log.get('mixed_precision', 'n/a')}. The text encoder is trained because "
        "two-object captions need contextual embeddings that bind each colour to its shape and motion.",
        "",
        "Loss curves: `training_log.json` (every step of both stages)" + (
            ", plotted in `loss_curves.png`." if info.get("loss_plot") else "."),
        "",
    ]
    if info.get("loss_plot"):
        L += ["![loss curves](loss_curves.png)", ""]
    L += ["## Evaluation", ""]
    if dense:
        n = dense.get("num_videos")
        L += [
            f"{n} held-out test prompts (`diffusers_evdit.demo.eval_prompts({n}, split='test')`), seed `i` for prompt `i`, {gen['num_inference_steps']} steps, guidance "
            f"{gen['guidance_scale']}. `real` scores the rendered ground-truth clips of the same scenes (the ceiling "
            "of each metric). Scores are 0-1, higher is better, except `frechet` (Frechet distance of analytic video "
            "features to the real clips, lower is better).",
            "",
        ]
        cols = [("real videos", dense.get("reference") or {}), ("dense", dense)]
        if sparse:
            cols.append((f"tile plan {info.get('sparse_plan')} ({sparse['plan']['sparsity']:.0%} sparse)", sparse))
        L += _metrics_table(cols)
        L.append("")
        if sparse and info.get("fidelity"):
            L += [f"Tile plan vs dense on the same seeds (no distillation): PSNR {info['fidelity']['psnr']:.2f} dB, "
                  f"SSIM {info['fidelity']['ssim']:.3f}.", ""]
        if dense.get("timing"):
            t = dense["timing"]
            L += [f"Generation on {info['device']}: {t['video_s']:.2f} s per video at batch {t['batch_size']} "
                  "(text encoding, sampling and decoding).", ""]
    else:
        L += ["Not evaluated (no time left in the run); run `evdit eval --model <this folder> --prompts 64`.", ""]
    if info.get("guidance_search"):
        L += ["Guidance scale chosen on a separate validation set of held-out scenes "
              f"({info['select_prompts']} prompts):", "", "| guidance | final score | colour | motion |",
              "| --- | --- | --- | --- |"]
        for g, r in info["guidance_search"]:
            L.append(f"| {g} | {r['final_score']:.3f} | {r['color_accuracy']:.3f} | "
                     f"{r['motion_direction_accuracy']:.3f} |")
        L.append("")
    if info.get("samples"):
        L += ["Samples (held-out prompts; rows: real, dense, tile plan):", "", "![samples](samples.png)", ""]
    L += [
        "## Limitations",
        "",
        "A toy model for a toy domain: it only knows the synthetic caption template and vocabulary, "
        f"{gen['num_frames']} frames at {gen['height']}x{gen['width']}. Its purpose is to make speed/quality "
        "trade-offs of attention tile plans measurable; it says nothing "
        "about quality on natural video.",
        "",
    ]
    if info.get("errors"):
        L += ["Card stage notes: " + "; ".join(info["errors"]), ""]
    return "\n".join(L)


def main(argv=None) -> dict:
    args = parse_args(argv)
    pool = None
    if args.workers > 1:  # metric processes, forked before CUDA is initialised
        from diffusers_evdit.demo.evaluation import metrics_pool

        pool = metrics_pool(args.workers)
    try:
        return _main(args, pool if pool is not None else args.workers)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _main(args, workers) -> dict:
    deadline = PROCESS_START + 60.0 * args.max_minutes - 5.0
    from diffusers_evdit.demo import (
        EVAL_KEYS,
        contact_sheet,
        eval_prompts,
        evaluate_pipeline,
        labeled_video_grid,
        load_pipeline,
        parse_plan,
        strip_private,
    )
    from diffusers_evdit.data import caption_vocabulary, save_video
    from diffusers_evdit.metrics import psnr, ssim

    folder = args.pipeline_dir
    vae_log, t2v_log = _read(args.vae_log), _read(args.t2v_log)
    errors: list[str] = []
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe, gen = load_pipeline(folder, device=device)
    log(f"loaded {folder} on {device}; {deadline - time.time():.0f} s left")
    arch_name = (gen.extra or {}).get("architecture", "demo")
    from diffusers_evdit.demo import ARCHITECTURES

    arch = ARCHITECTURES.get(arch_name, ARCHITECTURES["demo"])
    info: dict = {
        "generation": {**gen.to_dict(), "latent_frames": gen.latent_frames, "tokens_per_frame": gen.tokens_per_frame},
        "vae_log": vae_log, "t2v_log": t2v_log,
        "architecture": {k: getattr(arch, k) for k in arch.__dataclass_fields__},
        "params": {n: sum(p.numel() for p in getattr(pipe, n).parameters())
                   for n in ("transformer", "vae", "text_encoder")},
        "vocab_size": 3 + len(caption_vocabulary()), "sizes": _size_mb(folder),
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else (platform.processor() or "cpu"),
        "select_prompts": args.select_prompts, "sparse_plan": args.sparse_plan, "errors": errors,
    }
    result_all: dict = {}

    def time_left() -> float:
        return deadline - time.time()

    def est(n_videos: int) -> float:  # seconds for an evaluation of n videos, from what was measured so far
        per = info.get("_per_video_s", 0.5 if device.startswith("cuda") else 5.0)
        return n_videos * per + 3.0

    # 1. guidance scale
    scales = [float(g) for g in args.guidance_scales.split(",") if g.strip()]
    if len(scales) > 1:
        search = []
        try:
            val = eval_prompts(args.select_prompts, split="validation", seed=4242)
            for g in scales:
                if time_left() < est(args.select_prompts) + est(args.eval_prompts) + 10:
                    errors.append(f"guidance search stopped early at {g} (time)")
                    break
                t0 = time.time()
                r = evaluate_pipeline(pipe, gen, prompts=val, batch_size=args.batch_size, workers=workers,
                                      progress=False, guidance_scale=g, reference=False)
                info["_per_video_s"] = (time.time() - t0) / len(val)
                search.append((g, {k: r[k] for k in EVAL_KEYS if k != "frechet"}))
                log(f"guidance {g}: final {r['final_score']:.3f} colour {r['color_accuracy']:.3f} "
                    f"motion {r['motion_direction_accuracy']:.3f} ({time.time() - t0:.1f} s)")
            if search:
                best = max(search, key=lambda gr: (round(gr[1]["final_score"], 4), -gr[0]))
                gen.guidance_scale = best[0]
                info["guidance_search"] = search
                log(f"chose guidance {best[0]}")
        except Exception as err:
            errors.append(f"guidance search failed: {err!r}")
            traceback.print_exc()
    gen.extra = {**(gen.extra or {}), "guidance_selected_on": f"{args.select_prompts} validation held-out scenes"}
    gen.save(folder)
    info["generation"]["guidance_scale"] = gen.guidance_scale

    # 2. dense evaluation, then the tile plan
    dense = sparse = None
    try:
        if time_left() > est(args.eval_prompts):
            t0 = time.time()
            dense = evaluate_pipeline(pipe, gen, num_prompts=args.eval_prompts, batch_size=args.batch_size,
                                      workers=workers, progress=False)
            info["_per_video_s"] = (time.time() - t0) / args.eval_prompts
            log(f"dense on {args.eval_prompts} held-out prompts: final {dense['final_score']:.3f} colour "
                f"{dense['color_accuracy']:.3f} object {dense['object_class_accuracy']:.3f} motion "
                f"{dense['motion_direction_accuracy']:.3f} frechet {dense['frechet']:.4f} ({time.time() - t0:.1f} s)")
            ref = dense["reference"]
            log(f"real videos: colour {ref['color_accuracy']:.3f} motion {ref['motion_direction_accuracy']:.3f}")
        else:
            errors.append("dense evaluation skipped (time)")
        plan = None if args.sparse_plan in ("none", "") else parse_plan(args.sparse_plan, pipe.transformer)
        if dense is not None and plan is not None and time_left() > est(args.eval_prompts) + 5:
            pipe.set_mask_plan(plan)
            t0 = time.time()
            sparse = evaluate_pipeline(pipe, gen, num_prompts=args.eval_prompts, batch_size=args.batch_size,
                                       workers=workers, progress=False, reference=False)
            pipe.set_mask_plan(None)
            info["fidelity"] = {
                "psnr": float(np.mean([psnr(a, b) for a, b in zip(sparse["_videos"], dense["_videos"])])),
                "ssim": float(np.mean([ssim(a, b) for a, b in zip(sparse["_videos"], dense["_videos"])])),
            }
            log(f"{args.sparse_plan} ({sparse['plan']['sparsity']:.0%} sparse): final {sparse['final_score']:.3f}, "
                f"PSNR vs dense {info['fidelity']['psnr']:.2f} dB ({time.time() - t0:.1f} s)")
        elif dense is not None and plan is not None:
            errors.append("tile-plan evaluation skipped (time)")
    except Exception as err:
        errors.append(f"evaluation failed: {err!r}")
        traceback.print_exc()
    info["dense"] = None if dense is None else strip_private(dense)
    info["sparse"] = None if sparse is None else strip_private(sparse)

    # 3. samples, curves, logs, card
    if dense is not None:
        try:
            k = min(8, len(dense["_videos"]))
            rows = []
            for i in range(k):
                vids = [("real", dense["_real"][i]), ("dense", dense["_videos"][i])]
                if sparse is not None:
                    vids.append(("tile plan", sparse["_videos"][i]))
                rows.append((dense["per_video"][i]["prompt"], vids))
            contact_sheet(rows).save(os.path.join(folder, "samples.png"))
            ncol = len(rows[0][1])
            tiles = [v for _, vids in rows[:4] for _, v in vids]  # the GIF keeps the package small: 4 prompts
            labels = ["real", "dense", "tile plan"][:ncol]
            save_video(labeled_video_grid(tiles, ncol, labels), os.path.join(folder, "samples.gif"), fps=gen.fps)
            info["samples"] = True
        except Exception as err:
            errors.append(f"samples failed: {err!r}")
    try:
        info["loss_plot"] = _loss_plot(os.path.join(folder, "loss_curves.png"), vae_log, t2v_log)
    except Exception as err:
        errors.append(f"loss plot failed: {err!r}")
    info["total_seconds"] = None if args.started_at is None else time.time() - args.started_at
    eval_json = {"dense": info["dense"], "sparse": info["sparse"], "fidelity": info.get("fidelity"),
                 "guidance_search": info.get("guidance_search"), "sparse_plan": args.sparse_plan}
    write_json(os.path.join(folder, "eval.json"), eval_json)
    training_log = {
        "device": info["device"], "total_seconds": info["total_seconds"], "vae": vae_log, "t2v": t2v_log,
        "generation": gen.to_dict(), "evaluation_summary": {
            k: (None if info[k] is None else {m: info[k].get(m) for m in EVAL_KEYS}) for k in ("dense", "sparse")},
    }
    write_json(os.path.join(folder, "training_log.json"), training_log)
    info.pop("_per_video_s", None)
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(info))
    if info["sizes"]["total_mb"] > 40:
        log(f"WARNING: weights are {info['sizes']['total_mb']} MB (> 40 MB)")
    log(f"wrote the model card, training_log.json, eval.json and samples to {folder} "
        f"(weights {info['sizes']['total_mb']} MB)")
    for e in errors:
        log(f"note: {e}")
    result_all.update(info)
    return result_all


if __name__ == "__main__":
    main()
