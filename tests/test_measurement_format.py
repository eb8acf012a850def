"""The measurement file format: version, tolerant loading, 0.1.0 runs, atomic writes, damaged files."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_stiffness.analysis import scalar_metrics
from lightning_stiffness.cli import main as cli_main
from lightning_stiffness.measurement import (
    FORMAT_VERSION,
    Measurement,
    MeasurementFormatError,
    MeasurementFormatWarning,
    NewerFormatError,
    load_measurement,
    load_measurements,
    save_measurement,
    split_key,
)
from lightning_stiffness.report import load_run, write_report
from lightning_stiffness.viz.curves import distance_figure
from lightning_stiffness.viz.figure import have_matplotlib

FIXTURE = Path(__file__).parent / "fixtures" / "run-0.1.0"


@pytest.fixture
def run_copy(tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(FIXTURE, target)
    return target


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("measurement-*.pt"))


def _raw(path: Path) -> dict[str, Any]:
    data = torch.load(path, weights_only=True)
    assert isinstance(data, dict)
    return data


# -- runs saved by lightning-stiffness 0.1.0 ------------------------------------------------------


def test_fixture_is_a_0_1_0_run() -> None:
    files = _files(FIXTURE)
    assert len(files) == 4 and (FIXTURE / "run.json").exists()
    assert sum(f.stat().st_size for f in FIXTURE.iterdir()) < 200_000
    for f in files:
        data = _raw(f)
        assert "format_version" not in data and all("crossed" in xi for xi in data["critical_lengths"].values())


def test_0_1_0_run_loads_silently_with_accessors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known older format converts without complaint
        ms = load_measurements(FIXTURE)
    assert [m.step for m in ms] == [0, 4, 8, 12]
    m = ms[-1]
    assert m.spaces == ["input", "layer:net.1"]
    assert m.summary("sign", "all") is m.summaries["sign"]["all"]
    assert m.summary(kind="cos", pairs="train-val") is m.summaries["cos"]["train-val"]
    assert m.curve("layer:net.1", "cos", "between") is m.curves["layer:net.1/cos/between"]
    assert m.critical_length("input", "cos", "linear_fit") is m.critical_lengths["input/cos/linear_fit"]
    assert m.unknown_fields == {}
    with pytest.raises(KeyError, match=r"'nope'.*available.*'train-val'"):
        ms[0].summary("sign", "nope")
    with pytest.raises(KeyError, match=r"layer:net\.1/sign/zero_crossing"):
        m.critical_length("layer:other", "sign")


def test_0_1_0_critical_lengths_are_converted_like_the_new_estimators() -> None:
    """0.1.0 wrote a censored zero crossing as the upper bin edge and a linear-fit zero beyond the
    data as a plain number; after loading, ξ is NaN for both, with the bound the new estimator gives."""
    raw = [_raw(f) for f in _files(FIXTURE)]
    statuses = set()
    for data, m in zip(raw, load_measurements(FIXTURE)):
        for key, xi in m.critical_lengths.items():
            old = data["critical_lengths"][key]
            estimator = split_key(key)[2]
            statuses.add(xi.status)
            assert xi.crossed == old["crossed"] and xi.crossed == (xi.status == "measured")
            if not xi.crossed:
                assert math.isnan(xi.value) and math.isnan(xi.ci_low), key
            if estimator == "zero_crossing" and not old["crossed"]:
                # 0.1.0 stored the upper edge of the last non-empty bin; the bound is that bin's centre
                # (run.json: bins=8), which is what zero_crossing_length now gives
                low, high = old["window"]
                assert xi.status == "censored" and xi.lower_bound == pytest.approx(old["value"] - (high - low) / 16)
            elif estimator == "zero_crossing":
                assert xi.value == old["value"] and xi.status == "measured"
            elif not old["crossed"] and math.isfinite(old["value"]):
                assert xi.status == "extrapolated" and xi.extrapolation == old["value"] > xi.lower_bound, key
    assert {"censored", "extrapolated"} <= statuses


def test_0_1_0_run_reports(tmp_path: Path) -> None:
    run = load_run(FIXTURE)
    assert run.lr == 0.01 and run.representation_layers == ["net.1"] and len(run.measurements) == 4
    if not have_matplotlib():
        pytest.skip("the report draws with matplotlib")
    report = write_report([FIXTURE], tmp_path / "report")
    assert {p.name for p in report.figures} >= {"stiffness_over_training.png", "stiffness_vs_distance.png"}
    assert (tmp_path / "report" / "claims.md").read_text().strip()
    decay = next(c for c in report.claims if c.number == 8)
    assert "no ξ" in decay.evidence or "ξ ≥" in decay.evidence  # the extrapolated zero is not quoted as ξ
    assert cli_main(["report", str(FIXTURE), "--out", str(tmp_path / "cli")]) == 0


def test_resaved_0_1_0_measurement_round_trips(tmp_path: Path) -> None:
    old = load_measurements(FIXTURE)[-1]
    path = save_measurement(old, tmp_path)
    data = _raw(path)
    assert data["format_version"] == f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}"
    assert data["writer"].startswith("lightning-stiffness ")
    new = load_measurement(path)
    assert new.critical_lengths == old.critical_lengths or all(
        repr(new.critical_lengths[k]) == repr(v) for k, v in old.critical_lengths.items()
    )
    assert torch.equal(new.gram, old.gram) and new.summaries == old.summaries and new.metrics == old.metrics


# -- versions ------------------------------------------------------------------------------------


def _resave(path: Path, edit: Any) -> None:
    data = _raw(path)
    edit(data)
    torch.save(data, path)


def _as_current(data: dict[str, Any]) -> None:
    data.update(Measurement.from_dict(dict(data)).to_dict())


def test_newer_minor_version_sets_unknown_fields_aside_with_one_warning(run_copy: Path) -> None:
    def newer(data: dict[str, Any]) -> None:
        _as_current(data)
        data["format_version"] = f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1] + 1}"
        data["hessian_trace"] = 3.5
        for xi in data["critical_lengths"].values():
            xi["new_detail"] = 1

    for path in _files(run_copy)[:2]:
        _resave(path, newer)
    with pytest.warns(MeasurementFormatWarning) as caught:
        ms = load_measurements(run_copy)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "hessian_trace" in message and "new_detail" in message and "upgrade" in message
    assert [m.unknown_fields for m in ms] == [{"hessian_trace": 3.5}] * 2 + [{}] * 2
    assert ms[0].critical_length("input", "sign").status == ms[2].critical_length("input", "sign").status


def test_newer_major_version_is_refused(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newer, current = FORMAT_VERSION[0] + 1, FORMAT_VERSION[0]
    _resave(_files(run_copy)[1], lambda d: d.update(format_version=f"{newer}.0", writer="x 9.0"))
    with pytest.raises(
        NewerFormatError, match=rf"format {newer}\.0 by x 9\.0.*reads formats up to {current}\.x.*pip install -U"
    ):
        load_measurements(run_copy)
    with pytest.raises(NewerFormatError):
        load_run(run_copy)
    if have_matplotlib():  # the report checks for matplotlib before reading
        assert cli_main(["report", str(run_copy), "--out", str(run_copy / "report")]) == 2
        assert "pip install -U lightning-stiffness" in capsys.readouterr().err


def test_missing_optional_fields_take_defaults_and_missing_required_is_named(run_copy: Path) -> None:
    first, second = _files(run_copy)[:2]

    def drop_optional(data: dict[str, Any]) -> None:
        _as_current(data)
        for name in ("metrics", "superclass", "paths", "layers", "seconds"):
            del data[name]

    _resave(first, drop_optional)
    m = load_measurement(first)
    assert m.metrics == {} and m.superclass == {} and math.isnan(m.seconds) and m.summaries
    _resave(second, lambda d: d.pop("gram"))
    with pytest.raises(MeasurementFormatError, match=r"lacks \['gram'\]"):
        load_measurement(second)
    with pytest.warns(MeasurementFormatWarning, match=second.name):
        assert [m.step for m in load_measurements(run_copy)] == [0, 8, 12]


# -- damaged files and atomic writes --------------------------------------------------------------


def test_truncated_file_is_skipped_and_named(run_copy: Path, tmp_path: Path) -> None:
    damaged = _files(run_copy)[2]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    (run_copy / "measurement-000000099-start.pt").write_bytes(b"")
    with pytest.warns(MeasurementFormatWarning) as caught:
        ms = load_measurements(run_copy)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 2 of 5" in message and damaged.name in message and "measurement-000000099-start.pt" in message
    assert [m.step for m in ms] == [0, 4, 12]
    with pytest.raises(MeasurementFormatError, match="cannot be read"):
        load_measurement(damaged)
    if have_matplotlib():
        with pytest.warns(MeasurementFormatWarning, match=damaged.name):
            report = write_report([run_copy], tmp_path / "report")
        assert len(report.runs[0].measurements) == 3
    for f in _files(run_copy):
        f.write_bytes(b"not a zip")
    with pytest.raises(MeasurementFormatError, match=r"no measurement under .* can be read"):
        load_measurements(run_copy)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = load_measurements(FIXTURE)[0]
    path = save_measurement(m, tmp_path)
    before = path.read_bytes()

    def crash(obj: object, f: Any, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_measurement(m, tmp_path)
    assert path.read_bytes() == before, "the old file is intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "no temporary file left behind"
    monkeypatch.undo()
    (tmp_path / f".{path.name}.abc.tmp").write_bytes(b"leftover of a killed writer")
    assert [x.step for x in load_measurements(tmp_path)] == [0]  # temporaries are not measurements


# -- ξ in logs and figures -----------------------------------------------------------------------


def test_logged_xi_is_measured_only_and_bounds_have_their_own_tag() -> None:
    m = load_measurements(FIXTURE)[-1]
    metrics = scalar_metrics(m)
    for key, xi in m.critical_lengths.items():
        assert (f"stiffness/critical_length/{key}" in metrics) == xi.crossed, key
        if not xi.crossed and math.isfinite(xi.lower_bound):
            assert metrics[f"stiffness/critical_length_lower_bound/{key}"] == xi.lower_bound
    assert any(k.startswith("stiffness/critical_length_lower_bound/") for k in metrics)
    assert all(0 <= v <= 2 for k, v in metrics.items() if "critical_length" in k), "cosine distances lie in [0, 2]"


@pytest.mark.skipif(not have_matplotlib(), reason="needs matplotlib")
def test_distance_figure_marks_bounds() -> None:
    m = load_measurements(FIXTURE)[-1]
    lengths = {"zero": m.critical_length("input", "sign"), "fit": m.critical_length("input", "cos", "linear_fit")}
    fig = distance_figure({"within": m.curve("input", "sign", "within")}, lengths)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"ξ zero ≥ {lengths['zero'].lower_bound:.3f}" in labels
    assert f"ξ fit ≥ {lengths['fit'].lower_bound:.3f}" in labels
    assert not any("=" in label for label in labels)


def test_custom_scalars_keep_bounds_off_the_xi_chart() -> None:
    import re

    from lightning_stiffness.log import custom_scalars_layout

    charts = custom_scalars_layout()["stiffness"]
    xi_pattern = charts["critical length ξ"][1][0]
    bound_pattern = charts["ξ ≥ (no zero crossing in the data)"][1][0]
    bound_tag = "stiffness/critical_length_lower_bound/input/sign/zero_crossing"
    assert re.match(xi_pattern, "stiffness/critical_length/input/sign/zero_crossing")
    assert not re.match(xi_pattern, bound_tag) and re.match(bound_pattern, bound_tag)


# -- saved matrices (format 2.0) -------------------------------------------------------------------


@pytest.mark.parametrize("matrices", ["all", "gram", "none"])
def test_saved_matrices_round_trip_and_sizes(tmp_path: Path, matrices: str) -> None:
    old = load_measurements(FIXTURE)[-1]
    path = save_measurement(old, tmp_path, matrices=matrices)
    data = _raw(path)
    assert data["saved_matrices"] == matrices
    assert {"gram", "sign", "cos"} & set(data) == {"all": {"gram", "sign", "cos"}, "gram": {"gram"}, "none": set()}[
        matrices
    ]
    new = load_measurement(path)
    assert new.summaries == old.summaries and new.curves.keys() == old.curves.keys()
    assert torch.equal(new.class_sign.nan_to_num(7), old.class_sign.nan_to_num(7))
    if matrices == "none":
        assert not new.has_matrices and new.gram.shape == new.sign.shape == new.cos.shape == (0, 0)
        with pytest.raises(ValueError, match="matrices='none'"):
            save_measurement(new, tmp_path / "again", matrices="gram")
    else:  # sign and cosine recomputed from the Gram equal the analysed ones exactly
        assert new.has_matrices
        for name in ("gram", "sign", "cos"):
            assert torch.equal(getattr(new, name), getattr(old, name)), name


def test_default_keeps_the_gram_alone(tmp_path: Path) -> None:
    old = load_measurements(FIXTURE)[-1]
    n = old.num_examples
    sizes = {m: save_measurement(old, tmp_path / m, matrices=m).stat().st_size for m in ("all", "gram", "none")}
    assert save_measurement(old, tmp_path / "default").stat().st_size == sizes["gram"]
    matrix = old.gram.element_size() * n * n
    assert sizes["all"] - sizes["gram"] >= 2 * matrix * 0.95  # sign and cos left out
    assert sizes["gram"] - sizes["none"] >= matrix * 0.95


def test_format_1_0_files_still_load(run_copy: Path) -> None:
    def as_1_0(data: dict[str, Any]) -> None:
        _as_current(data)
        data["format_version"] = "1.0"
        del data["saved_matrices"]

    first = _files(run_copy)[0]
    expected = load_measurement(first)
    _resave(first, as_1_0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_measurement(first)
    assert torch.equal(loaded.sign, expected.sign) and loaded.summaries == expected.summaries and loaded.has_matrices


def test_unknown_saved_matrices_is_a_damaged_file(run_copy: Path) -> None:
    def unknown(data: dict[str, Any]) -> None:
        _as_current(data)
        data["saved_matrices"] = "half"

    first = _files(run_copy)[0]
    _resave(first, unknown)
    with pytest.raises(MeasurementFormatError, match="saved_matrices 'half'"):
        load_measurement(first)
