"""Saving and loading :class:`~lightning_stiffness.measurement.Measurement` files: atomic writes
(local or through fsspec for a URL), file names, and the tolerant loading of a run's folder.

Each measurement is saved as ``measurement-<step>-<trigger>.pt`` (plain tensors, numbers and
strings only, so ``torch.load(weights_only=True)`` reads it) in the callback's directory, by
default ``<logger.log_dir>/stiffness``; the format is in :mod:`lightning_stiffness.measurement_format`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from lightning_stiffness.measurement_format import (
    MeasurementFormatError,
    MeasurementFormatWarning,
    NewerFormatError,
    _from_dict,
    _warn_notes,
)

if TYPE_CHECKING:
    from lightning_stiffness.measurement import Measurement

__all__ = [
    "atomic_write",
    "is_url",
    "load_measurement",
    "load_measurements",
    "measurement_filename",
    "save_measurement",
    "write_text_atomic",
]


#: Longest trigger kept in a file name; a longer one (merged deferred triggers) is cut and hashed.
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
    from lightning_stiffness.measurement import Measurement  # here: measurement.py imports this module

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
