"""Pure-function stiffness analytics (Fort et al. 2019, arXiv:1901.09491): everything the paper
plots, computed from the per-example-gradient Gram matrix ``G[i, j] = g_i · g_j``, the labels and
pairwise distances, up to the :class:`~lightning_stiffness.measurement.Measurement` record
(:func:`analyze`). Torch only, tensors stay on their device, and no model is ever called here.
"""

from lightning_stiffness.analytics.critical_length import (
    BinnedCurve,
    CriticalLength,
    binned_curve,
    critical_length,
    linear_fit_length,
    zero_crossing_length,
)
from lightning_stiffness.analytics.distance import (
    cosine_distance_matrix,
    cosine_similarity_matrix,
    input_distances,
    preprocess_inputs,
)

# last: builds Measurement records from the functions above
from lightning_stiffness.analytics.measure import (
    AnalysisConfig,
    add_distance_analysis,
    analyze,
    analyze_without_classes,
    stiffness_matrices,
)
from lightning_stiffness.analytics.stiffness import (
    StiffnessSummary,
    class_stiffness_matrix,
    cosine_matrix,
    gradient_diversity,
    m_coherence,
    pair_mask,
    sign_matrix,
    split_block_summaries,
    stiffness_statistics,
    summarize,
    zero_gradient_mask,
)
from lightning_stiffness.analytics.superclass import SuperclassStats, reorder_by_superclass, superclass_stats

__all__ = [
    "AnalysisConfig",
    "BinnedCurve",
    "CriticalLength",
    "StiffnessSummary",
    "SuperclassStats",
    "add_distance_analysis",
    "analyze",
    "analyze_without_classes",
    "binned_curve",
    "class_stiffness_matrix",
    "cosine_distance_matrix",
    "cosine_matrix",
    "cosine_similarity_matrix",
    "critical_length",
    "gradient_diversity",
    "input_distances",
    "linear_fit_length",
    "m_coherence",
    "pair_mask",
    "preprocess_inputs",
    "reorder_by_superclass",
    "sign_matrix",
    "split_block_summaries",
    "stiffness_matrices",
    "stiffness_statistics",
    "summarize",
    "superclass_stats",
    "zero_crossing_length",
    "zero_gradient_mask",
]


def __getattr__(name: str) -> object:
    """``capture_representations`` runs a model, so it moved next to the Gram's capture
    (:mod:`lightning_stiffness.gram.representations`); the old name still works, with a warning."""
    if name == "capture_representations":
        import warnings

        from lightning_stiffness.gram.representations import capture_representations

        warnings.warn(
            "lightning_stiffness.analytics.capture_representations moved to "
            "lightning_stiffness.gram.representations.capture_representations",
            DeprecationWarning,
            stacklevel=2,
        )
        return capture_representations
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
