"""Multi-step latent consistency distillation (MLCD): Efficient-vDiT Stage 1, as library code.

The teacher's sampling trajectory, a grid of ``N`` teacher steps from pure noise (grid index 0) to the clean sample
(index ``N``), is split into ``S`` segments at *milestones* ``e_0 = 0 < e_1 < ... < e_S = N``. Segment ``k`` covers
the indices ``[e_k, e_{k+1})``; its end ``e_{k+1}`` is the paper's ``t_step^s``, the less noisy end. One training
sample:

1. pick a segment ``k`` uniformly, ``t_m`` uniformly in it, and ``t_n = min(t_m + solver_steps, e_{k+1})`` (grid
   indices, so ``t_step^s <= t_n < t_m`` in diffusion time);
2. ``z_tm = a(t_m) x0 + s(t_m) eps`` (forward process);
3. teacher solver step ``z_tm -> z_tn``: the deterministic DDIM / Euler step with the teacher's classifier-free
   guided prediction ``u + w (c - u)``;
4. loss ``d( DDIM(z_tm, f_theta(z_tm, t_m) -> t_step^s), nograd DDIM(z_tn, f_target(z_tn, t_n) -> t_step^s) )``
   with ``d`` the mean squared error (or the pseudo-Huber loss); when ``t_n = t_step^s`` the target is ``z_tn``
   itself (the consistency boundary condition).

``DDIM(z_t, f -> t_s)`` is the exact deterministic jump for the model's parameterisation (:mod:`.grid`).

The model calls stay abstract: every model is a *predictor* ``predict(latents, timesteps, cond) -> model output``
(``timesteps`` a ``(B,)`` tensor of the transformer's own timestep values, ``cond`` whatever the predictor needs).
:class:`~.predictors.TransformerPredictor` calls a diffusers CogVideoX / Wan / HunyuanVideo transformer with the
keyword arguments its pipeline uses; :func:`~.predictors.encode_prompts` and :func:`~.predictors.encode_videos`
produce ``cond`` and ``x0`` from a pipeline.

Sampling with ``S`` steps uses the scheduler of :meth:`MLCDSchedule.inference_scheduler` (see
:mod:`diffusers_evdit.schedulers`), which the pipeline saves and reloads.

Example (analytic predictors; a transformer works the same way through a ``TransformerPredictor``):

    >>> import torch
    >>> from diffusers import FlowMatchEulerDiscreteScheduler
    >>> grid = DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), num_steps=8)
    >>> schedule = MLCDSchedule(grid, num_segments=4)
    >>> model = lambda z, t, cond: z * 0.5   # any callable (latents, timesteps, cond) -> velocity
    >>> x0 = torch.randn(2, 4, 3, 8, 8)
    >>> out = mlcd_loss(model, model, model, x0, None, schedule, generator=torch.Generator().manual_seed(0))
    >>> out.loss.shape, schedule.milestone_timesteps().shape
    (torch.Size([]), torch.Size([4]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..schedulers import MLCDDDIMScheduler, MLCDFlowMatchEulerScheduler, mlcd_scheduler_from
from .common import Predictor, broadcast_coefficients
from .grid import DiffusionGrid

__all__ = [
    "MLCDLossOutput",
    "MLCDPoints",
    "MLCDSchedule",
    "concat_conditions",
    "guided_prediction",
    "mlcd_loss",
    "progressive_num_segments",
    "segment_milestones",
]


# -------------------------------------------------------------------------------------------------- segments


def segment_milestones(num_steps: int, num_segments: int) -> list[int]:
    """Grid indices ``[e_0 = 0, ..., e_S = num_steps]`` splitting ``num_steps`` teacher steps into ``num_segments``.

    Evenly spaced (rounded); when ``num_segments`` divides ``num_steps`` every segment has the same number of steps,
    and the milestones of ``S`` are a subset of those of ``2 S`` (progressive reduction keeps them).

    Example:
        >>> segment_milestones(50, 4), segment_milestones(48, 8)
        ([0, 13, 25, 38, 50], [0, 6, 12, 18, 24, 30, 36, 42, 48])
    """
    if not isinstance(num_segments, int) or num_segments < 1:
        raise ValueError(f"num_segments must be a positive int, got {num_segments!r}.")
    if num_segments > num_steps:
        raise ValueError(
            f"num_segments={num_segments} is larger than the teacher's {num_steps} steps; use at most {num_steps} "
            "segments or more teacher steps."
        )
    return [int(math.floor(k * num_steps / num_segments + 0.5)) for k in range(num_segments + 1)]


def progressive_num_segments(schedule: Sequence[int], progress: float) -> int:
    """The segment count of a progressive schedule (e.g. ``[16, 8, 4]``) at ``progress`` in [0, 1].

    The run is split into equal shares, one per entry, in order (the paper's "progressively decrease the number
    of segments"): the last entry is the student's final step count.

    Example:
        >>> [progressive_num_segments([16, 8, 4], p) for p in (0.0, 0.4, 0.7, 1.0)]
        [16, 8, 4, 4]
    """
    if not schedule:
        raise ValueError("The segment schedule is empty.")
    if any(b > a for a, b in zip(schedule, schedule[1:])):
        raise ValueError(f"A progressive segment schedule must not increase, got {list(schedule)}.")
    k = min(len(schedule) - 1, int(max(progress, 0.0) * len(schedule)))
    return int(schedule[k])


@dataclass(frozen=True, eq=False)
class MLCDPoints:
    """One MLCD training point per batch element, as grid indices.

    Attributes:
        segment: ``(B,)`` segment ``k``.
        index_m: ``(B,)`` ``t_m`` in ``[e_k, e_{k+1})``.
        index_n: ``(B,)`` ``t_n = min(t_m + solver_steps, e_{k+1})``.
        index_s: ``(B,)`` ``t_step^s = e_{k+1}``, the segment end the jumps go to.

    Example:
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> grid = DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(), 8)
        >>> points = MLCDSchedule(grid, num_segments=2).sample_points(4, torch.Generator().manual_seed(0))
        >>> bool(((points.index_m < points.index_n) & (points.index_n <= points.index_s)).all())
        True
    """

    segment: torch.Tensor
    index_m: torch.Tensor
    index_n: torch.Tensor
    index_s: torch.Tensor


@dataclass(frozen=True, eq=False)
class MLCDSchedule:
    """Segments of a teacher grid, the sampling of training points and the few-step inference scheduler.

    Args:
        grid: the teacher's :class:`DiffusionGrid`.
        num_segments: ``S``; the student samples in ``S`` steps.
        solver_steps: grid steps the teacher's solver takes from ``t_m`` to ``t_n`` (1: one teacher step).

    Example:
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> grid = DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=1.0), 8,
        ...                                     sigmas=[1 - i / 8 for i in range(8)])
        >>> sched = MLCDSchedule(grid, num_segments=2)
        >>> sched.milestones, sched.milestone_timesteps().tolist()
        ([0, 4, 8], [1000.0, 500.0])
    """

    grid: DiffusionGrid
    num_segments: int
    solver_steps: int = 1
    milestones: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.solver_steps, int) or self.solver_steps < 1:
            raise ValueError(f"solver_steps must be a positive int, got {self.solver_steps!r}.")
        object.__setattr__(self, "milestones", segment_milestones(self.grid.num_steps, self.num_segments))

    def with_num_segments(self, num_segments: int) -> "MLCDSchedule":
        """The same grid and solver with another segment count (progressive reduction)."""
        return MLCDSchedule(self.grid, num_segments, self.solver_steps)

    def sample_points(self, batch_size: int, generator: torch.Generator | None = None) -> MLCDPoints:
        """Draw a segment uniformly, ``t_m`` uniformly inside it and ``t_n`` one solver step later (CPU tensors)."""
        e = torch.tensor(self.milestones)
        segment = torch.randint(0, self.num_segments, (batch_size,), generator=generator)
        start, end = e[segment], e[segment + 1]
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        index_m = start + (u * (end - start)).long().clamp(max=(end - start - 1))
        index_n = torch.minimum(index_m + self.solver_steps, end)
        return MLCDPoints(segment, index_m, index_n, end)

    def milestone_timesteps(self) -> torch.Tensor:
        """The ``S`` transformer timesteps the student samples at (segment starts, noisiest first)."""
        return self.grid.timesteps[torch.tensor(self.milestones[:-1])]

    def milestone_sigmas(self) -> torch.Tensor | None:
        """Flow matching: the ``S`` sigmas at the segment starts; ``None`` for DDPM-style grids."""
        if self.grid.flow_sigmas is None:
            return None
        return self.grid.flow_sigmas[torch.tensor(self.milestones[:-1])].float()

    def inference_scheduler(self, base_scheduler) -> MLCDFlowMatchEulerScheduler | MLCDDDIMScheduler:
        """The teacher's scheduler pinned to this schedule's ``S`` milestones (saved with the pipeline).

        Example:
            >>> from diffusers import FlowMatchEulerDiscreteScheduler
            >>> base = FlowMatchEulerDiscreteScheduler(shift=3.0)
            >>> sched = MLCDSchedule(DiffusionGrid.from_scheduler(base, 48), 4).inference_scheduler(base)
            >>> sched.set_timesteps(50); len(sched.timesteps)
            4
        """
        sigmas = self.milestone_sigmas()
        return mlcd_scheduler_from(base_scheduler, self.milestone_timesteps().tolist(),
                                   None if sigmas is None else sigmas.tolist())

    def sample(self, predict: Predictor, noise: torch.Tensor, cond: Any = None, uncond: Any = None,
               guidance_scale: float = 1.0) -> torch.Tensor:
        """Sample with ``S`` jumps (milestone to milestone) from ``noise``: the student's sampler, in float32.

        Equal to the pipeline's loop with :meth:`inference_scheduler` (up to the pipeline's dtype casts); useful to
        sample without a VAE or text encoder.
        """
        x = noise.float()
        b = x.shape[0]
        for k in range(self.num_segments):
            i = torch.full((b,), self.milestones[k], dtype=torch.long)
            j = torch.full((b,), self.milestones[k + 1], dtype=torch.long)
            t, _, _ = self.grid.coefficients(i, x.device)
            out = guided_prediction(predict, x, t, cond, uncond, guidance_scale)
            x = self.grid.jump(x, out, i, j)
        return x


# ---------------------------------------------------------------------------------------------------- the loss


def concat_conditions(a: Any, b: Any) -> Any:
    """Concatenate two conditions along the batch: tensors, ``None``, or dicts / tuples / lists of them.

    Example:
        >>> c = concat_conditions({"e": torch.zeros(1, 2), "m": None}, {"e": torch.ones(1, 2), "m": None})
        >>> c["e"].shape, c["m"]
        (torch.Size([2, 2]), None)
    """
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.ndim == 0 or b.ndim == 0 or a.shape[1:] != b.shape[1:]:
            raise TypeError(f"Cannot concatenate condition tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}.")
        return torch.cat([a, b])
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return {k: concat_conditions(a[k], b[k]) for k in a}
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return type(a)(concat_conditions(x, y) for x, y in zip(a, b))
    if not isinstance(a, (torch.Tensor, dict, tuple, list)) and a == b:
        return a
    raise TypeError(
        f"Cannot concatenate conditions of types {type(a).__name__} and {type(b).__name__}; conditions must be "
        "tensors (batch first), None, or dicts / tuples of them with the same structure."
    )


def guided_prediction(predict: Predictor, latents: torch.Tensor, timesteps: torch.Tensor, cond: Any,
                      uncond: Any = None, guidance_scale: float = 1.0, batched: bool = True) -> torch.Tensor:
    """Classifier-free guided prediction ``u + w (c - u)`` (just ``c`` when ``uncond`` is None or ``w == 1``).

    With ``batched`` (default) the conditional and unconditional calls run as one call on a doubled batch when the
    conditions can be concatenated (:func:`concat_conditions`), else as two calls.

    Example:
        >>> f = lambda z, t, c: z * c
        >>> z = torch.ones(2, 3)
        >>> guided_prediction(f, z, torch.zeros(2), torch.tensor(2.0), torch.tensor(1.0), guidance_scale=3.0)[0, 0]
        tensor(4.)
    """
    if uncond is None or guidance_scale == 1.0:
        return predict(latents, timesteps, cond)
    both = None
    if batched:
        try:
            both = concat_conditions(uncond, cond)
        except TypeError:
            both = None
    if both is not None:
        out = predict(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), both)
        out_u, out_c = out.float().chunk(2)
    else:
        out_u = predict(latents, timesteps, uncond).float()
        out_c = predict(latents, timesteps, cond).float()
    return out_u + guidance_scale * (out_c - out_u)


@dataclass
class MLCDLossOutput:
    """The loss and its parts.

    Attributes:
        loss: scalar (``reduction="mean"``) or ``(B,)`` (``"none"``) loss.
        student: ``DDIM(z_tm, f_theta(z_tm, t_m) -> t_step^s)`` (with grad).
        target: ``nograd DDIM(z_tn, f_target(z_tn, t_n) -> t_step^s)``.
        z_tm: the noisy input at ``t_m``; ``z_tn``: the teacher's solver step from it.
        points: the :class:`MLCDPoints` used.

    Example:
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> schedule = MLCDSchedule(DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(), 8), 2)
        >>> f = lambda z, t, c: torch.zeros_like(z)
        >>> out = mlcd_loss(f, f, f, torch.randn(2, 4, 3, 8, 8), None, schedule,
        ...                 generator=torch.Generator().manual_seed(0))
        >>> out.loss.shape, out.student.shape == out.target.shape == out.z_tm.shape
        (torch.Size([]), True)
    """

    loss: torch.Tensor
    student: torch.Tensor
    target: torch.Tensor
    z_tm: torch.Tensor
    z_tn: torch.Tensor
    points: MLCDPoints


def mlcd_loss(
    student: Predictor,
    target: Predictor,
    teacher: Predictor,
    latents: torch.Tensor,
    cond: Any,
    schedule: MLCDSchedule,
    *,
    uncond: Any = None,
    guidance_scale: float = 1.0,
    noise: torch.Tensor | None = None,
    points: MLCDPoints | None = None,
    generator: torch.Generator | None = None,
    loss_type: str = "l2",
    huber_c: float = 1e-3,
    reduction: str = "mean",
) -> MLCDLossOutput:
    """The MLCD loss of Efficient-vDiT on clean ``latents`` (``x0``), see the module docstring.

    Args:
        student: ``f_theta`` (gradients flow through it).
        target: ``f_target``, the EMA / target network (called under ``torch.no_grad``; may be the student).
        teacher: the pretrained model (called under ``torch.no_grad``), guided with ``guidance_scale``.
        latents: clean latents ``x0`` in the transformer's layout, batch first.
        cond: conditioning passed to the predictors (e.g. from :func:`encode_prompts`).
        schedule: :class:`MLCDSchedule` (grid, segments, solver step).
        uncond: the unconditional conditioning for the teacher's classifier-free guidance.
        guidance_scale: teacher CFG scale ``w`` (1: no guidance). The student learns the guided teacher.
        noise: ``eps`` (default: ``randn`` from ``generator`` on the CPU, then moved).
        points: training points (default: :meth:`MLCDSchedule.sample_points` with ``generator``).
        generator: CPU generator for the points and noise (seed it for reproducible losses).
        loss_type: ``"l2"`` (mean squared error) or ``"huber"`` (``sqrt(d^2 + c^2) - c``, as in LCM).
        huber_c: ``c`` of the pseudo-Huber loss.
        reduction: ``"mean"`` (scalar) or ``"none"`` (per batch element).

    Returns:
        :class:`MLCDLossOutput`.

    Example:
        >>> from diffusers import CogVideoXDDIMScheduler
        >>> grid = DiffusionGrid.from_scheduler(CogVideoXDDIMScheduler(prediction_type="v_prediction",
        ...     timestep_spacing="trailing"), 20)
        >>> f = lambda z, t, c: torch.zeros_like(z)
        >>> out = mlcd_loss(f, f, f, torch.randn(3, 2, 4, 4, 4), None, MLCDSchedule(grid, 4),
        ...                 generator=torch.Generator().manual_seed(0), reduction="none")
        >>> out.loss.shape
        torch.Size([3])
    """
    if loss_type not in ("l2", "huber"):
        raise ValueError(f"loss_type must be 'l2' or 'huber', got {loss_type!r}.")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
    grid = schedule.grid
    b = latents.shape[0]
    if points is None:
        points = schedule.sample_points(b, generator)
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
    device = latents.device
    t_m, _, _ = grid.coefficients(points.index_m, device)
    t_n, _, _ = grid.coefficients(points.index_n, device)
    z_tm = grid.add_noise(latents, noise, points.index_m)

    with torch.no_grad():
        teacher_out = guided_prediction(teacher, z_tm, t_m, cond, uncond, guidance_scale)
        z_tn = grid.jump(z_tm, teacher_out, points.index_m, points.index_n)
        at_end = (points.index_n == points.index_s).to(device)
        if bool(at_end.all()):
            target_jump = z_tn
        else:
            target_out = target(z_tn, t_n, cond)
            target_jump = grid.jump(z_tn, target_out, points.index_n, points.index_s)
            target_jump = torch.where(broadcast_coefficients(at_end, z_tn).bool(), z_tn, target_jump)

    student_out = student(z_tm, t_m, cond)
    student_jump = grid.jump(z_tm, student_out, points.index_m, points.index_s)
    diff = student_jump - target_jump.detach()
    if loss_type == "l2":
        per = diff.pow(2)
    else:
        per = torch.sqrt(diff.pow(2) + huber_c**2) - huber_c
    per_sample = per.reshape(b, -1).mean(1)
    loss = per_sample.mean() if reduction == "mean" else per_sample
    return MLCDLossOutput(loss, student_jump, target_jump.detach(), z_tm, z_tn, points)
