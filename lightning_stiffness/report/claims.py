"""The paper's checkable claims (paper.md §2.5) evaluated on saved runs.

Each check returns ``holds``, ``does not hold`` or ``not measurable`` with the numbers behind
the verdict. The two learning-rate claims (v1: more between-class stiffness and larger stiff
domains at higher learning rate; v3: the opposite) are evaluated side by side and neither
direction is assumed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from lightning_stiffness.analytics import CriticalLength
from lightning_stiffness.report.runs import Run
from lightning_stiffness.report.series import at_epoch_end, at_loss_threshold, loss_thresholds, overfitting_onset

HOLDS, FAILS, UNMEASURABLE = "holds", "does not hold", "not measurable"


@dataclass(frozen=True)
class ClaimResult:
    number: int
    claim: str
    source: str
    verdict: str
    evidence: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _fmt(x: float) -> str:
    return f"{x:+.3f}" if math.isfinite(x) else "nan"


def _sign(run: Run, index: int, field: str) -> float:
    return float(getattr(run.measurements[index].summaries["sign"]["all"], field))


def _result(number: int, claim: str, source: str, ok: list[bool], parts: list[str], missing: str) -> ClaimResult:
    """``holds`` when every measurable run agrees, ``not measurable`` (with why) when none was."""
    if not ok:
        return ClaimResult(number, claim, source, UNMEASURABLE, missing)
    return ClaimResult(number, claim, source, HOLDS if all(ok) else FAILS, "; ".join(parts))


def initial_state(runs: Sequence[Run]) -> ClaimResult:
    claim = "At initialisation within-class sign stiffness ≈ +1 and mean between-class ≤ 0"
    rows = [(r, r.measurements[0]) for r in runs if r.measurements and r.measurements[0].step == 0]
    if not rows:
        return ClaimResult(1, claim, "v1 text, Figs 3-6", UNMEASURABLE, "no step-0 measurement")
    ok = [m.summaries["sign"]["all"].within >= 0.9 and m.summaries["sign"]["all"].between <= 0 for _, m in rows]
    evidence = "; ".join(
        f"{r.name}: within {_fmt(m.summaries['sign']['all'].within)}, between "
        f"{_fmt(m.summaries['sign']['all'].between)}"
        for r, m in rows
    )
    return ClaimResult(1, claim, "v1 text, Figs 3-6", HOLDS if all(ok) else FAILS, evidence)


def between_rises_early(runs: Sequence[Run]) -> ClaimResult:
    claim = "Between-class sign stiffness rises above its step-0 value and above 0 early in training"
    parts, ok = [], []
    for r in runs:
        ms = r.measurements
        if len(ms) < 3 or ms[0].step != 0 or r.permuted_labels:
            continue
        first_half = ms[1 : max(2, len(ms) // 2 + 1)]
        peak = max(m.summaries["sign"]["all"].between for m in first_half)
        ok.append(peak > ms[0].summaries["sign"]["all"].between and peak > 0)
        parts.append(f"{r.name}: step 0 {_fmt(_sign(r, 0, 'between'))}, early max {_fmt(peak)}")
    return _result(
        2, claim, "v1 Figs 2-3 (FC MNIST)", ok, parts, "needs a true-label run with step 0 and ≥ 2 later measurements"
    )


def decays_with_overfitting(runs: Sequence[Run]) -> ClaimResult:
    claim = "After the validation-loss minimum, within-class stiffness decreases (towards 0)"
    parts, ok = [], []
    for r in runs:
        onset = overfitting_onset(r)
        if onset is None or r.permuted_labels:
            continue
        at_onset = next(m for m in r.measurements if m.step >= onset)
        last = r.measurements[-1]
        w0, w1 = at_onset.summaries["sign"]["all"].within, last.summaries["sign"]["all"].within
        c0, c1 = at_onset.summaries["cos"]["all"].within, last.summaries["cos"]["all"].within
        ok.append(w1 < w0)
        parts.append(
            f"{r.name}: onset step {onset}, sign within {_fmt(w0)} → {_fmt(w1)} (cosine {_fmt(c0)} → {_fmt(c1)}) "
            f"at step {last.step}, |all| at end {abs(last.summaries['sign']['all'].all):.3f}"
        )
    return _result(
        3,
        claim,
        "v1 Fig. 2; v3",
        ok,
        parts,
        "no true-label run whose validation loss rises after a minimum (no overfitting onset)",
    )


def permuted_labels(runs: Sequence[Run]) -> ClaimResult:
    claim = "Permuted labels: late in training between-class → −1 (< −0.9) and within-class → +1 (> 0.9)"
    rows = [r for r in runs if r.permuted_labels and r.measurements]
    if not rows:
        return ClaimResult(4, claim, "v1 Fig. 4", UNMEASURABLE, "no permuted-label run")
    ok = [_sign(r, -1, "between") < -0.9 and _sign(r, -1, "within") > 0.9 for r in rows]
    evidence = "; ".join(
        f"{r.name} step {r.measurements[-1].step}: within {_fmt(_sign(r, -1, 'within'))}, "
        f"between {_fmt(_sign(r, -1, 'between'))}"
        for r in rows
    )
    return ClaimResult(4, claim, "v1 Fig. 4", HOLDS if all(ok) else FAILS, evidence)


def superclass_structure(runs: Sequence[Run]) -> ClaimResult:
    claim = "CIFAR-100: class stiffness is higher within super-classes than across (permutation test)"
    parts, ok = [], []
    for r in runs:
        stats = [m.superclass["sign"] for m in r.measurements if "sign" in m.superclass]
        if not stats:
            continue
        diffs = [s.difference for s in stats if math.isfinite(s.difference)]
        significant = sum(1 for s in stats if s.p_value < 0.05)
        ok.append(bool(diffs) and sum(diffs) / len(diffs) > 0 and significant * 2 >= len(stats))
        parts.append(
            f"{r.name}: mean same−different {_fmt(sum(diffs) / max(len(diffs), 1))}, "
            f"p<0.05 at {significant}/{len(stats)} measurements"
        )
    return _result(5, claim, "v1 Fig. 7; v3", ok, parts, "no run with a super-class map")


def _spearman(points: list[tuple[float, float]]) -> float:
    """Spearman rank correlation between learning rate and value (NaN for < 3 points)."""
    if len(points) < 3:
        return math.nan

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    x, y = ranks([p[0] for p in points]), ranks([p[1] for p in points])
    n = len(points)
    mx, my = sum(x) / n, sum(y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    var = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    return cov / var if var > 0 else math.nan


def _lr_points(runs: Sequence[Run]) -> dict[str, list[tuple[float, float]]]:
    """Between-class sign stiffness vs learning rate at each equal training loss and epoch."""
    with_lr = [r for r in runs if r.lr is not None and not r.permuted_labels]
    series: dict[str, list[tuple[float, float]]] = {}
    for t in loss_thresholds(with_lr):
        pts = [
            (float(r.lr), m.summaries["sign"]["all"].between)  # type: ignore[arg-type]
            for r in with_lr
            if (m := at_loss_threshold(r, t))
        ]
        series[f"training loss {t:g}"] = pts
    epochs = sorted({m.epoch for r in with_lr for m in r.measurements if "epoch_end" in m.trigger})
    for e in epochs:
        pts = [
            (float(r.lr), m.summaries["sign"]["all"].between)  # type: ignore[arg-type]
            for r in with_lr
            if (m := at_epoch_end(r, e))
        ]
        series[f"epoch {e + 1}"] = pts
    return {k: v for k, v in series.items() if len({p[0] for p in v}) >= 3}


def lr_direction(runs: Sequence[Run], number: int, direction: int) -> ClaimResult:
    source = "v1 Figs 8, 10" if direction > 0 else "v2/v3 abstract"
    claim = (
        "Higher learning rate → higher between-class stiffness at equal training loss / epoch"
        if direction > 0
        else "Higher learning rate → lower stiffness at equal training loss / epoch"
    )
    series = _lr_points(runs)
    if not series:
        return ClaimResult(
            number,
            claim,
            source,
            UNMEASURABLE,
            "needs ≥ 3 learning rates compared at an equal training loss or epoch (run examples/lr_sweep.py)",
        )
    trends = {k: _spearman(v) for k, v in series.items()}
    finite = [t for t in trends.values() if math.isfinite(t)]
    agree = [t * direction > 0.5 for t in finite]
    evidence = "; ".join(
        f"{k}: Spearman ρ(lr, between) = {_fmt(t)} over {len(series[k])} runs" for k, t in trends.items()
    )
    if not finite:
        return ClaimResult(number, claim, source, UNMEASURABLE, evidence)
    return ClaimResult(number, claim, source, HOLDS if sum(agree) * 2 > len(finite) else FAILS, evidence)


def distance_decay(runs: Sequence[Run]) -> ClaimResult:
    claim = "Stiffness decreases with input distance: fitted slope < 0 (within-class pairs, cosine stiffness)"
    parts, ok = [], []
    for r in runs:
        last = r.measurements[-1]
        xi = last.critical_lengths.get("input/cos/linear_fit") or last.critical_lengths.get("input/sign/linear_fit")
        if xi is None or not math.isfinite(xi.slope):
            continue
        ok.append(xi.slope < 0)
        parts.append(f"{r.name} step {last.step}: slope {_fmt(xi.slope)}, {_xi_text(xi)}")
    return _result(8, claim, "v1 Fig. 9; v3", ok, parts, "no input-distance measurements")


def _xi_text(xi: CriticalLength) -> str:
    """ξ as evidence: the number only when measured, otherwise the bound and why."""
    if xi.crossed:
        return f"ξ {xi.value:.3f}"
    if xi.status == "extrapolated":
        return f"no ξ (the line's zero {_fmt(xi.extrapolation)} lies outside the observed distances)"
    if math.isfinite(xi.lower_bound):
        return f"ξ ≥ {xi.lower_bound:.3f} (no crossing, {xi.status})"
    return f"no ξ ({xi.status})"


def deeper_layers_smaller_domains(runs: Sequence[Run]) -> ClaimResult:
    claim = "Deeper layers have smaller stiff domains (ξ decreases with depth)"
    parts, ok = [], []
    for r in runs:
        layers = r.representation_layers
        last = r.measurements[-1]
        found = [
            (i, last.critical_lengths[f"layer:{name}/sign/zero_crossing"])
            for i, name in enumerate(layers)
            if f"layer:{name}/sign/zero_crossing" in last.critical_lengths
        ]
        # censored values (no zero crossing) only bound ξ from below: they cannot order layers
        values = [(i, xi.value) for i, xi in found if xi.crossed and math.isfinite(xi.value)]
        if len(values) < 3:
            if found:
                parts.append(f"{r.name}: ξ crossed zero in {len(values)} of {len(found)} layers")
            continue
        rho = _spearman([(float(i), v) for i, v in values])
        ok.append(math.isfinite(rho) and rho < 0)
        parts.append(f"{r.name}: ξ by depth " + ", ".join(f"{v:.3f}" for _, v in values) + f" (ρ {_fmt(rho)})")
    if not ok:
        reason = "; ".join(parts) if parts else "needs ≥ 3 representation layers"
        return ClaimResult(9, claim, "v1 Figs 9-10", UNMEASURABLE, reason + " (needs ≥ 3 layers whose ξ crossed zero)")
    return ClaimResult(9, claim, "v1 Figs 9-10", HOLDS if all(ok) else FAILS, "; ".join(parts))


def splits_agree(runs: Sequence[Run], tolerance: float = 0.1) -> ClaimResult:
    claim = f"Train-train, train-val and val-val stiffness agree (max |Δ| < {tolerance})"
    parts, ok = [], []
    for r in runs:
        gaps = []
        for m in r.measurements:
            blocks = [v for k, v in m.summaries["sign"].items() if k != "all"]
            if len(blocks) < 2:
                continue
            for field in ("within", "between"):
                values = [getattr(b, field) for b in blocks if math.isfinite(getattr(b, field))]
                if len(values) >= 2:
                    gaps.append(max(values) - min(values))
        if gaps:
            ok.append(max(gaps) < tolerance)
            parts.append(f"{r.name}: max |Δ| {max(gaps):.3f} over {len(r.measurements)} measurements")
    return _result(10, claim, "v3", ok, parts, "no run with a probe from both train and val")


def nlp_pattern(runs: Sequence[Run]) -> ClaimResult:
    claim = "NLP (BERT on MNLI): within-class stiffness exceeds between-class, as in vision"
    rows = [r for r in runs if r.is_text and r.measurements]
    if not rows:
        return ClaimResult(11, claim, "v3", UNMEASURABLE, "no text-classification run")
    ok = [_sign(r, -1, "within") > _sign(r, -1, "between") for r in rows]
    evidence = "; ".join(
        f"{r.name}: within {_fmt(_sign(r, -1, 'within'))}, between {_fmt(_sign(r, -1, 'between'))}" for r in rows
    )
    return ClaimResult(11, claim, "v3", HOLDS if all(ok) else FAILS, evidence)


CHECKS: list[Callable[[Sequence[Run]], ClaimResult]] = [
    initial_state,
    between_rises_early,
    decays_with_overfitting,
    permuted_labels,
    superclass_structure,
    lambda runs: lr_direction(runs, 6, +1),
    lambda runs: lr_direction(runs, 7, -1),
    distance_decay,
    deeper_layers_smaller_domains,
    splits_agree,
    nlp_pattern,
]


def check_claims(runs: Sequence[Run]) -> list[ClaimResult]:
    return [check(runs) for check in CHECKS]


def claims_markdown(results: Sequence[ClaimResult]) -> str:
    lines = ["| # | claim | source | verdict | evidence |", "|---|---|---|---|---|"]
    for c in results:
        cells = [str(c.number), c.claim, c.source, f"**{c.verdict}**", c.evidence]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
