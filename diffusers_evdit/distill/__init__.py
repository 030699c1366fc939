"""Distillation: Stage 1 (multi-step latent consistency distillation, MLCD) and Stage 3 (knowledge distillation of
the tile-sparse student), and what the training examples share.

* :mod:`.common`: parameterisation names, coefficient broadcasting, ``unwrap``, pipeline ``__call__`` defaults;
* :mod:`.grid`: the teacher's sampling grid and the exact DDIM / Euler jump;
* :mod:`.mlcd`: MLCD segments, schedule and loss;
* :mod:`.predictors`: a diffusers transformer as a predictor, prompt and video encoding;
* :mod:`.capture`: forward hooks recording each plan layer's attention and MLP outputs;
* :mod:`.kd`: the knowledge-distillation loss and the sparse student;
* :mod:`.training`: argument groups, accelerator, LoRA, optimiser, EMA and validation videos shared by
  ``examples/train_mlcd.py`` / ``train_kd.py``; :mod:`.training_data`: their data, text and latent caches;
* :mod:`.checkpoints`: atomic training checkpoints and resuming from the last complete one.

The few-step schedulers stay in :mod:`diffusers_evdit.schedulers`: saved pipelines name that module in
``model_index.json``. ``diffusers_evdit.mlcd`` and ``diffusers_evdit.kd`` still give the same public names.
"""

from . import capture, common, grid, kd, mlcd, predictors
from .capture import *  # noqa: F401,F403
from .common import *  # noqa: F401,F403
from .grid import *  # noqa: F401,F403
from .kd import *  # noqa: F401,F403
from .mlcd import *  # noqa: F401,F403
from .predictors import *  # noqa: F401,F403

__all__ = sorted({*capture.__all__, *common.__all__, *grid.__all__, *kd.__all__, *mlcd.__all__, *predictors.__all__})
