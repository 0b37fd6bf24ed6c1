"""Partial datasets on purpose: a copy of 11k Hands with some images missing is checked and
trained on what is present (``--allow-missing``, ``data.subset``), the split computed on it and
recorded as non-standard; images below the model's input size are warned about."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest

from handreid.config import DataConfig, EvalConfig
from handreid.data.build import build_split
from handreid.data.cli import main as data_main
from handreid.data.splits import STANDARD_THRESHOLDS, save_manifest
from handreid.errors import DataError
from tests.conftest import REAL_CSV


@pytest.fixture
def partial(real_root, tmp_path):
    """The real HandInfo.csv, dorsal_r with every image of its first 20 identities and every
    third image of the rest deleted; the other aspects complete."""
    root = tmp_path / "partial"
    shutil.copytree(real_root, root)
    rows = pd.read_csv(REAL_CSV, dtype={"id": str})
    rows["id"] = rows["id"].str.strip()
    dorsal = rows[(rows["aspectOfHand"] == "dorsal right") & (rows["accessories"] == 0)]
    first = sorted(set(dorsal["id"]))[:20]
    gone = dorsal[dorsal["id"].isin(first)]["imageName"].tolist()
    gone += dorsal[~dorsal["id"].isin(first)]["imageName"].iloc[::3].tolist()
    for name in gone:
        (root / "Hands" / name).unlink()
    listed = dorsal[["id", "imageName"]]
    present = listed[~listed["imageName"].isin(gone)]
    return root, listed, present


def test_check_allow_missing_counts_what_is_present_per_aspect_and_identity(partial, capsys):
    root, listed, present = partial
    rc = data_main(["check", "--root", str(root), "--aspect", "dorsal_r", "--no-decode",
                    "--allow-missing", "--json"])  # fmt: skip
    assert rc == 0
    report = json.loads(capsys.readouterr().out)["dorsal_r"]
    assert report["listed_images"] == len(listed) == 2004
    assert report["present_images"] == len(present)
    assert report["listed_ids"] == listed["id"].nunique()
    assert report["present_ids"] == present["id"].nunique() == listed["id"].nunique() - 20
    assert report["images_per_id"] == present.groupby("id").size().to_dict()
    # the identities split is computed on what is present, and said to be no standard one
    threshold = STANDARD_THRESHOLDS["dorsal_r"]
    train_ids = present[present["id"].astype(int) <= threshold]["id"].nunique()
    assert report["train_ids"] == train_ids
    assert (
        report["train_images"] + report["val_images"]
        == (present["id"].astype(int) <= threshold).sum()
    )
    assert report["standard_protocol"] is False
    assert any("listed images missing" in note for note in report["non_standard"])


def test_check_allow_missing_says_it_in_words(partial, capsys):
    root, listed, present = partial
    assert data_main(["check", "--root", str(root), "--aspect", "dorsal_r", "--no-decode",
                      "--allow-missing"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"dorsal_r: {len(present)} of 2004 listed images present, " in out
    assert f"{present['id'].nunique()} of {listed['id'].nunique()} identities" in out
    assert "dorsal_r: not the standard protocol: a subset: " in out
    assert f"{2004 - len(present)} rows with missing files" in out


def test_without_allow_missing_a_partial_copy_is_refused_with_the_way_out(partial, capsys):
    root, _, present = partial
    assert data_main(["check", "--root", str(root), "--aspect", "dorsal_r", "--no-decode"]) == 2
    err = capsys.readouterr().err
    assert f"{2004 - len(present)} of 2004 listed images are missing" in err
    assert "data.subset=true" in err and "--allow-missing" in err


def test_training_data_from_a_subset_records_a_non_standard_split(partial, tmp_path):
    root, _, present = partial
    with pytest.raises(DataError, match="data.subset=true"):
        build_split(DataConfig(root=str(root)), EvalConfig())
    split = build_split(DataConfig(root=str(root), subset=True), EvalConfig())
    used = {it.path.split("/")[-1] for it in split.train + split.val + split.test.images}
    assert used <= set(present["imageName"])
    assert not split.standard and "listed images missing" in split.notes[0]
    save_manifest(split, tmp_path / "split.json")
    doc = json.loads((tmp_path / "split.json").read_text())
    assert doc["standard_protocol"] is False and doc["non_standard"] == split.notes
    assert doc["dropped_rows"]["missing files"] == 2004 - len(present)
    full = build_split(DataConfig(root=str(root), aspect="palmar_r", subset=True), EvalConfig())
    assert full.standard  # nothing missing there: the standard protocol


def test_check_and_prepare_warn_about_images_below_the_input_size(real_root, tmp_path, caplog):
    # the placeholders are 16x12
    with caplog.at_level(logging.WARNING, logger="handreid.data"):
        assert data_main(["check", "--root", str(real_root), "--aspect", "palmar_r",
                          "--no-decode"]) == 0  # fmt: skip
    assert "images have a shorter side below 224 px, the model's input size" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="handreid.data"):
        assert data_main(["check", "--root", str(real_root), "--aspect", "palmar_r",
                          "--no-decode", "--input-size", "12"]) == 0  # fmt: skip
    assert "below" not in caplog.text
    small = tmp_path / "small"
    (small / "Hands").mkdir(parents=True)
    rows = pd.read_csv(REAL_CSV).head(6)
    rows.to_csv(small / "HandInfo.csv", index=False)
    for name in rows["imageName"]:
        shutil.copyfile(real_root / "Hands" / name, small / "Hands" / name)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="handreid.data"):
        assert data_main(["prepare", "--root", str(small), "--out", str(tmp_path / "p"),
                          "--short-side", "100", "--workers", "1"]) == 0  # fmt: skip
    assert "--short-side 100 is below the model's input size 224" in caplog.text
    assert "6 of 6 images have a shorter side below 224 px" in caplog.text
