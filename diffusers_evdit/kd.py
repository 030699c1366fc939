"""Knowledge distillation of a tile-sparse student from its dense teacher, Efficient-vDiT Stage 3: the old import path
of the knowledge-distillation names of :mod:`diffusers_evdit.distill` (see :mod:`diffusers_evdit.distill.kd`)."""

from .distill.capture import KDLayer, LayerOutputCapture, LayerOutputs, kd_layers
from .distill.kd import (
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
