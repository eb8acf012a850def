"""Saving and loading measurements at a URL (fsspec), tested on fsspec's in-memory filesystem:
the same records come back, writes are write-then-move, damaged files are skipped as on disk."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fsspec.core import url_to_fs

from lightning_stiffness.measurement import (
    MeasurementFormatWarning,
    is_url,
    load_measurement,
    load_measurements,
    save_measurement,
    write_text_atomic,
)

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"


@pytest.fixture
def url() -> Iterator[str]:
    root = f"memory://runs-{uuid.uuid4().hex}"
    yield root
    fs, location = url_to_fs(root)
    if fs.exists(location):
        fs.rm(location, recursive=True)


def _names(url: str) -> list[str]:
    fs, location = url_to_fs(url)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(location, withdirs=False))


def test_is_url() -> None:
    assert is_url("s3://bucket/run") and is_url("memory://x") and is_url("file:///tmp/x")
    assert not is_url("/tmp/run") and not is_url(Path("/tmp/run")) and not is_url("relative/run")


def test_round_trip_through_memory_filesystem(url: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        originals = load_measurements(FIXTURE)
    directory = f"{url}/version_0/stiffness"
    saved = [save_measurement(m, directory) for m in originals]
    assert all(isinstance(s, str) and s.startswith(f"{directory}/measurement-") for s in saved)
    assert _names(url) == sorted(s.rsplit("/", 1)[-1] for s in saved), "no temporary file is left"
    for which in (url, directory):  # a run's root (searched recursively) and its stiffness folder
        loaded = load_measurements(which)
        assert [m.step for m in loaded] == [m.step for m in originals]
        for new, old in zip(loaded, originals, strict=True):
            assert torch.equal(new.gram, old.gram) and new.summaries == old.summaries
            assert repr(new.critical_lengths) == repr(old.critical_lengths)
    single = load_measurement(saved[1])
    assert single.step == originals[1].step and torch.equal(single.sign, originals[1].sign)
    assert [m.step for m in load_measurements(saved[2])] == [originals[2].step]


def test_failed_write_leaves_old_file_and_no_temporary(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    m = load_measurements(FIXTURE)[0]
    target = save_measurement(m, url)
    fs, location = url_to_fs(str(target))
    before = fs.cat_file(location)

    def crash(obj: object, f: Any, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_measurement(m, url)
    monkeypatch.undo()
    assert fs.cat_file(location) == before, "the old file is intact"
    assert _names(url) == [str(target).rsplit("/", 1)[-1]], "no temporary file left behind"


def test_damaged_and_temporary_files_at_a_url(url: str) -> None:
    ms = load_measurements(FIXTURE)
    for m in ms[:3]:
        save_measurement(m, url)
    fs, location = url_to_fs(url)
    fs.pipe_file(f"{location}/measurement-000000099-start.pt", b"not a zip")
    fs.pipe_file(f"{location}/.measurement-000000100-start.pt.abc.tmp", b"leftover of a killed writer")
    write_text_atomic(f"{url}/run.json", '{"hparams": {}}')
    assert fs.cat_file(f"{location}/run.json") == b'{"hparams": {}}'
    with pytest.warns(MeasurementFormatWarning, match="measurement-000000099-start.pt") as caught:
        loaded = load_measurements(url)
    assert len(caught) == 1 and "skipped 1 of 4" in str(caught[0].message)
    assert [m.step for m in loaded] == [m.step for m in ms[:3]]


def test_missing_url_is_refused(url: str) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_measurements(f"{url}/nothing-here")
    url_to_fs(url)[0].makedirs(url_to_fs(url)[1], exist_ok=True)
    url_to_fs(url)[0].pipe_file(f"{url_to_fs(url)[1]}/notes.txt", b"x")
    with pytest.raises(FileNotFoundError, match="no saved measurements"):
        load_measurements(url)
