"""Attention Tile diagnostics: capture the self-attention of a video transformer and measure its tile structure.

:func:`profile_attention` reports, per layer, the tile-averaged ``F x F`` attention map and its diagonal /
off-diagonal ratio, the locality curve against reference frame 0, the attention by frame distance, the mass on text
tokens and the data independence between two inputs (definitions and design: docs/design.md).

Modules: ``capture`` (observable processors, :func:`instrument`), ``models`` (:func:`load_transformer`), ``inputs``
(random and recorded transformer inputs), ``statistics`` (streamed tile statistics), ``profile``
(:func:`profile_attention`), ``plots`` (charts; the one place matplotlib is imported).

Example:
    >>> from diffusers_evdit.tiny import tiny_transformer, tiny_inputs
    >>> from diffusers_evdit.analysis import profile_attention
    >>> t = tiny_transformer("cogvideox")
    >>> prof = profile_attention(t, [tiny_inputs(t, seed=0), tiny_inputs(t, seed=1)], layers=[0])
    >>> sorted(prof.layers[0])[:3]
    ['diag_offdiag_ratio', 'locality_curve', 'mass_by_distance']
"""

from .capture import StopForward, attention_shapes, check_layers, instrument, model_output, run_until_stopped
from .inputs import input_timestep, latent_size, move_inputs, random_inputs, record_transformer_inputs
from .models import MODEL_SHAPES, load_transformer
from .plots import plot_profile_curves, plot_tile_heatmap, pyplot
from .profile import AttentionProfile, profile_attention
from .statistics import DEFAULT_LEVELS, TileAccumulator, attention_mass_overlap, tile_statistics

__all__ = [
    "StopForward",
    "run_until_stopped",
    "model_output",
    "instrument",
    "check_layers",
    "attention_shapes",
    "load_transformer",
    "latent_size",
    "random_inputs",
    "input_timestep",
    "record_transformer_inputs",
    "move_inputs",
    "TileAccumulator",
    "tile_statistics",
    "attention_mass_overlap",
    "AttentionProfile",
    "profile_attention",
    "plot_tile_heatmap",
    "plot_profile_curves",
    "pyplot",
    "MODEL_SHAPES",
    "DEFAULT_LEVELS",
]
