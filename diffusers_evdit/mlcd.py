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

``DDIM(z_t, f -> t_s)`` is the exact deterministic jump for the model's parameterisation: with ``x0`` and ``eps``
recovered from the prediction, ``a(t_s) x0 + s(t_s) eps``. DDPM-style models (CogVideoX): ``a = sqrt(alphas_cumprod)``,
``s = sqrt(1 - alphas_cumprod)``, epsilon / v / sample prediction. Flow matching (Wan, HunyuanVideo):
``x_t = (1 - sigma) x0 + sigma eps``, the model predicts the velocity ``v = eps - x0`` and the jump is the Euler step
``x + (sigma_s - sigma_t) v``, exact for the predicted velocity.

The model calls stay abstract: every model is a *predictor* ``predict(latents, timesteps, cond) -> model output``
(``timesteps`` a ``(B,)`` tensor of the transformer's own timestep values, ``cond`` whatever the predictor needs).
:class:`TransformerPredictor` calls a diffusers CogVideoX / Wan / HunyuanVideo transformer with the keyword arguments
its pipeline uses; :func:`encode_prompts` and :func:`encode_videos` produce ``cond`` and ``x0`` from a pipeline.

Sampling with ``S`` steps uses the scheduler of :meth:`MLCDSchedule.inference_scheduler` (see
:mod:`diffusers_evdit.schedulers`), which the pipeline saves and reloads.

Example (analytic predictors; a transformer works the same way through :class:`TransformerPredictor`):

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

import contextlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .processors import family_for
from .schedulers import (
    MLCDDDIMScheduler,
    MLCDFlowMatchEulerScheduler,
    is_flow_scheduler,
    mlcd_scheduler_from,
    stock_scheduler,
)

__all__ = [
    "PREDICTION_TYPES",
    "DiffusionGrid",
    "MLCDSchedule",
    "MLCDPoints",
    "MLCDLossOutput",
    "TransformerPredictor",
    "Predictor",
    "adapters_disabled",
    "concat_conditions",
    "ddim_jump",
    "draw_posterior",
    "encode_prompts",
    "encode_video_posteriors",
    "encode_videos",
    "guided_prediction",
    "mlcd_loss",
    "predicted_x0_and_noise",
    "progressive_num_segments",
    "segment_milestones",
    "MLCDDDIMScheduler",
    "MLCDFlowMatchEulerScheduler",
]

#: Model parameterisations: DDPM-style ``epsilon``, ``v_prediction``, ``sample``; ``flow`` = flow-matching velocity.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")

#: ``predict(latents, timesteps, cond) -> model output``, the abstract model call.
Predictor = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


# ----------------------------------------------------------------------------------------------- parameterisations


def _bcast(coef: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` (or scalar) coefficients as float32, shaped to broadcast over ``like`` ``(B, ...)``."""
    coef = torch.as_tensor(coef, dtype=torch.float32, device=like.device)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (like.ndim - 1)))


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")


def predicted_x0_and_noise(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_t: torch.Tensor | float,
    sigma_t: torch.Tensor | float,
    prediction_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)`` implied by a model output at a point ``x_t = alpha_t * x0 + sigma_t * eps``, in float32.

    ``epsilon``: ``eps = out``; ``v_prediction`` (``alpha^2 + sigma^2 = 1``): ``x0 = alpha x - sigma v``,
    ``eps = sigma x + alpha v``; ``sample``: ``x0 = out``; ``flow`` (``alpha = 1 - sigma``, ``v = eps - x0``):
    ``x0 = x - sigma v``, ``eps = x + (1 - sigma) v``. ``alpha_t`` / ``sigma_t`` are scalars or ``(B,)``.

    Example:
        >>> x0, eps = torch.ones(1, 2), torch.zeros(1, 2)
        >>> x = 0.6 * x0 + 0.8 * eps
        >>> predicted_x0_and_noise(x, 0.6 * eps - 0.8 * x0, 0.6, 0.8, "v_prediction")[0]
        tensor([[1., 1.]])
    """
    _check_prediction_type(prediction_type)
    x = sample.float()
    out = model_output.float()
    a, s = _bcast(alpha_t, x), _bcast(sigma_t, x)
    if prediction_type == "epsilon":
        return (x - s * out) / a, out
    if prediction_type == "v_prediction":
        return a * x - s * out, s * x + a * out
    if prediction_type == "sample":
        return out, (x - a * out) / s
    return x - s * out, x + (1 - s) * out  # flow: v = eps - x0, alpha = 1 - sigma


def ddim_jump(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_t: torch.Tensor | float,
    sigma_t: torch.Tensor | float,
    alpha_s: torch.Tensor | float,
    sigma_s: torch.Tensor | float,
    prediction_type: str,
) -> torch.Tensor:
    """The exact deterministic jump ``x_t -> x_s`` for a model output: ``alpha_s * x0 + sigma_s * eps`` (float32).

    For ``flow`` it is computed as the Euler step ``x + (sigma_s - sigma_t) * v`` (algebraically the same), which is
    what ``FlowMatchEulerDiscreteScheduler.step`` does; for the DDPM types it equals ``DDIMScheduler.step`` with
    ``eta=0``. Coefficients are scalars or ``(B,)`` tensors (one noise level per batch element).

    Example:
        >>> x0, eps = torch.full((1, 3), 2.0), torch.ones(1, 3)
        >>> x_t = 0.25 * x0 + 0.75 * eps          # flow matching at sigma 0.75
        >>> ddim_jump(x_t, eps - x0, 0.25, 0.75, 0.5, 0.5, "flow")   # lands on 0.5 * x0 + 0.5 * eps
        tensor([[1.5000, 1.5000, 1.5000]])
    """
    _check_prediction_type(prediction_type)
    if prediction_type == "flow":
        x = sample.float()
        return x + (_bcast(sigma_s, x) - _bcast(sigma_t, x)) * model_output.float()
    x0, eps = predicted_x0_and_noise(sample, model_output, alpha_t, sigma_t, prediction_type)
    return _bcast(alpha_s, x0) * x0 + _bcast(sigma_s, x0) * eps


# ------------------------------------------------------------------------------------------------------ the grid


@dataclass(frozen=True, eq=False)
class DiffusionGrid:
    """The teacher's sampling grid: ``N + 1`` noise levels from the first step (index 0) to the clean end (``N``).

    Attributes:
        timesteps: ``(N + 1,)`` transformer timestep at each grid point (int64 for DDPM-style models, float32 for flow
            matching). The terminal entry (clean sample) is never fed to a model: ``-1`` (DDPM) or ``0.0`` (flow).
        alphas: ``(N + 1,)`` float64 signal coefficient ``a`` of ``x_t = a x0 + s eps`` (1 at a clean terminal).
        sigmas: ``(N + 1,)`` float64 noise coefficient ``s`` (0 at a clean terminal).
        prediction_type: one of :data:`PREDICTION_TYPES`.
        flow_sigmas: flow matching: the scheduler's sigmas (``== sigmas``); ``None`` for DDPM-style grids.

    Build it with :meth:`from_scheduler` from the teacher's scheduler and step count. Jumps on the grid are the
    plain deterministic DDIM / Euler steps: a DDPM-style teacher's ``clip_sample`` / ``thresholding`` options are not
    applied (``DDIMScheduler`` clips by default; ``CogVideoXDDIMScheduler.step`` never does).

    Example:
        >>> from diffusers import CogVideoXDDIMScheduler
        >>> grid = DiffusionGrid.from_scheduler(CogVideoXDDIMScheduler(timestep_spacing="trailing"), num_steps=50)
        >>> grid.num_steps, grid.timesteps[:3].tolist(), grid.timesteps[-1].item(), grid.alphas[-1].item()
        (50, [999, 979, 959], -1, 1.0)
    """

    timesteps: torch.Tensor
    alphas: torch.Tensor
    sigmas: torch.Tensor
    prediction_type: str
    flow_sigmas: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_prediction_type(self.prediction_type)
        n = self.timesteps.shape[0]
        if n < 2 or self.alphas.shape != (n,) or self.sigmas.shape != (n,):
            raise ValueError("A grid needs at least 2 points and one alpha and sigma per timestep.")

    @property
    def num_steps(self) -> int:
        """``N``, the number of teacher steps (grid points minus the terminal one)."""
        return self.timesteps.shape[0] - 1

    @property
    def is_flow(self) -> bool:
        """Whether this is a flow-matching grid (velocity prediction)."""
        return self.prediction_type == "flow"

    @classmethod
    def from_scheduler(
        cls,
        scheduler,
        num_steps: int,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> "DiffusionGrid":
        """The grid the teacher samples on with ``num_steps`` steps of ``scheduler`` (a copy is configured).

        Args:
            scheduler: the teacher pipeline's scheduler. Flow matching: ``FlowMatchEulerDiscreteScheduler`` (and the
                MLCD subclass), or a multistep solver with flow sigmas (Wan's ``UniPCMultistepScheduler``: the grid
                is its timesteps / sigmas; MLCD's teacher solver step on it is the first-order Euler step).
                DDPM-style: any scheduler with ``alphas_cumprod``, ``set_timesteps(n)`` and
                ``prediction_type`` ``epsilon`` / ``v_prediction`` / ``sample`` (``CogVideoXDDIMScheduler``,
                ``CogVideoXDPMScheduler``, ``DDIMScheduler``, ...).
            num_steps: ``N``, the teacher's step count (e.g. 50).
            sigmas: flow matching: custom pre-shift sigmas as the pipeline passes them (HunyuanVideo passes
                ``linspace(1, 0, N + 1)[:-1]``); ``None``: ``set_timesteps(N)`` as in Wan.
            mu: flow matching with ``use_dynamic_shifting``: the shift parameter the pipeline would pass.

        Example:
            >>> from diffusers import FlowMatchEulerDiscreteScheduler
            >>> grid = DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=1.0), 4)  # as Wan
            >>> grid.prediction_type, [round(s, 4) for s in grid.sigmas.tolist()]
            ('flow', [1.0, 0.667, 0.334, 0.001, 0.0])
            >>> grid = DiffusionGrid.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=1.0), 4,
            ...                                     sigmas=[1.0, 0.75, 0.5, 0.25])  # as HunyuanVideo
            >>> [round(s, 4) for s in grid.sigmas.tolist()]
            [1.0, 0.75, 0.5, 0.25, 0.0]
        """
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
        config = {k: v for k, v in dict(scheduler.config).items()}
        if is_flow_scheduler(scheduler):
            sched = stock_scheduler(scheduler)  # a fresh copy with the teacher's config
            if sched.config.get("invert_sigmas"):
                raise ValueError("invert_sigmas=True (Mochi) schedulers are not supported.")
            if sched.config.get("use_dynamic_shifting") and mu is None:
                raise ValueError("This scheduler uses dynamic shifting: pass the pipeline's mu=... .")
            kwargs = {} if mu is None else {"mu": mu}
            if sigmas is not None:
                sigmas = [float(s) for s in sigmas]
                if len(sigmas) != num_steps:
                    raise ValueError(f"sigmas has {len(sigmas)} entries, expected num_steps={num_steps}.")
                sched.set_timesteps(num_steps, sigmas=sigmas, **kwargs)
            else:
                sched.set_timesteps(num_steps, **kwargs)
            if sched.timesteps.shape[0] != num_steps or sched.sigmas.shape[0] < num_steps:
                raise ValueError(f"{type(sched).__name__}.set_timesteps({num_steps}) did not give {num_steps} steps.")
            # the clean end is sigma 0 (a multistep solver may end at sigma_min instead)
            flow_sigmas = torch.cat([sched.sigmas[:num_steps].double().cpu(), torch.zeros(1, dtype=torch.float64)])
            timesteps = torch.cat([sched.timesteps.float().cpu(), torch.zeros(1)])
            return cls(timesteps, 1 - flow_sigmas, flow_sigmas.clone(), "flow", flow_sigmas)

        alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
        prediction_type = config.get("prediction_type")
        if alphas_cumprod is None or prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise TypeError(
                f"{type(scheduler).__name__} is not supported: MLCD needs a flow-matching scheduler "
                "(FlowMatchEulerDiscreteScheduler) or a DDPM-style one with alphas_cumprod and prediction_type "
                "epsilon / v_prediction / sample (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler)."
            )
        sched = stock_scheduler(scheduler)
        sched.set_timesteps(num_steps)
        steps = sched.timesteps.long().cpu()
        if steps.shape[0] != num_steps:
            raise ValueError(f"{type(scheduler).__name__}.set_timesteps({num_steps}) gave {steps.shape[0]} steps.")
        final = getattr(sched, "final_alpha_cumprod", None)
        final = torch.tensor(1.0, dtype=torch.float64) if final is None else torch.as_tensor(final).double()
        ac = torch.cat([sched.alphas_cumprod.double()[steps], final.reshape(1)])
        timesteps = torch.cat([steps, torch.tensor([-1])])
        if prediction_type == "epsilon" and bool((ac[:-1] <= 0).any()):
            raise ValueError(
                "An epsilon-prediction model cannot recover x0 at zero SNR (alphas_cumprod = 0 on the grid, e.g. "
                "rescale_betas_zero_snr=True); use v_prediction or a schedule without zero terminal SNR."
            )
        return cls(timesteps, ac.sqrt(), (1 - ac).clamp_min(0).sqrt(), prediction_type)

    def coefficients(self, index: torch.Tensor, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(timesteps, alphas, sigmas)`` at grid ``index`` (a LongTensor); alphas / sigmas as float32."""
        index = index.cpu()
        return (
            self.timesteps[index].to(device),
            self.alphas[index].float().to(device),
            self.sigmas[index].float().to(device),
        )

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``a x0 + s eps`` at grid ``index`` (one index per batch element), in float32."""
        _, a, s = self.coefficients(index, x0.device)
        return _bcast(a, x0) * x0.float() + _bcast(s, x0) * noise.float()

    def jump(self, sample: torch.Tensor, model_output: torch.Tensor, index_from: torch.Tensor,
             index_to: torch.Tensor) -> torch.Tensor:
        """:func:`ddim_jump` from grid ``index_from`` to ``index_to`` (per batch element)."""
        _, a_t, s_t = self.coefficients(index_from, sample.device)
        _, a_s, s_s = self.coefficients(index_to, sample.device)
        return ddim_jump(sample, model_output, a_t, s_t, a_s, s_s, self.prediction_type)


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
            target_jump = torch.where(_bcast(at_end, z_tn).bool(), z_tn, target_jump)

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


# ------------------------------------------------------------------------------------------- family adapters


def _unwrap_module(module: nn.Module) -> nn.Module:
    """The model under DDP / FSDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if inner is None or inner is module:
            return module
        module = inner


class TransformerPredictor:
    """``predict(latents, timesteps, cond)`` for a diffusers CogVideoX, Wan or HunyuanVideo transformer.

    Calls the transformer with the keyword arguments its pipeline uses:

    * CogVideoX: latents ``(B, F, C, H, W)``, ``cond = {"encoder_hidden_states"}``; ``image_rotary_emb`` is computed
      as ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` does (1.0 and 1.5 layouts) and cached;
      integer timesteps.
    * Wan: latents ``(B, C, F, H, W)``, ``cond = {"encoder_hidden_states"}``.
    * HunyuanVideo: latents ``(B, C, F, H, W)``, ``cond = {"encoder_hidden_states", "encoder_attention_mask",
      "pooled_projections"}``; ``guidance = embedded_guidance_scale * 1000`` (the pipeline's ``guidance_scale``,
      default 6.0) when the transformer has guidance embeddings.

    Latents and conditioning tensors are cast to the transformer's dtype, as the pipelines do; the output is in the
    transformer's dtype. ``transformer`` may be wrapped (DDP, ``torch.compile``): it is called as given and its
    config is read from the unwrapped module.

    Args:
        transformer: the transformer (or a wrapper of it).
        embedded_guidance_scale: HunyuanVideo's embedded guidance.
        vae_scale_factor_spatial: CogVideoX: the VAE's spatial factor (8), for the RoPE crop region.
        attention_kwargs: passed to the transformer (e.g. LoRA scale).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> predict = TransformerPredictor(tiny_transformer("wan"))
        >>> cond = {"encoder_hidden_states": torch.randn(1, 7, 16)}
        >>> predict(torch.randn(1, 4, 2, 8, 8), torch.tensor([500.0]), cond).shape
        torch.Size([1, 4, 2, 8, 8])
    """

    def __init__(self, transformer: nn.Module, embedded_guidance_scale: float = 6.0,
                 vae_scale_factor_spatial: int = 8, attention_kwargs: dict | None = None):
        self.transformer = transformer
        module = _unwrap_module(transformer)
        self.family = family_for(module).name
        self.embedded_guidance_scale = float(embedded_guidance_scale)
        self.vae_scale_factor_spatial = int(vae_scale_factor_spatial)
        self.attention_kwargs = attention_kwargs
        self._rope_cache: dict = {}

    @property
    def module(self) -> nn.Module:
        """The unwrapped transformer."""
        return _unwrap_module(self.transformer)

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's weight dtype (adapter weights, e.g. fp32 LoRA on a bf16 model, are skipped)."""
        for name, param in self.module.named_parameters():
            if "lora_" not in name and torch.is_floating_point(param):
                return param.dtype
        return next(self.module.parameters()).dtype

    def with_transformer(self, transformer: nn.Module) -> "TransformerPredictor":
        """The same settings on another transformer of the same family (student / target / teacher)."""
        other = TransformerPredictor(transformer, self.embedded_guidance_scale, self.vae_scale_factor_spatial,
                                     self.attention_kwargs)
        if other.family != self.family:
            raise TypeError(f"Expected a {self.family} transformer, got a {other.family} one.")
        return other

    def _cogvideox_rope(self, frames: int, height: int, width: int, device):
        key = (frames, height, width, str(device))
        if key not in self._rope_cache:
            from diffusers.models.embeddings import get_3d_rotary_pos_embed
            from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

            config = self.module.config
            p, p_t = config.patch_size, config.patch_size_t
            grid_h, grid_w = height // p, width // p
            base_w, base_h = config.sample_width // p, config.sample_height // p
            if p_t is None:
                crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
                rope = get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops,
                                               grid_size=(grid_h, grid_w), temporal_size=frames, device=device)
            else:
                rope = get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=None,
                                               grid_size=(grid_h, grid_w), temporal_size=(frames + p_t - 1) // p_t,
                                               grid_type="slice", max_size=(base_h, base_w), device=device)
            self._rope_cache = {key: rope}
        return self._rope_cache[key]

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
        if not isinstance(cond, dict) or "encoder_hidden_states" not in cond:
            raise TypeError("cond must be a dict with 'encoder_hidden_states' (see encode_prompts).")
        dtype = self.dtype
        b = latents.shape[0]
        timesteps = torch.as_tensor(timesteps, device=latents.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        kwargs = {k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in cond.items()
                  if isinstance(v, torch.Tensor)}
        if self.family == "cogvideox":
            _, f, _, h, w = latents.shape
            config = self.module.config
            if config.use_rotary_positional_embeddings:
                kwargs["image_rotary_emb"] = self._cogvideox_rope(f, h, w, latents.device)
            timestep = timesteps.long()
        elif self.family == "wan":
            timestep = timesteps.float()
        else:  # hunyuan_video
            timestep = timesteps.float()
            if "encoder_attention_mask" not in kwargs or "pooled_projections" not in kwargs:
                raise TypeError("HunyuanVideo needs cond['encoder_attention_mask'] and cond['pooled_projections'].")
            if self.module.config.guidance_embeds:
                kwargs["guidance"] = torch.full((b,), self.embedded_guidance_scale * 1000.0, dtype=dtype,
                                                device=latents.device)
        return self.transformer(hidden_states=latents.to(dtype), timestep=timestep,
                                attention_kwargs=self.attention_kwargs, return_dict=False, **kwargs)[0]

    @classmethod
    def from_pipeline(cls, pipe, transformer: nn.Module | None = None, **kwargs) -> "TransformerPredictor":
        """A predictor for ``pipe.transformer`` (or ``transformer``) with the pipeline's settings.

        Refuses pipelines this adapter cannot reproduce: Wan 2.2 with two experts (``transformer_2``) and Wan
        ``expand_timesteps`` (TI2V) pipelines.
        """
        if getattr(pipe, "transformer_2", None) is not None:
            raise NotImplementedError(
                "Pipelines with two transformers (Wan 2.2 A14B: transformer_2 below boundary_ratio) are not "
                "supported by MLCD yet; distil a single-transformer pipeline."
            )
        if pipe.config.get("expand_timesteps", False):
            raise NotImplementedError("Wan pipelines with expand_timesteps=True (TI2V) are not supported by MLCD.")
        vsf = getattr(pipe, "vae_scale_factor_spatial", 8)
        return cls(transformer if transformer is not None else pipe.transformer, vae_scale_factor_spatial=vsf,
                   **kwargs)


def _call_default(pipe, name: str, fallback=None):
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        return fallback
    return param.default


def encode_prompts(pipe, prompts: Sequence[str], device=None, dtype=None, max_sequence_length: int | None = None,
                   prompt_template: dict | None = None) -> dict:
    """Text conditioning for :class:`TransformerPredictor` with the pipeline's own text encoder(s).

    Uses ``pipe.encode_prompt`` with the pipeline's default ``max_sequence_length`` (and, for HunyuanVideo, its
    default ``prompt_template``) unless given. Returns ``{"encoder_hidden_states": ...}`` (CogVideoX, Wan) plus
    ``"encoder_attention_mask"`` and ``"pooled_projections"`` (HunyuanVideo). Runs without gradients.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("wan")
        >>> encode_prompts(pipe, ["a red circle", "a dog"], max_sequence_length=8)["encoder_hidden_states"].shape
        torch.Size([2, 8, 16])
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    family = family_for(_unwrap_module(pipe.transformer)).name
    device = device if device is not None else pipe._execution_device
    msl = max_sequence_length or _call_default(pipe, "max_sequence_length", 226)
    with torch.no_grad():
        if family == "hunyuan_video":
            template = prompt_template if prompt_template is not None else _call_default(pipe, "prompt_template")
            kwargs = {"prompt_template": template} if template is not None else {}
            embeds, pooled, mask = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device, dtype=dtype,
                                                      max_sequence_length=msl, **kwargs)
            return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "pooled_projections": pooled}
        embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=msl,
                                       device=device, dtype=dtype)
        return {"encoder_hidden_states": embeds}


def encode_video_posteriors(pipe, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior ``(mean, std)`` of pixel videos ``(B, 3, T, H, W)`` in [-1, 1], in the transformer's layout
    and scale, so that ``mean + std * eps`` is a clean latent ``x0`` (see :func:`encode_videos`).

    Keeping these two tensors instead of the videos lets a training loop encode each clip once and still draw a fresh
    posterior sample every epoch (``--cache_latents`` of the distillation examples). Runs without gradients, in the
    VAE's dtype.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> mean, std = encode_video_posteriors(tiny_pipeline("wan"), torch.zeros(1, 3, 9, 32, 32))
        >>> mean.shape == std.shape
        True
    """
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"videos must be (B, 3, T, H, W) in [-1, 1], got shape {tuple(videos.shape)}.")
    vae = pipe.vae
    family = family_for(_unwrap_module(pipe.transformer)).name
    t = videos.shape[2]
    if (t - 1) % 4 != 0:
        raise ValueError(f"The video VAEs need 4k + 1 frames, got {t}; use e.g. {4 * ((t - 1) // 4) + 1}.")
    param = next(vae.parameters())
    with torch.no_grad():
        dist = vae.encode(videos.to(device=param.device, dtype=param.dtype)).latent_dist
        mean, std = dist.mean, dist.std
        if family == "cogvideox":
            scale = vae.config.scaling_factor
            return ((mean * scale).permute(0, 2, 1, 3, 4).contiguous(),
                    (std * scale).permute(0, 2, 1, 3, 4).contiguous())
        if family == "wan":
            shift = torch.tensor(vae.config.latents_mean, device=mean.device, dtype=mean.dtype).view(1, -1, 1, 1, 1)
            scale = torch.tensor(vae.config.latents_std, device=mean.device, dtype=mean.dtype).view(1, -1, 1, 1, 1)
            return (mean - shift) / scale, std / scale
        return mean * vae.config.scaling_factor, std * vae.config.scaling_factor


