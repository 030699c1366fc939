"""The summary of ``device_ship.sh compare``: searched against uniform plans of equal sparsity, both after KD.

Reads the rows ``eval_demo_rows.py`` wrote (rows named ``searched-s<seed>`` and ``uniform-s<seed>``, one per training
seed, each with its per-video final scores on the same test prompts and sampling seeds) and, where ``--runs`` names
the folder of the KD runs, each run's ``kd_config.json`` and ``losses.jsonl``. Adds to the JSON:

* ``summary``: per plan, the final score of each training seed's student and their mean and standard deviation; and
  the paired difference searched - uniform: per test video (prompt x sampling seed), the mean over the training seeds
  of searched minus uniform, then its mean and standard error over the videos;
* ``kd_runs``: each run's plan, steps, training seconds, first loss and mean loss over its last 10 steps.

    python benchmarks/compare_summary.py compare-rows.json --runs runs/cmp --out compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np


def summarize(data: dict) -> dict:
    """``summary`` of the rows in ``data`` (see the module docs)."""
    seeds: dict[str, dict[int, list[float]]] = {"searched": {}, "uniform": {}}
    for row in data["rows"]:
        m = re.fullmatch(r"(searched|uniform)-s(\d+)", row["name"])
        if m:
            per_video = [v for r in row["rounds"] for v in r["per_video_final"]]
            seeds[m.group(1)][int(m.group(2))] = per_video
    common = sorted(set(seeds["searched"]) & set(seeds["uniform"]))
    if not common:
        raise SystemExit("no training seed has both a searched-s<N> and a uniform-s<N> row")
    out = {}
    for plan, by_seed in seeds.items():
        means = [float(np.mean(by_seed[s])) for s in common]
        out[plan] = {"per_training_seed": [round(x, 4) for x in means], "mean": round(float(np.mean(means)), 4),
                     "std": round(float(np.std(means, ddof=1)), 4) if len(means) > 1 else None}
    diffs = np.mean([np.subtract(seeds["searched"][s], seeds["uniform"][s]) for s in common], axis=0)
    out["paired_searched_minus_uniform"] = {
        "mean": round(float(diffs.mean()), 4), "stderr": round(float(diffs.std(ddof=1) / np.sqrt(len(diffs))), 4),
        "n_videos": len(diffs), "training_seeds": common,
        "how": "per test video (prompt x sampling seed), the mean over the training seeds of searched minus uniform"}
    return out


def kd_runs(folder: str) -> dict:
    """Each KD run of ``folder`` (``<name>/kd_config.json`` and ``losses.jsonl``) as a short summary."""
    runs = {}
    for name in sorted(os.listdir(folder)):
        config = os.path.join(folder, name, "kd_config.json")
        if not os.path.isfile(config):
            continue
        with open(config, encoding="utf-8") as f:
            kept = json.load(f)
        losses = []
        log = os.path.join(folder, name, "losses.jsonl")
        if os.path.isfile(log):
            with open(log, encoding="utf-8") as f:
                losses = [json.loads(line)["loss"] for line in f if line.strip()]
        runs[name] = {"plan_layers": kept.get("plan_layers"), "steps": kept.get("steps"),
                      "train_seconds": kept.get("train_seconds"),
                      "first_loss": round(losses[0], 5) if losses else None,
                      "mean_loss_last_10_steps": round(float(np.mean(losses[-10:])), 5) if losses else None}
    return runs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", help="the JSON of eval_demo_rows.py")
    p.add_argument("--runs", default=None, help="the folder of the KD runs (runs/cmp)")
    p.add_argument("--out", default=None, help="where to write the JSON with summary (default: over ROWS)")
    args = p.parse_args(argv)
    with open(args.rows, encoding="utf-8") as f:
        data = json.load(f)
    data["summary"] = summarize(data)
    if args.runs:
        data["kd_runs"] = kd_runs(args.runs)
    s = data["summary"]
    for plan in ("searched", "uniform"):
        print(f"{plan:9} per training seed {s[plan]['per_training_seed']}  mean {s[plan]['mean']:.4f} "
              f"+- {s[plan]['std'] or 0:.4f}")
    d = s["paired_searched_minus_uniform"]
    print(f"paired searched - uniform: {d['mean']:+.4f} +- {d['stderr']:.4f} (s.e., {d['n_videos']} videos)")
    with open(args.out or args.rows, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    return data


if __name__ == "__main__":
    main()
