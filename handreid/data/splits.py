"""Identity splits, validation hold-out and the Monte-Carlo query/gallery test protocol.

Everything here is deterministic given its seed, and a whole split can be written as a
JSON manifest and loaded back, so a run can be re-scored exactly.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handreid.data.hands11k import ASPECT_NAMES, MISSING, AspectRecords, Item
from handreid.errors import DataError

# MBA-Net protocol: identities with int(id) <= T train, the rest test.
STANDARD_THRESHOLDS = {"dorsal_r": 1050, "dorsal_l": 1037, "palmar_r": 1051, "palmar_l": 1042}
MIN_TRAIN_IDS = 2
MIN_TEST_IDS = 2


@dataclass
class EvalSplit:
    query: np.ndarray  # indices into EvalProtocol.images
    gallery: np.ndarray


@dataclass
class EvalProtocol:
    """Test images (features are extracted once) and the query/gallery index sets."""

    images: list[Item]
    splits: list[EvalSplit]
    dropped_ids: int = 0  # test identities with a single image


@dataclass
class DataSplit:
    aspect: str
    train: list[Item]
    val: list[Item]
    test: EvalProtocol
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # why it is not the standard protocol

    @property
    def standard(self) -> bool:
        """The MBA-Net protocol: threshold split of every listed image, accessories dropped."""
        return not self.notes

    @property
    def train_ids(self) -> list[str]:
        return sorted({it.pid for it in self.train})

    def labels(self) -> dict[str, int]:
        """Training identity -> class index (sorted, so stable across runs)."""
        return {pid: i for i, pid in enumerate(self.train_ids)}


def _by_id(items: list[Item]) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[it.pid].append(it)
    return dict(sorted(groups.items()))


def identity_split(
    records: AspectRecords, *, method: str = "standard", test_fraction: float = 0.5, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train ids, test ids): the standard threshold split or a seeded random one."""
    ids = sorted({it.pid for it in records.items})
    if method == "standard":
        threshold = STANDARD_THRESHOLDS[records.aspect]
        train = [i for i in ids if int(i) <= threshold]
        test = [i for i in ids if int(i) > threshold]
    elif method == "random":
        order = np.random.default_rng(seed).permutation(len(ids))
        n_test = max(1, int(round(len(ids) * test_fraction)))
        test = sorted(ids[i] for i in order[:n_test])
        train = sorted(ids[i] for i in order[n_test:])
    else:
        raise ValueError(f"unknown split method {method!r}")
    if len(train) < MIN_TRAIN_IDS or len(test) < MIN_TEST_IDS:
        raise DataError(
            f"aspect {records.aspect}: too few identities for the {method} split "
            f"({len(train)} train, {len(test)} test; need >= {MIN_TRAIN_IDS} and >= {MIN_TEST_IDS})"
            + ("; use data.split=random for data outside 11k Hands" if method == "standard" else "")
        )
    return train, test


