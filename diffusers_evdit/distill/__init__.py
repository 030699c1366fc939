"""Distillation: Stage 1 (multi-step latent consistency distillation, MLCD) and Stage 3 (knowledge distillation of
the tile-sparse student), and what the training examples share.

* :mod:`.common`: parameterisation names, coefficient broadcasting, ``unwrap``, pipeline ``__call__`` defaults;
* :mod:`.grid`: the teacher's sampling grid and the exact DDIM / Euler jump;
* :mod:`.mlcd`: MLCD segments, schedule and loss;
* :mod:`.predictors`: a diffusers transformer as a predictor, prompt and video encoding;
* :mod:`.capture`: forward hooks recording each plan layer's attention and MLP outputs;
* :mod:`.kd`: the knowledge-distillation loss and the sparse student;
* :mod:`.training`: argument groups, data, EMA and sampler shared by ``examples/train_mlcd.py`` / ``train_kd.py``;
* :mod:`.checkpoints`: atomic training checkpoints and resuming from the last complete one.

The few-step schedulers stay in :mod:`diffusers_evdit.schedulers`: saved pipelines name that module in
``model_index.json``. ``diffusers_evdit.mlcd`` and ``diffusers_evdit.kd`` still give the same public names.
"""

from .capture import KDLayer, LayerOutputCapture, LayerOutputs, kd_layers
from .common import PREDICTION_TYPES, Predictor, broadcast_coefficients, call_default, check_prediction_type, unwrap
from .grid import DiffusionGrid, ddim_jump, predicted_x0_and_noise
from .kd import (
    TRAINABLE_KERNELS,
    FeatureLoss,
    KDLossOutput,
    check_trainable_kernel,
    diffusion_inputs,
    diffusion_target,
    kd_feature_loss,
    kd_loss,
    kd_mlcd_loss,
    make_sparse_student,
)
from .mlcd import (
    MLCDLossOutput,
    MLCDPoints,
    MLCDSchedule,
    concat_conditions,
    guided_prediction,
    mlcd_loss,
    progressive_num_segments,
    segment_milestones,
)
from .predictors import (
    TransformerPredictor,
    adapters_disabled,
    draw_posterior,
    encode_prompts,
    encode_video_posteriors,
    encode_videos,
)

__all__ = [
    "PREDICTION_TYPES",
    "TRAINABLE_KERNELS",
    "DiffusionGrid",
    "FeatureLoss",
    "KDLayer",
    "KDLossOutput",
    "LayerOutputCapture",
    "LayerOutputs",
    "MLCDLossOutput",
    "MLCDPoints",
    "MLCDSchedule",
    "Predictor",
    "TransformerPredictor",
    "adapters_disabled",
    "broadcast_coefficients",
    "call_default",
    "check_prediction_type",
    "check_trainable_kernel",
    "concat_conditions",
    "ddim_jump",
    "diffusion_inputs",
    "diffusion_target",
    "draw_posterior",
    "encode_prompts",
    "encode_video_posteriors",
    "encode_videos",
    "guided_prediction",
    "kd_feature_loss",
    "kd_layers",
    "kd_loss",
    "kd_mlcd_loss",
    "make_sparse_student",
    "mlcd_loss",
    "predicted_x0_and_noise",
    "progressive_num_segments",
    "segment_milestones",
    "unwrap",
]
