"""Deprecated: the analysis moved into the one stiffness-math package,
:mod:`lightning_stiffness.analytics` (``analyze``, ``AnalysisConfig``, …), and the logged tag names
into :mod:`lightning_stiffness.log` (``scalar_metrics``). Importing from here still works, with a
``DeprecationWarning``."""

import warnings

warnings.warn(
    "lightning_stiffness.analysis is deprecated: import analyze and AnalysisConfig from lightning_stiffness "
    "(or lightning_stiffness.analytics) and scalar_metrics from lightning_stiffness.log",
    DeprecationWarning,
    stacklevel=2,
)

__all__: list[str] = []  # deprecated: nothing here is public API any more
