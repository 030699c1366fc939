"""The model card (README) section that :meth:`EfficientVDiTPipeline.save_pretrained` writes: plans, provenance,
measured speedups, between ``<!-- diffusers-evdit:begin -->`` and ``<!-- diffusers-evdit:end -->`` markers."""

from __future__ import annotations

import json
import os
from typing import Any

from .plan import MaskPlan

__all__ = ["CARD_BEGIN", "CARD_END", "PLAN_FILES", "mask_plan_model_card", "write_model_card"]

#: Plan file of each transformer slot in a saved pipeline folder.
PLAN_FILES = {"transformer": "mask_plan.json", "transformer_2": "mask_plan_2.json"}
CARD_BEGIN = "<!-- diffusers-evdit:begin -->"
CARD_END = "<!-- diffusers-evdit:end -->"
_SPEEDUP_KEYS = ("speedup", "speedups")


def _run_lengths(layers: list) -> list[tuple[int, int, Any]]:
    runs = []
    for i, k in enumerate(layers):
        if runs and runs[-1][2] == k:
            runs[-1] = (runs[-1][0], i, k)
        else:
            runs.append((i, i, k))
    return runs


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _format_speedup(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f}x"
    return _format_value(value)


def mask_plan_model_card(
    plans: dict[str, MaskPlan | None],
    pipeline_class: str | None = None,
    transformer_classes: dict[str, str] | None = None,
    scheduler_class: str | None = None,
) -> str:
    """The model card (README) section describing the mask plans of a pipeline, as Markdown.

    It states, per transformer, the plan file and k per layer, the provenance recorded in ``plan.metadata`` and the
    measured speedups when the metadata has a ``"speedup"`` (number or text) or ``"speedups"`` (``{setting: value}``)
    entry. The section is wrapped in ``<!-- diffusers-evdit:begin/end -->`` markers so that a later save replaces it.

    Args:
        plans: ``{"transformer": plan, "transformer_2": plan_or_None}``; ``None`` means dense.
        pipeline_class: base diffusers pipeline class name, for the loading note.
        transformer_classes: ``{slot: transformer class name}``.
        scheduler_class: the saved scheduler's class name.

    Example:
        >>> plan = MaskPlan([2, 2, None], metadata={"source": "search", "speedup": 1.8})
        >>> card = mask_plan_model_card({"transformer": plan}, "CogVideoXPipeline")
        >>> "1.80x" in card and "| 0-1 | 2 |" in card
        True
    """
    transformer_classes = transformer_classes or {}
    lines = [CARD_BEGIN, "## Efficient-vDiT attention tile plan", ""]
    lines += [
        "This pipeline runs with *Attention Tile* sparse attention from diffusers-evdit "
        "(`pip install diffusers-evdit`; Efficient-vDiT, arXiv 2502.06155): in each planned layer, latent "
        "frames attend only to themselves, `k` reference frames and the text (`k:F-k` masks).",
        "",
        "```python",
        "from diffusers_evdit import EfficientVDiTPipeline",
        "",
        'pipe = EfficientVDiTPipeline.from_pretrained("<this folder or repo id>")  # plans applied',
        "```",
        "",
    ]
    if pipeline_class:
        lines += [
            f"`DiffusionPipeline.from_pretrained` loads the same folder as a stock `{pipeline_class}` (dense "
            "attention, no plan; a few-step MLCD scheduler needs `import diffusers_evdit` first).",
            "",
        ]
    if scheduler_class:
        lines += [f"Scheduler saved with the pipeline: `{scheduler_class}` (`scheduler/scheduler_config.json`).", ""]
    for slot, plan in plans.items():
        cls = transformer_classes.get(slot)
        title = f"### `{slot}`" + (f" ({cls})" if cls else "")
        lines += [title, ""]
        if plan is None:
            lines += ["Dense: no mask plan (stock attention).", ""]
            continue
        sparse = sum(1 for k in plan.layers if k is not None)
        lines += [
            f"Plan file `{PLAN_FILES.get(slot, slot + '.json')}`: {plan.num_layers} layers, {sparse} tile-sparse, "
            f"{plan.num_layers - sparse} dense. `k` is the number of reference frames (`dense`: full attention; "
            "`k >= F` latent frames is dense too).",
            "",
            "| layers | k |",
            "| --- | --- |",
        ]
        for start, end, k in _run_lengths(plan.layers):
            span = str(start) if start == end else f"{start}-{end}"
            lines.append(f"| {span} | {'dense' if k is None else k} |")
        lines += ["", f"k per layer: `{json.dumps(plan.layers)}`", ""]
        provenance = {key: v for key, v in plan.metadata.items() if key not in _SPEEDUP_KEYS}
        lines.append("**Provenance** (`plan.metadata`):")
        lines.append("")
        if plan.model_class:
            provenance = {"model_class": plan.model_class, **provenance}
        if provenance:
            lines += ["| key | value |", "| --- | --- |"]
            lines += [f"| {key} | {_format_value(v)} |" for key, v in provenance.items()]
        else:
            lines.append("Not recorded (the plan's metadata is empty).")
        lines += ["", "**Measured speedups:**", ""]
        speedups = []
        if "speedup" in plan.metadata:
            speedups.append(f"- {_format_speedup(plan.metadata['speedup'])}")
        if isinstance(plan.metadata.get("speedups"), dict):
            speedups += [f"- {key}: {_format_speedup(v)}" for key, v in plan.metadata["speedups"].items()]
        elif "speedups" in plan.metadata:
            speedups.append(f"- {_format_value(plan.metadata['speedups'])}")
        lines += speedups or ["Not measured yet (record them as `plan.metadata[\"speedups\"] = {setting: x}`)."]
        lines.append("")
    lines.append(CARD_END)
    return "\n".join(lines) + "\n"


def write_model_card(path: str, section: str) -> None:
    """Insert or replace the diffusers-evdit section of the README at ``path`` (front matter for a new README).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "README.md")
        >>> write_model_card(path, mask_plan_model_card({"transformer": MaskPlan([1])}))
        >>> write_model_card(path, mask_plan_model_card({"transformer": MaskPlan([2])}))
        >>> open(path).read().count(CARD_BEGIN)
        1
    """
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        begin, end = text.find(CARD_BEGIN), text.find(CARD_END)
        if begin != -1 and end > begin:
            text = text[:begin] + section.rstrip("\n") + text[end + len(CARD_END) :]
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        front = "---\nlibrary_name: diffusers\ntags:\n- diffusers-evdit\n- efficient-vdit\n- text-to-video\n---\n\n"
        text = front + section
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
