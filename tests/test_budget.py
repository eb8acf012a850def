"""OverheadBudget: the callback's time budget (pure bookkeeping, no Lightning)."""

from __future__ import annotations

import math
import time

import pytest

from lightning_stiffness.budget import OverheadBudget


def test_no_budget_always_allows_and_share_counts_everything() -> None:
    budget = OverheadBudget(None)
    budget.record(3.0)
    budget.record(1.0, measurement=False)  # hooks, probe preparation: counted, not a cost estimate
    assert budget.spent == 4.0 and budget.last_cost == 3.0
    assert budget.share(8.0) == 0.5
    assert math.isnan(budget.share(0.0))
    assert budget.allows(4.0)
    assert budget.decide(10, "every_n_steps", 4.0).trigger == "every_n_steps"
    assert budget.summary() == ""


def test_allows_predicts_the_share_after_the_next_measurement() -> None:
    budget = OverheadBudget(0.1)
    assert budget.allows(0.0)  # no estimate before the first measurement
    budget.record(1.0)
    # after one more 1 s measurement: (1 + 1) / (T + 1) <= 0.1  <=>  T >= 19
    assert not budget.allows(18.9)
    assert budget.allows(19.0)


def test_deferral_waits_for_the_budget_and_labels_the_late_measurement() -> None:
    budget = OverheadBudget(0.1)
    budget.record(1.0)
    first = budget.decide(50, "every_n_steps", 10.0)
    assert first.trigger is None and first.notice is not None
    assert "step 50" in first.notice and "max_overhead=0.1" in first.notice
    assert budget.deferred == 1 and budget.pending == [(50, "every_n_steps")]
    assert budget.decide(51, None, 12.0).trigger is None  # still over budget, nothing new due
    late = budget.decide(60, None, 19.5)
    assert late.trigger == "every_n_steps(deferred from 50)"
    assert budget.pending == [] and budget.merged == 0
    assert "1 scheduled measurement(s) were deferred" in budget.summary()


def test_waiting_measurements_are_taken_together_and_counted_as_merged() -> None:
    budget = OverheadBudget(0.1)
    budget.record(1.0)
    assert budget.decide(50, "every_n_steps", 5.0).notice is not None
    second = budget.decide(100, "every_n_steps", 10.0)
    assert second.trigger is None and second.notice is None  # one notice per run
    taken = budget.decide(150, "every_n_steps", 30.0)
    assert taken.trigger == "every_n_steps(2 deferred from 50-100)+every_n_steps"
    assert budget.deferred == 2 and budget.merged == 2  # three scheduled, one taken
    assert "2 fewer measurements were taken than scheduled" in budget.summary()


def test_start_and_loss_thresholds_are_never_deferred() -> None:
    budget = OverheadBudget(0.05)
    budget.record(10.0)
    assert not budget.allows(11.0)
    assert budget.decide(0, "start", 11.0).trigger == "start"
    assert budget.decide(5, "every_n_steps", 12.0).trigger is None
    taken = budget.decide(7, "loss<=0.5", 13.0)
    assert taken.trigger == "every_n_steps(deferred from 5)+loss<=0.5"
    assert budget.merged == 1  # the waiting scheduled one did not get a measurement of its own
    assert OverheadBudget.exempt("every_n_steps+loss<=0.1")
    assert not OverheadBudget.exempt("every_n_steps+epoch_end")


def test_timed_records_wall_clock_also_on_error() -> None:
    budget = OverheadBudget(0.5)
    with pytest.raises(RuntimeError), budget.timed():
        time.sleep(0.01)
        raise RuntimeError("measurement failed")
    assert budget.spent >= 0.01 and budget.last_cost == budget.spent
    with budget.timed(measurement=False):
        pass
    assert budget.last_cost is not None and budget.last_cost >= 0.01


def test_state_round_trip_and_validation() -> None:
    budget = OverheadBudget(0.2)
    budget.record(2.0)
    budget.decide(10, "log_spaced", 3.0)
    restored = OverheadBudget(0.2)
    restored.load_state_dict(budget.state_dict())
    assert restored == budget
    for bad in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ValueError, match="max_overhead"):
            OverheadBudget(bad)
    with pytest.raises(ValueError, match="seconds"):
        budget.record(-1.0)


def test_the_label_of_many_waiting_measurements_stays_short() -> None:
    pending = [(s, "every_n_steps") for s in range(50, 5001, 50)] + [(7, "log_spaced")]
    label = OverheadBudget.label("epoch_end", pending)
    assert label == "every_n_steps(100 deferred from 50-5000)+log_spaced(deferred from 7)+epoch_end"
