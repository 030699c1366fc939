"""Multi-step latent consistency distillation (MLCD), Efficient-vDiT Stage 1: the old import path of the MLCD names
of :mod:`diffusers_evdit.distill` (see :mod:`diffusers_evdit.distill.mlcd`). Importing it also registers the
few-step schedulers (:mod:`diffusers_evdit.schedulers`) that saved students load with."""

from .distill.common import PREDICTION_TYPES, Predictor
from .distill.grid import DiffusionGrid, ddim_jump, predicted_x0_and_noise
from .distill.mlcd import (
    MLCDLossOutput,
    MLCDPoints,
    MLCDSchedule,
    concat_conditions,
    guided_prediction,
    mlcd_loss,
    progressive_num_segments,
    segment_milestones,
)
from .distill.predictors import (
    TransformerPredictor,
    adapters_disabled,
    draw_posterior,
    encode_prompts,
    encode_video_posteriors,
    encode_videos,
)
from .schedulers import MLCDDDIMScheduler, MLCDFlowMatchEulerScheduler

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
