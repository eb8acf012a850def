"""A time budget for the callback: keep its share of a run's wall-clock under ``max_overhead``.

The share is ``s / T``: ``s`` the seconds the callback spent (every hook, measurements, saving,
logging and images included) and ``T`` the wall-clock of the fit so far, ``s`` included. A
scheduled measurement is taken only if, with the next measurement's cost ``c`` estimated by the
last one's, the share stays within the budget afterwards:

    (s + c) / (T + c) ≤ max_overhead   ⇔   s + c ≤ max_overhead · (T + c).

Otherwise it is *deferred*: postponed to the next optimizer step at which the inequality holds.
Scheduled measurements that fall due while one is waiting join it and are taken together, as one
measurement (*merged*: fewer measurements than the schedule asked for, which is counted and
reported). At the end of training the ones still waiting are taken together if the inequality
holds, and otherwise not at all, which the end-of-training summary says. Measurements the user
asked for by event (at the start, at a loss threshold) are never deferred: see
:func:`OverheadBudget.exempt`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Decision", "OverheadBudget"]

#: Triggers never deferred: explicitly requested moments, not a periodic schedule.
EXEMPT_PREFIXES = ("start", "loss<=")


@dataclass(frozen=True)
class Decision:
    """:meth:`OverheadBudget.decide`'s answer: ``trigger`` to measure with now (None: do not
    measure), and ``notice``, a message for the user on the run's first deferral."""

    trigger: str | None
    notice: str | None = None


