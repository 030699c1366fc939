#!/usr/bin/env python
"""Regenerate docs/api.md (from the docstrings) and docs/cli.md (from the ``evdit`` argparse parser).

    python docs/generate_reference.py          # rewrites both files
    python docs/generate_reference.py --check  # exit 1 when either file is out of date

tests/test_docs.py checks that the two files name every public object and every command-line flag.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
from pathlib import Path

os.environ["COLUMNS"] = "110"  # argparse wraps usage lines to the terminal width: make it deterministic

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))

import diffusers_evdit  # noqa: E402
from diffusers_evdit.cli import build_parser  # noqa: E402

# Top-level names by topic (a name missing here lands in "Other"; tests/test_docs.py checks that every name is listed).
SECTIONS = {
    "Mask plans": ["MaskPlan", "apply_mask_plan", "TileAttentionConfig", "remove_mask_plan", "get_mask_plan",
                   "num_plan_layers", "mask_plan_processors"],
    "Pipeline": ["EfficientVDiTPipeline", "mask_plan_model_card", "GenerationDefaults"],
    "Layout and masks": ["TileLayout", "layout_from_latents", "reference_frames", "element_sparsity", "format_mask",
                         "tile_mask"],
    "Kernels": ["TileAttention", "tile_attention"],
    "Attention processors": ["TileSparseAttnProcessor", "CogVideoXTileSparseAttnProcessor",
                             "WanTileSparseAttnProcessor", "HunyuanVideoTileSparseAttnProcessor", "supported_models",
                             "refused_models"],
    "Attention diagnostics": ["profile_attention", "AttentionProfile", "tile_statistics", "record_transformer_inputs"],
    "Mask search": ["greedy_search", "budget_search", "solve_budget_lagrangian", "solve_budget_exact"],
}

# Submodules documented below the top-level names: (module, what it is). Modules with ``__all__`` list it; the others
# list the public functions and classes they define.
SUBMODULES = [
    ("diffusers_evdit.mlcd", "Stage 1: multi-step latent consistency distillation (MLCD)"),
    ("diffusers_evdit.kd", "Stage 3: knowledge distillation of the sparse student"),
    ("diffusers_evdit.search", "mask search (Algorithm 1 and the latency-budget search), costs and charts"),
    ("diffusers_evdit.analysis", "Attention Tile diagnostics and the transformer input helpers"),
    ("diffusers_evdit.schedulers", "the few-step MLCD schedulers a distilled pipeline saves"),
    ("diffusers_evdit.parallel", "tile-sparse attention under diffusers' context parallelism (docs/parallel.md)"),
    ("diffusers_evdit.generation", "generation defaults saved with a pipeline, and the work a call implies"),
    ("diffusers_evdit.video_io", "the one video writer (mp4, gif, png frames)"),
    ("diffusers_evdit.progress", "progress bars on terminals, ETA lines in logs"),
    ("diffusers_evdit.atomic", "folders written atomically (pipeline saves)"),
    ("diffusers_evdit.model_card", "the model card section of a saved pipeline"),
    ("diffusers_evdit.demo", "the shipped demo model, `evdit demo` and `evdit eval`"),
    ("diffusers_evdit.data", "synthetic captioned videos with known ground truth, video folders"),
    ("diffusers_evdit.metrics", "the analytic video metrics of `evdit eval`"),
    ("diffusers_evdit.tiny", "tiny random transformers and pipelines for tests and CPU dry runs"),
    ("diffusers_evdit.kernels", "the exact tile-attention kernels"),
    ("diffusers_evdit.distill", "the distillation stages and the training utilities the examples share"),
    ("diffusers_evdit.processors", "the per-family processors and their registry"),
]


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    para = doc.split("\n\n")[0].replace("\n", " ").strip()
    return para if len(para) <= 240 else para[:237].rsplit(" ", 1)[0] + " ..."


def _signature(name: str, obj) -> str:
    if not callable(obj):
        return name
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return name
    sig = re.sub(r"(: |-> )'([^']*)'", r"\1\2", sig)  # annotations quoted by `from __future__ import annotations`
    if len(sig) > 120:
        sig = sig[:117].rsplit(",", 1)[0] + ", ...)"
    return f"{name}{sig}"


def _source(obj) -> str:
    try:
        path = Path(inspect.getsourcefile(inspect.unwrap(obj))).resolve().relative_to(ROOT)
    except (TypeError, ValueError):
        return ""
    return f"../{path.as_posix()}"


def _kind(obj) -> str:
    return "class" if inspect.isclass(obj) else "function" if callable(obj) else "constant"


def _entry(qualified: str, short: str, obj) -> str:
    src = _source(obj)
    link = f" ([source]({src}))" if src else ""
    return f"* `{_signature(short, obj)}` *{_kind(obj)}*{link}: {_first_line(obj) or '(no docstring)'}"


def _module_names(mod) -> list[str]:
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, o in vars(mod).items() if not n.startswith("_")
                 and (inspect.isfunction(o) or inspect.isclass(o)) and getattr(o, "__module__", "") == mod.__name__]
    return [n for n in names if (inspect.isclass(getattr(mod, n)) or inspect.isfunction(getattr(mod, n)))
            and _written_in_source(getattr(mod, n))]


def _written_in_source(obj) -> bool:
    """False for classes made at run time (``EfficientVDiTPipeline.subclass_for`` registers one per base pipeline)."""
    try:
        inspect.getsource(obj)
    except (OSError, TypeError):
        return False
    return True


def api_markdown() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/generate_reference.py`; do not edit by hand. Every top-level "
        "name has a runnable example in its docstring (`help(diffusers_evdit.MaskPlan)`; `tests/test_docs.py` runs "
        "them). Concepts: [README](../README.md#concepts); the pipeline: [pipeline.md](pipeline.md); multi-GPU: "
        "[parallel.md](parallel.md); command line: [cli.md](cli.md).",
        "",
        "## `diffusers_evdit` (top level)",
        "",
        "`from diffusers_evdit import ...`",
        "",
    ]
    listed = set()
    other = [n for n in diffusers_evdit.__all__ if not any(n in names for names in SECTIONS.values())]
    for title, names in [*SECTIONS.items(), ("Other", other)]:
        names = [n for n in names if n in diffusers_evdit.__all__]
        if not names:
            continue
        lines += [f"### {title}", ""]
        for name in names:
            lines.append(_entry(f"diffusers_evdit.{name}", name, getattr(diffusers_evdit, name)))
            listed.add(name)
        lines.append("")
    lines += ["## Submodules", ""]
    for modname, what in SUBMODULES:
        mod = importlib.import_module(modname)
        lines += [f"### `{modname}`", "", _first_line(mod) or f"{what[0].upper()}{what[1:]}.", ""]
        for name in _module_names(mod):
            lines.append(_entry(f"{modname}.{name}", name, getattr(mod, name)))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name) or ""


# Meanings of flags whose argparse help is empty: (command, flag) -> text; ("*", flag) for every command.
FILL_IN = {
    ("*", "--seed"): "random seed",
    ("*", "--guidance-scale"): "classifier-free guidance scale",
    ("*", "--no-progress"): "hide progress bars",
    ("*", "--height"): "video height in pixels (default: the pipeline's)",
    ("*", "--width"): "video width in pixels (default: the pipeline's)",
    ("*", "--fps"): "frames per second of the written video",
    ("evdit generate", "--prompt"): "the text prompt",
    ("evdit generate", "--negative-prompt"): "negative prompt for classifier-free guidance",
    ("evdit plan uniform", "--layers"): "number of plan entries (`num_plan_layers(transformer)`)",
    ("evdit plan uniform", "--k"): "reference frames of every layer",
    ("evdit plan uniform", "--model-class"): "transformer class the plan is for (checked when applied)",
    ("evdit plan uniform", "--out"): "plan JSON to write",
    ("evdit plan show", "path"): "plan JSON file",
    ("evdit plan show", "--tokens-per-frame"): "video tokens per latent frame",
}


def _flag_rows(parser: argparse.ArgumentParser, path: str = "") -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}` (positional)"
        if action.option_strings and action.nargs != 0:
            name += f" `{action.metavar or action.dest.upper()}`"
        required = action.required or not action.option_strings
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        default = "required" if required else ("" if unset else f"`{action.default}`")
        key = action.option_strings[0] if action.option_strings else action.dest
        help_text = action.help or FILL_IN.get((path, key)) or FILL_IN.get(("*", key), "")
        text = help_text.replace("|", "\\|").replace("\n", " ")
        if action.choices:
            text = (text.rstrip(".") + ". " if text else "") + f"Choices: {', '.join(map(str, action.choices))}."
        rows.append(f"| {name} | {default} | {text} |")
    return rows


def _command_section(path: str, parser: argparse.ArgumentParser, help_text: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", ""]
    if help_text:
        lines += [help_text[0].upper() + help_text[1:] + ".", ""]
    subs = list(_subparsers(parser))
    if subs:
        lines += ["Subcommands: " + ", ".join(f"`{path} {name}`" for name, _, _ in subs) + ".", ""]
        for name, sub, sub_help in subs:
            lines += _command_section(f"{path} {name}", sub, sub_help, level + 1)
        return lines
    usage = [line[len("usage: "):] if i == 0 else line[len("usage: "):] if line.startswith(" " * 7) else line
             for i, line in enumerate(parser.format_usage().strip().splitlines())]
    lines += ["```", *usage, "```", ""]
    rows = _flag_rows(parser, path)
    if rows:
        lines += ["| flag | default | meaning |", "| --- | --- | --- |", *rows, ""]
    return lines


def cli_markdown() -> str:
    parser = build_parser()
    subs = list(_subparsers(parser))
    lines = [
        "# `evdit` command line",
        "",
        "Generated from the argparse parser by `python docs/generate_reference.py`; do not edit by hand. "
        "`evdit <command> --help` prints the same. Commands that take `--device` default to CUDA when present. "
        "Errors in the inputs (a bad plan file, a missing model folder) print `evdit: error: ...` and exit with "
        "status 2. Every command takes `-q/--quiet` (results and errors only) and `-v/--verbose` (per-step detail, "
        "library info); progress is a bar on a terminal and a line every few seconds with an ETA in a log file. "
        "`evdit generate`, `evdit demo` and `evdit eval` use the model folder's `generation_defaults.json` (frames, "
        "size, steps, guidance, fps) unless a flag overrides it; `evdit profile` and `evdit search` take its frames "
        "and size. Each takes a student folder shipped as a weight delta inside its base pipeline's folder "
        "(`--model diffusers_evdit/demo_model/evdit`, [pipeline.md](pipeline.md#student-folders)).",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for name, _, help_text in subs:
        lines.append(f"| [`evdit {name}`](#evdit-{name}) | {help_text} |")
    lines.append("")
    for name, sub, help_text in subs:
        lines += _command_section(f"evdit {name}", sub, help_text, 2)
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for path, text in ((DOCS / "api.md", api_markdown()), (DOCS / "cli.md", cli_markdown())):
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python docs/generate_reference.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