def hold_out_val(items: list[Item], seed: int) -> tuple[list[Item], list[Item]]:
    """One seeded image per training identity (with >= 2 images) goes to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for group in _by_id(items).values():
        if len(group) >= 2:
            pick = int(rng.integers(len(group)))
            val.append(group[pick])
            train.extend(g for i, g in enumerate(group) if i != pick)
        else:
            train.extend(group)
    return train, val


def query_gallery_splits(
    items: list[Item], n_splits: int, seed: int
) -> tuple[list[Item], list[EvalSplit], int]:
    """Usable test images, ``n_splits`` splits (one gallery image per id), dropped id count."""
    groups = _by_id(items)
    usable = {pid: g for pid, g in groups.items() if len(g) >= 2}
    images = [it for g in usable.values() for it in g]
    offsets = np.cumsum([0] + [len(g) for g in usable.values()])
    splits = []
    for s in range(n_splits):
        rng = np.random.default_rng([seed, s])
        picks = [start + int(rng.integers(len(g))) for start, g in zip(offsets, usable.values())]
        gallery = np.array(picks, dtype=np.int64)
        mask = np.ones(len(images), dtype=bool)
        mask[gallery] = False
        splits.append(EvalSplit(query=np.flatnonzero(mask), gallery=gallery))
    return images, splits, len(groups) - len(usable)


def make_split(
    records: AspectRecords,
    *,
    method: str = "standard",
    test_fraction: float = 0.5,
    seed: int = 0,
    n_splits: int = 10,
    split_seed: int = 0,
) -> DataSplit:
    train_ids, test_ids = identity_split(
        records, method=method, test_fraction=test_fraction, seed=seed
    )
    train_set, test_set = set(train_ids), set(test_ids)
    train, val = hold_out_val([it for it in records.items if it.pid in train_set], seed)
    test_items = [it for it in records.items if it.pid in test_set]
    images, splits, dropped_ids = query_gallery_splits(test_items, n_splits, split_seed)
    protocol = EvalProtocol(images, splits, dropped_ids)
    notes = protocol_notes(records, method)
    return DataSplit(records.aspect, train, val, protocol, dict(records.dropped), notes)


def protocol_notes(records: AspectRecords, method: str) -> list[str]:
    """How a split departs from the standard protocol, one phrase each ([]: it does not)."""
    notes = []
    if method != "standard":
        notes.append("a seeded random identity split, not the MBA-Net thresholds")
    missing = records.dropped.get(MISSING, 0)
    if missing:
        notes.append(
            f"a subset: {missing} of {missing + len(records.items)} listed images missing, "
            f"identities split on the {len(records.items)} present"
        )
    if "accessories" not in records.dropped:
        notes.append("rows with accessories kept")
    return notes


def gallery_all(main: DataSplit, others: list[DataSplit]) -> EvalProtocol:
    """Cross-aspect protocol: each split's gallery adds the other aspects' galleries.

    Identities of other aspects are offset (prefixed with the aspect), so an image of
    the same person in another aspect is a distractor, never a match. Of another aspect
    only the images some split's gallery holds are kept: the protocol's images are the
    ones it scores, so their features are all that is extracted.
    """
    images = list(main.test.images)
    galleries = [list(s.gallery) for s in main.test.splits]
    for other in others:
        if len(other.test.splits) != len(galleries):
            raise ValueError("all aspects need the same number of splits")
        used = sorted({int(i) for split in other.test.splits for i in split.gallery})
        index = {old: len(images) + new for new, old in enumerate(used)}
        for i in used:
            it = other.test.images[i]
            images.append(Item(it.path, f"{other.aspect}:{it.pid}"))
        for g, split in zip(galleries, other.test.splits):
            g.extend(index[int(i)] for i in split.gallery)
    splits = [
        EvalSplit(query=s.query, gallery=np.array(g, dtype=np.int64))
        for s, g in zip(main.test.splits, galleries)
    ]
    return EvalProtocol(images, splits, main.test.dropped_ids)


# ---------------------------------------------------------------------------- manifests


def _items(items: list[Item]) -> list[dict[str, str]]:
    return [{"image": it.path, "id": it.pid} for it in items]


def save_manifest(split: DataSplit, path: str | Path, root: str | None = None) -> None:
    """Write the split as JSON: image path and identity per role and per test split."""
    test = split.test
    doc = {
        "aspect": split.aspect,
        "root": root,
        "dropped_rows": split.dropped,
        "dropped_test_ids": test.dropped_ids,
        "standard_protocol": split.standard,
        "non_standard": split.notes,
        "train": _items(split.train),
        "val": _items(split.val),
        "test_splits": [
            {
                "query": _items([test.images[i] for i in s.query]),
                "gallery": _items([test.images[i] for i in s.gallery]),
            }
            for s in test.splits
        ],
    }
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def load_manifest(path: str | Path) -> DataSplit:
    doc = json.loads(Path(path).read_text())

    def items(rows):
        return [Item(r["image"], r["id"]) for r in rows]

    images: list[Item] = []
    index: dict[Item, int] = {}
    splits = []
    for s in doc["test_splits"]:
        idx = {}
        for role in ("query", "gallery"):
            for it in items(s[role]):
                if it not in index:
                    index[it] = len(images)
                    images.append(it)
            idx[role] = np.array([index[it] for it in items(s[role])], dtype=np.int64)
        splits.append(EvalSplit(idx["query"], idx["gallery"]))
    protocol = EvalProtocol(images, splits, doc.get("dropped_test_ids", 0))
    return DataSplit(
        doc["aspect"],
        items(doc["train"]),
        items(doc["val"]),
        protocol,
        doc["dropped_rows"],
        list(doc.get("non_standard", [])),
    )


def split_summary(split: DataSplit) -> dict[str, int]:
    """The integer statistics `handreid-data check --json` prints per aspect."""
    test_ids = {it.pid for it in split.test.images}
    first = split.test.splits[0] if split.test.splits else EvalSplit(np.array([]), np.array([]))
    return {
        "train_ids": len(split.train_ids),
        "train_images": len(split.train),
        "val_images": len(split.val),
        "test_ids": len(test_ids),
        "test_images": len(split.test.images),
        "query_images": int(len(first.query)),
        "gallery_images": int(len(first.gallery)),
        "dropped_rows": int(sum(split.dropped.values())),
        "dropped_test_ids": int(split.test.dropped_ids),
    }


__all__ = [
    "ASPECT_NAMES",
    "DataSplit",
    "EvalProtocol",
    "EvalSplit",
    "gallery_all",
    "load_manifest",
    "make_split",
    "save_manifest",
    "split_summary",
]
