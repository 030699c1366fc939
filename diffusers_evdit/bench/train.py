"""``evdit bench train-step``: one knowledge-distillation step (Stage 3) on full-size random-weight transformers.

A step is what a KD run repeats: the dense teacher's forward (no gradients, its attention and MLP outputs captured),
the student's forward and backward (the feature loss of :mod:`diffusers_evdit.kd` plus the MSE of the outputs,
``task_weight`` 100 as in the paper) and the optimizer step (AdamW). It is timed twice on the same student: with a
dense plan (``dense_step_s``) and with a uniform ``k:F-k`` plan (``sparse_step_s``, default ``1:F-1``), so
``speedup`` is what the tile plan saves per training step. ``peak_mem_gib`` is the peak CUDA memory of the sparse
student's steps (``dense_peak_mem_gib`` of the dense ones); models and optimizer states are included.

Models are built from their configs (random weights, bf16 on CUDA; nothing is downloaded). Where memory needs it, the
student trains with gradient checkpointing and/or LoRA adapters (peft) instead of all weights: each model's row says
which (``gradient_checkpointing``, ``lora_rank``). The ``tiny_*`` models run on a CPU in seconds (to check the code
path, not to measure).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch

from ..kd import LayerOutputCapture, kd_feature_loss
from ..masks import format_mask
from ..plan import MaskPlan, apply_mask_plan, num_plan_layers
from ..tiny import TinyVideo, tiny_inputs
from .common import device_info, print_table, write_results

TASK_WEIGHT = 100.0  # the paper's lambda


@dataclass(frozen=True)
class TrainModel:
    """A transformer config, its input size and how its student trains."""

    name: str
    family: str  # "wan" or "cogvideox"
    config: dict
    video: TinyVideo  # latent frames, height, width and text tokens of one training sample
    gradient_checkpointing: bool = False
    lora_rank: int | None = None  # None: all weights train
    k_ref: int = 1


TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=16, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
TINY_COGVIDEOX = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
                      text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=21, patch_size=2,
                      temporal_compression_ratio=4, max_text_seq_length=7, use_rotary_positional_embeddings=True)

TRAIN_MODELS = {
    # Wan2.1-T2V-1.3B (dim 1536 = 12 heads x 128, 30 layers), 81 frames 480p -> 21 x 60 x 104 latent, 32760 tokens;
    # all weights train, blocks checkpointed (their activations would not fit an 80 GB GPU otherwise)
    "wan2.1-1.3b_81f_480p": TrainModel(
        "wan2.1-1.3b_81f_480p", "wan", dict(num_attention_heads=12, ffn_dim=8960, num_layers=30),
        TinyVideo(frames=21, height=60, width=104, text_tokens=512), gradient_checkpointing=True),
    # CogVideoX-5B (48 heads x 64, 42 layers), 49 frames 480p -> 13 x 60 x 90 latent + 226 text tokens; LoRA rank 64
    # on the attention projections and checkpointed blocks (teacher and student: 2 x 10 GB of bf16 weights)
    "cogvideox-5b_49f_480p": TrainModel(
        "cogvideox-5b_49f_480p", "cogvideox",
        dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True),
        TinyVideo(frames=13, height=60, width=90, text_tokens=226), gradient_checkpointing=True, lora_rank=64),
    "tiny_wan": TrainModel("tiny_wan", "wan", TINY_WAN, TinyVideo(frames=6, height=8, width=8, text_tokens=7),
                           gradient_checkpointing=True),
    "tiny_cogvideox_lora": TrainModel(
        "tiny_cogvideox_lora", "cogvideox", TINY_COGVIDEOX, TinyVideo(frames=6, height=8, width=8, text_tokens=7),
        gradient_checkpointing=True, lora_rank=4),
}


def build_teacher(spec: TrainModel, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random-weight transformer of ``spec`` in ``dtype`` on ``device``, in eval mode without gradients."""
    import diffusers

    cls = {"wan": diffusers.WanTransformer3DModel, "cogvideox": diffusers.CogVideoXTransformer3DModel}[spec.family]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**spec.config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def make_student(teacher: torch.nn.Module, spec: TrainModel) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """A trainable copy of ``teacher`` (LoRA adapters and gradient checkpointing per ``spec``) and its trained
    parameters."""
    student = copy.deepcopy(teacher)
    if spec.lora_rank:
        from peft import LoraConfig

        student.add_adapter(LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_rank, init_lora_weights="gaussian",
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        params = [p for n, p in student.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
    else:
        params = list(student.parameters())
        student.requires_grad_(True)
    if spec.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    return student.train(), params


def make_inputs(model: torch.nn.Module, spec: TrainModel, device: torch.device, dtype: torch.dtype) -> dict:
    """Random forward inputs of ``spec``'s size (floating tensors in ``dtype``, timesteps as they are)."""
    inputs = tiny_inputs(model, spec.video)

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device, dtype) if x.is_floating_point() else x.to(device)
        if isinstance(x, tuple):
            return tuple(move(t) for t in x)
        return x

    return {name: move(x) for name, x in inputs.items()}


class KDStep:
    """One KD step of ``student`` against ``teacher`` on fixed ``inputs`` (see the module docstring)."""

    def __init__(self, student, teacher, params, inputs, lr: float = 1e-5):
        self.student, self.teacher, self.inputs = student, teacher, inputs
        self.student_capture = LayerOutputCapture(student)
        self.teacher_capture = LayerOutputCapture(teacher)
        fused = all(p.is_cuda for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=lr, fused=fused or None)

    def __call__(self) -> float:
        with torch.no_grad(), self.teacher_capture.recording():
            teacher_out = self.teacher(**self.inputs, return_dict=False)[0]
        teacher_feats = self.teacher_capture.outputs()
        with self.student_capture.recording():
            student_out = self.student(**self.inputs, return_dict=False)[0]
        feature = kd_feature_loss(self.student_capture.outputs(), teacher_feats)
        loss = feature.loss + TASK_WEIGHT * (student_out.float() - teacher_out.float()).pow(2).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for capture in (self.student_capture, self.teacher_capture):
            with capture.recording():  # an empty recording drops the captured tensors until the next step
                pass
        return float(loss.detach())

    def remove(self) -> None:
        self.student_capture.remove()
        self.teacher_capture.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, reps: int, warmup: int = 1) -> tuple[float, float | None, list[float]]:
    """Median seconds of ``reps`` calls of ``step`` after ``warmup``, the peak CUDA memory of the timed calls (GiB;
    None off CUDA) and the loss values."""
    losses = [step() for _ in range(warmup)]
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        losses.append(step())
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak, losses


