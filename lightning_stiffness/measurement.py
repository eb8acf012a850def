"""The :class:`Measurement` record and its on-disk form (what :func:`load_measurements` reads).

Each measurement is saved as ``measurement-<step>-<trigger>.pt`` (plain tensors, numbers and
strings only, so ``torch.load(weights_only=True)`` reads it) in the callback's directory,
by default ``<logger.log_dir>/stiffness``. The file format is described in ``docs/file-format.md``:
a dict of the fields below plus ``format_version`` (``"MAJOR.MINOR"``, :data:`FORMAT_VERSION`)
and ``writer``. Files without ``format_version`` were written by lightning-stiffness 0.1.0
(format ``0.1``) and are converted on loading.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, TypeVar

import torch
from torch import Tensor

from lightning_stiffness.analytics import BinnedCurve, CriticalLength, StiffnessSummary, SuperclassStats
from lightning_stiffness.analytics.critical_length import CENSORED, EXTRAPOLATED, MEASURED, UNDEFINED

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

#: Version of the on-disk format written by :func:`save_measurement`. A reader loads every file of
#: its own major version (fields it does not know are set aside with a warning, missing optional
#: fields take their defaults) and refuses a newer major version.
FORMAT_VERSION = (2, 0)
#: Format of files that carry no ``format_version``: written by lightning-stiffness 0.1.0.
LEGACY_FORMAT_VERSION = (0, 1)
#: Keys of the on-disk dict that are not :class:`Measurement` fields.
_METADATA_KEYS = ("format_version", "writer", "saved_matrices")
#: What :func:`save_measurement` keeps of the ``(N, N)`` matrices: ``"all"`` (Gram, sign and
#: cosine stiffness), ``"gram"`` (the Gram alone; sign and cosine are recomputed from it on
#: loading, exactly as the analysis computed them) or ``"none"``.
SAVED_MATRICES = ("all", "gram", "none")
#: The ``(N, N)`` matrices of a measurement.
_MATRIX_FIELDS = ("gram", "sign", "cos")

_T = TypeVar("_T")


class MeasurementFormatWarning(UserWarning):
    """A measurement file was read with something set aside (unknown fields, unreadable files)."""


class MeasurementFormatError(ValueError):
    """A measurement file that cannot be turned into a :class:`Measurement` (damaged or foreign)."""


class NewerFormatError(MeasurementFormatError):
    """A measurement file written in a newer major format version than this reader knows."""


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


def parse_format_version(data: dict[str, Any], source: str) -> tuple[int, int]:
    """``(major, minor)`` of a loaded dict; files without one are :data:`LEGACY_FORMAT_VERSION`."""
    raw = data.get("format_version")
    if raw is None:
        return LEGACY_FORMAT_VERSION
    try:
        major, minor = (int(part) for part in str(raw).split("."))
    except ValueError:
        raise MeasurementFormatError(f"{source}: format_version {raw!r} is not 'MAJOR.MINOR'") from None
    if major > FORMAT_VERSION[0]:
        from lightning_stiffness import __version__

        raise NewerFormatError(
            f"{source} was written in measurement format {major}.{minor} by {data.get('writer', 'a newer version')}; "
            f"lightning-stiffness {__version__} reads formats up to {FORMAT_VERSION[0]}.x. "
            "Upgrade: pip install -U lightning-stiffness"
        )
    return major, minor


def _from_dict(data: Any, notes: list[str], source: str) -> Measurement:
    """:class:`Measurement` of a loaded dict; set-aside fields are appended to ``notes``."""
    if not isinstance(data, dict):
        raise MeasurementFormatError(f"{source} holds a {type(data).__name__}, not a saved measurement")
    version = parse_format_version(data, source)
    values = {k: v for k, v in data.items() if k not in _METADATA_KEYS}
    if version < (1, 0):
        try:
            values["critical_lengths"] = _legacy_critical_lengths(values.get("critical_lengths", {}), values)
        except (AttributeError, TypeError, ValueError) as error:
            raise MeasurementFormatError(f"{source}: malformed 0.1 critical lengths ({error})") from error
    if version >= (2, 0):
        values.update(_derived_matrices(data, values, source))
    known = {f.name for f in fields(Measurement)} - {"unknown_fields", "has_matrices"}
    unknown = {k: v for k, v in values.items() if k not in known}
    if unknown:
        notes.append(f"fields {sorted(unknown)} (kept in Measurement.unknown_fields)")
    kwargs = _required(Measurement, {k: v for k, v in values.items() if k in known}, source, "")
    try:
        kwargs["split_names"] = tuple(kwargs["split_names"])
        kwargs["summaries"] = {
            k: {p: _build(StiffnessSummary, s, notes, source, f"summaries.{k}") for p, s in v.items()}
            for k, v in kwargs["summaries"].items()
        }
        nested: tuple[tuple[str, type], ...] = (
            ("curves", BinnedCurve),
            ("critical_lengths", CriticalLength),
            ("layers", StiffnessSummary),
            ("superclass", SuperclassStats),
        )
        for name, kind in nested:
            if name in kwargs:
                kwargs[name] = {k: _build(kind, v, notes, source, name) for k, v in kwargs[name].items()}
    except (AttributeError, TypeError) as error:  # a field of the wrong type: not a measurement we wrote
        raise MeasurementFormatError(f"{source}: malformed measurement ({error})") from error
    has_matrices = data.get("saved_matrices", "all") != "none"
    return Measurement(**kwargs, unknown_fields=unknown, has_matrices=has_matrices)


def _derived_matrices(data: dict[str, Any], values: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``(N, N)`` matrices a format-2 file left out (its ``saved_matrices``): sign and cosine
    stiffness recomputed from the stored Gram (the functions the analysis used), or empty
    ``(0, 0)`` tensors when no matrix was saved."""
    from lightning_stiffness.analytics import cosine_matrix, sign_matrix

    saved = data.get("saved_matrices", "all")
    if saved not in SAVED_MATRICES:
        raise MeasurementFormatError(f"{source}: saved_matrices {saved!r} is not one of {SAVED_MATRICES}")
    if saved == "none":
        return {name: torch.empty(0, 0) for name in _MATRIX_FIELDS}
    if saved == "gram":
        gram = values.get("gram")
        if not isinstance(gram, Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
            raise MeasurementFormatError(f"{source}: saved_matrices='gram' but the file holds no (N, N) gram")
        return {"sign": sign_matrix(gram), "cos": cosine_matrix(gram)}
    return {}


def _required(cls: type, values: dict[str, Any], source: str, where: str) -> dict[str, Any]:
    """``values`` after checking that every field of ``cls`` without a default is present."""
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in values and f.default is MISSING and f.default_factory is MISSING  # type: ignore[misc]
    ]
    if missing:
        raise MeasurementFormatError(
            f"{source}: {where or cls.__name__} lacks {missing}; the file is damaged or not a saved measurement"
        )
    return dict(values)


