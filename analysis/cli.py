"""``handreid-report``: ranked ViT-B/16 vs RN50 comparison and plotly reports from run dirs."""

from __future__ import annotations

import argparse
from pathlib import Path

from handreid.cli_util import one_line_errors, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="handreid-report", description=__doc__)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="handreid-search run folders")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report of the first run)")
    p.add_argument("--top", type=int, help="rows of the ranked table (default: all)")
    p.add_argument("--png", action="store_true", help="also write PNGs (needs Chromium)")
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from analysis.report import write_all

    if args.top is not None and args.top < 1:
        from analysis.load import ReportError

        raise ReportError(f"--top must be >= 1, got {args.top}")
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "report"
    result = write_all(args.run_dirs, out, top=args.top, png=args.png)
    for note in result.notes:
        print(f"note: {note}")
    print(f"report: {out / 'report.html'}")
    if result.pngs:
        print(f"PNGs: {len(result.pngs)} in {result.pngs[0].parent}")
    print(
        f"ranked comparison: {out / 'comparison.md'} (also .csv, .html); all trials: "
        f"{out / 'ranked.csv'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
