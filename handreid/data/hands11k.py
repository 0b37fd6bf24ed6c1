"""Reader for the 11k Hands layout: ``<root>/HandInfo.csv`` and ``<root>/Hands/*.jpg``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from handreid.errors import DataError

COLUMNS = (
    "id",
    "age",
    "gender",
    "skinColor",
    "accessories",
    "nailPolish",
    "aspectOfHand",
    "imageName",
    "irregularities",
)
ASPECT_NAMES = {
    "dorsal_r": "dorsal right",
    "dorsal_l": "dorsal left",
    "palmar_r": "palmar right",
    "palmar_l": "palmar left",
}
IMAGE_DIR = "Hands"
CSV_NAME = "HandInfo.csv"


@dataclass(frozen=True)
class Item:
    """One image: its path relative to the dataset root and its identity key."""

    path: str
    pid: str


def read_handinfo(csv_path: str | Path) -> pd.DataFrame:
    """Read HandInfo.csv with ids as stripped strings and a config-style ``aspect`` column."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: not found (expected the 11k layout <root>/{CSV_NAME})")
    try:
        df = pd.read_csv(csv_path, dtype={"id": str, "imageName": str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: malformed CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv_path}: missing columns: {', '.join(missing)}")
    df["id"] = df["id"].astype(str).str.strip()
    df["imageName"] = df["imageName"].astype(str).str.strip()
    bad_ids = df.loc[~df["id"].str.fullmatch(r"\d+"), "id"]
    if len(bad_ids):
        raise DataError(f"{csv_path}: {len(bad_ids)} non-numeric ids, first {bad_ids.iloc[0]!r}")
    by_name = {v: k for k, v in ASPECT_NAMES.items()}
    aspect = df["aspectOfHand"].astype(str).str.strip().map(by_name)
    if aspect.isna().any():
        bad = df.loc[aspect.isna(), "aspectOfHand"].iloc[0]
        raise DataError(f"{csv_path}: unknown aspectOfHand {bad!r}")
    df["aspect"] = aspect
    df["accessories"] = pd.to_numeric(df["accessories"], errors="coerce")
    if df["accessories"].isna().any():
        raise DataError(f"{csv_path}: non-numeric values in column accessories")
    return df


def check_aspect(aspect: str) -> None:
    if aspect not in ASPECT_NAMES:
        raise DataError(f"unknown aspect {aspect!r}; valid: {', '.join(ASPECT_NAMES)}")


@dataclass
class AspectRecords:
    """The usable rows of one aspect, and how many rows were dropped and why."""

    aspect: str
    items: list[Item]
    dropped: dict[str, int]


def aspect_records(
    df: pd.DataFrame, aspect: str, *, filter_accessories: bool = True
) -> AspectRecords:
    check_aspect(aspect)
    rows = df[df["aspect"] == aspect]
    dropped: dict[str, int] = {}
    if filter_accessories:
        keep = rows["accessories"] == 0
        dropped["accessories"] = int((~keep).sum())
        rows = rows[keep]
    items = [Item(f"{IMAGE_DIR}/{name}", pid) for pid, name in zip(rows["id"], rows["imageName"])]
    return AspectRecords(aspect, items, dropped)


MISSING = "missing files"  # AspectRecords.dropped key: listed images not on disk


def present_records(root: str | Path, records: AspectRecords) -> AspectRecords:
    """The records whose image exists under ``root`` (a partial copy); the others are
    counted in ``dropped`` as missing files."""
    root = Path(root)
    items = [it for it in records.items if (root / it.path).is_file()]
    missing = len(records.items) - len(items)
    return AspectRecords(records.aspect, items, {**records.dropped, MISSING: missing})


def check_files_exist(root: str | Path, items: list[Item]) -> None:
    """Fail with a count and the first few names when listed images are missing."""
    root = Path(root)
    missing = [it.path for it in items if not (root / it.path).is_file()]
    if missing:
        first = ", ".join(Path(p).name for p in missing[:3])
        raise DataError(
            f"{root}: {len(missing)} of {len(items)} listed images are missing (first: {first}); "
            "for a partial copy use the images present: data.subset=true, or "
            "`handreid-data check --allow-missing`"
        )
