"""When to measure: step 0, every n optimizer steps, log-spaced steps, epoch ends, and the
first time the smoothed training loss drops below user thresholds (the paper compares
learning rates at equal training loss, v1 Figs 8 and 10)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["MeasurementSchedule", "log_spaced_steps"]


def log_spaced_steps(points_per_decade: int, max_step: int = 10**9) -> set[int]:
    """Steps ``round(10^(k / points_per_decade))`` for k ≥ 0 up to ``max_step``
    (3 per decade: 1, 2, 5, 10, 22, 46, 100, …)."""
    if points_per_decade < 1:
        raise ValueError(f"points_per_decade must be >= 1, got {points_per_decade}")
    steps: set[int] = set()
    k = 0
    while True:
        step = round(10 ** (k / points_per_decade))
        if step > max_step:
            return steps
        steps.add(step)
        k += 1


@dataclass
class MeasurementSchedule:
    """Decides, at each optimizer-step boundary, whether (and why) to measure.

    Args:
        every_n_steps: measure when ``global_step % every_n_steps == 0`` (None: never).
        at_start: measure at step 0, before any update.
        log_points_per_decade: also measure at log-spaced steps (v1 plots against log
            "data points seen"); None to disable.
        at_epoch_end: also measure at the end of every training epoch.
        loss_thresholds: measure the first time the smoothed training loss is ≤ each value.
        loss_smoothing: EMA factor for the training loss (0: no smoothing).
    """

    every_n_steps: int | None = 50
    at_start: bool = True
    log_points_per_decade: int | None = None
    at_epoch_end: bool = False
    loss_thresholds: tuple[float, ...] = ()
    loss_smoothing: float = 0.9
    smoothed_loss: float | None = None
    crossed: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.every_n_steps is not None and self.every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer or None, got {self.every_n_steps}")
        if not 0.0 <= self.loss_smoothing < 1.0:
            raise ValueError(f"loss_smoothing must be in [0, 1), got {self.loss_smoothing}")
        self.loss_thresholds = tuple(sorted((float(t) for t in self.loss_thresholds), reverse=True))
        if any(not math.isfinite(t) or t < 0 for t in self.loss_thresholds):
            raise ValueError(f"loss_thresholds must be finite and >= 0, got {self.loss_thresholds}")
        self._log_steps = log_spaced_steps(self.log_points_per_decade) if self.log_points_per_decade else set()

    @classmethod
    def from_settings(cls, settings: Any) -> MeasurementSchedule:
        """A fresh schedule (no loss history) for :class:`~lightning_stiffness.settings.ScheduleSettings`
        (its ``max_overhead`` is the callback's time budget, not part of the schedule)."""
        own = {f.name for f in fields(cls)}
        return cls(**{f.name: getattr(settings, f.name) for f in fields(settings) if f.name in own})

    def step_trigger(self, step: int) -> str | None:
        """Reason to measure after optimizer step ``step`` (``None``: not due)."""
        if step == 0:
            return "start" if self.at_start else None
        if self.every_n_steps and step % self.every_n_steps == 0:
            return "every_n_steps"
        if step in self._log_steps:
            return "log_spaced"
        return None

    def update_loss(self, loss: float) -> list[float]:
        """Feed one training loss; returns the thresholds crossed for the first time now."""
        if not math.isfinite(loss):
            return []
        if self.smoothed_loss is None:
            self.smoothed_loss = loss
        else:
            self.smoothed_loss = self.loss_smoothing * self.smoothed_loss + (1 - self.loss_smoothing) * loss
        new = [t for t in self.loss_thresholds if t not in self.crossed and self.smoothed_loss <= t]
        self.crossed.extend(new)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"smoothed_loss": self.smoothed_loss, "crossed": list(self.crossed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.smoothed_loss = state.get("smoothed_loss")
        self.crossed = list(state.get("crossed", []))