def _kernel_used(student) -> str | None:
    """The tile kernels the sparse student's layers ran in the timed steps ("+"-joined), as the dispatcher recorded
    them (None where it recorded none)."""
    state = getattr(student, "_evdit_tile_state", None)
    used = state.attention.kernels_used() if state is not None else ()
    return "+".join(used) or None


def bench_train_model(spec: TrainModel, device: torch.device, kernel: str = "auto", reps: int = 2,
                      warmup: int = 1) -> dict:
    """One row: the KD step with a dense student and with the uniform ``k_ref:F-k_ref`` student."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    teacher = build_teacher(spec, device, dtype)
    student, params = make_student(teacher, spec)
    inputs = make_inputs(teacher, spec, device, dtype)
    n_layers = num_plan_layers(student)
    step = KDStep(student, teacher, params, inputs)
    try:
        apply_mask_plan(student, MaskPlan.dense(n_layers))
        dense_s, dense_peak, dense_losses = time_steps(step, device, reps, warmup)
        plan = MaskPlan.uniform(n_layers, spec.k_ref)
        apply_mask_plan(student, plan, kernel=kernel)
        sparse_s, sparse_peak, sparse_losses = time_steps(step, device, reps, warmup)
        layout = student._evdit_tile_state.video_layout.with_text(*_text(spec))
        kernel_used = _kernel_used(student)
    finally:
        step.remove()
    row = dict(model=spec.name, plan=f"uniform {format_mask(layout.num_frames, spec.k_ref)}", kernel=kernel,
               kernel_used=kernel_used, element_sparsity=plan.sparsity(layout),
               dense_step_s=dense_s, sparse_step_s=sparse_s, speedup=dense_s / sparse_s, peak_mem_gib=sparse_peak,
               dense_peak_mem_gib=dense_peak, gradient_checkpointing=spec.gradient_checkpointing,
               lora_rank=spec.lora_rank, trained_params=sum(p.numel() for p in params),
               seq_len=layout.seq_len, reps=reps,
               losses_finite=all(map(_finite, dense_losses + sparse_losses)), device=device_info(device)["device"])
    print(f"  {spec.name} {row['plan']} ({kernel_used or kernel}): dense student {dense_s:.3f} s/step, sparse "
          f"{sparse_s:.3f} s/step -> {row['speedup']:.2f}x"
          + (f", peak {sparse_peak:.1f} GiB" if sparse_peak is not None else ""), flush=True)
    del step, student, teacher, params, inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _text(spec: TrainModel) -> tuple[int, str]:
    """Text tokens in the self-attention sequence: CogVideoX attends text jointly (first); Wan does not."""
    return (spec.video.text_tokens, "first") if spec.family == "cogvideox" else (0, "none")


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def run_train_step_benchmark(out: str | None, models=("wan2.1-1.3b_81f_480p",), device: str | None = None,
                             kernel: str = "auto", reps: int = 2, k_ref: int | None = None) -> dict:
    """Run the KD-step benchmark on ``models``; print a table, write JSON to ``out`` (if given) and return it.
    ``k_ref`` overrides each model's plan (default ``1:F-1``). Full-size models need CUDA."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unknown = [m for m in models if m not in TRAIN_MODELS]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}; choose from {', '.join(TRAIN_MODELS)}.")
    if dev.type != "cuda" and any(not m.startswith("tiny") for m in models):
        raise ValueError("Full-size models need a CUDA device; on a CPU use the tiny_* models.")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    data = {"rows": rows}
    for name in models:
        spec = TRAIN_MODELS[name]
        if k_ref is not None:
            spec = TrainModel(**{**spec.__dict__, "k_ref": k_ref})
        try:
            rows.append(bench_train_model(spec, dev, kernel, reps))
        except Exception as err:  # out of memory, say: reported in the results, the next model still runs
            rows.append({"model": name, "error": f"{type(err).__name__}: {str(err)[:300]}"})
            print(f"  {name}: FAILED: {rows[-1]['error']}", flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if out:  # after every model, so that a run stopped part-way keeps what it measured
            data = write_results(out, "train-step", rows, dev, kernel=kernel, task_weight=TASK_WEIGHT)
    print_table(rows, ["model", "plan", "kernel_used", "dense_step_s", "sparse_step_s", "speedup", "peak_mem_gib",
                       "error"])
    if out:
        print(f"wrote {out}")
    return data
