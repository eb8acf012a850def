"""The callback's time budget (``max_overhead``) and ``save_matrices`` in real training runs."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_stiffness import StiffnessCallback, load_measurements
from lightning_stiffness.measurement import measurement_filename, save_measurement
from tests.lightning_helpers import TinyClassifier, loaders, trainer


def _fit(
    tmp_path: Path, steps: int, callback_class: type[StiffnessCallback] = StiffnessCallback, **settings: object
) -> tuple[StiffnessCallback, list[str], Path]:
    L.seed_everything(0, verbose=False)
    cb = callback_class(every_n_steps=1, per_class=4, splits=("train",), log_images=False, **settings)  # type: ignore[arg-type]
    logger = CSVLogger(str(tmp_path))
    train, _ = loaders()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [cb], max_steps=steps, logger=logger, log_every_n_steps=1).fit(TinyClassifier(), train)
    messages = [str(w.message) for w in caught if "StiffnessCallback" in str(w.message)]
    return cb, messages, Path(logger.log_dir)


def test_a_tight_budget_defers_scheduled_measurements_and_says_so(tmp_path: Path) -> None:
    """One measurement costs far more than 0.1 % of these few fast steps: every scheduled one is
    deferred, said once; at the end one more would still break the budget, so the waiting ones
    are not taken, and the summary says so with the counts. The start measurement is never
    deferred."""
    cb, messages, log_dir = _fit(tmp_path, 6, max_overhead=0.001)
    budget = cb.budget
    assert [(m.step, m.trigger) for m in cb.measurements] == [(0, "start")] and not cb.failures
    assert budget.deferred == 6 and budget.merged == 0
    assert budget.pending == [(s, "every_n_steps") for s in range(1, 7)]
    notices = [m for m in messages if "is deferred" in m]
    summaries = [m for m in messages if "were deferred" in m]
    assert len(notices) == 1 and "max_overhead=0.001" in notices[0] and "max_overhead=None" in notices[0]
    assert len(summaries) == 1 and "6 scheduled measurement(s) were deferred" in summaries[0]
    assert "6 still waiting at the end of training were not taken" in summaries[0]
    header, *rows = (log_dir / "metrics.csv").read_text().splitlines()
    columns = header.split(",")
    assert {"stiffness/cost/share", "stiffness/cost/deferred", "stiffness/cost/merged"} <= set(columns)
    last = [r.split(",") for r in rows if r.split(",")[columns.index("stiffness/cost/deferred")]][-1]
    share = float(last[columns.index("stiffness/cost/share")])
    assert 0 < share < 1 and math.isfinite(share)


class _RelaxedAtTheEnd(StiffnessCallback):
    """A budget that allows nothing during training and everything at its end."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.budget.max_overhead = 0.99
        super().on_train_end(trainer, pl_module)


def test_waiting_measurements_are_taken_together_at_the_end_when_the_budget_allows(tmp_path: Path) -> None:
    cb, messages, _ = _fit(tmp_path, 6, callback_class=_RelaxedAtTheEnd, max_overhead=0.001)
    budget = cb.budget
    assert [(m.step, m.trigger) for m in cb.measurements] == [(0, "start"), (6, "every_n_steps(6 deferred from 1-6)")]
    assert budget.pending == [] and budget.deferred == 6 and budget.merged == 5
    (summary,) = [m for m in messages if "were deferred" in m]
    assert "5 fewer measurements were taken than scheduled" in summary and "not taken" not in summary


def test_no_budget_measures_every_scheduled_step(tmp_path: Path) -> None:
    cb, messages, _ = _fit(tmp_path, 4, max_overhead=None)
    assert [(m.step, m.trigger) for m in cb.measurements] == [(0, "start")] + [
        (s, "every_n_steps") for s in (1, 2, 3, 4)
    ]
    assert cb.budget.deferred == 0 and not [m for m in messages if "deferred" in m]
    assert cb.budget.spent > 0  # still counted: cost/share is logged


def test_save_matrices_none_writes_small_files_without_matrices(tmp_path: Path) -> None:
    gram, _, _ = _fit(tmp_path / "gram", 1, max_overhead=None)
    none, _, _ = _fit(tmp_path / "none", 1, max_overhead=None, save_matrices="none")
    n = gram.measurements[0].num_examples
    gram_size, none_size = (Path(cb.saved_files[0]).stat().st_size for cb in (gram, none))
    assert gram_size - none_size >= 4 * n * n  # the float32 Gram is what "none" leaves out
    loaded = load_measurements(Path(none.saved_files[0]).parent)
    assert [m.has_matrices for m in loaded] == [False, False] and loaded[0].gram.shape == (0, 0)
    assert loaded[0].summaries["sign"]["all"].within == pytest.approx(
        none.measurements[0].summaries["sign"]["all"].within
    )
    assert all(load_measurements(Path(gram.saved_files[0]).parent)[i].has_matrices for i in (0, 1))


def test_settings_validate_the_budget_and_the_saved_matrices() -> None:
    assert StiffnessCallback().settings.schedule.max_overhead == 0.05
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="max_overhead"):
            StiffnessCallback(max_overhead=bad)
    with pytest.raises(ValueError, match="save_matrices"):
        StiffnessCallback(save_matrices="sign")


def test_budget_state_is_checkpointed_and_old_checkpoints_keep_their_seconds() -> None:
    cb = StiffnessCallback(max_overhead=0.1)
    cb._budget.record(2.0)
    cb._budget.decide(50, "every_n_steps", 3.0)  # deferred: (2 + 2) / (3 + 2) > 0.1
    restored = StiffnessCallback(max_overhead=0.1)
    restored.load_state_dict(cb.state_dict())
    assert restored._budget == cb._budget and restored._budget.pending == [(50, "every_n_steps")]
    old = StiffnessCallback()
    old.load_state_dict({"measure_seconds": 3.5})  # written before the budget existed
    assert old._budget.spent == 3.5 and old._budget.deferred == 0


def test_a_long_trigger_gives_a_short_distinct_file_name(tmp_path: Path) -> None:
    """Triggers joined with ``+`` can grow long; file systems refuse names over 255 bytes."""
    cb, _, _ = _fit(tmp_path, 1, max_overhead=None)
    m = cb.measurements[-1]
    triggers = ["+".join(f"loss<={t}" for t in range(k, k + 60)) for k in (0, 1)]
    names = [measurement_filename(dataclasses.replace(m, trigger=t)) for t in triggers]
    assert names[0] != names[1] and all(len(n) < 140 for n in names)
    saved = Path(save_measurement(dataclasses.replace(m, trigger=triggers[0]), tmp_path / "long"))
    assert load_measurements(saved)[0].trigger == triggers[0]
