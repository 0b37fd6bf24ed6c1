"""``handreid-data``: generate synthetic hands, prepare a resized cache, check a dataset,
pretrain the tiny CLIPs on synthetic hands."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tqdm import tqdm

from handreid.cli_util import one_line_errors, setup_logging
from handreid.data.dataset import read_image
from handreid.data.hands11k import (
    ASPECT_NAMES,
    CSV_NAME,
    aspect_records,
    check_files_exist,
    read_handinfo,
)
from handreid.data.prepare import prepare
from handreid.data.splits import make_split, split_summary
from handreid.data.synth import MARKER, generate
from handreid.errors import DataError, HandReIDError
from handreid.models.registry import SYNTH_PRETRAINED, TINY_BACKBONES

log = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError("images must be at least 16x16")
    return w, h


def _aspect(text: str) -> str:
    if text not in ASPECT_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown aspect {text!r}; valid: {', '.join(ASPECT_NAMES)}"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handreid-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic dataset in the 11k layout")
    s.add_argument("--out", required=True)
    s.add_argument("--ids", type=int, default=100)
    s.add_argument("--per-id", type=int, default=10)
    s.add_argument("--aspects", type=_aspect, nargs="+", default=["dorsal_r"])
    s.add_argument("--size", type=_size, default=(160, 120), help="WxH (default 160x120)")
    s.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("prepare", help="resize the JPEGs once into a training cache")
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)

    t = sub.add_parser(
        "pretrain",
        help=f"pretrain the tiny CLIPs on synthetic hands (model.pretrained: {SYNTH_PRETRAINED})",
    )
    t.add_argument("--backbone", nargs="+", choices=TINY_BACKBONES, default=list(TINY_BACKBONES))
    t.add_argument("--seed", type=int, default=0, help="other than 0: use the printed file")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps (default 300)")
    t.add_argument("--force", action="store_true", help="pretrain again even if cached")

    c = sub.add_parser("check", help="validate a dataset and print its split statistics")
    c.add_argument("--root", required=True)
    c.add_argument("--aspect", type=_aspect, nargs="+", default=None)
    c.add_argument(
        "--split",
        choices=["auto", "standard", "random"],
        default="auto",
        help=f"auto (default): the split the dataset declares in {MARKER}, else standard",
    )
    c.add_argument(
        "--keep-accessories", action="store_true", help="do not drop rows with rings etc."
    )
    c.add_argument("--no-decode", action="store_true", help="skip decoding every image")
    c.add_argument("--json", action="store_true")
    return parser


def cmd_synth(args) -> int:
    if args.ids < 4 or args.per_id < 2:
        raise HandReIDError("--ids must be >= 4 and --per-id >= 2")
    out = generate(
        args.out,
        ids=args.ids,
        per_id=args.per_id,
        aspects=tuple(args.aspects),
        size=args.size,
        seed=args.seed,
    )
    log.info("wrote %d images to %s", args.ids * args.per_id * len(args.aspects), out)
    return 0


def cmd_pretrain(args) -> int:
    import dataclasses

    from handreid.models import pretrain_tiny

    defaults = pretrain_tiny.DEFAULT_SETTINGS
    if args.steps is not None and args.steps < 1:
        raise HandReIDError("--steps must be >= 1")
    settings = dataclasses.replace(defaults, seed=args.seed, steps=args.steps or defaults.steps)
    for backbone in args.backbone:
        if args.force:
            pretrain_tiny.cache_file(backbone, settings).unlink(missing_ok=True)
        path = pretrain_tiny.ensure_pretrained(backbone, settings)
        use = SYNTH_PRETRAINED if settings == defaults else str(path)
        print(f"{backbone}: {path} (use with model.pretrained={use})")
    return 0


def cmd_prepare(args) -> int:
    if args.short_side < 16:
        raise HandReIDError("--short-side must be >= 16")
    if Path(args.out).resolve() == Path(args.root).resolve():
        raise HandReIDError("--out must differ from --root")
    result = prepare(args.root, args.out, args.short_side, args.workers)
    log.info(
        "prepared %s: %d written, %d already done, %d corrupt skipped",
        args.out,
        result.written,
        result.skipped,
        len(result.corrupt),
    )
    return 0


def _check_split(root: Path, asked: str) -> tuple[str, str]:
    """The split ``check`` uses and why: ``--split``, else what ``synth.json`` declares,
    else the standard 11k split."""
    if asked != "auto":
        return asked, "--split"
    marker = root / MARKER
    if not marker.is_file():
        return "standard", f"the 11k Hands split; no {MARKER} in {root}"
    try:
        split = json.loads(marker.read_text())["split"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{marker}: not a synthetic-data marker with a 'split'") from None
    if split not in ("standard", "random"):
        raise DataError(f"{marker}: unknown split {split!r}")
    return split, f"declared by {marker}"


def cmd_check(args) -> int:
    root = Path(args.root)
    df = read_handinfo(root / CSV_NAME)
    method, why = _check_split(root, args.split)
    aspects = args.aspect or sorted(set(df["aspect"]), key=list(ASPECT_NAMES).index)
    report, reasons = {}, {}
    for aspect in aspects:
        records = aspect_records(df, aspect, filter_accessories=not args.keep_accessories)
        if not records.items:
            raise DataError(f"aspect {aspect}: no images in {root / CSV_NAME}")
        split = make_split(records, method=method)
        check_files_exist(root, records.items)
        report[aspect] = split_summary(split)
        reasons[aspect] = {
            **{f"rows with {k}": v for k, v in records.dropped.items()},
            "single-image test ids": split.test.dropped_ids,
        }
    if not args.no_decode:
        names = [n for a in aspects for n in df.loc[df["aspect"] == a, "imageName"]]
        corrupt = []
        for name in tqdm(names, desc="decode", disable=args.json or None):
            try:
                read_image(root / "Hands" / name)
            except DataError:
                corrupt.append(name)
        if corrupt:
            raise DataError(
                f"{root}: {len(corrupt)} corrupt images: {', '.join(corrupt[:10])}"
                + (" ..." if len(corrupt) > 10 else "")
            )
    if args.json:
        log.info("split: %s (%s)", method, why)  # stdout stays JSON
        print(json.dumps(report))
    else:
        print(f"split: {method} ({why})")
        _print_table(report)
        for aspect, why in reasons.items():
            parts = ", ".join(f"{n} {reason}" for reason, n in why.items() if n)
            print(f"{aspect}: dropped {parts or 'nothing'}")
    return 0


def _print_table(report: dict[str, dict[str, int]]) -> None:
    keys = list(next(iter(report.values())))
    print(f"{'':18}" + "".join(f"{a:>10}" for a in report))
    for key in keys:
        print(f"{key:18}" + "".join(f"{report[a][key]:>10}" for a in report))


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    commands = {
        "synth": cmd_synth,
        "prepare": cmd_prepare,
        "check": cmd_check,
        "pretrain": cmd_pretrain,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
