"""From a Gram to a :class:`~lightning_stiffness.measurement.Measurement` in one step: the
stiffness analytics of docs/concepts.md applied to one probe, all cheap functions of G, the
labels and distances (no model is called here; the logged tag names live in
:mod:`lightning_stiffness.log`)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_stiffness.analytics.critical_length import ESTIMATORS, critical_length_of_pairs
from lightning_stiffness.analytics.curves import DistanceBins, PairSample
from lightning_stiffness.analytics.stiffness import (
    StiffnessSummary,
    as_float,
    cosine_matrix,
    gradient_diversity,
    m_coherence,
    sign_matrix,
    stiffness_statistics,
    summarize,
)
from lightning_stiffness.analytics.superclass import superclass_stats
from lightning_stiffness.measurement import Measurement

__all__ = ["AnalysisConfig", "add_distance_analysis", "analyze", "analyze_without_classes", "stiffness_matrices"]


@dataclass(frozen=True)
class AnalysisConfig:
    """How a Gram is turned into stiffness statistics.

    Args:
        num_classes: number of classes (default: largest probe label + 1).
        include_self: keep i=j pairs in class matrices and summaries (paper v3 excludes them).
        bins: distance bins of the stiffness-vs-distance curves (v1 Fig. 9 used about 30).
        critical_length_pairs: pairs used for ξ: ``within`` (v3), ``between`` or ``all``.
        max_distance: fit window of the linear-fit estimator (None: all distances).
        bootstrap: bootstrap resamples of probe examples for ξ confidence intervals (0: none).
        seed: seed of the bootstrap (and of the super-class permutation test).
        superclasses: fine class → super-class map (CIFAR-100 coarse labels); when given, each
            measurement carries same- vs different-super-class statistics of the class matrices.
        permutations: permutations of the super-class test.
    """

    num_classes: int | None = None
    include_self: bool = False
    bins: int = 30
    critical_length_pairs: str = "within"
    max_distance: float | None = None
    bootstrap: int = 0
    seed: int = 0
    superclasses: tuple[int, ...] | None = None
    permutations: int = 1000


def stiffness_matrices(gram: Tensor) -> dict[str, Tensor]:
    """``sign(g_i·g_j)`` (v1 Eq. 5) and ``cos(g_i, g_j)`` (v3 S_cos) from the Gram."""
    return {"sign": sign_matrix(gram), "cos": cosine_matrix(gram)}


def analyze(
    gram: Tensor,
    labels: Tensor,
    splits: Tensor,
    split_names: tuple[str, ...],
    *,
    step: int,
    epoch: int,
    trigger: str,
    distances: Mapping[str, Tensor] | None = None,
    blocks: Mapping[str, Tensor] | None = None,
    config: AnalysisConfig | None = None,
    record: Mapping[str, Any] | None = None,
    started: float | None = None,
) -> Measurement:
    """All statistics of one probe. ``distances`` maps a space name (``input``,
    ``layer:<module>``) to an ``(N, N)`` distance matrix; ``blocks`` are per-layer Grams.

    ``record``: the fields of the :class:`Measurement` that are not statistics of the Gram (how
    it was computed — ``paths``, ``gram_seconds`` — and the training state — ``train_loss``,
    ``metrics``), so the record is built in one step; ``started``: ``time.perf_counter()`` when
    the measurement began, which makes ``seconds`` its whole cost up to the end of the analysis."""
    cfg = config or AnalysisConfig()
    gram = gram.detach().cpu()
    labels = labels.detach().cpu().long()
    splits = splits.detach().cpu().long()
    num_classes = cfg.num_classes or int(labels.max()) + 1
    matrices = stiffness_matrices(gram)
    summaries: dict[str, dict[str, StiffnessSummary]] = {}
    class_matrices: dict[str, Tensor] = {}
    for kind, s in matrices.items():
        class_matrices[kind], summaries[kind] = stiffness_statistics(
            s, labels, splits, split_names, num_classes, include_self=cfg.include_self
        )
    measurement = Measurement(
        **dict(record or {}),
        step=step,
        epoch=epoch,
        trigger=trigger,
        labels=labels,
        splits=splits,
        split_names=tuple(split_names),
        gram=gram,
        sign=matrices["sign"],
        cos=matrices["cos"],
        class_sign=class_matrices["sign"],
        class_cos=class_matrices["cos"],
        summaries=summaries,
        m_coherence=m_coherence(gram),
        gradient_diversity=gradient_diversity(gram),
    )
    if cfg.superclasses is not None:
        for kind, class_matrix in (("sign", measurement.class_sign), ("cos", measurement.class_cos)):
            measurement.superclass[kind] = superclass_stats(
                class_matrix, list(cfg.superclasses), permutations=cfg.permutations, seed=cfg.seed
            )
    for space, dist in (distances or {}).items():
        add_distance_analysis(measurement, space, dist.detach().cpu(), matrices, cfg)
    for name, block in (blocks or {}).items():
        measurement.layers[name] = summarize(
            cosine_matrix(block.detach().cpu()), labels, num_classes, include_self=cfg.include_self
        )
    if started is not None:
        measurement.seconds = time.perf_counter() - started
    return measurement


def add_distance_analysis(
    measurement: Measurement, space: str, distances: Tensor, matrices: Mapping[str, Tensor], cfg: AnalysisConfig
) -> None:
    """Binned stiffness-vs-distance curves and both critical-length estimators for one space."""
    labels = measurement.labels
    distances = as_float(distances)
    finite = torch.isfinite(distances)
    if not bool(finite.any()):
        return
    value_range = (0.0, max(float(torch.where(finite, distances, -math.inf).max()), 1e-12))
    # every pair i < j, gathered and binned once for all curves and estimators of this space
    n = distances.shape[0]
    rows, cols = torch.triu_indices(n, n, offset=1, device=distances.device)
    flat = rows * n + cols  # torch.take with flat indices gathers several times faster than m[rows, cols]
    dists = torch.take(distances, flat)
    same = labels.to(distances.device)[rows] == labels.to(distances.device)[cols]
    of_kind = {"within": same, "between": ~same, "all": None}
    binning = DistanceBins.of(dists, bins=cfg.bins, value_range=value_range, same=same)
    shared: tuple[Tensor, PairSample] | None = None  # sign and cos usually select the same pairs
    for kind, s in matrices.items():
        values = torch.take(s, flat)
        usable = torch.isfinite(values) & torch.isfinite(dists)
        for pairs, curve in binning.curves_by_class(values, usable).items():
            measurement.curves[f"{space}/{kind}/{pairs}"] = curve
        kind_mask = of_kind[cfg.critical_length_pairs]
        chosen = (usable if kind_mask is None else usable & kind_mask).nonzero().squeeze(1)
        if shared is not None and torch.equal(shared[0], chosen):
            fitted = dataclasses.replace(shared[1], values=values[chosen])  # shares the bootstrap weights
        else:
            fitted = PairSample(n, rows, cols, values, dists).take(chosen)
            shared = (chosen, fitted)
        for estimator in ESTIMATORS:
            measurement.critical_lengths[f"{space}/{kind}/{estimator}"] = critical_length_of_pairs(
                fitted,
                method=estimator,
                bins=cfg.bins,
                max_distance=cfg.max_distance,
                bootstrap=cfg.bootstrap,
                seed=cfg.seed,
            )


def analyze_without_classes(
    gram: Tensor,
    splits: Tensor,
    split_names: tuple[str, ...],
    *,
    step: int,
    epoch: int,
    trigger: str,
    distances: Mapping[str, Tensor] | None = None,
    blocks: Mapping[str, Tensor] | None = None,
    config: AnalysisConfig | None = None,
    record: Mapping[str, Any] | None = None,
    started: float | None = None,
) -> Measurement:
    """:func:`analyze` for targets that are not class labels (regression, multi-label, token
    labels): stiffness is defined for any loss (v1 Eq. 5 needs only g_i·g_j), so overall
    stiffness (pairs i ≠ j), split blocks, stiffness against distance and ξ over all pairs,
    m-coherence and layer-wise stiffness are computed; the class statistics (class matrices,
    within/between) are not defined and are left out — the matrices are empty, the summaries'
    ``within``/``between`` are NaN and ``Measurement.class_statistics`` is ``False``."""
    cfg = dataclasses.replace(config or AnalysisConfig(), num_classes=1, critical_length_pairs="all", superclasses=None)
    one_group = torch.zeros(gram.shape[0], dtype=torch.long)
    m = analyze(
        gram,
        one_group,
        splits,
        split_names,
        step=step,
        epoch=epoch,
        trigger=trigger,
        distances=distances,
        blocks=blocks,
        config=cfg,
        record=record,
    )
    nan = float("nan")
    m.summaries = {
        kind: {pairs: StiffnessSummary(nan, nan, s.all) for pairs, s in per_pairs.items()}
        for kind, per_pairs in m.summaries.items()
    }
    m.layers = {name: StiffnessSummary(nan, nan, s.all) for name, s in m.layers.items()}
    m.class_sign = torch.empty(0, 0)
    m.class_cos = torch.empty(0, 0)
    m.curves = {key: curve for key, curve in m.curves.items() if key.endswith("/all")}
    m.class_statistics = False
    if started is not None:
        m.seconds = time.perf_counter() - started
    return m
