"""VAE decoding of the demo model: default memory format against channels-last convolutions (CPU or GPU).

Decodes the demo's latents (8 latent frames of 16 x 16, the 29 frames of 128 x 128 that ``evdit demo`` writes) with
two copies of the shipped VAE, one as loaded and one after
:func:`diffusers_evdit.demo.channels_last_convolutions`, in alternating rounds; prints a table and writes JSON with
the median, min and max seconds per decode call and the largest difference between the two outputs.

    python benchmarks/decode_timing.py --threads 1 2 --batch 2 8 --rounds 7 \
        --into benchmarks/results/demo-curve-cpu.json     # kept there as its "decode_timing"
    python benchmarks/decode_timing.py --device cuda --batch 1 2 8 --rounds 20 --out decode-gpu.json  # a GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import numpy as np
import torch


def _load_vae(model: str):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(model, subfolder="vae", torch_dtype=torch.float32).eval()


def _time(vae, z) -> tuple[float, torch.Tensor]:
    cuda = z.device.type == "cuda"
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = vae.decode(z, return_dict=False)[0]
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, out


def main(argv=None) -> dict:
    from diffusers_evdit.demo import DEMO_MODEL_DIR, channels_last_convolutions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEMO_MODEL_DIR)
    p.add_argument("--device", default="cpu", help="cpu or cuda (on cuda --threads is ignored)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, nargs="+", default=[2, 8],
                   help="videos per decode call (evdit demo decodes a single video as a batch of two)")
    p.add_argument("--latent-frames", type=int, default=8)
    p.add_argument("--latent-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=None, help="write the result to this JSON file")
    p.add_argument("--into", default=None, help="add the result to this existing JSON file as its decode_timing")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    default = _load_vae(args.model).to(device)
    last = channels_last_convolutions(_load_vae(args.model).to(device))
    rows = []
    for threads in args.threads if device.type == "cpu" else [None]:
        if threads is not None:
            torch.set_num_threads(threads)
        for batch in args.batch:
            z = torch.randn(batch, default.config.z_dim, args.latent_frames, args.latent_size, args.latent_size,
                            generator=torch.Generator().manual_seed(0)).to(device)
            _time(default, z), _time(last, z)  # warm-up
            times = {"default": [], "channels_last": []}
            for _ in range(args.rounds):
                t, ref = _time(default, z)
                times["default"].append(t)
                t, out = _time(last, z)
                times["channels_last"].append(t)
            row = {"threads": threads, "batch": batch,
                   "max_abs_difference": float((out - ref).abs().max()),
                   **{f"{k}_s": {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v))}
                      for k, v in times.items()}}
            row["speedup"] = row["default_s"]["median"] / row["channels_last_s"]["median"]
            rows.append(row)
            where = f"threads {threads}" if threads else device.type
            print(f"{where} batch {batch}: default {row['default_s']['median']:.3f} s, channels-last "
                  f"{row['channels_last_s']['median']:.3f} s per call ({row['speedup']:.2f}x), "
                  f"max |diff| {row['max_abs_difference']:.1e}")
    result = {"what": __doc__.split("\n\n")[0], "command": "python benchmarks/decode_timing.py " + " ".join(
                  argv if argv is not None else sys.argv[1:]),
              "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                          else platform.processor() or platform.machine()),
              "device": device.type, "torch": torch.__version__,
              "date": datetime.date.today().isoformat(), "rounds": args.rounds,
              "latent_shape": [args.latent_frames, args.latent_size, args.latent_size], "rows": rows}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    if args.into:
        with open(args.into, encoding="utf-8") as f:
            data = json.load(f)
        data["decode_timing"] = result
        with open(args.into, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    return result


if __name__ == "__main__":
    main()