@dataclass
class OverheadBudget:
    """Tracks the callback's seconds and decides whether a scheduled measurement fits the budget.

    Args:
        max_overhead: largest allowed share of the fit's wall-clock spent in the callback, in
            ``(0, 1)``; None: no budget (every scheduled measurement is taken on time).

    Attributes:
        spent: seconds the callback has spent so far (all of it, see :meth:`record`).
        last_cost: seconds of the latest measurement, the estimate of the next one (None before any).
        deferred: scheduled measurements that were postponed at least once.
        merged: scheduled measurements taken together with another one (so many fewer measurements
            than scheduled).
        pending: ``(step, trigger)`` of the scheduled measurements waiting for the budget, oldest first.
    """

    max_overhead: float | None = None
    spent: float = 0.0
    last_cost: float | None = None
    deferred: int = 0
    merged: int = 0
    pending: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_overhead is not None and not 0 < self.max_overhead < 1:
            raise ValueError(f"max_overhead must lie in (0, 1) or be None, got {self.max_overhead}")

    def record(self, seconds: float, *, measurement: bool = True) -> None:
        """Add ``seconds`` of callback time. ``measurement=True``: they are one whole measurement
        (Gram, analytics, saving, logging, images), whose cost estimates the next one's;
        ``False``: other callback time (hooks, probe preparation), counted in the share only."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds}")
        self.spent += seconds
        if measurement:
            self.last_cost = seconds

    @contextmanager
    def timed(self, *, measurement: bool = True) -> Iterator[None]:
        """:meth:`record` the wall-clock of the ``with`` block (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(time.perf_counter() - start, measurement=measurement)

    def share(self, elapsed_seconds: float) -> float:
        """``spent / elapsed_seconds``, the callback's share of the fit so far (NaN before any time)."""
        return self.spent / elapsed_seconds if elapsed_seconds > 0 else math.nan

    def allows(self, elapsed_seconds: float) -> bool:
        """Would a measurement now keep the share within ``max_overhead``?

        ``elapsed_seconds`` is the fit's wall-clock so far, the callback's own time included.
        True without a budget and before the first measurement (no cost estimate yet).
        """
        if self.max_overhead is None or self.last_cost is None:
            return True
        cost = self.last_cost
        return self.spent + cost <= self.max_overhead * (elapsed_seconds + cost)

    @staticmethod
    def exempt(trigger: str) -> bool:
        """Triggers that are never deferred: ``start`` and loss thresholds (``loss<=x``), alone or
        combined with others (``"every_n_steps+loss<=0.1"``)."""
        return any(part.startswith(EXEMPT_PREFIXES) for part in trigger.split("+"))

    def decide(self, step: int, trigger: str | None, elapsed_seconds: float) -> Decision:
        """What to do at optimizer step ``step``, where the schedule says ``trigger`` (None: nothing due).

        - an exempt trigger (:meth:`exempt`) is measured now, taking any waiting ones along;
        - otherwise, if something is due or waiting and :meth:`allows` holds, measure now, the
          waiting ones included (labelled ``"<trigger>(deferred from <step>)"``);
        - otherwise a due trigger waits (``deferred`` + 1); the first deferral of the run comes
          with a notice for the user.

        Every measurement that takes ``k`` scheduled ones together adds ``k − 1`` to ``merged``
        (an exempt one adds the number of waiting ones it takes).
        """
        if trigger is None and not self.pending:
            return Decision(None)
        exempt = trigger is not None and self.exempt(trigger)
        if exempt or self.allows(elapsed_seconds):
            pending = self.take_pending()
            # k requested measurements taken as one: k − 1 fewer than asked for
            self.merged += len(pending) if exempt else max(0, len(pending) + (trigger is not None) - 1)
            return Decision(self.label(trigger or "", pending))
        assert trigger is not None or self.pending
        if trigger is None:
            return Decision(None)
        first = self.deferred == 0
        self.deferred += 1
        self.pending.append((step, trigger))
        notice = None
        if first:
            assert self.max_overhead is not None and self.last_cost is not None
            notice = (
                f"the {trigger} measurement at step {step} is deferred: the callback has taken "
                f"{self.share(elapsed_seconds):.0%} of the training time so far and one measurement costs about "
                f"{self.last_cost:.2g} s, above max_overhead={self.max_overhead:g}. It runs at the next step the "
                "budget allows; a summary of deferred measurements follows at the end of training. Pass "
                "max_overhead=None to measure exactly on schedule."
            )
        return Decision(None, notice)

    def take_pending(self) -> list[tuple[int, str]]:
        """The waiting measurements (to be taken together now), emptying the queue."""
        pending, self.pending = self.pending, []
        return pending

    @staticmethod
    def label(trigger: str, pending: list[tuple[int, str]]) -> str:
        """Trigger label of a measurement that also takes the waiting ones, e.g.
        ``"every_n_steps(deferred from 150)"``, or for several waiting ones of one trigger
        ``"every_n_steps(3 deferred from 50-150)"`` (their count, first and last step: the label
        stays short however long they waited); ``trigger`` may be empty."""
        steps: dict[str, list[int]] = {}
        for s, t in pending:
            steps.setdefault(t, []).append(s)
        parts = [
            f"{t}(deferred from {s[0]})" if len(s) == 1 else f"{t}({len(s)} deferred from {s[0]}-{s[-1]})"
            for t, s in steps.items()
        ]
        return "+".join([*parts, *([trigger] if trigger else [])])

    def summary(self) -> str:
        """One sentence for the user: what the budget did ("" when it did nothing)."""
        if self.deferred == 0:
            return ""
        assert self.max_overhead is not None
        merged = (
            f"; {self.merged} of them were merged into a later measurement, so {self.merged} fewer "
            "measurements were taken than scheduled"
            if self.merged
            else ""
        )
        waiting = (
            f"; {len(self.pending)} still waiting at the end of training were not taken, because one more "
            "measurement would have put the callback above that share"
            if self.pending
            else ""
        )
        return (
            f"{self.deferred} scheduled measurement(s) were deferred to keep the callback under "
            f"max_overhead={self.max_overhead:g} of the training time{merged}{waiting}. "
            "Pass max_overhead=None to measure exactly on schedule."
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "spent": self.spent,
            "last_cost": self.last_cost,
            "deferred": self.deferred,
            "merged": self.merged,
            "pending": [list(p) for p in self.pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spent = float(state.get("spent", 0.0))
        last = state.get("last_cost")
        self.last_cost = None if last is None else float(last)
        self.deferred = int(state.get("deferred", 0))
        self.merged = int(state.get("merged", 0))
        self.pending = [(int(s), str(t)) for s, t in state.get("pending", [])]

    def follow(self, state: dict[str, Any]) -> None:
        """Adopt another budget's decisions (``deferred``, ``merged``, ``pending`` of its
        :meth:`state_dict`), keeping this one's own seconds. Under DDP/FSDP rank 0 decides and the
        other ranks follow, so that every rank measures, and keeps waiting, at the same steps."""
        self.deferred = int(state.get("deferred", 0))
        self.merged = int(state.get("merged", 0))
        self.pending = [(int(s), str(t)) for s, t in state.get("pending", [])]
