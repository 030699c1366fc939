"""Per-step speedups of the demo model's plans on the full-size model of its family: each plan mapped to the
full-size model layer by layer and mask by mask, then timed there on this GPU or derived from the measured step times
of uniform plans (``evdit bench step``)."""

from __future__ import annotations

import bisect
import gc
import inspect
import json
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fullsize_model(name: str):
    """(StepModel, num plan layers, layout) of an evdit bench step model."""
    import diffusers

    from diffusers_evdit.bench.step import MODELS
    from diffusers_evdit.layout import layout_from_latents

    if name not in MODELS:
        raise SystemExit(f"--fullsize_model {name}: choose one of {', '.join(MODELS)}")
    spec = MODELS[name]
    cls = {"wan": diffusers.WanTransformer3DModel, "cogvideox": diffusers.CogVideoXTransformer3DModel,
           "hunyuan_video": diffusers.HunyuanVideoTransformer3DModel}[spec.family]
    params = inspect.signature(cls.__init__).parameters
    cfg = {k: v.default for k, v in params.items() if v.default is not inspect.Parameter.empty}
    cfg.update(spec.config)
    layers = cfg["num_layers"] + (cfg.get("num_single_layers", 0) if spec.family == "hunyuan_video" else 0)
    patch = cfg["patch_size"]
    if spec.family == "cogvideox":
        patch = (cfg.get("patch_size_t") or 1, patch, patch)
    elif spec.family == "hunyuan_video":
        patch = (cfg.get("patch_size_t") or 1, patch, patch)
    text = {"wan": (0, "none"), "cogvideox": (spec.text_tokens, "first"), "hunyuan_video": (spec.text_tokens, "last")}
    layout = layout_from_latents(spec.latent, patch, *text[spec.family])
    return spec, layers, layout


def map_plan(plan, src_layout, dst_layers: int, dst_layout):
    """The plan on the full-size model: layer ``j`` takes layer ``floor(j L / L_full)``; each sparse ``k`` becomes
    the full-size ``k`` whose element sparsity is closest."""
    from diffusers_evdit import MaskPlan
    from diffusers_evdit.masks import element_sparsity

    f_dst = dst_layout.num_frames
    cache = {}
    layers = []
    for j in range(dst_layers):
        k = plan.layers[j * plan.num_layers // dst_layers]
        if k is None or k >= src_layout.num_frames:
            layers.append(None)
            continue
        if k not in cache:
            s = element_sparsity(src_layout, k)
            cache[k] = min(range(1, f_dst), key=lambda kk: abs(element_sparsity(dst_layout, kk) - s))
        layers.append(cache[k])
    return MaskPlan(layers, None, {"mapped_from": list(plan.layers)})


class StepTimes:
    """Per-step time vs element sparsity of uniform plans, measured (``evdit bench step`` rows of one model)."""

    def __init__(self, path: str, model: str):
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: no step benchmark (run `evdit bench step --out {path}` on a GPU, or pass "
                             "--step_speedups / --measure_step_speedups)")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        rows = [r for r in data.get("rows", []) if r.get("model") == model]
        if not rows:
            raise SystemExit(f"{path} has no rows of {model}; run `evdit bench step --models {model}`")
        self.source = {"file": os.path.relpath(path, ROOT) if path.startswith(ROOT) else path,
                       "device": data.get("device"), "date": data.get("date"), "model": model}
        self.dense = sum(r["dense_step_s"] for r in rows) / len(rows)
        self.non_attention = rows[0]["non_attention_s"]
        pts = sorted((r["element_sparsity"], r["sparse_step_s"]) for r in rows)
        self.points = [(0.0, self.dense)] + pts

    def step_time(self, s: float) -> float:
        """Step time of a uniform plan of sparsity ``s`` (linear between measured points)."""
        xs = [p[0] for p in self.points]
        if s >= xs[-1]:
            s_max, t_max = self.points[-1]
            attn = max(t_max - self.non_attention, 0.0)
            return self.non_attention + attn * (1 - s) / max(1 - s_max, 1e-9)
        i = bisect.bisect_right(xs, s)
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        return y0 + (y1 - y0) * (s - x0) / (x1 - x0)

    def speedup(self, plan, layout) -> float:
        """Dense step / plan step, with each layer adding 1/L of the uniform step time change at its sparsity."""
        from diffusers_evdit.masks import element_sparsity

        delta = sum(self.step_time(element_sparsity(layout, k)) - self.dense for k in plan.layers if k is not None)
        return self.dense / (self.dense + delta / plan.num_layers)


def measure_step_speedups(mapped: dict, model: str, reps: int = 3) -> dict:
    """Per-step speedups of mapped plans on the full-size random-weight transformer (CUDA, bf16, batch 1)."""
    from diffusers_evdit.bench.step import MODELS, build_model

    torch.backends.cuda.matmul.allow_tf32 = True
    model_t, inputs = build_model(MODELS[model], torch.device("cuda"))
    try:
        return _time_plans(model_t, inputs, mapped, reps)
    finally:
        del model_t, inputs
        gc.collect()
        torch.cuda.empty_cache()


def _time_plans(model, inputs, mapped: dict, reps: int) -> dict:
    from diffusers_evdit import MaskPlan, apply_mask_plan, num_plan_layers

    from diffusers_evdit.bench.step import time_step

    def timed() -> float:
        return time_step(model, inputs, reps)

    apply_mask_plan(model, MaskPlan.dense(num_plan_layers(model)))
    dense = timed()
    out = {}
    for name, plan in mapped.items():
        if all(k is None for k in plan.layers):
            out[name] = 1.0
            continue
        apply_mask_plan(model, plan)
        out[name] = dense / timed()
        print(f"[reproduce] measured step speedup {name}: {out[name]:.3f}x", flush=True)
    return out

