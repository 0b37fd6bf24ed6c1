"""From a data config to a split and data loaders; synthetic data is generated on demand."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from filelock import FileLock

from handreid.cache import cache_root, require
from handreid.data.hands11k import (
    CSV_NAME,
    aspect_records,
    check_files_exist,
    present_records,
    read_handinfo,
)
from handreid.data.splits import DataSplit, gallery_all, make_split
from handreid.data.synth import MARKER, RENDER_VERSION, generate, write_marker
from handreid.errors import DataError


def synthetic_dir(synth_cfg) -> Path:
    """Where the synthetic dataset the config describes is cached (built or not)."""
    described = {**asdict(synth_cfg), "render_version": RENDER_VERSION}
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "synth" / key


def synthetic_root(synth_cfg) -> Path:
    """Generate (once, under a lock) the synthetic dataset the config describes."""
    root = synthetic_dir(synth_cfg)
    if (root / CSV_NAME).is_file() and (root / MARKER).is_file():
        return root  # built: no lock (a read-only copy may not allow one)
    require(root / CSV_NAME, "the synthetic data that data.synth describes")
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not (root / CSV_NAME).is_file():
            generate(
                root,
                ids=synth_cfg.ids,
                per_id=synth_cfg.per_id,
                aspects=tuple(synth_cfg.aspects),
                size=(synth_cfg.width, synth_cfg.height),
                seed=synth_cfg.seed,
            )
        elif not (root / MARKER).is_file():  # generated before datasets were marked
            write_marker(root, render_version=RENDER_VERSION)
    return root


def resolve_root(data_cfg) -> Path:
    """The folder images and metadata are read from: ``data.prepared`` (a `handreid-data
    prepare` output, itself an 11k-layout root of resized copies) when set, else
    ``data.root``, else the synthetic dataset ``data.synth`` describes."""
    if data_cfg.prepared:
        prepared = Path(data_cfg.prepared)
        if not (prepared / CSV_NAME).is_file():
            raise DataError(
                f"data.prepared: {prepared} has no {CSV_NAME}; create it with "
                f"`handreid-data prepare --root <11k root> --out {prepared}`"
            )
        return prepared
    return Path(data_cfg.root) if data_cfg.root else synthetic_root(data_cfg.synth)


def split_method(data_cfg) -> str:
    """Synthetic ids do not follow the 11k numbering, so they always split at random."""
    return data_cfg.split if (data_cfg.root or data_cfg.prepared) else "random"


def build_split(data_cfg, eval_cfg, root: Path | None = None) -> DataSplit:
    """The train / val / test split of ``data_cfg.aspect``, with files checked to exist."""
    root = root or resolve_root(data_cfg)
    df = read_handinfo(root / CSV_NAME)

    def one(aspect: str) -> DataSplit:
        records = aspect_records(df, aspect, filter_accessories=data_cfg.filter_accessories)
        if data_cfg.subset:  # a partial copy: the images present, the split computed on them
            records = present_records(root, records)
        return make_split(
            records,
            method=split_method(data_cfg),
            test_fraction=data_cfg.test_fraction,
            seed=data_cfg.split_seed,
            n_splits=eval_cfg.n_splits,
            split_seed=eval_cfg.split_seed,
        )

    split = one(data_cfg.aspect)
    if eval_cfg.protocol == "gallery_all":
        present = sorted(set(df["aspect"]) - {data_cfg.aspect})
        split.test = gallery_all(split, [one(a) for a in present])
    check_files_exist(root, split.train + split.val + split.test.images)
    return split
