"""``evdit bench step``: one denoising step of full-size transformers (random weights, bf16, batch 1).

Per model: the dense step (the model's processors with a dense plan: its own attention), the step with the video
self-attention replaced by an identity (so ``attention_share`` counts only what a mask plan can speed up), and the
step under uniform ``k:F-k`` plans. ``amdahl_limit = dense / (non_attention + attention * (1 - sparsity))`` is the
best a plan of that sparsity can do; ``pct_of_amdahl = 100 * speedup / amdahl_limit``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch

from ..masks import format_mask
from ..processors.cogvideox import cogvideox_rotary_emb
from ..plan import MaskPlan, apply_mask_plan, num_plan_layers, remove_mask_plan
from .common import print_table, write_results


@dataclass(frozen=True)
class StepModel:
    """A full-size transformer config and its input at one resolution."""

    name: str
    family: str
    config: dict
    latent: tuple  # frames, height, width of the latent
    text_tokens: int
    masks: tuple


MODELS = {
    "cogvideox-5b_49f_480p": StepModel(
        "cogvideox-5b_49f_480p", "cogvideox",
        dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True), (13, 60, 90), 226, (1, 3)),
    "wan2.1-1.3b_81f_480p": StepModel(
        "wan2.1-1.3b_81f_480p", "wan", dict(num_attention_heads=12, ffn_dim=8960, num_layers=30), (21, 60, 104), 512,
        (1, 4)),
    "hunyuan_129f_720p": StepModel("hunyuan_129f_720p", "hunyuan_video", {}, (33, 90, 160), 256, (1, 4)),
}


def build_model(spec: StepModel, device: torch.device, dtype=torch.bfloat16):
    """Random-weight transformer and forward kwargs for ``spec``."""
    import diffusers

    f, h, w = spec.latent
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if spec.family == "cogvideox":
                model = diffusers.CogVideoXTransformer3DModel(**spec.config)
                inputs = dict(hidden_states=torch.randn(1, f, 16, h, w),
                              encoder_hidden_states=torch.randn(1, spec.text_tokens, 4096),
                              timestep=torch.tensor([500]),
                              image_rotary_emb=cogvideox_rotary_emb(model, f, h, w, device))
            elif spec.family == "wan":
                model = diffusers.WanTransformer3DModel(**spec.config)
                inputs = dict(hidden_states=torch.randn(1, 16, f, h, w),
                              encoder_hidden_states=torch.randn(1, spec.text_tokens, 4096), timestep=torch.tensor([500]))
            else:
                model = diffusers.HunyuanVideoTransformer3DModel(**spec.config)
                inputs = dict(hidden_states=torch.randn(1, 16, f, h, w),
                              encoder_hidden_states=torch.randn(1, spec.text_tokens, 4096),
                              encoder_attention_mask=torch.ones(1, spec.text_tokens), pooled_projections=torch.randn(1, 768),
                              timestep=torch.tensor([500]), guidance=torch.tensor([6000.0]))
    finally:
        torch.set_default_dtype(previous)
    return model.eval(), inputs


def time_step(model, inputs, reps: int) -> float:
    """Median seconds of ``reps`` CUDA-synchronised no-grad forwards of ``model(**inputs)`` after one warm-up."""

    def step():
        with torch.no_grad():
            model(**inputs, return_dict=False)
        torch.cuda.synchronize()

    step()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def _identity_self_attention(seq_len: int):
    """Replace SDPA calls over the full video self-attention sequence by ``return query`` (other calls run)."""
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        if query.shape[-2] == seq_len and key.shape[-2] == seq_len:
            return query
        return original(query, key, value, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def bench_model(spec: StepModel, kernel: str = "auto", reps: int = 3, device: str = "cuda") -> list[dict]:
    """Rows (one per plan) for one model."""
    dev = torch.device(device)
    model, inputs = build_model(spec, dev)
    n_layers = num_plan_layers(model)
    apply_mask_plan(model, MaskPlan.dense(n_layers))
    dense = time_step(model, inputs, reps)
    layout = model._evdit_tile_state.video_layout
    text = 0 if spec.family == "wan" else spec.text_tokens
    layout = layout.with_text(text, {"cogvideox": "first", "hunyuan_video": "last"}.get(spec.family, "none"))
    with _identity_self_attention(layout.seq_len):
        non_attention = time_step(model, inputs, reps)
    attention = dense - non_attention
    rows = []
    for k in spec.masks:
        plan = MaskPlan.uniform(n_layers, k)
        apply_mask_plan(model, plan, kernel=kernel)
        sparse = time_step(model, inputs, reps)
        sparsity = plan.sparsity(layout)
        limit = dense / (non_attention + attention * (1 - sparsity))
        row = dict(model=spec.name, plan=f"uniform {format_mask(layout.num_frames, k)}", kernel=kernel,
                   element_sparsity=sparsity, dense_step_s=dense, sparse_step_s=sparse, speedup=dense / sparse,
                   non_attention_s=non_attention, attention_share=attention / dense, amdahl_limit=limit)
        row["pct_of_amdahl"] = 100 * row["speedup"] / limit
        rows.append(row)
        print(f"  {spec.name} {row['plan']}: dense {dense:.3f} s, sparse {sparse:.3f} s, {row['speedup']:.2f}x "
              f"(Amdahl {limit:.2f}x, {row['pct_of_amdahl']:.0f}%), attention share {row['attention_share']:.2f}",
              flush=True)
    remove_mask_plan(model)
    del model, inputs
    torch.cuda.empty_cache()
    return rows


def run_step_benchmark(out: str | None, models=tuple(MODELS), kernel: str = "auto", reps: int = 3) -> dict:
    """Run the step benchmark on a CUDA device; print a table and write JSON to ``out`` (if given)."""
    if not torch.cuda.is_available():
        raise RuntimeError("evdit bench step needs a CUDA device (full-size transformers).")
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for name in models:
        rows += bench_model(MODELS[name], kernel, reps)
    print_table(rows, ["model", "plan", "dense_step_s", "sparse_step_s", "speedup", "attention_share", "amdahl_limit",
                       "pct_of_amdahl"])
    data = {"rows": rows}
    if out:
        data = write_results(out, "step", rows, torch.device("cuda"), kernel=kernel)
        print(f"wrote {out}")
    return data
