"""How a claim's result is stated: the verdict words, :class:`ClaimResult`, the evidence text
(each number beside the test it passed ✓ or failed ✗, ξ with its bound) and the claims table.

The checks themselves (what each claim compares) are in :mod:`lightning_stiffness.report.claims`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from lightning_stiffness.analytics import CriticalLength
from lightning_stiffness.report.runs import Run

__all__ = ["FAILS", "FINDING", "HOLDS", "UNMEASURABLE", "ClaimResult", "claims_markdown"]

HOLDS, FAILS, UNMEASURABLE, FINDING = "holds", "does not hold", "not measurable", "finding"


@dataclass(frozen=True)
class ClaimResult:
    number: int
    claim: str
    source: str
    verdict: str
    evidence: str
    rule: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _fmt(x: float) -> str:
    return f"{x:+.3f}" if math.isfinite(x) else "nan"


def _sign(run: Run, index: int, field: str) -> float:
    return float(getattr(run.measurements[index].summaries["sign"]["all"], field))


def _test(value: float, op: str, bound: float) -> tuple[bool, str]:
    """Whether ``value op bound`` holds, and the comparison as evidence: ``+0.950 > 0.9 ✓``."""
    passed = {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    shown = {">=": "≥", "<=": "≤"}.get(op, op)
    return passed, f"{_fmt(value)} {shown} {bound:g} {'✓' if passed else '✗'}"


def _result(
    number: int, claim: str, source: str, ok: list[bool], parts: list[str], missing: str, rule: str
) -> ClaimResult:
    """``holds`` when every measurable run agrees, ``not measurable`` (with why) when none was."""
    if not ok:
        return ClaimResult(number, claim, source, UNMEASURABLE, missing, rule)
    return ClaimResult(number, claim, source, HOLDS if all(ok) else FAILS, "; ".join(parts), rule)


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


def _xi_text(xi: CriticalLength) -> str:
    """ξ as evidence: the number only when measured, otherwise the bound and why."""
    if xi.crossed:
        return f"ξ {xi.value:.3f}"
    if xi.status == "extrapolated":
        return f"no ξ (the line's zero {_fmt(xi.extrapolation)} lies outside the observed distances)"
    if math.isfinite(xi.lower_bound):
        return f"ξ ≥ {xi.lower_bound:.3f} (no crossing, {xi.status})"
    return f"no ξ ({xi.status})"


def claims_markdown(results: Sequence[ClaimResult]) -> str:
    """One table row per claim: its rule beside the numbers compared (✓ passed, ✗ failed)."""
    lines = ["| # | claim | source | verdict | rule | evidence |", "|---|---|---|---|---|---|"]
    for c in results:
        cells = [str(c.number), c.claim, c.source, f"**{c.verdict}**", c.rule, c.evidence]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