def draw_posterior(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A draw ``mean + std * eps`` of the posterior :func:`encode_video_posteriors` returns, with ``eps`` drawn as
    diffusers' ``DiagonalGaussianDistribution.sample`` draws it (so a seeded generator gives the same latents).

    Example:
        >>> draw_posterior(torch.zeros(2, 3), torch.zeros(2, 3)).abs().sum().item()
        0.0
    """
    from diffusers.utils.torch_utils import randn_tensor

    return mean + std * randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)


def encode_videos(pipe, videos: torch.Tensor, generator: torch.Generator | None = None,
                  sample_posterior: bool = True) -> torch.Tensor:
    """Clean latents ``x0`` of pixel videos ``(B, 3, T, H, W)`` in [-1, 1], in the transformer's layout and scale.

    The inverse of each pipeline's decoding: CogVideoX ``z * scaling_factor`` permuted to ``(B, F, C, H, W)``; Wan
    ``(z - latents_mean) / latents_std``; HunyuanVideo ``z * scaling_factor``. ``T`` must be ``4 k + 1`` for these
    VAEs. ``sample_posterior=False`` uses the posterior mode. Runs without gradients, in the VAE's dtype.

    Example:
        >>> from diffusers_evdit.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("cogvideox")
        >>> encode_videos(pipe, torch.zeros(1, 3, 9, 32, 32)).shape
        torch.Size([1, 3, 4, 4, 4])
    """
    mean, std = encode_video_posteriors(pipe, videos)
    if not sample_posterior:
        return mean
    return draw_posterior(mean, std, generator)


@contextlib.contextmanager
def adapters_disabled(transformer: nn.Module):
    """Run a peft-adapted diffusers transformer without its adapters (the LoRA student's teacher).

    Example:
        >>> from diffusers_evdit.tiny import tiny_transformer
        >>> from peft import LoraConfig
        >>> t = tiny_transformer("wan"); t.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
        >>> with adapters_disabled(t):
        ...     pass
    """
    module = _unwrap_module(transformer)
    module.disable_adapters()
    try:
        yield module
    finally:
        module.enable_adapters()
