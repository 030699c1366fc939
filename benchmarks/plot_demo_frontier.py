"""Issue 21's quality-against-speed frontier on the demo model, drawn from the committed H100 results.

Reads ``benchmarks/results/demo-rows-h100.json`` and plots, per row, the paired difference in final score from Base
(mean +- standard error over the 192 test videos) against the denoising speedup over Base. It measures nothing: every
point is a number the JSON already holds, and the figure marks which timing each point has.

* Quality: the top-level rows (Base at 10 and 4 steps, the shipped MLCD and Efficient-vDiT), the 8-step students over
  three training seeds (``stage1_steps_s8_seeds.summary``) and the single 8-step run with a plan and KD
  (``stage1_steps_s8_evdit``).
* Speed: the interleaved rounds of ``gpu_timing`` where a row of the same cost was timed there (the shipped 4-step
  rows, and any 8-step row without a plan); the row's own single timing otherwise, drawn hollow.
* The shaded corner is the issue's target: within 0.01 of Base at >= 5x.

    python benchmarks/plot_demo_frontier.py --out benchmarks/results/demo-rows-h100.png
"""

from __future__ import annotations

import argparse
import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "demo-rows-h100.json")
NEEDED = ("rows", "gpu_timing", "stage1_steps_s8_seeds", "stage1_steps_s8_evdit")  # the parts of the JSON it reads
LABELS = {"MLCD": "MLCD (shipped, 4 steps)", "Efficient-vDiT": "Efficient-vDiT (shipped, 4 steps)",
          "Base-10": "Base, 10 steps", "Base-4": "Base, 4 steps"}  # the top-level rows' names, as the figure shows them


def frontier_points(data: dict, with_plans_without_kd: bool = False) -> list[dict]:
    """The plotted points: ``name``, ``speedup``, ``diff`` and ``stderr`` (paired against Base), ``interleaved``
    (whether the speedup comes from ``gpu_timing``'s alternating rounds) and ``sparse``. ``with_plans_without_kd``
    keeps the top-level rows of the MLCD student under plans without KD (the plan curve)."""
    timing = data["gpu_timing"]
    rounds = {r["name"]: r["wallclock_speedup"] for r in timing["rows_timing"]["rows"]}
    by_steps = {r["steps"]: r["wallclock_speedup"] for r in timing["steps_timing"]["rows"] if r["name"] != "Base"}
    points = [dict(name="Base (20 steps, CFG)", speedup=1.0, diff=0.0, stderr=0.0, interleaved=True, sparse=False)]
    for row in data["rows"]:
        if row["name"] == "Base" or ("no KD" in row["name"] and not with_plans_without_kd):
            continue
        paired = row["paired_difference_vs_first_row"]
        speedup, interleaved = rounds.get(row["name"]), True
        if speedup is None:
            speedup, interleaved = row["wallclock_speedup"], False
        points.append(dict(name=LABELS.get(row["name"], row["name"]), speedup=speedup, diff=paired["mean"],
                           stderr=paired["stderr"], interleaved=interleaved, sparse=row["plan"]["sparsity"] > 0))
    seeds = data["stage1_steps_s8_seeds"]["summary"]["paired_vs_base"]
    points.append(dict(name="8 steps, mean of 3 training seeds", speedup=by_steps[8], diff=seeds["mean"],
                       stderr=seeds["stderr"], interleaved=True, sparse=False))
    for row in data["stage1_steps_s8_evdit"]["rows"]:
        if "shipped-plan + KD" in row["name"]:
            paired = row["paired_difference_vs_first_row"]
            points.append(dict(name="8 steps + plan + KD (one run)", speedup=row["wallclock_speedup"],
                               diff=paired["mean"], stderr=paired["stderr"], interleaved=False, sparse=True))
    return points


def plot_frontier(points: list[dict], device_name: str, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax.fill_between([5.0, 20.0], -0.01, 0.05, color="tab:green", alpha=0.12, label="issue 21's target")
    for p in points:
        color = "tab:orange" if p["sparse"] else "tab:blue"
        ax.errorbar(p["speedup"], p["diff"], yerr=p["stderr"], fmt="s" if p["sparse"] else "o", capsize=3,
                    color=color, markerfacecolor=color if p["interleaved"] else "white")
        ax.annotate(p["name"], (p["speedup"], p["diff"]), textcoords="offset points", xytext=(6, 3), fontsize=7)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(0.8, 20.0)
    ax.set_ylim(-0.3, 0.05)
    ax.set_xlabel(f"denoising wall-clock speedup over Base ({device_name}); hollow: a single timing")
    ax.set_ylabel("final score minus Base's (paired, +- s.e.)")
    ax.set_title("demo model, 64 test prompts x 3 seeds; squares: sparse plans", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=RESULTS, help="demo-rows-h100.json (default: the committed one)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--with-plans-without-kd", action="store_true",
                        help="add the MLCD student under plans without KD (single timings, within launch noise)")
    args = parser.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        data = json.load(f)
    missing = [k for k in NEEDED if k not in data]
    if missing:
        raise SystemExit(f"{args.results} lacks {', '.join(missing)}: pass the committed demo-rows-h100.json, or a "
                         "result with the same parts (benchmarks/results/MANIFEST.md names the command of each)")
    points = frontier_points(data, with_plans_without_kd=args.with_plans_without_kd)
    print(f"{'row':<44} {'speedup':>8} {'vs Base':>8} {'s.e.':>6}  timing")
    for p in points:
        print(f"{p['name']:<44} {p['speedup']:>7.2f}x {p['diff']:>+8.3f} {p['stderr']:>6.3f}  "
              f"{'interleaved rounds' if p['interleaved'] else 'single'}")
    print(f"drew {plot_frontier(points, data['gpu_timing']['device_name'], args.out)}")
    return points


if __name__ == "__main__":
    main()
