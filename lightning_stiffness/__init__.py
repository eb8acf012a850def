"""lightning-stiffness: measure stiffness (Fort et al. 2019, arXiv:1901.09491) while a model trains.

The pipeline: probe batch → capture → per-layer Gram ``G[i, j] = g_i · g_j`` →
stiffness analytics → render/log, with :class:`StiffnessCallback` orchestrating it inside a
Lightning ``Trainer``.
"""

from lightning_stiffness.analytics import AnalysisConfig, analyze
from lightning_stiffness.callback import StiffnessCallback
from lightning_stiffness.data import PermutedLabels
from lightning_stiffness.gram import GramResult, per_example_gram, per_example_gram_blocks
from lightning_stiffness.measurement import Measurement, load_measurements
from lightning_stiffness.schedule import MeasurementSchedule

__version__ = "0.1.0"

__all__ = [
    "AnalysisConfig",
    "GramResult",
    "Measurement",
    "MeasurementSchedule",
    "PermutedLabels",
    "StiffnessCallback",
    "__version__",
    "analyze",
    "load_measurements",
    "per_example_gram",
    "per_example_gram_blocks",
]
