"""``handreid-data``: generate synthetic hands, prepare a resized cache, check a dataset,
pretrain the tiny CLIPs on synthetic hands."""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from handreid.cli_util import one_line_errors, setup_logging
from handreid.data.dataset import read_image
from handreid.data.hands11k import (
    ASPECT_NAMES,
    CSV_NAME,
    IMAGE_DIR,
    AspectRecords,
    aspect_records,
    check_files_exist,
    present_records,
    read_handinfo,
)
from handreid.data.prepare import prepare
from handreid.data.sizes import REAL_INPUT, small_images, small_warning
from handreid.data.splits import DataSplit, make_split, split_summary
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


def _input_size(parser) -> None:
    parser.add_argument(
        "--input-size",
        type=int,
        default=REAL_INPUT,
        help=f"warn about images whose shorter side is below it (default {REAL_INPUT}: "
        "ViT-B-16 and RN50)",
    )


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
    _input_size(p)

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
    c.add_argument(
        "--allow-missing",
        action="store_true",
        help="a partial copy: use the listed images that exist (as data.subset=true does), "
        "count them per aspect and identity, split the identities present",
    )
    _input_size(c)
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
    if args.short_side < args.input_size:
        log.warning(
            "--short-side %d is below the model's input size %d: training upscales the "
            "prepared images (blurring them)",
            args.short_side,
            args.input_size,
        )
    result = prepare(args.root, args.out, args.short_side, args.workers, args.input_size)
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


@dataclass
class AspectCheck:
    """One aspect as ``check`` found it: the records used, their split, what was listed."""

    records: AspectRecords
    split: DataSplit
    listed: AspectRecords  # every listed row (after the accessory filter)


def cmd_check(args) -> int:
    root = Path(args.root)
    df = read_handinfo(root / CSV_NAME)
    method, why = _check_split(root, args.split)
    aspects = args.aspect or sorted(set(df["aspect"]), key=list(ASPECT_NAMES).index)
    found = {a: _check_aspect(root, df, a, method, args) for a in aspects}
    if not args.no_decode:
        _decode(root, _names(root, df, found, args.allow_missing), quiet=args.json)
    used = [root / it.path for f in found.values() for it in f.records.items]
    warning = small_warning(small_images(used, args.input_size), len(used), args.input_size,
                            str(root))  # fmt: skip
    if warning:
        log.warning(warning)
    if args.json:
        log.info("split: %s (%s)", method, why)  # stdout stays JSON
        print(json.dumps({a: _json(f, args.allow_missing) for a, f in found.items()}))
    else:
        _print_check(found, method, why, args.allow_missing)
    return 0


def _check_aspect(root: Path, df, aspect: str, method: str, args) -> AspectCheck:
    listed = aspect_records(df, aspect, filter_accessories=not args.keep_accessories)
    if not listed.items:
        raise DataError(f"aspect {aspect}: no images in {root / CSV_NAME}")
    records = present_records(root, listed) if args.allow_missing else listed
    if not records.items:
        raise DataError(f"aspect {aspect}: none of its {len(listed.items)} listed images is in "
                        f"{root / IMAGE_DIR}")  # fmt: skip
    split = make_split(records, method=method)
    check_files_exist(root, records.items)
    return AspectCheck(records, split, listed)


def _names(root: Path, df, found: dict[str, AspectCheck], allow_missing: bool) -> list[str]:
    """The images to decode: every row of the aspects checked (those present, with
    --allow-missing)."""
    names = [n for a in found for n in df.loc[df["aspect"] == a, "imageName"]]
    return [n for n in names if (root / IMAGE_DIR / n).is_file()] if allow_missing else names


def _decode(root: Path, names: list[str], quiet: bool) -> None:
    corrupt = []
    for name in tqdm(names, desc="decode", disable=quiet or None):
        try:
            read_image(root / IMAGE_DIR / name)
        except DataError:
            corrupt.append(name)
    if corrupt:
        raise DataError(
            f"{root}: {len(corrupt)} corrupt images: {', '.join(corrupt[:10])}"
            + (" ..." if len(corrupt) > 10 else "")
        )


def presence(f: AspectCheck) -> dict:
    """Listed and present images and identities of one aspect, and images per identity."""
    per_id = Counter(it.pid for it in f.records.items)
    return {
        "listed_images": len(f.listed.items),
        "present_images": len(f.records.items),
        "listed_ids": len({it.pid for it in f.listed.items}),
        "present_ids": len(per_id),
        "images_per_id": dict(sorted(per_id.items())),
    }


def _json(f: AspectCheck, allow_missing: bool) -> dict:
    out = split_summary(f.split)
    if allow_missing:
        out.update(presence(f), standard_protocol=f.split.standard, non_standard=f.split.notes)
    return out


def _print_check(found: dict[str, AspectCheck], method: str, why: str, allow_missing) -> None:
    print(f"split: {method} ({why})")
    if allow_missing:
        for aspect, f in found.items():
            print(f"{aspect}: {_presence_line(presence(f))}")
    _print_table({a: split_summary(f.split) for a, f in found.items()})
    for aspect, f in found.items():
        why = {
            **{f"rows with {k}": v for k, v in f.split.dropped.items()},
            "single-image test ids": f.split.test.dropped_ids,
        }
        parts = ", ".join(f"{n} {reason}" for reason, n in why.items() if n)
        print(f"{aspect}: dropped {parts or 'nothing'}")
        if allow_missing and not f.split.standard:
            print(f"{aspect}: not the standard protocol: {'; '.join(f.split.notes)}")


def _presence_line(p: dict) -> str:
    counts = sorted(p["images_per_id"].values()) or [0]
    return (
        f"{p['present_images']} of {p['listed_images']} listed images present, "
        f"{p['present_ids']} of {p['listed_ids']} identities (images per identity: "
        f"{counts[0]}-{counts[-1]}, median {counts[len(counts) // 2]})"
    )


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