def _build(cls: Callable[..., _T], data: dict[str, Any], notes: list[str], source: str, where: str) -> _T:
    """``cls(**data)`` for a dataclass, unknown keys dropped (noted), missing optional ones defaulted."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        notes.append(f"{where}: sub-fields {unknown} (dropped)")
    values = _required(cls, {k: v for k, v in data.items() if k in names}, source, where)  # type: ignore[arg-type]
    if values.get("window") is not None:
        values["window"] = tuple(values["window"])
    try:
        return cls(**values)
    except ValueError as error:
        raise MeasurementFormatError(f"{source}: {where}: {error}") from error


def _legacy_critical_lengths(stored: dict[str, dict[str, Any]], values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Format 0.1 critical lengths in format 1.0 (a status; ``value`` NaN unless measured).

    0.1 stored a censored zero crossing as the upper edge of the last non-empty bin with
    ``crossed=False``; it becomes ``censored`` with ``lower_bound`` that edge minus half a bin
    (the bin count is read from a curve of the same space; NaN if there is none). A linear-fit
    zero beyond the fit window (``crossed=False``, finite value) becomes ``extrapolated`` with
    ``lower_bound`` the window's end. A NaN linear fit whose line does not decay but is positive at
    the window's end becomes ``censored``. 0.1 ``crossed=True`` stays ``measured`` (0.1 did not
    record the smallest fitted distance, so a linear-fit zero below it cannot be recognised).
    """
    bins = {}
    for key, curve in values.get("curves", {}).items():
        with contextlib.suppress(KeyError, TypeError, AttributeError, ValueError):
            bins[split_key(key)[0]] = len(curve["centers"])
    out = {}
    for key, old in stored.items():
        new = dict(old)
        value, window = float(old.get("value", math.nan)), old.get("window")
        high = float(window[1]) if window is not None else math.nan
        status, bound, zero = MEASURED, math.nan, math.nan
        if not old.get("crossed", False):
            status, value = UNDEFINED, math.nan
            old_value = float(old.get("value", math.nan))
            space = split_key(key)[0] if key.count("/") >= 2 else ""
            if old.get("method") == "zero_crossing" and math.isfinite(old_value):
                status = CENSORED
                if window is not None and space in bins:
                    bound = old_value - (float(window[1]) - float(window[0])) / bins[space] / 2
            elif old.get("method") == "linear_fit" and math.isfinite(old_value):
                status, bound, zero = EXTRAPOLATED, high, old_value
            elif old.get("method") == "linear_fit":
                slope, intercept = float(old.get("slope", math.nan)), float(old.get("intercept", math.nan))
                if slope >= 0 and intercept + slope * high > 0:
                    status, bound = CENSORED, high
        if status != MEASURED:
            new["ci_low"] = new["ci_high"] = math.nan
        new.update(value=value, status=status, lower_bound=bound, extrapolation=zero)
        out[key] = new
    return out


