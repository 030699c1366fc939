"""Multi-step latent consistency distillation (MLCD), Efficient-vDiT Stage 1: the old import path of the MLCD names
of :mod:`diffusers_evdit.distill` (see :mod:`diffusers_evdit.distill.mlcd`). Importing it also registers the
few-step schedulers (:mod:`diffusers_evdit.schedulers`) that saved students load with."""

from .distill import grid as _grid
from .distill import mlcd as _mlcd
from .distill import predictors as _predictors
from .distill.common import Predictor
from .distill.grid import *  # noqa: F401,F403
from .distill.mlcd import *  # noqa: F401,F403
from .distill.predictors import *  # noqa: F401,F403
from .schedulers import MLCDDDIMScheduler, MLCDFlowMatchEulerScheduler

__all__ = ["Predictor", *_grid.__all__, *_mlcd.__all__, *_predictors.__all__, "MLCDDDIMScheduler",
           "MLCDFlowMatchEulerScheduler"]
