"""The :class:`Measurement` record (what :func:`load_measurements` reads) and its composite keys.

Each measurement is saved as ``measurement-<step>-<trigger>.pt`` (plain tensors, numbers and
strings only, so ``torch.load(weights_only=True)`` reads it) in the callback's directory,
by default ``<logger.log_dir>/stiffness``. The file format is described in ``docs/file-format.md``:
a dict of the fields below plus ``format_version`` (``"MAJOR.MINOR"``, :data:`FORMAT_VERSION`)
and ``writer``. Files without ``format_version`` were written by lightning-stiffness 0.1.0
(format ``0.1``) and are converted on loading. The format (versions, errors, conversion) is in
:mod:`lightning_stiffness.measurement_format`, saving and loading in
:mod:`lightning_stiffness.measurement_io`; their public names are importable from here too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from torch import Tensor

# the submodules, not the package: the package's analyze builds Measurement records
from lightning_stiffness.analytics.critical_length import BinnedCurve, CriticalLength
from lightning_stiffness.analytics.stiffness import StiffnessSummary
from lightning_stiffness.analytics.superclass import SuperclassStats

# the file format and its IO live in measurement_format.py and measurement_io.py; their names stay importable here
from lightning_stiffness.measurement_format import (
    _MATRIX_FIELDS,
    FORMAT_VERSION,
    MeasurementFormatError,
    MeasurementFormatWarning,
    NewerFormatError,
    _from_dict,
    _warn_notes,
)
from lightning_stiffness.measurement_format import LEGACY_FORMAT_VERSION as LEGACY_FORMAT_VERSION
from lightning_stiffness.measurement_format import LEGACY_PATH_NAMES as LEGACY_PATH_NAMES
from lightning_stiffness.measurement_format import SAVED_MATRICES as SAVED_MATRICES
from lightning_stiffness.measurement_format import parse_format_version as parse_format_version
from lightning_stiffness.measurement_io import (
    atomic_write,
    is_url,
    load_measurement,
    load_measurements,
    measurement_filename,
    save_measurement,
    write_text_atomic,
)

__all__ = [
    "FORMAT_VERSION",
    "Measurement",
    "MeasurementFormatError",
    "MeasurementFormatWarning",
    "NewerFormatError",
    "atomic_write",
    "is_url",
    "load_measurement",
    "load_measurements",
    "measurement_filename",
    "result_key",
    "save_measurement",
    "split_key",
    "write_text_atomic",
]

_T = TypeVar("_T")


def result_key(space: str, kind: str, last: str) -> str:
    """The composite key of ``Measurement.curves`` (``last`` = pairs) and ``critical_lengths``
    (``last`` = estimator): ``"<space>/<kind>/<last>"``."""
    return f"{space}/{kind}/{last}"


def split_key(key: str) -> tuple[str, str, str]:
    """``(space, kind, pairs-or-estimator)`` of a composite key (inverse of :func:`result_key`)."""
    parts = key.rsplit("/", 2)
    if len(parts) != 3:
        raise ValueError(f"expected a key '<space>/<kind>/<pairs or estimator>', got {key!r}")
    return parts[0], parts[1], parts[2]


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
        paths: exact path taken per parameter (see :class:`~lightning_stiffness.GramResult`).
        superclass: per kind (``sign``/``cos``), same- vs different-super-class statistics of
            the class matrix (when a super-class map is configured).
        metrics: the trainer's scalar ``callback_metrics`` at the time (e.g. the last ``val_loss``),
            for loss panels and overfitting onset in reports.
        class_statistics: ``False`` when the probe targets were not class labels (regression,
            multi-label) and no ``groups`` were given: class matrices are empty and the summaries'
            ``within``/``between`` are NaN; overall stiffness, distances and ξ (all pairs) remain.
        unknown_fields: fields of a loaded file that this version does not know (written by a newer
            minor format version), kept aside and not written back by :meth:`to_dict`.
        has_matrices: False for a measurement loaded from a file saved with ``matrices="none"``:
            ``gram``, ``sign`` and ``cos`` are then empty ``(0, 0)`` tensors.

    Prefer the typed accessors :meth:`summary`, :meth:`curve`, :meth:`critical_length` and
    :attr:`spaces` to indexing the dicts with composite keys.
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
    paths: dict[str, str] = field(default_factory=dict)
    superclass: dict[str, SuperclassStats] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    class_statistics: bool = True
    unknown_fields: dict[str, Any] = field(default_factory=dict)
    has_matrices: bool = True

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def spaces(self) -> list[str]:
        """Distance spaces with curves or critical lengths (``input``, ``layer:<module>``), sorted."""
        return sorted({split_key(k)[0] for k in (*self.curves, *self.critical_lengths)})

    def summary(self, kind: str = "sign", pairs: str = "all") -> StiffnessSummary:
        """Within/between/all means of ``kind`` (``sign``/``cos``) stiffness over ``pairs``
        (``all`` or a split block such as ``train-val``): ``summaries[kind][pairs]``."""
        per_kind = _lookup(self.summaries, kind, "kind")
        return _lookup(per_kind, pairs, f"pairs of kind {kind!r}")

    def curve(self, space: str = "input", kind: str = "sign", pairs: str = "within") -> BinnedCurve:
        """Binned ``kind`` stiffness against distance in ``space`` over ``pairs``
        (``within``/``between``/``all``)."""
        return _lookup(self.curves, result_key(space, kind, pairs), "curve")

    def critical_length(
        self, space: str = "input", kind: str = "sign", estimator: str = "zero_crossing"
    ) -> CriticalLength:
        """ξ of ``kind`` stiffness in ``space`` by ``estimator`` (``zero_crossing``/``linear_fit``).
        Its ``value`` is NaN unless ``status == "measured"``; see :class:`CriticalLength`."""
        return _lookup(self.critical_lengths, result_key(space, kind, estimator), "critical length")

    @property
    def strategies(self) -> dict[str, str]:
        """Deprecated name of :attr:`paths` (the word "strategy" now means Lightning strategies only)."""
        warnings.warn("Measurement.strategies is deprecated: use Measurement.paths", DeprecationWarning, stacklevel=2)
        return self.paths

    def to_dict(self, matrices: str = "all") -> dict[str, Any]:
        """Plain containers of tensors, numbers and strings (safe for ``weights_only`` loading),
        with ``format_version``, ``writer`` and ``saved_matrices`` (see :data:`SAVED_MATRICES`:
        which of the ``(N, N)`` matrices are kept)."""
        from lightning_stiffness import __version__

        if matrices not in SAVED_MATRICES:
            raise ValueError(f"matrices must be one of {SAVED_MATRICES}, got {matrices!r}")
        if not self.has_matrices and matrices != "none":
            raise ValueError(
                f"this measurement was loaded without its (N, N) matrices; it can only be saved with "
                f"matrices='none', not {matrices!r}"
            )
        kept = {"all": _MATRIX_FIELDS, "gram": ("gram",), "none": ()}[matrices]
        out: dict[str, Any] = {
            "format_version": f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}",
            "writer": f"lightning-stiffness {__version__}",
            "saved_matrices": matrices,
        }
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("unknown_fields", "has_matrices") or (f.name in _MATRIX_FIELDS and f.name not in kept):
                continue
            if f.name == "summaries":
                value = {k: {p: asdict(s) for p, s in v.items()} for k, v in value.items()}
            elif f.name in ("curves", "critical_lengths", "layers", "superclass"):
                value = {k: asdict(v) for k, v in value.items()}
            elif f.name == "split_names":
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "measurement") -> Measurement:
        """Read a dict written by :meth:`to_dict` of this or an older version (see
        :func:`load_measurements` for what is tolerated); warns once with what was set aside."""
        notes: list[str] = []
        m = _from_dict(data, notes, source)
        _warn_notes(notes, source)
        return m


def _lookup(mapping: dict[str, _T], key: str, what: str) -> _T:
    if key not in mapping:
        raise KeyError(f"no {what} {key!r}; available: {sorted(mapping) or 'none'}")
    return mapping[key]
