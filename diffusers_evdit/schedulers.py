"""Few-step schedulers for MLCD-distilled pipelines: the stock diffusers schedulers, pinned to the segment milestones.

A pipeline distilled with multi-step latent consistency distillation (:mod:`diffusers_evdit.mlcd`) samples with one
deterministic jump per segment: from milestone ``t_S`` (pure noise) to ``t_{S-1}``, ..., to ``t_0`` (clean). The
stock diffusers schedulers do exactly these jumps when given the milestones:

* flow matching (Wan, HunyuanVideo, SkyReels-V2, LTX-Video): ``FlowMatchEulerDiscreteScheduler`` with the milestone
  sigmas. Its Euler step ``x + (sigma_next - sigma) * v`` is the exact jump for a velocity prediction;
* DDPM-style (CogVideoX, epsilon / v-prediction / sample): the DDIM step ``a_s * x0 + s_s * eps`` between consecutive
  milestones, with CogVideoX's noise schedule (``snr_shift_scale``, zero terminal SNR).

What the stock classes cannot do is make a saved pipeline use those steps *by default*: the diffusers pipelines call
``scheduler.set_timesteps(num_inference_steps)`` with their own default (50), HunyuanVideo passes its own ``sigmas``,
and ``DDIMScheduler.step`` assumes evenly spaced timesteps. So the two classes here are the stock classes plus three
config entries (``mlcd_timesteps``, ``mlcd_sigmas`` for flow matching, ``use_mlcd_steps``): while ``use_mlcd_steps`` is
true, ``set_timesteps`` ignores the requested step count (or sigmas / timesteps) and installs the ``S`` milestones, so
``EfficientVDiTPipeline.from_pretrained(folder)(prompt)`` samples in ``S`` steps. Every other config entry is the
teacher's, so the teacher's scheduler comes back with ``FlowMatchEulerDiscreteScheduler.from_config(sched.config)``
(or ``scheduler.register_to_config(use_mlcd_steps=False)`` gives the stock behaviour on the same object).

Loading: ``save_pretrained`` records the scheduler in ``model_index.json`` as
``["diffusers_evdit.schedulers", "<class>"]``. diffusers resolves such a library from ``sys.modules`` only, so
``diffusers_evdit.schedulers`` must be imported before ``from_pretrained`` (importing ``diffusers_evdit.mlcd`` does
it).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  diffusers' loader looks it up here
from diffusers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "MLCDDDIMScheduler",
    "MLCDFlowMatchEulerScheduler",
    "is_ddpm_scheduler",
    "is_flow_scheduler",
    "mlcd_scheduler_from",
    "stock_scheduler",
]


def _extended_init(base: type, extra: dict[str, Any]):
    """An ``__init__`` taking every parameter of ``base.__init__`` plus ``extra`` (name -> default).

    diffusers reads a scheduler's config keys from its ``__init__`` signature; extending the signature (instead of
    copying the base parameter list) keeps every base option, in any diffusers version, in the saved config.
    """
    base_init = getattr(base.__init__, "__wrapped__", base.__init__)  # the undecorated __init__: register once
    base_params = list(inspect.signature(base_init).parameters.values())
    params = base_params + [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
        for name, default in extra.items()
    ]

    def __init__(self, *args, **kwargs):
        for name in extra:  # registered in the config by the decorator; the base __init__ does not take them
            kwargs.pop(name, None)
        base_init(self, *args, **kwargs)

    __init__.__signature__ = inspect.Signature(params)
    return register_to_config(__init__)


def _as_list(values, name: str, cast) -> list | None:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().tolist()
    out = [cast(v) for v in values]
    if not out:
        raise ValueError(f"{name} must hold at least one milestone.")
    return out


def _note_requested_steps(scheduler, requested: int | None, num_steps: int) -> None:
    if requested is None or requested == num_steps or getattr(scheduler, "_mlcd_noted", None) == requested:
        return
    scheduler._mlcd_noted = requested
    msg = (
        f"{type(scheduler).__name__} was distilled for {num_steps} steps and samples with them; the requested "
        f"{requested} steps are ignored. For the stock behaviour use "
        "scheduler.register_to_config(use_mlcd_steps=False) or the teacher's scheduler class "
        "(e.g. FlowMatchEulerDiscreteScheduler.from_config(scheduler.config))."
    )
    (logger.warning if requested < num_steps else logger.info)(msg)


class MLCDFlowMatchEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """``FlowMatchEulerDiscreteScheduler`` that samples at fixed MLCD milestones (Wan, HunyuanVideo, SkyReels-V2 and
    LTX-Video students).

    ``mlcd_sigmas`` are the ``S`` milestone sigmas, descending, *as used* (already shifted: they are not shifted
    again); the terminal sigma 0 is appended. ``mlcd_timesteps`` are the transformer timesteps at those milestones
    (default ``sigma * num_train_timesteps``). While ``use_mlcd_steps`` is true, :meth:`set_timesteps` ignores
    ``num_inference_steps`` / ``sigmas`` / ``timesteps`` / ``mu`` and installs the milestones; the step is the stock
    Euler step ``x + (sigma_next - sigma) * v`` (``stochastic_sampling`` must be off). All other config entries are
    the stock class's.

    Example:
        >>> sched = MLCDFlowMatchEulerScheduler(shift=3.0, mlcd_sigmas=[1.0, 0.75, 0.5, 0.25])
        >>> sched.set_timesteps(50)  # what a pipeline asks for by default
        >>> sched.timesteps.tolist(), sched.sigmas.tolist()
        ([1000.0, 750.0, 500.0, 250.0], [1.0, 0.75, 0.5, 0.25, 0.0])
    """

    __init__ = _extended_init(
        FlowMatchEulerDiscreteScheduler, {"mlcd_sigmas": None, "mlcd_timesteps": None, "use_mlcd_steps": True}
    )

    @property
    def mlcd_num_steps(self) -> int | None:
        """``S``, the number of distilled sampling steps (``None`` when no milestones are set)."""
        sigmas = self.config.get("mlcd_sigmas")
        return len(sigmas) if sigmas else None

    def _milestones(self) -> tuple[list[float], list[float]]:
        sigmas = _as_list(self.config.mlcd_sigmas, "mlcd_sigmas", float)
        timesteps = _as_list(self.config.get("mlcd_timesteps"), "mlcd_timesteps", float)
        if timesteps is None:
            timesteps = [s * self.config.num_train_timesteps for s in sigmas]
        if len(timesteps) != len(sigmas):
            raise ValueError(
                f"mlcd_timesteps has {len(timesteps)} entries but mlcd_sigmas has {len(sigmas)}; give one timestep per "
                "milestone sigma."
            )
        if any(b >= a for a, b in zip(sigmas, sigmas[1:])) or sigmas[-1] <= 0 or sigmas[0] > 1:
            raise ValueError(f"mlcd_sigmas must be strictly decreasing in (0, 1], got {sigmas}.")
        if self.config.stochastic_sampling:
            raise ValueError(
                "MLCD sampling is deterministic; set stochastic_sampling=False "
                "(scheduler.register_to_config(stochastic_sampling=False))."
            )
        if self.config.invert_sigmas:
            raise ValueError("invert_sigmas=True (Mochi) is not supported by MLCDFlowMatchEulerScheduler.")
        return sigmas, timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ):
        """Install the ``S`` milestones (``use_mlcd_steps``), else behave as ``FlowMatchEulerDiscreteScheduler``.

        The requested step count (``num_inference_steps``, or the length of ``sigmas`` / ``timesteps``) is ignored
        with a log message when it differs from ``S`` (a warning when it is smaller).
        """
        if not self.config.get("use_mlcd_steps", True) or not self.config.get("mlcd_sigmas"):
            return super().set_timesteps(num_inference_steps, device, sigmas=sigmas, mu=mu, timesteps=timesteps)
        milestone_sigmas, milestone_timesteps = self._milestones()
        requested = num_inference_steps
        if requested is None and sigmas is not None:
            requested = len(sigmas)
        if requested is None and timesteps is not None:
            requested = len(timesteps)
        _note_requested_steps(self, requested, len(milestone_sigmas))
        self.num_inference_steps = len(milestone_sigmas)
        self.timesteps = torch.tensor(milestone_timesteps, dtype=torch.float32, device=device)
        self.sigmas = torch.tensor(milestone_sigmas + [0.0], dtype=torch.float32, device=device)
        self._step_index = None
        self._begin_index = None


class MLCDDDIMScheduler(CogVideoXDDIMScheduler):
    """DDIM between fixed MLCD milestones for DDPM-style students (CogVideoX; epsilon, v-prediction or sample).

    The noise schedule is ``CogVideoXDDIMScheduler``'s (``snr_shift_scale``, ``rescale_betas_zero_snr``; use
    ``snr_shift_scale=1.0`` for a plain ``DDIMScheduler`` teacher). ``mlcd_timesteps`` are the ``S`` integer milestone
    timesteps, descending; the last jump goes to the clean sample (``final_alpha_cumprod``). While ``use_mlcd_steps``
    is true, :meth:`set_timesteps` ignores ``num_inference_steps`` and :meth:`step` jumps to the *next milestone*
    (the stock step assumes evenly spaced timesteps): ``x_s = sqrt(a_s) * x0 + sqrt(1 - a_s) * eps``.

    Example:
        >>> sched = MLCDDDIMScheduler(prediction_type="v_prediction", mlcd_timesteps=[999, 749, 499, 249])
        >>> sched.set_timesteps(50)
        >>> sched.timesteps.tolist()
        [999, 749, 499, 249]
    """

    __init__ = _extended_init(CogVideoXDDIMScheduler, {"mlcd_timesteps": None, "use_mlcd_steps": True})

    @property
    def mlcd_num_steps(self) -> int | None:
        """``S``, the number of distilled sampling steps (``None`` when no milestones are set)."""
        timesteps = self.config.get("mlcd_timesteps")
        return len(timesteps) if timesteps else None

    def _active(self) -> bool:
        return bool(self.config.get("use_mlcd_steps", True) and self.config.get("mlcd_timesteps"))

    def _milestones(self) -> list[int]:
        timesteps = _as_list(self.config.mlcd_timesteps, "mlcd_timesteps", int)
        n = self.config.num_train_timesteps
        if any(b >= a for a, b in zip(timesteps, timesteps[1:])) or timesteps[-1] < 0 or timesteps[0] >= n:
            raise ValueError(f"mlcd_timesteps must be strictly decreasing integers in [0, {n}), got {timesteps}.")
        return timesteps

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """Install the ``S`` milestones (``use_mlcd_steps``), else behave as ``CogVideoXDDIMScheduler``."""
        if not self._active():
            if num_inference_steps is None:
                raise ValueError("num_inference_steps is required when use_mlcd_steps is off.")
            return super().set_timesteps(num_inference_steps, device)
        milestones = self._milestones()
        _note_requested_steps(self, num_inference_steps, len(milestones))
        self.num_inference_steps = len(milestones)
        self.timesteps = torch.tensor(milestones, dtype=torch.int64, device=device)

    def _next_timestep(self, timestep) -> int:
        t = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        milestones = [int(v) for v in self.timesteps.tolist()]
        if t not in milestones:
            raise ValueError(
                f"timestep {t} is not one of the MLCD milestones {milestones}; call set_timesteps() first and step "
                "through scheduler.timesteps."
            )
        i = milestones.index(t)
        return milestones[i + 1] if i + 1 < len(milestones) else -1

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """Deterministic DDIM jump from ``timestep`` to the next milestone (the clean sample after the last one)."""
        if not self._active():
            return super().step(model_output, timestep, sample, eta, use_clipped_model_output, generator,
                                variance_noise, return_dict)
        if eta:
            raise ValueError(f"MLCD sampling is deterministic: call step() with eta=0 (the default), got eta={eta}.")
        if self.num_inference_steps is None:
            raise ValueError("Call set_timesteps() before step().")
        t = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        prev = self._next_timestep(t)
        alpha_t = self.alphas_cumprod[t].to(torch.float32)
        alpha_s = self.alphas_cumprod[prev].to(torch.float32) if prev >= 0 else self.final_alpha_cumprod
        alpha_s = torch.as_tensor(alpha_s, dtype=torch.float32)
        a_t, s_t = alpha_t.sqrt(), (1 - alpha_t).sqrt()
        a_s, s_s = alpha_s.sqrt(), (1 - alpha_s).sqrt()
        x = sample.to(torch.float32)
        out = model_output.to(torch.float32)
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0, eps = (x - s_t * out) / a_t, out
        elif kind == "v_prediction":
            x0, eps = a_t * x - s_t * out, s_t * x + a_t * out
        elif kind == "sample":
            x0, eps = out, (x - a_t * out) / s_t
        else:
            raise ValueError(f"prediction_type {kind!r} must be 'epsilon', 'v_prediction' or 'sample'.")
        prev_sample = (a_s * x0 + s_s * eps).to(sample.dtype)
        x0 = x0.to(sample.dtype)
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


def is_flow_scheduler(scheduler) -> bool:
    """Whether ``scheduler`` samples a flow-matching model (velocity ``v = eps - x0``, ``x_t = (1-s) x0 + s eps``).

    True for ``FlowMatchEulerDiscreteScheduler`` (and subclasses) and for multistep solvers configured with flow
    sigmas (``UniPCMultistepScheduler`` / ``DPMSolverMultistepScheduler`` with ``use_flow_sigmas=True`` and
    ``prediction_type="flow_prediction"``, as in the Wan 2.1 checkpoints).

    Example:
        >>> from diffusers import UniPCMultistepScheduler
        >>> is_flow_scheduler(UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"))
        True
    """
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return True
    config = scheduler.config
    return bool(config.get("use_flow_sigmas")) and config.get("prediction_type") == "flow_prediction"


def is_ddpm_scheduler(scheduler) -> bool:
    """Whether ``scheduler`` is DDPM-style as MLCD needs it: ``alphas_cumprod`` and an ``epsilon`` /
    ``v_prediction`` / ``sample`` prediction type (``CogVideoXDDIMScheduler``, ``DDIMScheduler``, ...).

    Example:
        >>> is_ddpm_scheduler(CogVideoXDDIMScheduler()), is_ddpm_scheduler(FlowMatchEulerDiscreteScheduler())
        (True, False)
    """
    return (getattr(scheduler, "alphas_cumprod", None) is not None
            and scheduler.config.get("prediction_type") in ("epsilon", "v_prediction", "sample"))


def mlcd_scheduler_from(base_scheduler, timesteps, sigmas=None):
    """The few-step scheduler of an MLCD student: the teacher's scheduler config, pinned to the milestones.

    Args:
        base_scheduler: the teacher's scheduler (flow matching: ``FlowMatchEulerDiscreteScheduler`` or a multistep
            solver with flow sigmas such as Wan's ``UniPCMultistepScheduler``, see :func:`is_flow_scheduler`; the
            student samples with Euler jumps between the milestones either way. DDPM-style: a scheduler with
            ``alphas_cumprod`` such as ``CogVideoXDDIMScheduler``, ``CogVideoXDPMScheduler`` or
            ``DDIMScheduler``).
        timesteps: the ``S`` milestone timesteps (transformer inputs), descending.
        sigmas: flow matching only: the ``S`` milestone sigmas, descending (required there).

    Returns:
        :class:`MLCDFlowMatchEulerScheduler` or :class:`MLCDDDIMScheduler`.

    Example:
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> s = mlcd_scheduler_from(FlowMatchEulerDiscreteScheduler(shift=3.0), [1000.0, 500.0], sigmas=[1.0, 0.5])
        >>> type(s).__name__, s.config.shift, s.mlcd_num_steps
        ('MLCDFlowMatchEulerScheduler', 3.0, 2)
    """
    config = {k: v for k, v in dict(base_scheduler.config).items() if not k.startswith("_")}
    if is_flow_scheduler(base_scheduler):
        if sigmas is None:
            raise ValueError("A flow-matching scheduler needs the milestone sigmas (sigmas=...).")
        keys = set(inspect.signature(MLCDFlowMatchEulerScheduler.__init__).parameters) - {"self"}
        kwargs = {k: v for k, v in config.items() if k in keys}
        if not isinstance(base_scheduler, FlowMatchEulerDiscreteScheduler):  # e.g. UniPC with flow sigmas
            kwargs = {"num_train_timesteps": config.get("num_train_timesteps", 1000),
                      "shift": float(config.get("flow_shift") or 1.0)}
        kwargs.update(stochastic_sampling=False, mlcd_sigmas=_as_list(sigmas, "sigmas", float),
                      mlcd_timesteps=_as_list(timesteps, "timesteps", float), use_mlcd_steps=True)
        return MLCDFlowMatchEulerScheduler(**kwargs)
    if not is_ddpm_scheduler(base_scheduler):
        raise TypeError(
            f"{type(base_scheduler).__name__} is neither a flow-matching scheduler (FlowMatchEulerDiscreteScheduler) "
            "nor a DDPM-style scheduler with alphas_cumprod and prediction_type epsilon / v_prediction / sample."
        )
    keys = set(inspect.signature(MLCDDDIMScheduler.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in config.items() if k in keys}
    kwargs.setdefault("snr_shift_scale", 1.0)  # a plain DDIM/DDPM teacher has no SNR shift
    kwargs.update(mlcd_timesteps=_as_list(timesteps, "timesteps", int), use_mlcd_steps=True)
    sched = MLCDDDIMScheduler(**kwargs)
    if not torch.allclose(sched.alphas_cumprod.double(), base_scheduler.alphas_cumprod.double(), rtol=1e-5, atol=1e-7):
        # a noise schedule the CogVideoX DDIM config cannot express: pin it through trained betas
        ac = base_scheduler.alphas_cumprod.double()
        betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
        kwargs.update(trained_betas=betas.tolist(), snr_shift_scale=1.0, rescale_betas_zero_snr=False)
        sched = MLCDDDIMScheduler(**kwargs)
    final = getattr(base_scheduler, "final_alpha_cumprod", None)
    if final is not None and not torch.allclose(torch.as_tensor(sched.final_alpha_cumprod, dtype=torch.float64),
                                                torch.as_tensor(final, dtype=torch.float64)):
        raise ValueError("The teacher's final_alpha_cumprod cannot be reproduced (set_alpha_to_one differs).")
    return sched


def stock_scheduler(scheduler):
    """A fresh stock diffusers scheduler with ``scheduler``'s config (MLCD milestone entries dropped).

    ``MLCDFlowMatchEulerScheduler`` -> ``FlowMatchEulerDiscreteScheduler``, ``MLCDDDIMScheduler`` ->
    ``CogVideoXDDIMScheduler``; any other scheduler -> a new instance of its own class.

    Example:
        >>> type(stock_scheduler(MLCDFlowMatchEulerScheduler(mlcd_sigmas=[1.0, 0.5]))).__name__
        'FlowMatchEulerDiscreteScheduler'
    """
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("mlcd_") and k != "use_mlcd_steps"}
    if isinstance(scheduler, MLCDFlowMatchEulerScheduler):
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    if isinstance(scheduler, MLCDDDIMScheduler):
        return CogVideoXDDIMScheduler.from_config(config)
    return type(scheduler).from_config(config)
