"""The :class:`Measurement` record and its on-disk form (what :func:`load_measurements` reads).

Each measurement is saved as ``measurement-<step>-<trigger>.pt`` (plain tensors, numbers and
strings only, so ``torch.load(weights_only=True)`` reads it) in the callback's directory,
by default ``<logger.log_dir>/stiffness``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_stiffness.analytics import BinnedCurve, CriticalLength, StiffnessSummary, SuperclassStats


@dataclass
class Measurement:
    """Everything measured at one training step on the probe.

    Attributes:
        step, epoch: ``trainer.global_step`` and ``trainer.current_epoch`` when measured.
        trigger: why (``start``, ``every_n_steps``, ``log_spaced``, ``epoch_end``, ``loss<=0.1``).
        labels, splits, split_names: probe label and split (index into ``split_names``) per example.
        gram: ``(N, N)`` per-example-gradient Gram ``G[i, j] = g_i · g_j`` (CPU).
        sign, cos: ``(N, N)`` sign and cosine stiffness matrices.
        class_sign, class_cos: ``(C, C)`` class stiffness matrices, self-pairs i=j excluded unless
            ``include_self`` was set (NaN: no pairs).
        summaries: ``summaries[kind][pairs]`` with kind ``sign``/``cos`` and pairs ``all`` (every
            probe pair) or a split pair such as ``train-val``: within/between/all means.
        m_coherence, gradient_diversity: scalar alignment metrics from the same Gram.
        curves: stiffness vs distance, keyed ``<space>/<kind>/<pairs>`` (space ``input`` or
            ``layer:<module>``).
        critical_lengths: keyed ``<space>/<kind>/<estimator>`` (``zero_crossing`` v1,
            ``linear_fit`` v3).
        layers: per owning module, the cosine-stiffness summary of its own Gram block (when
            layer-wise stiffness is on).
        train_loss: smoothed training loss at the time (None if unknown).
        seconds: wall-clock cost of the whole measurement; gram_seconds: of the Gram alone.
        strategies: exact path taken per parameter (see :class:`~lightning_stiffness.GramResult`).
        superclass: per kind (``sign``/``cos``), same- vs different-super-class statistics of
            the class matrix (when a super-class map is configured).
        metrics: the trainer's scalar ``callback_metrics`` at the time (e.g. the last ``val_loss``),
            for loss panels and overfitting onset in reports.
    """

    step: int
    epoch: int
    trigger: str
    labels: Tensor
    splits: Tensor
    split_names: tuple[str, ...]
    gram: Tensor
    sign: Tensor
    cos: Tensor
    class_sign: Tensor
    class_cos: Tensor
    summaries: dict[str, dict[str, StiffnessSummary]]
    m_coherence: float
    gradient_diversity: float
    curves: dict[str, BinnedCurve] = field(default_factory=dict)
    critical_lengths: dict[str, CriticalLength] = field(default_factory=dict)
    layers: dict[str, StiffnessSummary] = field(default_factory=dict)
    train_loss: float | None = None
    seconds: float = math.nan
    gram_seconds: float = math.nan
    strategies: dict[str, str] = field(default_factory=dict)
    superclass: dict[str, SuperclassStats] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain containers of tensors, numbers and strings (safe for ``weights_only`` loading)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "summaries":
                value = {k: {p: asdict(s) for p, s in v.items()} for k, v in value.items()}
            elif f.name in ("curves", "critical_lengths", "layers", "superclass"):
                value = {k: asdict(v) for k, v in value.items()}
            elif f.name == "split_names":
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        kwargs = dict(data)
        kwargs["split_names"] = tuple(kwargs["split_names"])
        kwargs["summaries"] = {
            k: {p: StiffnessSummary(**s) for p, s in v.items()} for k, v in data["summaries"].items()
        }
        kwargs["curves"] = {k: BinnedCurve(**v) for k, v in data.get("curves", {}).items()}
        kwargs["critical_lengths"] = {k: _critical_length(v) for k, v in data.get("critical_lengths", {}).items()}
        kwargs["layers"] = {k: StiffnessSummary(**v) for k, v in data.get("layers", {}).items()}
        kwargs["superclass"] = {k: SuperclassStats(**v) for k, v in data.get("superclass", {}).items()}
        return cls(**kwargs)


def _critical_length(data: dict[str, Any]) -> CriticalLength:
    values = dict(data)
    if values.get("window") is not None:
        values["window"] = tuple(values["window"])
    return CriticalLength(**values)


def measurement_filename(m: Measurement) -> str:
    trigger = "".join(c if c.isalnum() or c in "._-" else "_" for c in m.trigger)
    return f"measurement-{m.step:09d}-{trigger}.pt"


def save_measurement(m: Measurement, directory: str | Path) -> Path:
    """Write ``m`` under ``directory`` (created if needed); returns the file path."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    target = path / measurement_filename(m)
    torch.save(m.to_dict(), target)
    return target


def load_measurement(path: str | Path) -> Measurement:
    return Measurement.from_dict(torch.load(path, map_location="cpu", weights_only=True))


def load_measurements(path: str | Path) -> list[Measurement]:
    """All measurements saved under ``path`` — a run's log dir, its ``stiffness`` folder, or a
    single file — oldest first (by step, then file name). Several runs under one folder are an
    error (their steps would interleave); load them one by one or with
    :func:`lightning_stiffness.report.load_runs`."""
    root = Path(path)
    if root.is_file():
        return [load_measurement(root)]
    if not root.exists():
        raise FileNotFoundError(f"no such file or directory: {root}")
    files = sorted(root.rglob("measurement-*.pt"))
    if not files:
        raise FileNotFoundError(
            f"no saved measurements (measurement-*.pt) under {root}; pass the logger's log dir or the "
            "callback's save_dir"
        )
    folders = sorted({str(f.parent) for f in files})
    if len(folders) > 1:
        shown = ", ".join(folders[:3]) + (", …" if len(folders) > 3 else "")
        raise ValueError(f"{root} holds measurements of {len(folders)} runs ({shown}); pass one run's directory")
    measurements = [load_measurement(f) for f in files]
    return sorted(measurements, key=lambda m: m.step)
