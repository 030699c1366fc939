"""The teacher's sampling grid and the exact deterministic DDIM / Euler jump on it (MLCD and KD share them).

``x_t = a(t) x0 + s(t) eps``. DDPM-style models (CogVideoX): ``a = sqrt(alphas_cumprod)``,
``s = sqrt(1 - alphas_cumprod)``, epsilon / v / sample prediction. Flow matching (Wan, HunyuanVideo, LTX-Video):
``x_t = (1 - sigma) x0 + sigma eps``, the model predicts the velocity ``v = eps - x0`` and the jump is the Euler step
``x + (sigma_s - sigma_t) v``, exact for the predicted velocity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..schedulers import is_ddpm_scheduler, is_flow_scheduler, stock_scheduler
from .common import PREDICTION_TYPES, broadcast_coefficients, check_prediction_type

__all__ = ["PREDICTION_TYPES", "DiffusionGrid", "ddim_jump", "pipeline_mu", "pipeline_sigmas",
           "predicted_x0_and_noise"]


def pipeline_sigmas(family: str, num_steps: int) -> list[float] | None:
    """The custom sigmas a family's diffusers pipeline passes to its scheduler for ``num_steps`` steps (the
    ``sigmas`` of :meth:`DiffusionGrid.from_scheduler`): HunyuanVideo and HunyuanVideo 1.5 pass
    ``linspace(1, 0, N + 1)[:-1]``, LTX-Video ``linspace(1, 1 / N, N)``; the others call ``set_timesteps(N)``
    (``None``).

    Example:
        >>> pipeline_sigmas("hunyuan_video", 4), pipeline_sigmas("ltx_video", 4), pipeline_sigmas("wan", 4)
        ([1.0, 0.75, 0.5, 0.25], [1.0, 0.75, 0.5, 0.25], None)
    """
    if family in ("hunyuan_video", "hunyuan_video15"):
        return np.linspace(1.0, 0.0, num_steps + 1)[:-1].tolist()
    if family == "ltx_video":
        return np.linspace(1.0, 1.0 / num_steps, num_steps).tolist()
    return None


def pipeline_mu(family: str, scheduler, video_sequence_length: int) -> float | None:
    """The ``mu`` (dynamic-shifting parameter, the ``mu`` of :meth:`DiffusionGrid.from_scheduler`) a family's
    diffusers pipeline passes to ``scheduler``: LTX-Video's ``calculate_shift`` of the latent video's
    ``frames x height x width`` with the scheduler's ``base_image_seq_len``, ``max_image_seq_len``, ``base_shift``
    and ``max_shift`` (diffusers' defaults where the config has none); the others pass none (``None``). A scheduler
    without ``use_dynamic_shifting`` ignores it.

    Example:
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
        ...                                         base_image_seq_len=1024, max_image_seq_len=4096)
        >>> round(pipeline_mu("ltx_video", sched, 4096), 4), pipeline_mu("wan", sched, 4096)
        (2.05, None)
    """
    if family != "ltx_video":
        return None
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    config = scheduler.config
    return calculate_shift(video_sequence_length, config.get("base_image_seq_len", 256),
                           config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                           config.get("max_shift", 1.15))


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
    check_prediction_type(prediction_type)
    x = sample.float()
    out = model_output.float()
    a, s = broadcast_coefficients(alpha_t, x), broadcast_coefficients(sigma_t, x)
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
    check_prediction_type(prediction_type)
    if prediction_type == "flow":
        x = sample.float()
        return x + (broadcast_coefficients(sigma_s, x) - broadcast_coefficients(sigma_t, x)) * model_output.float()
    x0, eps = predicted_x0_and_noise(sample, model_output, alpha_t, sigma_t, prediction_type)
    return broadcast_coefficients(alpha_s, x0) * x0 + broadcast_coefficients(sigma_s, x0) * eps


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
        check_prediction_type(self.prediction_type)
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
            sigmas: flow matching: custom pre-shift sigmas as the pipeline passes them (:func:`pipeline_sigmas`:
                HunyuanVideo passes ``linspace(1, 0, N + 1)[:-1]``); ``None``: ``set_timesteps(N)`` as in Wan.
            mu: flow matching with ``use_dynamic_shifting``: the shift parameter the pipeline would pass
                (:func:`pipeline_mu`: LTX-Video's depends on the latent video's size).

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

        prediction_type = config.get("prediction_type")
        if not is_ddpm_scheduler(scheduler):
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
        return broadcast_coefficients(a, x0) * x0.float() + broadcast_coefficients(s, x0) * noise.float()

    def jump(self, sample: torch.Tensor, model_output: torch.Tensor, index_from: torch.Tensor,
             index_to: torch.Tensor) -> torch.Tensor:
        """:func:`ddim_jump` from grid ``index_from`` to ``index_to`` (per batch element)."""
        _, a_t, s_t = self.coefficients(index_from, sample.device)
        _, a_s, s_s = self.coefficients(index_to, sample.device)
        return ddim_jump(sample, model_output, a_t, s_t, a_s, s_s, self.prediction_type)

