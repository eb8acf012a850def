"""The ``lightning-stiffness`` console command."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-stiffness", description="Stiffness measurements: reports.")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="redraw the paper's figures from saved runs and check its claims")
    report.add_argument("runs", nargs="+", help="run directories (or folders of runs) with measurement-*.pt files")
    report.add_argument("--out", default="stiffness_report", help="output folder for PNGs and claims.md")
    report.add_argument("--steps", type=int, nargs="*", help="steps for the class-matrix grids")
    report.add_argument("--threshold", type=float, help="training loss at which ξ is compared across runs")
    args = parser.parse_args(argv)

    from lightning_stiffness.measurement import MeasurementFormatError
    from lightning_stiffness.report import write_report

    try:
        result = write_report(args.runs, args.out, steps=args.steps, threshold=args.threshold)
    except (FileNotFoundError, ImportError, MeasurementFormatError) as err:
        print(f"lightning-stiffness report: {err}", file=sys.stderr)
        return 2
    print(f"{len(result.runs)} run(s), {len(result.figures)} figure(s) written to {args.out}")
    for claim in result.claims:
        print(f"  [{claim.verdict:>15}] {claim.number:2d}. {claim.claim}")
        print(f"      rule: {claim.rule}\n      measured: {claim.evidence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
