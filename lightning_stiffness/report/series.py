"""Series picked out of saved runs for the report's figures and claims: which measurement sits at
a training loss or an epoch end, which steps to show, where overfitting starts.

Pure data selection on :class:`~lightning_stiffness.report.runs.Run` and
:class:`~lightning_stiffness.measurement.Measurement`; nothing here draws, so
:mod:`lightning_stiffness.report.claims` can use it without matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lightning_stiffness.measurement import Measurement
from lightning_stiffness.report.runs import Run

__all__ = ["at_epoch_end", "at_loss_threshold", "loss_thresholds", "overfitting_onset", "pick_steps"]


def overfitting_onset(run: Run) -> int | None:
    """Step of the minimum validation loss when it rises afterwards (v1 Fig. 2's dashed line)."""
    losses = run.val_losses()
    if len(losses) < 3:
        return None
    best = min(range(len(losses)), key=lambda i: losses[i][1])
    if best == len(losses) - 1 or losses[-1][1] <= losses[best][1] * 1.05:
        return None
    return losses[best][0]


def pick_steps(ms: Sequence[Measurement], count: int = 4) -> list[int]:
    """``count`` measured steps spread log-uniformly from the first to the last."""
    steps = sorted({m.step for m in ms})
    if len(steps) <= count:
        return steps
    targets = torch.logspace(math.log10(steps[0] + 1), math.log10(steps[-1] + 1), count).tolist()
    chosen: list[int] = []
    for t in targets:
        best = min((s for s in steps if s not in chosen), key=lambda s: abs(math.log(s + 1) - math.log(t)))
        chosen.append(best)
    return sorted(chosen)


def at_loss_threshold(run: Run, threshold: float) -> Measurement | None:
    """The measurement triggered when the smoothed training loss first reached ``threshold``."""
    tag = f"loss<={threshold:g}"
    return next((m for m in run.measurements if tag in m.trigger.split("+")), None)


def at_epoch_end(run: Run, epoch: int) -> Measurement | None:
    """The measurement taken at the end of ``epoch`` (0-based), if the run measured there."""
    return next((m for m in run.measurements if "epoch_end" in m.trigger and m.epoch == epoch), None)


def loss_thresholds(runs: Sequence[Run]) -> list[float]:
    """Every training-loss threshold the runs' callbacks measured at, largest first."""
    values = {float(t) for r in runs for t in r.info.get("callback", {}).get("loss_thresholds", [])}
    return sorted(values, reverse=True)
