"""What the docs and the report promise: a resumed run read back from the common parent of its
``version_N`` folders, the demo's printed TensorBoard command, "no data" notes on empty plots and
the claims check's rules."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_stiffness import StiffnessCallback, load_measurements
from lightning_stiffness.measurement import Measurement, load_measurement, save_measurement
from lightning_stiffness.report import check_claims, load_runs
from lightning_stiffness.report.claims import FAILS, memorising, on_plateau
from lightning_stiffness.versions import Version, merge_versions
from tests.lightning_helpers import TinyClassifier, loaders, trainer
from tests.test_report import _m, _run


def _cb() -> StiffnessCallback:
    return StiffnessCallback(
        every_n_steps=4, per_class=5, log_images=False, bootstrap=5, splits=("train", "val"), max_overhead=None
    )


def _fit(root: Path, cb: StiffnessCallback, *, max_epochs: int, lr: float = 1e-2, ckpt: str | None = None) -> None:
    L.seed_everything(0, verbose=False)
    train, val = loaders()
    trainer(
        root,
        [cb, ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
        max_epochs=max_epochs,
        enable_checkpointing=True,
        logger=TensorBoardLogger(str(root), name="run", default_hp_metric=False),
    ).fit(TinyClassifier(lr=lr), train, val, ckpt_path=ckpt)


def _files(folder: Path) -> dict[int, Measurement]:
    return {m.step: m for m in (load_measurement(f) for f in sorted(folder.glob("measurement-*.pt")))}


def test_resumed_run_reads_back_from_the_common_parent(tmp_path: Path) -> None:
    cb1 = _cb()
    _fit(tmp_path, cb1, max_epochs=1)
    cb2 = _cb()
    _fit(tmp_path, cb2, max_epochs=2, ckpt=str(tmp_path / "ckpt" / "last.ckpt"))
    first, second = _files(tmp_path / "run/version_0/stiffness"), _files(tmp_path / "run/version_1/stiffness")
    assert first and second and max(first) < min(second), "the resume wrote later steps into a new version"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean resume drops nothing, so it warns about nothing
        merged = load_measurements(tmp_path / "run")
    assert [m.step for m in merged] == sorted(first) + sorted(second) == [m.step for m in cb2.measurements]
    for m in merged:
        source = first.get(m.step) or second[m.step]
        assert torch.equal(m.gram, source.gram) and m.trigger == source.trigger
    (run,) = load_runs([tmp_path / "run"])
    assert run.versions == [tmp_path / "run/version_0/stiffness", tmp_path / "run/version_1/stiffness"]
    assert [m.step for m in run.measurements] == [m.step for m in merged]


def test_different_runs_in_one_folder_are_refused_with_the_difference(tmp_path: Path) -> None:
    _fit(tmp_path, _cb(), max_epochs=1, lr=1e-2)
    _fit(tmp_path, _cb(), max_epochs=1, lr=1e-3)
    refusal = r"one resumed run \(run.json hparams differs \(.*0.01.* in version_0, .*0.001.* in version_1\).*of 2 runs"
    with pytest.raises(ValueError, match=refusal):
        load_measurements(tmp_path / "run")
    assert len(load_runs([tmp_path / "run"])) == 2, "the report keeps them as two runs"


def test_repeated_runs_are_refused(tmp_path: Path) -> None:
    _fit(tmp_path, _cb(), max_epochs=1)
    _fit(tmp_path, _cb(), max_epochs=1)
    with pytest.raises(ValueError, match="both start at step 0: two runs with the same settings"):
        load_measurements(tmp_path / "run")


def _version(path: Path, steps: list[int], labels: list[int] | None = None, **info: object) -> Version:
    ms = [_m(s, 1.0, 0.0) for s in steps]
    for m in ms:
        if labels is not None:
            m.labels = torch.tensor(labels)
    return Version(path, {"hparams": {"lr": 0.1}, **info}, ms)


def test_resume_from_an_earlier_checkpoint_drops_the_abandoned_steps(tmp_path: Path) -> None:
    old, new = _version(tmp_path / "v0", [0, 10, 20, 30]), _version(tmp_path / "v1", [20, 40])
    new.measurements[0].trigger = "resumed"
    with pytest.warns(UserWarning, match=r"dropped measurements 2 of .*v0 \(steps 20–30"):
        merged = merge_versions([new, old])
    assert [(m.step, m.trigger) for m in merged] == [
        (0, "every_n_steps"),
        (10, "every_n_steps"),
        (20, "resumed"),
        (40, "every_n_steps"),
    ]


def test_versions_on_different_probes_or_without_run_json_are_refused(tmp_path: Path) -> None:
    a = _version(tmp_path / "v0", [0, 5], labels=[0, 0, 1, 1])
    with pytest.raises(ValueError, match="the probe's labels differ"):
        merge_versions([a, _version(tmp_path / "v1", [9], labels=[0, 1, 0, 1])])
    with pytest.raises(ValueError, match=r"run.json callback.seed differs \(1 in v0, 2 in v1\)"):
        merge_versions(
            [
                _version(tmp_path / "v0", [0], callback={"seed": 1}),
                _version(tmp_path / "v1", [9], callback={"seed": 2}),
            ]
        )
    bare = Version(tmp_path / "v1", None, [_m(9, 1.0, 0.0)])
    with pytest.raises(ValueError, match=r"has no run\.json"):
        merge_versions([a, bare])
    # settings that may change on resume are not compared, nor the addresses in object reprs
    merged = merge_versions(
        [
            _version(tmp_path / "v0", [0], callback={"every_n_steps": 5, "params": "<f at 0x7f01>"}, max_epochs=1),
            _version(tmp_path / "v1", [9], callback={"every_n_steps": 50, "params": "<f at 0x7f99>"}, max_epochs=9),
        ]
    )
    assert [m.step for m in merged] == [0, 9]


def test_demo_prints_a_tensorboard_command_that_works_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_stiffness.demo import main

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--out", "logs", "--dataset", "digits", "--epochs", "1", "--per-class", "4", "--every-n-steps", "20"])
    line = next(x for x in out.getvalue().splitlines() if "--logdir" in x)
    executable, flag, logdir = shlex.split(line.split("view them with:", 1)[1])
    assert flag == "--logdir" and Path(logdir).is_absolute() and Path(logdir) == tmp_path / "here" / "logs"
    assert executable == "tensorboard" or Path(executable).exists()
    monkeypatch.chdir(tmp_path)  # the printed directory is right from anywhere, not only from the demo's cwd
    events = sorted(Path(logdir).rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"stiffness/sign/within", "stiffness/sign/between"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("stiffness/sign/within")) >= 2


def _texts(fig: object) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)  # type: ignore[attr-defined]


def test_empty_plots_say_no_data_and_why(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from lightning_stiffness.viz import class_matrix, curves

    for k, lr in enumerate((1e-4, 1e-3, 1e-2)):
        _run(tmp_path / "set", f"lr{k}", [_m(0, 1.0, -0.5), _m(2, 0.9, 0.1)], hparams={"lr": lr})
    runs = load_runs([tmp_path / "set"])  # thresholds [0.1] set (see _run), smoothed losses 1.0 and 1/3
    left = _texts(curves.lr_between_figure(runs)).split("no epoch-end")[0]
    assert "no data" in left and "loss thresholds 0.1\nwere set but not reached" in left
    assert "lowest smoothed training loss measured: 0.333" in left and "loss_thresholds=" not in left
    for k, lr in enumerate((1e-4, 1e-3, 1e-2)):
        d = _run(tmp_path / "unset", f"lr{k}", [_m(0, 1.0, -0.5)], hparams={"lr": lr})
        (d / "run.json").write_text(json.dumps({"hparams": {"lr": lr}}))
    assert "no loss thresholds were set" in _texts(curves.lr_between_figure(load_runs([tmp_path / "unset"])))
    assert "no run reached training loss 0.1" in _texts(curves.lr_critical_length_figure(runs, 0.1))
    runs[0].measurements[1].trigger = "loss<=0.1"  # reached, but this planted measurement has no ξ
    assert "no run has a positive, finite ξ" in _texts(curves.lr_critical_length_figure(runs, 0.1))
    assert "no data" in _texts(class_matrix.class_matrix_grid(runs[0], "sign", [7]))
    assert "no data" not in _texts(class_matrix.class_matrix_grid(runs[0], "sign", [0]))
    runs[0].measurements[0].train_loss = runs[0].measurements[1].train_loss = None
    assert "no training or validation loss" in _texts(curves.training_figure(runs[0]))
    assert "no data" not in _texts(curves.training_figure(runs[1]))


def test_every_claim_shows_its_rule_and_compared_numbers(tmp_path: Path) -> None:
    from lightning_stiffness.cli import main as cli_main

    for k, lr in enumerate((1e-5, 1e-4, 1e-3)):  # between-class stiffness rises with the learning rate
        _run(tmp_path, f"lr{k}", [_m(0, 1.0, -0.5), _m(5, 0.9, 0.1 * k, trigger="loss<=0.1")], hparams={"lr": lr})
    results = {c.number: c for c in check_claims(load_runs([tmp_path]))}
    assert all(c.rule for c in results.values())
    lower = results[7]
    assert lower.verdict == FAILS and "holds when ρ < -0.5 in more than half" in lower.rule
    assert lower.evidence.startswith("0 of 1 comparisons have ρ < -0.5")
    assert "ρ(lr, between) over 3 runs +1.000 < -0.5 ✗" in lower.evidence
    assert "within +1.000 ≥ 0.9 ✓, between -0.500 ≤ 0 ✓" in results[1].evidence
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    printed = out.getvalue()
    assert printed.count("      rule: ") == len(results) and "measured: 0 of 1 comparisons" in printed
    table = (tmp_path / "report" / "claims.md").read_text()
    assert "| rule |" in table and "holds when ρ < -0.5" in table


def test_plateau_and_memorisation_are_relative_to_ln_c() -> None:
    m = _m(0, 1.0, -1.0)  # 2 classes: ln 2 = 0.693
    for loss, plateau, memo in ((0.693, True, False), (0.688, True, False), (0.68, False, False), (0.3, False, True)):
        m.train_loss = loss
        assert (on_plateau(m), memorising(m)) == (plateau, memo), loss
    m.labels, m.class_sign = torch.arange(10), torch.zeros(10, 10)  # 10 classes: ln 10 = 2.303
    m.train_loss = 2.29
    assert on_plateau(m) and not on_plateau(_m(0, 1.0, -1.0, train_loss=2.29))
    m.train_loss = None
    assert not on_plateau(m) and not memorising(m)


def test_saved_file_round_trip_keeps_the_steps(tmp_path: Path) -> None:
    """The planted versions above are written and read like real ones."""
    for step in (0, 4):
        save_measurement(_m(step, 1.0, 0.0), tmp_path / "run" / "version_0" / "stiffness")
    save_measurement(_m(8, 1.0, 0.0), tmp_path / "run" / "version_1" / "stiffness")
    for v in ("version_0", "version_1"):
        (tmp_path / "run" / v / "stiffness" / "run.json").write_text(json.dumps({"hparams": {"lr": 0.1}}))
    assert [m.step for m in load_measurements(tmp_path / "run")] == [0, 4, 8]


def test_resumed_run_at_a_url_reads_back_from_the_common_parent() -> None:
    """The same merge for runs saved through fsspec (here its in-memory filesystem)."""
    import uuid

    from fsspec.core import url_to_fs

    from lightning_stiffness.measurement import write_text_atomic

    root = f"memory://resumed-{uuid.uuid4().hex}"
    try:
        for version, steps in (("version_0", (0, 4)), ("version_1", (8,))):
            for step in steps:
                save_measurement(_m(step, 1.0, 0.0), f"{root}/{version}/stiffness")
            write_text_atomic(f"{root}/{version}/stiffness/run.json", json.dumps({"hparams": {"lr": 0.1}}))
        assert [m.step for m in load_measurements(root)] == [0, 4, 8]
        write_text_atomic(f"{root}/version_1/stiffness/run.json", json.dumps({"hparams": {"lr": 0.2}}))
        refusal = r"run.json hparams differs \(\{\"lr\": 0.1\} in version_0, \{\"lr\": 0.2\} in version_1\)"
        with pytest.raises(ValueError, match=refusal):
            load_measurements(root)
    finally:
        fs, location = url_to_fs(root)
        fs.rm(location, recursive=True)
