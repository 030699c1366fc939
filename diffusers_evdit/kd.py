"""Knowledge distillation of a tile-sparse student from its dense teacher, Efficient-vDiT Stage 3: the old import path
of the knowledge-distillation names of :mod:`diffusers_evdit.distill` (see :mod:`diffusers_evdit.distill.kd`)."""

from .distill.kd import *  # noqa: F401,F403
from .distill.kd import __all__  # noqa: F401
