"""Redraw the paper's figures from saved measurements and check its claims.

``lightning-stiffness report RUN_DIR [RUN_DIR ...] --out report/`` (see :mod:`lightning_stiffness.cli`).
Needs matplotlib (``pip install lightning-stiffness[examples]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightning_stiffness.report.claims import ClaimResult, check_claims, claims_markdown
from lightning_stiffness.report.runs import Run, find_run_dirs, load_run, load_runs


@dataclass
class Report:
    """What :func:`write_report` produced."""

    runs: list[Run]
    figures: list[Path] = field(default_factory=list)
    claims: list[ClaimResult] = field(default_factory=list)


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    steps: Sequence[int] | None = None,
    threshold: float | None = None,
) -> Report:
    """Write PNG figures, ``claims.md`` and ``claims.json`` for the runs under ``run_dirs``
    (no class-matrix figures for a run whose measurements have no class statistics).

    Args:
        run_dirs: run directories or folders holding several runs (searched recursively).
        out_dir: output folder (created).
        steps: steps for the class-matrix grids (default: four, log-spaced).
        threshold: training loss at which ξ is compared across learning rates (default: the
            threshold closest to 0.1 that the runs share, as in v1 Fig. 10).
    """
    from lightning_stiffness.viz.figure import have_matplotlib

    if not have_matplotlib():
        raise ImportError("the report draws with matplotlib: pip install 'lightning-stiffness[examples]'")
    from lightning_stiffness.report import series
    from lightning_stiffness.viz import class_matrix, curves
    from lightning_stiffness.viz.images import has_class_statistics

    runs = load_runs(list(run_dirs))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(runs)

    def save(fig: object, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=120)  # type: ignore[attr-defined]
        report.figures.append(path)

    for k, run in enumerate(runs):
        prefix = f"run{k:02d}_" if len(runs) > 1 else ""
        save(curves.training_figure(run), f"{prefix}stiffness_over_training.png")
        if any(has_class_statistics(m) for m in run.measurements):  # not for targets that are not classes
            for kind in ("sign", "cos"):
                save(class_matrix.class_matrix_grid(run, kind, steps), f"{prefix}class_matrices_{kind}.png")
        if run.measurements[-1].curves:
            save(curves.distance_by_space_figure(run), f"{prefix}stiffness_vs_distance.png")
        if any(m.superclass for m in run.measurements):
            save(curves.superclass_figure(run), f"{prefix}superclasses.png")
    if len([r for r in runs if r.lr is not None]) >= 2:
        save(curves.lr_between_figure(runs), "between_stiffness_vs_lr.png")
        shared = series.loss_thresholds(runs)
        chosen = (
            threshold
            if threshold is not None
            else (min(shared, key=lambda t: abs(math.log(t / 0.1))) if shared else None)
        )
        if chosen is not None:
            save(curves.lr_critical_length_figure(runs, chosen), "critical_length_vs_lr.png")
    report.claims = check_claims(runs)
    (out / "claims.md").write_text(claims_markdown(report.claims))
    (out / "claims.json").write_text(json.dumps([c.to_dict() for c in report.claims], indent=2))
    return report


__all__ = ["ClaimResult", "Report", "Run", "check_claims", "find_run_dirs", "load_run", "load_runs", "write_report"]
