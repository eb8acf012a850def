"""Deprecated: the analysis moved into the one stiffness-math package,
:mod:`lightning_stiffness.analytics` (``analyze``, ``AnalysisConfig``, …), and the logged tag names
into :mod:`lightning_stiffness.log` (``scalar_metrics``). Importing from here still works, with a
``DeprecationWarning``."""

import warnings

from lightning_stiffness.analytics.critical_length import ESTIMATORS  # noqa: F401  (re-exported)
from lightning_stiffness.analytics.measure import (  # noqa: F401  (re-exported)
    AnalysisConfig,
    add_distance_analysis,
    analyze,
    analyze_without_classes,
    stiffness_matrices,
)
from lightning_stiffness.analytics.stiffness import PAIR_KINDS  # noqa: F401  (re-exported)
from lightning_stiffness.log import scalar_metrics  # noqa: F401  (re-exported)

warnings.warn(
    "lightning_stiffness.analysis is deprecated: import analyze and AnalysisConfig from lightning_stiffness "
    "(or lightning_stiffness.analytics) and scalar_metrics from lightning_stiffness.log",
    DeprecationWarning,
    stacklevel=2,
)

__all__: list[str] = []  # deprecated: nothing here is public API any more
