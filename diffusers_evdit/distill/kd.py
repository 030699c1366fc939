"""Knowledge distillation of a tile-sparse student from its dense teacher: Efficient-vDiT Stage 3, as library code.

The student is a copy of the teacher with a searched :class:`~diffusers_evdit.MaskPlan` applied
(:func:`make_sparse_student`). Both run on the same inputs; forward hooks (:class:`LayerOutputCapture`, no edited
model copies) record every layer's *attention output* and *MLP output*, and the loss is

    ``L = feature_weight * mean_l [ MSE(attn_s^l, attn_t^l) + MSE(mlp_s^l, mlp_t^l) ] + task_weight * L_task``

with ``L_task`` the diffusion loss (:func:`diffusion_inputs`), the MLCD loss (:func:`kd_mlcd_loss`) or the MSE of the
final outputs, and ``task_weight`` the paper's lambda (100). The teacher runs under ``torch.no_grad`` and its
outputs are detached: gradients reach only the student.

**What is captured, per family.** A *layer* is a plan layer: the block holding the ``i``-th video self-attention
(:func:`kd_layers`). Outputs are taken before the block's gates and residual additions; every token the module
returns is included (text tokens too, padded text tokens of HunyuanVideo included), and the MSE of a layer is the
mean over all elements of its tensors.

* CogVideoX (``CogVideoXBlock``): attention = ``attn1`` output ``(video, text)`` after ``to_out`` (joint
  text-video self-attention); MLP = ``ff`` output on the ``[text; video]`` tokens.
* Wan (``WanTransformerBlock``): attention = ``attn1`` output (video self-attention, after ``to_out``; the
  cross-attention ``attn2`` is not a plan layer and is not captured); MLP = ``ffn`` output.
* HunyuanVideo double-stream blocks: attention = ``attn`` output ``(video, text)`` after ``to_out`` /
  ``to_add_out``; MLP = the ``ff`` (video) and ``ff_context`` (text) outputs.
* HunyuanVideo single-stream blocks: attention = ``attn`` output ``(video, text)`` (pre-only: no output
  projection); MLP = ``act_mlp(proj_mlp(x))``, the MLP branch before the ``proj_out`` it shares with attention.
* LTX-Video (``LTXVideoTransformerBlock``): attention = ``attn1`` output (video self-attention, after ``to_out``,
  before ``gate_msa``; the text cross-attention ``attn2`` is not a plan layer and is not captured); MLP = ``ff``
  output (before ``gate_mlp``).
* HunyuanVideo 1.5 (``HunyuanVideo15TransformerBlock``, double-stream only): attention = ``attn`` output
  ``(video, text)`` after ``to_out`` / ``to_add_out`` (the text side holds the image, ByT5 and Qwen tokens, padded
  ones included); MLP = the ``ff`` (video) and ``ff_context`` (text) outputs.

**Kernels.** The student trains with a kernel whose backward pass is exact: ``"auto"`` (default; under autograd
it picks ``split``, whose backward reuses each key set's dense backward), ``"split"``, ``"gathered"`` or ``"flex"``
(CUDA); :func:`check_trainable_kernel` refuses the
others. A saved plan carries no kernel: the trained student runs with ``"auto"`` at inference.

Example (tiny random models; weights say nothing about quality):

    >>> import torch
    >>> from diffusers_evdit import MaskPlan
    >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
    >>> teacher = tiny_transformer("wan")
    >>> student = make_sparse_student(teacher, MaskPlan.uniform(2, k=1))
    >>> out = kd_loss(student, teacher, tiny_inputs(teacher))
    >>> out.loss.backward()
    >>> out.attention_losses.shape, teacher.blocks[0].attn1.to_q.weight.grad is None
    (torch.Size([2]), True)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..plan import MaskPlan, apply_mask_plan, get_mask_plan
from .capture import KDLayer, LayerOutputCapture, LayerOutputs, kd_layers
from .common import broadcast_coefficients, check_prediction_type, unwrap
from .mlcd import mlcd_loss

__all__ = [
    "TRAINABLE_KERNELS",
    "KDLayer",
    "LayerOutputs",
    "LayerOutputCapture",
    "FeatureLoss",
    "KDLossOutput",
    "kd_layers",
    "kd_feature_loss",
    "kd_loss",
    "kd_mlcd_loss",
    "diffusion_inputs",
    "diffusion_target",
    "make_sparse_student",
    "check_trainable_kernel",
]

#: Tile kernels whose backward pass is exact (``"dense"`` too, but it ignores the plan's sparse entries); ``"auto"``
#: picks one of them whenever gradients are enabled.
TRAINABLE_KERNELS = ("auto", "split", "gathered", "flex", "fa4")


# ------------------------------------------------------------------------------------------------------ the loss


def _mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], where: str) -> torch.Tensor:
    """Mean squared error over all elements of matching tensor lists, in float32; the teacher side is detached."""
    if len(student) != len(teacher):
        raise ValueError(f"{where}: the student returned {len(student)} tensors, the teacher {len(teacher)}.")
    total = None
    count = 0
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"{where}: student output {tuple(s.shape)} vs teacher output {tuple(t.shape)}; run both "
                             "on the same inputs.")
        sq = (s.float() - t.detach().float()).pow(2).sum()
        total = sq if total is None else total + sq
        count += s.numel()
    return total / max(count, 1)


@dataclass
class FeatureLoss:
    """Attention- and MLP-output distillation loss.

    Attributes:
        loss: ``mean_l (attention[l] + mlp[l])``, a scalar.
        attention: ``(L,)`` per-layer MSE of the attention outputs.
        mlp: ``(L,)`` per-layer MSE of the MLP outputs.

    Example:
        >>> x = LayerOutputs([(torch.zeros(1, 2),)], [(torch.zeros(1, 2),)])
        >>> y = LayerOutputs([(torch.ones(1, 2),)], [(torch.zeros(1, 2),)])
        >>> f = kd_feature_loss(x, y)
        >>> f.loss, f.attention, f.mlp
        (tensor(1.), tensor([1.]), tensor([0.]))
    """

    loss: torch.Tensor
    attention: torch.Tensor
    mlp: torch.Tensor


def kd_feature_loss(student: LayerOutputs, teacher: LayerOutputs) -> FeatureLoss:
    """``mean over layers of MSE(attention) + MSE(MLP)`` between captured student and teacher outputs.

    Each layer's MSE is the mean over all elements of its tensors (all streams and tokens), in float32; the teacher's
    tensors are detached.

    Example:
        >>> x = LayerOutputs([(torch.zeros(1, 2, 3),)], [(torch.zeros(1, 2, 3),)])
        >>> y = LayerOutputs([(torch.ones(1, 2, 3),)], [(torch.full((1, 2, 3), 2.0),)])
        >>> kd_feature_loss(x, y).loss
        tensor(5.)
    """
    if student.num_layers != teacher.num_layers or student.num_layers == 0:
        raise ValueError(f"The student has {student.num_layers} captured layers, the teacher {teacher.num_layers}; "
                         "distil a copy of the teacher (same architecture).")
    attention = torch.stack([_mse(s, t, f"layer {i} attention")
                             for i, (s, t) in enumerate(zip(student.attention, teacher.attention))])
    mlp = torch.stack([_mse(s, t, f"layer {i} MLP") for i, (s, t) in enumerate(zip(student.mlp, teacher.mlp))])
    return FeatureLoss((attention + mlp).mean(), attention, mlp)


@dataclass
class KDLossOutput:
    """The distillation loss and its parts.

    Attributes:
        loss: ``feature_weight * feature_loss + task_weight * task_loss`` (scalar, with grad).
        feature_loss: ``mean_l MSE(attention) + MSE(MLP)``.
        attention_losses, mlp_losses: ``(L,)`` per-layer parts (detached).
        task_loss: the diffusion / MLCD / output loss, or ``None`` when not used.
        student_output: the student's model output (with grad); ``teacher_output``: the teacher's (no grad).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> teacher = tiny_transformer("wan")
        >>> student = make_sparse_student(teacher, MaskPlan.uniform(2, k=1))
        >>> out = kd_loss(student, teacher, tiny_inputs(teacher), task="output")
        >>> out.attention_losses.shape, out.student_output.shape == out.teacher_output.shape
        (torch.Size([2]), True)
    """

    loss: torch.Tensor
    feature_loss: torch.Tensor
    attention_losses: torch.Tensor
    mlp_losses: torch.Tensor
    task_loss: torch.Tensor | None
    student_output: torch.Tensor | None = None
    teacher_output: torch.Tensor | None = None


def _combine(feature: FeatureLoss, task: torch.Tensor | None, feature_weight: float, task_weight: float,
             student_output=None, teacher_output=None) -> KDLossOutput:
    loss = feature_weight * feature.loss
    if task is not None and task_weight:
        loss = loss + task_weight * task
    return KDLossOutput(loss, feature.loss, feature.attention.detach(), feature.mlp.detach(), task, student_output,
                        teacher_output)


def check_trainable_kernel(transformer: nn.Module) -> None:
    """Raise ``ValueError`` when ``transformer`` has a plan whose sparse layers run a kernel with a wrong backward.

    Trainable kernels are :data:`TRAINABLE_KERNELS`: ``"auto"`` (it picks an exact-backward kernel under autograd),
    ``"split"``, ``"gathered"``, ``"flex"`` (CUDA) and ``"fa4"`` (FlashAttention-4, Hopper/Blackwell). Dense plans
    and no plan pass.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> t = apply_mask_plan(tiny_transformer("wan"), MaskPlan.uniform(2, k=1))
        >>> check_trainable_kernel(t)
    """
    module = unwrap(transformer)
    state = getattr(module, "_evdit_tile_state", None)
    plan = get_mask_plan(module)
    if state is None or plan is None or all(k is None for k in plan.layers):
        return
    kernel = state.attention.kernel
    if kernel not in TRAINABLE_KERNELS:
        raise ValueError(
            f"The student's tile kernel is {kernel!r}, whose backward pass is not exact. Train with "
            "apply_mask_plan(student, plan) (kernel='auto' picks an exact one) or kernel='gathered' "
            "(or 'flex' on CUDA); the saved plan runs with the fast kernel at inference."
        )


def make_sparse_student(teacher: nn.Module, plan: MaskPlan, kernel: str = "auto",
                        dtype: torch.dtype | None = None) -> nn.Module:
    """A trainable copy of ``teacher`` with ``plan`` applied (``copy.deepcopy``; the teacher is not changed).

    The teacher's own plan, if any, is replaced on the copy. The copy is in train mode with all parameters requiring
    gradients (add LoRA adapters to it afterwards for adapter training).

    Args:
        teacher: a supported diffusers transformer.
        plan: the student's :class:`MaskPlan`.
        kernel: a kernel with an exact backward pass (:data:`TRAINABLE_KERNELS`; default ``"auto"``).
        dtype: cast the copy (e.g. ``torch.float32`` master weights for a bf16 teacher); ``None`` keeps it.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> student = make_sparse_student(tiny_transformer("cogvideox"), MaskPlan.uniform(2, k=2))
        >>> get_mask_plan(student).layers, student.training
        ([2, 2], True)
    """
    if kernel not in TRAINABLE_KERNELS:
        raise ValueError(f"kernel must be one of {TRAINABLE_KERNELS} for training (exact gradients), got {kernel!r}.")
    student = copy.deepcopy(unwrap(teacher))
    if dtype is not None:
        student.to(dtype=dtype)
    apply_mask_plan(student, plan, kernel=kernel)
    student.requires_grad_(True).train()
    return student


def kd_loss(
    student: nn.Module | Callable,
    teacher: nn.Module | Callable,
    inputs: Any,
    *,
    student_capture: LayerOutputCapture | None = None,
    teacher_capture: LayerOutputCapture | None = None,
    task_target: torch.Tensor | None = None,
    task: str = "target",
    task_weight: float = 100.0,
    feature_weight: float = 1.0,
) -> KDLossOutput:
    """The distillation loss of ``student`` against ``teacher`` on one batch of ``inputs``.

    Both models run once on the same inputs (the teacher under ``torch.no_grad``), their layer outputs are captured
    and compared with :func:`kd_feature_loss`. The task loss is ``MSE(student output, task_target)`` (``task=
    "target"``, e.g. the diffusion target of :func:`diffusion_inputs`; skipped when ``task_target`` is ``None``) or
    ``MSE(student output, teacher output)`` (``task="output"``).

    Args:
        student, teacher: transformers called as ``model(**inputs, return_dict=False)[0]``, or predictors called as
            ``model(*inputs)`` when ``inputs`` is a tuple (e.g. ``(latents, timesteps, cond)`` for
            :class:`~.predictors.TransformerPredictor`; then pass the captures).
        inputs: forward keyword arguments (dict) or predictor arguments (tuple).
        student_capture, teacher_capture: :class:`LayerOutputCapture` of each model (default: made for this call
            and removed after it; only possible when the models are transformers).
        task_target: target of the task loss (``task="target"``).
        task: ``"target"`` or ``"output"``.
        task_weight: lambda, the weight of the task loss (paper: 100).
        feature_weight: weight of the feature loss.

    Returns:
        :class:`KDLossOutput`.

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
        >>> teacher = tiny_transformer("cogvideox")
        >>> student = make_sparse_student(teacher, MaskPlan.uniform(2, k=1))
        >>> out = kd_loss(student, teacher, tiny_inputs(teacher), task="output", task_weight=10.0)
        >>> bool(out.loss > 0), out.task_loss is not None
        (True, True)
    """
    if task not in ("target", "output"):
        raise ValueError(f"task must be 'target' or 'output', got {task!r}.")
    own = []
    try:
        if student_capture is None:
            student_capture = LayerOutputCapture(_as_module(student, "student"))
            own.append(student_capture)
        if teacher_capture is None:
            teacher_capture = LayerOutputCapture(_as_module(teacher, "teacher"))
            own.append(teacher_capture)
        if torch.is_grad_enabled():
            check_trainable_kernel(student_capture.transformer)
        with torch.no_grad(), teacher_capture.recording():
            teacher_out = _call(teacher, inputs)
        teacher_feats = teacher_capture.outputs()
        with student_capture.recording():
            student_out = _call(student, inputs)
        student_feats = student_capture.outputs()
        feature = kd_feature_loss(student_feats, teacher_feats)
        if task == "output":
            task_loss = (student_out.float() - teacher_out.detach().float()).pow(2).mean()
        elif task_target is not None:
            task_loss = (student_out.float() - task_target.detach().float()).pow(2).mean()
        else:
            task_loss = None
        return _combine(feature, task_loss, feature_weight, task_weight, student_out, teacher_out.detach())
    finally:
        for capture in own:
            capture.remove()


def _as_module(model, what: str) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "transformer", None)  # TransformerPredictor
    if isinstance(inner, nn.Module):
        return inner
    raise TypeError(f"Pass a LayerOutputCapture for the {what} when it is not a transformer (got "
                    f"{type(model).__name__}).")


def _call(model, inputs):
    if isinstance(inputs, dict):
        out = model(**inputs, return_dict=False) if isinstance(model, nn.Module) else model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        out = model(*inputs)
    else:
        raise TypeError(f"inputs must be forward keyword arguments (dict) or predictor arguments (tuple), got "
                        f"{type(inputs).__name__}.")
    if isinstance(out, (tuple, list)):
        out = out[0]
    return getattr(out, "sample", out)


# ------------------------------------------------------------------------------------------- the task losses


def diffusion_target(x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor | float,
                     sigma: torch.Tensor | float, prediction_type: str) -> torch.Tensor:
    """The model output that reproduces ``x_t = alpha x0 + sigma noise`` exactly, per parameterisation (float32).

    ``flow``: ``noise - x0``; ``epsilon``: ``noise``; ``v_prediction``: ``alpha noise - sigma x0``; ``sample``:
    ``x0``. ``alpha`` / ``sigma`` are scalars or ``(B,)``.

    Example:
        >>> diffusion_target(torch.ones(1, 2), torch.zeros(1, 2), 0.5, 0.5, "flow")
        tensor([[-1., -1.]])
    """
    check_prediction_type(prediction_type)
    x0, noise = x0.float(), noise.float()
    if prediction_type == "flow":
        return noise - x0
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return broadcast_coefficients(alpha, x0) * noise - broadcast_coefficients(sigma, x0) * x0


def diffusion_inputs(grid, x0: torch.Tensor, generator: torch.Generator | None = None,
                     noise: torch.Tensor | None = None, index: torch.Tensor | None = None):
    """Noisy latents for the diffusion loss: ``(z_t, timesteps, target, index)``.

    A grid index per sample is drawn uniformly from the ``N`` noise levels of ``grid`` (a
    :class:`diffusers_evdit.mlcd.DiffusionGrid`, the teacher's sampling grid; the clean end is never drawn),
    ``z_t = a x0 + s eps`` and ``target`` = :func:`diffusion_target` for the grid's parameterisation.

    Example:
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> from diffusers_evdit.mlcd import DiffusionGrid
        >>> grid = DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), 20)
        >>> z, t, target, idx = diffusion_inputs(grid, torch.zeros(2, 4, 3, 8, 8), torch.Generator().manual_seed(0))
        >>> z.shape, t.shape, target.shape
        (torch.Size([2, 4, 3, 8, 8]), torch.Size([2]), torch.Size([2, 4, 3, 8, 8]))
    """
    b = x0.shape[0]
    if index is None:
        index = torch.randint(0, grid.num_steps, (b,), generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    timesteps, alpha, sigma = grid.coefficients(index, x0.device)
    z_t = grid.add_noise(x0, noise, index)
    return z_t, timesteps, diffusion_target(x0, noise, alpha, sigma, grid.prediction_type), index


def kd_mlcd_loss(
    student: Callable,
    target: Callable,
    solver_teacher: Callable,
    feature_teacher: Callable | None,
    student_capture: LayerOutputCapture,
    teacher_capture: LayerOutputCapture | None,
    latents: torch.Tensor,
    cond: Any,
    schedule,
    *,
    task_weight: float = 100.0,
    feature_weight: float = 1.0,
    **mlcd_kwargs,
) -> KDLossOutput:
    """Feature distillation plus ``task_weight`` times the MLCD loss (:func:`diffusers_evdit.mlcd.mlcd_loss`).

    The student's forward at ``z_tm`` inside the MLCD loss is recorded by ``student_capture`` (only that call: the
    target network's forward is not), and ``feature_teacher`` (the dense model being distilled, e.g. the MLCD model)
    runs on the same ``(z_tm, t_m, cond)`` with ``teacher_capture``. With ``feature_weight=0`` (or no feature
    teacher) this is plain MLCD training of the sparse student.

    Args:
        student, target, solver_teacher: predictors ``(latents, timesteps, cond) -> output`` as for ``mlcd_loss``
            (``solver_teacher`` is the model whose ODE step MLCD follows, guided with ``guidance_scale``).
        feature_teacher: predictor of the dense teacher of the feature loss (``None`` with ``feature_weight=0``).
        student_capture, teacher_capture: :class:`LayerOutputCapture` of the student's and the feature teacher's
            transformers.
        latents, cond, schedule: clean latents, conditioning and :class:`~diffusers_evdit.mlcd.MLCDSchedule`.
        task_weight: lambda (paper: 100); feature_weight: weight of the feature loss.
        mlcd_kwargs: ``uncond``, ``guidance_scale``, ``generator``, ``loss_type``, ... of ``mlcd_loss``.

    Example:
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> from diffusers_evdit.mlcd import DiffusionGrid, MLCDSchedule, TransformerPredictor
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> teacher = tiny_transformer("wan")
        >>> student = make_sparse_student(teacher, MaskPlan.uniform(2, k=1))
        >>> f_t, f_s = TransformerPredictor(teacher), TransformerPredictor(student)
        >>> schedule = MLCDSchedule(DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(), 8), 2)
        >>> cond = {"encoder_hidden_states": torch.randn(1, 7, 16)}
        >>> with LayerOutputCapture(student) as cs, LayerOutputCapture(teacher) as ct:
        ...     out = kd_mlcd_loss(f_s, f_s, f_t, f_t, cs, ct, torch.randn(1, 4, 2, 8, 8), cond, schedule,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> out.task_loss is not None, out.attention_losses.shape
        (True, torch.Size([2]))
    """
    if torch.is_grad_enabled():
        check_trainable_kernel(student_capture.transformer)
    recorded: dict = {}

    def recorded_student(z, t, c):
        with student_capture.recording():
            out = student(z, t, c)
        recorded["outputs"] = student_capture.outputs()
        recorded["inputs"] = (z, t, c)
        return out

    out = mlcd_loss(recorded_student, target, solver_teacher, latents, cond, schedule, **mlcd_kwargs)
    use_features = feature_weight != 0 and feature_teacher is not None
    if use_features:
        if teacher_capture is None:
            raise ValueError("Pass teacher_capture (a LayerOutputCapture of the feature teacher's transformer).")
        with torch.no_grad(), teacher_capture.recording():
            feature_teacher(*recorded["inputs"])
        feature = kd_feature_loss(recorded["outputs"], teacher_capture.outputs())
    else:
        zero = out.loss.new_zeros(())
        n = len(student_capture.layers)
        feature = FeatureLoss(zero, out.loss.new_zeros(n), out.loss.new_zeros(n))
    return _combine(feature, out.loss, feature_weight if use_features else 0.0, task_weight)