def _warn_notes(notes: list[str], where: str) -> None:
    if notes:
        shown = "; ".join(dict.fromkeys(notes))
        warnings.warn(
            f"{where}: this version of lightning-stiffness does not know {shown}. "
            "They were written by a newer version; upgrade to use them.",
            MeasurementFormatWarning,
            stacklevel=3,
        )


#: Longest trigger part of a file name; a longer trigger is cut and told apart by a hash of it.
MAX_TRIGGER_CHARS = 96


def measurement_filename(m: Measurement) -> str:
    """``measurement-<step>-<trigger>.pt``, the trigger made safe for file names and at most
    :data:`MAX_TRIGGER_CHARS` long (file systems refuse names over 255 bytes)."""
    trigger = "".join(c if c.isalnum() or c in "._-" else "_" for c in m.trigger)
    if len(trigger) > MAX_TRIGGER_CHARS:
        digest = hashlib.sha1(m.trigger.encode()).hexdigest()[:10]
        trigger = f"{trigger[: MAX_TRIGGER_CHARS - 11]}-{digest}"
    return f"measurement-{m.step:09d}-{trigger}.pt"


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is a URL (``s3://…``, ``gs://…``, ``memory://…``, ``file://…``), read and
    written through fsspec; a plain path (``str`` or ``Path``) goes through the local disk."""
    return isinstance(path, str) and "://" in path


def atomic_write(target: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``target`` through a temporary file in its directory then :func:`os.replace`, so a
    reader (or a crash) never sees a half-written file. ``write`` receives the open binary file.

    A URL (:func:`is_url`) is written through fsspec to a hidden temporary name beside it, then
    moved onto it: filesystems without an atomic rename (object stores copy then delete) still
    never show a partial file under the target's name or the ``measurement-*.pt`` pattern.
    """
    if is_url(target):
        _atomic_write_url(str(target), write)
        return
    target = Path(target)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _atomic_write_url(target: str, write: Callable[[IO[bytes]], object]) -> None:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(target)
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    temporary = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp" if parent else f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(temporary, "wb") as handle:
            write(handle)
        fs.mv(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(temporary)
        raise


def write_text_atomic(target: str | Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text (e.g. ``run.json``)."""
    atomic_write(target, lambda handle: handle.write(text.encode("utf-8")))


def save_measurement(m: Measurement, directory: str | Path, *, matrices: str = "gram") -> Path | str:
    """Write ``m`` under ``directory`` (created if needed), atomically; returns the file path
    (the file's URL for a URL ``directory``, e.g. ``s3://bucket/run/stiffness``).

    ``matrices`` (:data:`SAVED_MATRICES`) says which ``(N, N)`` matrices to keep: ``"gram"``
    (default: a third of ``"all"``, and loading recomputes sign and cosine stiffness from it),
    ``"all"`` or ``"none"`` (statistics, curves and class matrices only: a few tens of kB). At
    float32 one ``(N, N)`` matrix is ``4 N²`` bytes: 1 MB at N = 500, 4 MB at N = 1000."""
    data = m.to_dict(matrices)
    if is_url(directory):
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(str(directory))
        fs.makedirs(root, exist_ok=True)
        url = f"{str(directory).rstrip('/')}/{measurement_filename(m)}"
        atomic_write(url, lambda handle: torch.save(data, handle))
        return url
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    target = path / measurement_filename(m)
    atomic_write(target, lambda handle: torch.save(data, handle))
    return target


def _read(path: Path | str) -> Any:
    try:
        if is_url(path):
            from fsspec.core import url_to_fs

            fs, location = url_to_fs(str(path))
            with fs.open(location, "rb") as handle:
                return torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, empty file, foreign pickle: all "cannot be read"
        raise MeasurementFormatError(f"{path} cannot be read ({type(error).__name__}: {error})") from error


def load_measurement(path: str | Path) -> Measurement:
    """One saved measurement; :class:`MeasurementFormatError` if it is unreadable or damaged,
    :class:`NewerFormatError` if a newer major format version wrote it."""
    return Measurement.from_dict(_read(path if is_url(path) else Path(path)), source=str(path))


def load_measurements(path: str | Path) -> list[Measurement]:
    """All measurements saved under ``path`` — a run's log dir, its ``stiffness`` folder, or a
    single file — oldest first (by step, then file name).

    A folder holding several measurement folders is read as ONE run resumed from a checkpoint
    (each resume writes into a new ``version_N`` folder) when the folders' ``run.json`` and probe
    agree: the versions are merged by step, and an earlier version's measurements at or after
    the step where the next version continues are dropped with a warning (see
    :mod:`lightning_stiffness.versions`). Folders of different runs are refused with the
    setting that differs (``ValueError``); load them one by one or with
    :func:`lightning_stiffness.report.load_runs`.

    Tolerated, with one :class:`MeasurementFormatWarning` for the whole call: files that cannot be
    read (truncated, corrupt, damaged) are skipped and named; fields written by a newer minor
    format version are set aside in ``Measurement.unknown_fields``; files of format 0.1 (no
    ``format_version``, lightning-stiffness 0.1.0) are converted. Refused: a newer major format
    version (:class:`NewerFormatError`), and a folder where no file can be read.

    ``path`` may be a URL of any fsspec filesystem (``s3://bucket/run``, ``memory://run``).
    """
    root, kind, files = _listing(path)
    if kind == "file":
        return [load_measurement(root)]
    if kind is None:
        raise FileNotFoundError(f"no such file or directory: {root}")
    if not files:
        raise FileNotFoundError(
            f"no saved measurements (measurement-*.pt) under {root}; pass the logger's log dir or the "
            "callback's save_dir"
        )
    by_folder: dict[Path | str, list[Measurement]] = {_parent(f): [] for f in files}
    skipped: list[str] = []
    notes: list[str] = []
    for file in files:
        name = file.name if isinstance(file, Path) else file.rsplit("/", 1)[-1]
        try:
            by_folder[_parent(file)].append(_from_dict(_read(file), notes, name))
        except NewerFormatError:
            raise
        except MeasurementFormatError as error:
            skipped.append(f"{name} ({str(error).removeprefix(str(file)).removeprefix(name).strip()})")
    if not any(by_folder.values()):
        raise MeasurementFormatError(f"no measurement under {root} can be read: " + "; ".join(skipped))
    if skipped:
        warnings.warn(
            f"{root}: skipped {len(skipped)} of {len(files)} measurement files that cannot be read: "
            + "; ".join(skipped),
            MeasurementFormatWarning,
            stacklevel=2,
        )
    _warn_notes(notes, str(root))
    if len(by_folder) > 1:
        from lightning_stiffness.versions import Version, merge_versions, read_run_info

        return merge_versions([Version(folder, read_run_info(folder), ms) for folder, ms in by_folder.items()])
    return sorted(next(iter(by_folder.values())), key=lambda m: m.step)


def _parent(file: Path | str) -> Path | str:
    """The folder holding a measurement file (for a URL, the URL up to its last ``/``)."""
    return file.parent if isinstance(file, Path) else file.rsplit("/", 1)[0]


def _listing(path: str | Path) -> tuple[Path | str, str | None, list[Path | str]]:
    """``(root, "file" | "directory" | None, measurement files found recursively, sorted)``; for a
    URL the files are URLs."""
    if not is_url(path):
        root = Path(path)
        kind = "file" if root.is_file() else "directory" if root.exists() else None
        return root, kind, sorted(root.rglob("measurement-*.pt")) if kind == "directory" else []
    from fsspec.core import url_to_fs

    fs, location = url_to_fs(str(path))
    if fs.isfile(location):
        return str(path), "file", []
    if not fs.exists(location):
        return str(path), None, []
    base = location.rstrip("/")
    found = fs.glob(f"{base}/**/measurement-*.pt") + fs.glob(f"{base}/measurement-*.pt")
    return str(path), "directory", sorted({fs.unstrip_protocol(f) for f in found})
