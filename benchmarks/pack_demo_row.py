"""Pack a trained demo student (a pipeline folder from train_mlcd.py / train_kd.py) as a shipped row folder.

A row ships inside the base model folder as a 4-bit weight delta from the base transformer, its scheduler, its
generation defaults, its mask plan (a sparse row) and its training record (``diffusers_evdit.demo.rows``)::

    python benchmarks/pack_demo_row.py runs/mlcd-s4 diffusers_evdit/demo_model/mlcd
    python benchmarks/pack_demo_row.py runs/kd diffusers_evdit/demo_model/evdit --mlcd-record runs/mlcd-s4

The row's ``training.json`` holds the student's ``mlcd_config.json`` under ``"mlcd"`` (or ``--mlcd-record``'s, for
a KD student) and its ``kd_config.json`` under ``"kd"``. The folder's earlier contents are replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil


def _read(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def pack_row(source: str, row: str, base: str, mlcd_record: str | None = None) -> dict:
    """Write ``row`` from the student pipeline folder ``source``; returns what was written (file -> bytes)."""
    import torch
    from diffusers import WanTransformer3DModel

    from diffusers_evdit.weight_delta import save_delta
    from diffusers_evdit.generation import GENERATION_DEFAULTS_FILE, GenerationDefaults

    for need in ("transformer/config.json", "scheduler/scheduler_config.json"):
        if not os.path.isfile(os.path.join(source, need)):
            raise SystemExit(f"{source} lacks {need}: pass the pipeline folder a training script saved "
                             "(train_mlcd.py / train_kd.py --output_dir)")
    if not os.path.isfile(os.path.join(base, "transformer", "config.json")):
        raise SystemExit(f"{base} has no transformer/: pass the base model folder with --base")
    student = WanTransformer3DModel.from_pretrained(source, subfolder="transformer", torch_dtype=torch.float32)
    reference = WanTransformer3DModel.from_pretrained(base, subfolder="transformer", torch_dtype=torch.float32)
    record = {"mlcd": _read(os.path.join(mlcd_record or source, "mlcd_config.json")),
              "kd": _read(os.path.join(source, "kd_config.json"))}
    record = {k: v for k, v in record.items() if v is not None}
    if not record:
        raise SystemExit(f"{source}: neither mlcd_config.json nor kd_config.json; is it a trained student folder?")
    defaults = GenerationDefaults.load(source)
    if defaults is None:
        raise SystemExit(f"{source}: no {GENERATION_DEFAULTS_FILE} (or evdit_demo.json) to take the row's defaults from")
    shutil.rmtree(row, ignore_errors=True)
    os.makedirs(row)
    save_delta(student, reference, row)
    shutil.copytree(os.path.join(source, "scheduler"), os.path.join(row, "scheduler"))
    defaults.save(row)
    if os.path.isfile(os.path.join(source, "mask_plan.json")):
        shutil.copy(os.path.join(source, "mask_plan.json"), row)
    with open(os.path.join(row, "training.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    written = {}
    for folder, _, files in os.walk(row):
        for name in files:
            path = os.path.join(folder, name)
            written[os.path.relpath(path, row)] = os.path.getsize(path)
    return written


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="the trained student's pipeline folder")
    p.add_argument("row", help="the row folder to write, e.g. diffusers_evdit/demo_model/mlcd")
    p.add_argument("--base", default=None, help="the base model folder (default: the row folder's parent)")
    p.add_argument("--mlcd-record", default=None,
                   help="the MLCD student's folder whose mlcd_config.json goes into training.json (a KD student)")
    args = p.parse_args(argv)
    written = pack_row(args.source, args.row, args.base or os.path.dirname(os.path.abspath(args.row)),
                       args.mlcd_record)
    for name, size in sorted(written.items()):
        print(f"{size:>10}  {os.path.join(args.row, name)}")
    return written


if __name__ == "__main__":
    main()
