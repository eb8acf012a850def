"""Line figures (matplotlib): stiffness vs distance, and the report's curves over training and
learning rate. Data selection lives in :mod:`lightning_stiffness.report.series`; these functions only draw."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_stiffness.analytics import BinnedCurve, CriticalLength
from lightning_stiffness.measurement import result_key
from lightning_stiffness.report.runs import Run
from lightning_stiffness.report.series import at_epoch_end, at_loss_threshold, loss_thresholds, overfitting_onset
from lightning_stiffness.viz.figure import new_figure, no_data_note

__all__ = [
    "distance_by_space_figure",
    "distance_figure",
    "lr_between_figure",
    "lr_critical_length_figure",
    "superclass_figure",
    "thresholds_not_reached",
    "training_figure",
]


def distance_figure(
    curves: Mapping[str, BinnedCurve],
    lengths: Mapping[str, CriticalLength] | None = None,
    *,
    title: str = "",
    xlabel: str = "input-space cosine distance 1 − cos(x₁, x₂)",
) -> Any:
    """Mean stiffness ± s.e.m. per distance bin, one line per curve, dashed ±1/0 guides
    (v1 Fig. 9) and a vertical marker per critical length (v3): solid at a measured ξ, dotted
    and labelled "ξ ≥" at the lower bound of a censored or extrapolated one (no crossing in the data)."""
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        keep = curve.count > 0
        x, y, e = curve.centers[keep].numpy(), curve.mean[keep].numpy(), curve.sem[keep].nan_to_num(0).numpy()
        (line,) = ax.plot(x, y, marker="o", markersize=3, label=name)
        ax.fill_between(x, y - e, y + e, color=line.get_color(), alpha=0.2)
    for value in (-1.0, 0.0, 1.0):
        ax.axhline(value, color="grey", linestyle="--", linewidth=0.8)
    for name, xi in (lengths or {}).items():
        at = xi.bound_or_value
        if math.isfinite(at):
            style, relation = ("-", "=") if xi.crossed else (":", "≥")
            ax.axvline(at, color="black", linestyle=style, linewidth=1.0, label=f"ξ {name} {relation} {at:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("stiffness")
    ax.set_ylim(-1.05, 1.05)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    # fixed margins: tight_layout measured every text and was 2/3 of this figure's cost (callback images)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.84 if "\n" in title else 0.9)
    return fig


def training_figure(run: Run) -> Any:
    """v1 Fig. 2 / v3 Fig. 3: within, all and between stiffness over training (sign solid,
    cosine dashed) above the training and validation loss, with the overfitting onset. Runs
    without class statistics (within/between NaN throughout) show the all-pairs lines only."""
    fig = new_figure(6.5, 6.0)
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2, sharex=None)
    ms = run.measurements
    x = [m.step + 1 for m in ms]
    colors = {"within": "tab:blue", "all": "tab:green", "between": "tab:red"}
    for kind, style in (("sign", "-"), ("cos", "--")):
        for pairs, color in colors.items():
            y = [getattr(m.summaries[kind]["all"], pairs) for m in ms]
            if not any(math.isfinite(v) for v in y):
                continue  # within/between of measurements without class statistics (NaN): no line, no legend entry
            top.plot(
                x,
                y,
                style,
                color=color,
                marker=".",
                label=f"{kind} {pairs}-class" if pairs != "all" else f"{kind} all pairs",
            )
    top.axhline(0, color="grey", linewidth=0.8)
    top.set_xscale("log")
    top.set_ylabel("stiffness")
    top.set_ylim(-1.05, 1.05)
    top.set_title(f"Stiffness over training — {run.name}")
    top.legend(fontsize=7, ncol=2)
    train = [(m.step + 1, m.train_loss) for m in ms if m.train_loss is not None and math.isfinite(m.train_loss)]
    if train:
        bottom.plot(*zip(*train), marker=".", label="training loss (smoothed)")
    val = [(s + 1, v) for s, v in run.val_losses()]
    if val:
        bottom.plot(*zip(*val), marker=".", label="validation loss")
    onset = overfitting_onset(run)
    if onset is not None:
        for ax in (top, bottom):
            ax.axvline(onset + 1, color="orange", linestyle="--", linewidth=1.2)
    bottom.set_xscale("log")
    if train or val:
        bottom.set_yscale("log")
        bottom.legend(fontsize=7)
    else:
        no_data_note(bottom, "no training or validation loss recorded with the measurements")
    bottom.set_xlabel("optimizer step + 1")
    bottom.set_ylabel("loss")
    fig.tight_layout()
    return fig


def distance_by_space_figure(run: Run, kind: str = "sign", pairs: str = "all") -> Any:
    """v1 Fig. 9: stiffness vs distance at the last measurement, one curve per space
    (input and each representation layer)."""
    m = run.measurements[-1]
    curves = {space: m.curve(space, kind, pairs) for space in m.spaces if result_key(space, kind, pairs) in m.curves}
    fig = distance_figure(
        curves,
        None,
        title=f"{kind} stiffness, {pairs} pairs, step {m.step}\n{run.name}",
        xlabel="cosine distance 1 − cos(R₁, R₂)",
    )
    if not any(int(c.count.sum()) > 0 for c in curves.values()):
        no_data_note(fig.axes[0], f"no {kind} stiffness-vs-distance curve for {pairs} pairs at step {m.step}")
    return fig


def superclass_figure(run: Run) -> Any:
    """Same- minus different-super-class class stiffness over training, with p-values."""
    fig = new_figure(6.0, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    for kind in ("sign", "cos"):
        pts = [
            (m.step + 1, m.superclass[kind].difference, m.superclass[kind].p_value)
            for m in run.measurements
            if kind in m.superclass
        ]
        if pts:
            x, y, _p = zip(*pts)
            ax.plot(x, y, marker="o", label=f"{kind}: same − different super-class")
            for xi, yi, pi in pts:
                if pi < 0.05:
                    ax.annotate("*", (xi, yi), fontsize=10, ha="center")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("optimizer step + 1")
    ax.set_ylabel("Δ class stiffness")
    ax.set_title(f"Super-class structure (* p < 0.05) — {run.name}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def lr_between_figure(runs: Sequence[Run], kind: str = "sign") -> Any:
    """v1 Fig. 8 (equal training loss) and v3's equal-epoch view: between-class stiffness vs
    learning rate, one line per loss threshold (left) and per epoch (right)."""
    fig = new_figure(10.0, 4.0)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    with_lr = [r for r in runs if r.lr is not None]
    for t in loss_thresholds(with_lr):
        pts = [(r.lr, m.summaries[kind]["all"].between) for r in with_lr if (m := at_loss_threshold(r, t))]
        if pts:
            left.plot(*zip(*sorted(pts)), marker="o", label=f"training loss {t:g}")
    epochs = sorted({m.epoch for r in with_lr for m in r.measurements if "epoch_end" in m.trigger})
    for e in epochs:
        pts = [(r.lr, m.summaries[kind]["all"].between) for r in with_lr if (m := at_epoch_end(r, e))]
        if pts:
            right.plot(*zip(*sorted(pts)), marker="o", label=f"epoch {e + 1}")
    empty = {
        left: thresholds_not_reached(with_lr),
        right: "no epoch-end measurements\n(StiffnessCallback(at_epoch_end=True))",
    }
    for ax, title in ((left, "at equal training loss (v1 Fig. 8)"), (right, "at equal epoch (v3)")):
        has_data = bool(ax.lines)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"between-class {kind} stiffness")
        ax.set_title(title, fontsize=9)
        if has_data:
            ax.set_xscale("log")
            ax.legend(fontsize=7)
        else:
            no_data_note(ax, empty[ax])
    fig.tight_layout()
    return fig


def lr_critical_length_figure(
    runs: Sequence[Run], threshold: float, kind: str = "sign", estimator: str = "zero_crossing"
) -> Any:
    """v1 Fig. 10: critical length ξ vs learning rate per space (input, layers) at one
    training loss. Where the data show no crossing (censored or extrapolated ξ) the point is the
    lower bound, drawn as a hollow upward triangle ("ξ ≥")."""
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    spaces = sorted({space for r in runs for m in r.measurements for space in m.spaces})
    for space in spaces:
        pts = []
        for r in runs:
            m = at_loss_threshold(r, threshold)
            xi = m.critical_lengths.get(result_key(space, kind, estimator)) if m else None
            if r.lr is not None and xi is not None and math.isfinite(xi.bound_or_value) and xi.bound_or_value > 0:
                pts.append((r.lr, xi.bound_or_value, xi.crossed))
        if pts:
            pts.sort()
            measured = [p for p in pts if p[2]]
            (line,) = ax.plot([p[0] for p in measured], [p[1] for p in measured], marker="o", label=space)
            bounds = [p for p in pts if not p[2]]
            if bounds:
                ax.scatter(
                    [p[0] for p in bounds],
                    [p[1] for p in bounds],
                    marker="^",
                    facecolors="white",
                    edgecolors=line.get_color(),
                    zorder=3,
                    label=f"{space}: ξ ≥ (no crossing)",
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"critical length ξ ({estimator})")
    ax.set_title(f"ξ at training loss {threshold:g} (hollow ▵: no crossing, ξ ≥ the value drawn)", fontsize=9)
    if ax.lines or ax.collections:
        ax.legend(fontsize=7)
    else:
        reached = sum(1 for r in runs if at_loss_threshold(r, threshold) is not None)
        no_data_note(
            ax,
            f"no run has a positive, finite ξ ({estimator}) at training loss {threshold:g}"
            if reached
            else f"no run reached training loss {threshold:g}",
        )
    fig.tight_layout()
    return fig


def thresholds_not_reached(runs: Sequence[Run]) -> str:
    """Why no run has a loss-threshold measurement: no thresholds were set, or which were set and
    the lowest smoothed training loss the runs' measurements recorded (not low enough)."""
    wanted = loss_thresholds(runs)
    if not wanted:
        return "no loss thresholds were set\n(StiffnessCallback(loss_thresholds=...))"
    losses = [
        (m.train_loss, r.name, m.step)
        for r in runs
        for m in r.measurements
        if m.train_loss is not None and math.isfinite(m.train_loss)
    ]
    reached = (
        f"lowest smoothed training loss measured: {min(losses)[0]:.3g}\n({min(losses)[1]}, step {min(losses)[2]})"
        if losses
        else "no smoothed training loss was recorded"
    )
    return f"loss thresholds {', '.join(f'{t:g}' for t in wanted)}\nwere set but not reached;\n{reached}"
