#!/usr/bin/env python
"""Regenerate the supported-models table of README.md from the registry (``supported_models()``, ``refused_models()``).

    python docs/supported_models.py          # rewrites the table between the README markers
    python docs/supported_models.py --check  # exit 1 when the README table is out of date

tests/test_families.py checks that the README table is the one this script renders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- supported-models:start -->", "<!-- supported-models:end -->"
sys.path.insert(0, str(ROOT))

from diffusers_evdit.processors import FAMILIES, refused_models  # noqa: E402
from diffusers_evdit.tiny import TINY_MODELS  # noqa: E402

EVERY_CLASS = ("`test_families.py` (dense plan exact; `k:F-k` equal to the stock forward with an explicit tile mask "
               "in float64 SDPA; removal exact; drop-in `set_attn_processor` equal to the plan)")
# What else is tested or measured for a class (file names in tests/, result files in benchmarks/results/).
MORE_TESTS = {
    "CogVideoXTransformer3DModel": "every kernel (`test_processors.py`), pipeline from_pipe / save / load / `evdit "
    "generate`, search, analysis, MLCD, KD, Ulysses (2 processes), CUDA (`test_gpu.py`)",
    "WanTransformer3DModel": "the same, plus Wan 2.2 `transformer_2`, LoRA, offloading, FirstBlockCache, "
    "`torch.compile`, threads (`test_dropin.py`), the demo model and notebooks 01/02; Wan 2.2 TI2V text-to-video "
    "(`expand_timesteps`) MLCD and KD (predictor against the pipeline's own sampling, `test_wan22_ti2v_distill.py`)",
    "HunyuanVideoTransformer3DModel": "every kernel incl. the padding mask, pipeline, search, analysis, MLCD, KD, "
    "Ulysses, CUDA; I2V `token_replace` config",
    "SkyReelsV2Transformer3DModel": "diffusion forcing (block-causal mask AND tile mask); text-to-video pipeline, "
    "MLCD (predictor against the pipeline's own sampling, `test_mlcd.py`)",
    "HunyuanVideo15Transformer3DModel": "padded text (outer-product mask as key padding, `test_dropin.py`), "
    "pipeline from_pipe / save / load and search (`test_families_stages.py`), text-to-video MLCD and KD (predictor "
    "and guider CFG against the pipeline's own sampling, `test_hunyuan_video15_distill.py`), gradients through the "
    "padded text (`test_backward.py`)",
    "LTXVideoTransformer3DModel": "`torch.compile(fullgraph=True)`, pipeline from_pipe / save / load and search "
    "(`test_families_stages.py`), Ulysses, MLCD and KD (predictor against the pipeline's own sampling, "
    "`test_ltx_distill.py`)",
    "MochiTransformer3DModel": "per-sample valid text (padded batch)",
}
BENCHMARKS = {
    "CogVideoXTransformer3DModel": "CogVideoX-5B 49f 480p: kernels 1.20-3.55x, step 1.45x at `1:12`",
    "WanTransformer3DModel": "Wan2.1-14B 81f 480p kernels 1.71-6.06x; Wan2.1-1.3B step 1.79x at `1:20`",
    "HunyuanVideoTransformer3DModel": "129f 720p: kernels 2.14-9.86x, step 3.47x at `1:32`",
}


def render() -> str:
    """The markdown between the README markers."""
    lines = [
        f"Every class: {EVERY_CLASS}, on the tiny configurations named below.",
        "",
        "| transformer | family | extra tokens in self-attention | the model's own mask | tiny configs; tested beyond "
        "`test_families.py` | H100 benchmarks |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for family in FAMILIES:
        for name in family.class_names:
            tiny = ", ".join(f"`{key}`" for key, spec in TINY_MODELS.items() if spec.class_name == name)
            tested = tiny + (f"; {MORE_TESTS[name]}" if name in MORE_TESTS else "")
            cells = [f"`{name}`", f"`{family.name}`", family.text_position, family.mask, tested,
                     BENCHMARKS.get(name, "-")]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Refused, with the reason (`refused_models()`):", ""]
    lines += [f"* `{name}`: {reason}." for name, reason in refused_models().items()]
    return "\n".join(lines)


def updated_readme(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} markers.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md is out of date")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    new = updated_readme(text)
    if args.check:
        if new != text:
            print("README.md's supported-models table is out of date: run python docs/supported_models.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
