"""The report: figures from saved runs and the paper's claims check on planted data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_stiffness.analytics import CriticalLength, StiffnessSummary, SuperclassStats
from lightning_stiffness.cli import main as cli_main
from lightning_stiffness.measurement import Measurement, save_measurement
from lightning_stiffness.report import check_claims, load_runs, write_report
from lightning_stiffness.report.claims import FAILS, FINDING, HOLDS, UNMEASURABLE, _spearman
from lightning_stiffness.report.series import overfitting_onset, pick_steps


def _m(
    step: int,
    within: float,
    between: float,
    *,
    trigger: str = "every_n_steps",
    epoch: int = 0,
    val_loss: float | None = None,
    splits: dict[str, tuple[float, float]] | None = None,
    slope: float | None = None,
    layer_xi: list[float] | None = None,
    superclass: float | None = None,
    train_loss: float | None = None,
) -> Measurement:
    labels = torch.tensor([0, 0, 1, 1])
    eye = torch.eye(4)
    summary = StiffnessSummary(within, between, (within + 2 * between) / 3)
    summaries = {"sign": {"all": summary}, "cos": {"all": summary}}
    for name, (w, b) in (splits or {}).items():
        summaries["sign"][name] = StiffnessSummary(w, b, (w + b) / 2)
    m = Measurement(
        step=step,
        epoch=epoch,
        trigger=trigger,
        labels=labels,
        splits=torch.zeros(4, dtype=torch.long),
        split_names=("val",),
        gram=eye,
        sign=eye,
        cos=eye,
        class_sign=torch.tensor([[within, between], [between, within]]),
        class_cos=torch.tensor([[within, between], [between, within]]),
        summaries=summaries,
        m_coherence=1.0,
        gradient_diversity=1.0,
        train_loss=1.0 / (step + 1) if train_loss is None else train_loss,
    )
    if val_loss is not None:
        m.metrics["val_loss"] = val_loss
    if slope is not None:
        m.critical_lengths["input/cos/linear_fit"] = CriticalLength(
            0.5, True, "linear_fit", math.nan, math.nan, (0.0, 2.0), slope, 1.0
        )
    for i, xi in enumerate(layer_xi or []):
        m.critical_lengths[f"layer:l{i}/sign/zero_crossing"] = CriticalLength(
            xi, True, "zero_crossing", math.nan, math.nan, None, math.nan, math.nan
        )
    if superclass is not None:
        m.superclass["sign"] = SuperclassStats(0.3, 0.3 - superclass, superclass, 0.01 if superclass > 0 else 0.8, 100)
    return m


def _run(root: Path, name: str, ms: list[Measurement], **info: object) -> Path:
    d = root / name / "stiffness"
    for m in ms:
        save_measurement(m, d)
    (d / "run.json").write_text(json.dumps({"callback": {"loss_thresholds": [0.1]}, **info}))
    return d


def _verdicts(root: Path) -> dict[int, str]:
    return {c.number: c.verdict for c in check_claims(load_runs([root]))}


def test_claims_hold_on_paper_like_runs(tmp_path: Path) -> None:
    splits = {"train-train": (0.9, 0.1), "val-val": (0.85, 0.12)}
    _run(
        tmp_path,
        "paper",
        [
            _m(0, 1.0, -0.8, val_loss=2.0, splits=splits),
            _m(10, 1.0, 0.3, val_loss=0.5, splits=splits),
            _m(100, 0.9, 0.2, val_loss=0.2, splits=splits, layer_xi=[0.5, 0.3, 0.1]),
            _m(1000, 0.3, 0.05, val_loss=0.9, splits=splits, slope=-1.2, layer_xi=[0.5, 0.3, 0.1], superclass=0.2),
        ],
        hparams={"lr": 1e-3},
        representation_layers=["l0", "l1", "l2"],
    )
    # on the plateau (smoothed loss within 1% of ln 2, 2 classes) within +1 / between −1; fitting relaxes
    # between towards 0, which must not count against claim 4 (it is reported as finding 12)
    _run(
        tmp_path,
        "permuted",
        [
            _m(0, 1.0, -0.5),
            _m(50, 0.95, -0.95, train_loss=0.695),
            _m(60, 1.0, -0.5, train_loss=0.66),  # 4.8% below ln 2: already fitting, not on the plateau
            _m(900, 0.7, -0.1, train_loss=0.1),
        ],
        datamodule_hparams={"permute_labels": True},
    )
    results = {c.number: c for c in check_claims(load_runs([tmp_path]))}
    v = {k: c.verdict for k, c in results.items()}
    assert v[1] == HOLDS and v[2] == HOLDS and v[3] == HOLDS and v[4] == HOLDS
    assert v[5] == HOLDS and v[8] == HOLDS and v[9] == HOLDS and v[10] == HOLDS
    assert v[6] == UNMEASURABLE and v[7] == UNMEASURABLE and v[11] == UNMEASURABLE
    assert "1 plateau measurements (steps 50–50" in results[4].evidence
    assert v[12] == FINDING and "lowest smoothed loss 0.100 (step 900" in results[12].evidence
    assert "between +0.700" not in results[12].evidence and "within +0.700, between -0.100" in results[12].evidence


def test_claims_fail_when_data_contradict(tmp_path: Path) -> None:
    splits = {"train-train": (0.9, 0.1), "val-val": (0.5, 0.4)}
    _run(
        tmp_path,
        "odd",
        [
            _m(0, 0.2, 0.5, val_loss=2.0, splits=splits),
            _m(10, 0.3, 0.1, val_loss=0.5, splits=splits),
            _m(100, 0.4, 0.0, val_loss=0.3, splits=splits),
            _m(1000, 0.8, -0.1, val_loss=1.0, splits=splits, superclass=-0.1, slope=0.4, layer_xi=[0.1, 0.3, 0.5]),
        ],
        representation_layers=["l0", "l1", "l2"],
    )
    # on the plateau between-class is far from −1: claim 4 fails even though the run ends near −1
    _run(
        tmp_path,
        "permuted",
        [_m(10, 1.0, -0.4, train_loss=0.69), _m(900, 1.0, -0.99, train_loss=0.1)],
        datamodule_hparams={"permute_labels": True},
    )
    v = _verdicts(tmp_path)
    assert [v[k] for k in (1, 2, 3, 4, 5, 8, 9, 10)] == [FAILS] * 8


@pytest.mark.parametrize("direction", [+1, -1])
def test_learning_rate_claims_never_assume_a_direction(tmp_path: Path, direction: int) -> None:
    for k, lr in enumerate((1e-5, 1e-4, 1e-3)):
        between = 0.1 * k * direction
        _run(
            tmp_path,
            f"lr{k}",
            [_m(0, 1.0, -0.5), _m(5, 0.9, between, trigger="loss<=0.1"), _m(6, 0.9, between, trigger="epoch_end")],
            hparams={"lr": lr},
        )
    v = _verdicts(tmp_path)
    assert (v[6], v[7]) == ((HOLDS, FAILS) if direction > 0 else (FAILS, HOLDS))


def test_helpers() -> None:
    assert _spearman([(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]) == pytest.approx(-1.0)
    assert math.isnan(_spearman([(1.0, 1.0), (2.0, 2.0)]))
    ms = [_m(s, 1, 0) for s in (0, 1, 2, 5, 10, 50, 100, 1000)]
    assert pick_steps(ms, 4)[0] == 0 and pick_steps(ms, 4)[-1] == 1000 and len(pick_steps(ms, 4)) == 4


def test_overfitting_onset(tmp_path: Path) -> None:
    _run(tmp_path, "a", [_m(0, 1, 0, val_loss=2.0), _m(5, 1, 0, val_loss=0.5), _m(9, 1, 0, val_loss=1.5)])
    _run(tmp_path, "b", [_m(0, 1, 0, val_loss=2.0), _m(5, 1, 0, val_loss=0.5), _m(9, 1, 0, val_loss=0.4)])
    runs = {r.path.parent.name: r for r in load_runs([tmp_path])}
    assert overfitting_onset(runs["a"]) == 5 and overfitting_onset(runs["b"]) is None


def test_write_report_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for k, lr in enumerate((1e-4, 3e-4, 1e-3)):
        _run(
            tmp_path / "runs",
            f"lr{k}",
            [
                _m(0, 1.0, -0.5, val_loss=2.0),
                _m(5, 0.9, 0.1 * k, trigger="loss<=0.1", val_loss=1.0, layer_xi=[0.3, 0.2]),
                _m(9, 0.8, 0.1, trigger="epoch_end", val_loss=1.2, slope=-0.5, superclass=0.1),
            ],
            hparams={"lr": lr},
            superclasses=[0, 0],
        )
    report = write_report([tmp_path / "runs"], tmp_path / "out")
    names = {p.name for p in report.figures}
    assert {
        "between_stiffness_vs_lr.png",
        "critical_length_vs_lr.png",
        "run00_stiffness_over_training.png",
        "run00_class_matrices_sign.png",
        "run02_superclasses.png",
    } <= names
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in report.figures)
    table = (tmp_path / "out" / "claims.md").read_text().splitlines()
    assert "| 6 |" in "\n".join(table)
    # evidence such as "|all|" or "max |Δ|" is escaped, so every row keeps exactly 5 cells
    assert all(row.replace("\\|", "").count("|") == 7 for row in table)
    assert len(json.loads((tmp_path / "out" / "claims.json").read_text())) == 12
    assert cli_main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "cli")]) == 0
    assert "figure(s) written" in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path / "nothing-here")]) == 2
