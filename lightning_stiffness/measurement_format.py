"""The measurement file format: its versions, the errors and warnings of a reader, and the
conversion of a loaded dict (this or an older format) into a :class:`~lightning_stiffness.measurement.Measurement`.

A file holds a dict of the ``Measurement`` fields plus ``format_version`` (``"MAJOR.MINOR"``,
:data:`FORMAT_VERSION`), ``writer`` and ``saved_matrices``; docs/file-format.md describes it. Files
without ``format_version`` were written by lightning-stiffness 0.1.0 (format ``0.1``) and are
converted here. Reading and writing files is in :mod:`lightning_stiffness.measurement_io`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

# the submodules, not the package: the package's analyze builds Measurement records
from lightning_stiffness.analytics.critical_length import (
    CENSORED,
    EXTRAPOLATED,
    MEASURED,
    UNDEFINED,
    BinnedCurve,
    CriticalLength,
)
from lightning_stiffness.analytics.stiffness import StiffnessSummary
from lightning_stiffness.analytics.superclass import SuperclassStats

if TYPE_CHECKING:
    from lightning_stiffness.measurement import Measurement

__all__ = [
    "FORMAT_VERSION",
    "MeasurementFormatError",
    "MeasurementFormatWarning",
    "NewerFormatError",
]

#: Version of the on-disk format written by :func:`save_measurement`. A reader loads every file of
#: its own major version (fields it does not know are set aside with a warning, missing optional
#: fields take their defaults) and refuses a newer major version.
FORMAT_VERSION = (2, 1)
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
    from lightning_stiffness.measurement import Measurement  # here: measurement.py imports this module

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
    if version < (2, 1):
        values.update(_legacy_paths(values))
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


#: Path names before format 2.1: the kernel trick was called "ghost".
LEGACY_PATH_NAMES = {"ghost": "kernel_trick"}


def _legacy_paths(values: dict[str, Any]) -> dict[str, Any]:
    """Formats before 2.1 stored the per-parameter paths as ``strategies``, with the kernel trick
    named ``ghost``: read them as ``paths`` with today's names."""
    old = values.pop("strategies", None)
    if not isinstance(old, dict):
        return {}
    return {"paths": {name: LEGACY_PATH_NAMES.get(path, path) for name, path in old.items()}}


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
    from lightning_stiffness.measurement import split_key  # here: measurement.py imports this module

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
