from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from handreid.config import DataConfig, EvalConfig, SynthConfig
from handreid.data.build import build_split
from handreid.data.cli import main as data_main
from handreid.data.hands11k import aspect_records, read_handinfo
from handreid.data.sampler import PKSampler
from handreid.data.splits import (
    gallery_all,
    load_manifest,
    make_split,
    save_manifest,
    split_summary,
)
from handreid.errors import DataError
from tests.conftest import REAL_CSV

# Independently computed with pandas from the real HandInfo.csv (accessories == 0,
# MBA-Net thresholds, one val image per training identity).
EXPECTED = {
    "dorsal_r": dict(
        train_ids=72,
        train_images=890,
        val_images=72,
        test_ids=71,
        test_images=1042,
        query_images=971,
        gallery_images=71,
        dropped_rows=888,
        dropped_test_ids=0,
    ),
    "dorsal_l": dict(
        train_ids=73,
        train_images=735,
        val_images=73,
        test_ids=73,
        test_images=1061,
        query_images=988,
        gallery_images=73,
        dropped_rows=919,
        dropped_test_ids=0,
    ),
    "palmar_r": dict(
        train_ids=72,
        train_images=905,
        val_images=72,
        test_ids=71,
        test_images=988,
        query_images=917,
        gallery_images=71,
        dropped_rows=848,
        dropped_test_ids=0,
    ),
    "palmar_l": dict(
        train_ids=76,
        train_images=928,
        val_images=76,
        test_ids=75,
        test_images=1023,
        query_images=948,
        gallery_images=75,
        dropped_rows=556,
        dropped_test_ids=0,
    ),
}


@pytest.fixture(scope="module")
def handinfo():
    return read_handinfo(REAL_CSV)


def test_reader_copes_with_the_real_file(handinfo):
    assert len(handinfo) == 11076
    assert handinfo["id"].nunique() == 189  # 190 raw: "1200000 " is the same person as "1200000"
    assert "1200000" in set(handinfo["id"])  # the id with a trailing space, stripped
    assert all(i == i.strip() and i.isdigit() for i in handinfo["id"])
    assert set(handinfo["aspect"]) == set(EXPECTED)


@pytest.mark.parametrize("aspect", list(EXPECTED))
def test_standard_split_statistics(handinfo, aspect):
    split = make_split(aspect_records(handinfo, aspect))
    assert split_summary(split) == EXPECTED[aspect]
    train_ids, test_ids = set(split.train_ids), {it.pid for it in split.test.images}
    assert not train_ids & test_ids
    assert {it.pid for it in split.val} == train_ids  # one val image per training identity
    assert not {it.path for it in split.val} & {it.path for it in split.train}
    for s in split.test.splits:
        gallery_ids = [split.test.images[i].pid for i in s.gallery]
        assert sorted(gallery_ids) == sorted(test_ids)  # exactly one gallery image per id
        assert not set(s.query) & set(s.gallery)
        assert len(s.query) + len(s.gallery) == len(split.test.images)


def test_accessory_filter_is_switchable(handinfo):
    kept = aspect_records(handinfo, "dorsal_r", filter_accessories=False)
    assert len(kept.items) == 962 + 1042 + 888 and kept.dropped == {}


def test_splits_are_deterministic_and_seeded(handinfo):
    records = aspect_records(handinfo, "dorsal_r")
    a, b = make_split(records), make_split(records)
    assert a.val == b.val and all(
        np.array_equal(x.gallery, y.gallery) for x, y in zip(a.test.splits, b.test.splits)
    )
    c = make_split(records, split_seed=1)
    assert any(
        not np.array_equal(x.gallery, y.gallery) for x, y in zip(a.test.splits, c.test.splits)
    )
    galleries = {tuple(s.gallery) for s in a.test.splits}
    assert len(galleries) == 10  # ten different Monte-Carlo splits


def test_random_identity_split(handinfo):
    records = aspect_records(handinfo, "dorsal_r")
    a = make_split(records, method="random", test_fraction=0.3, seed=5)
    b = make_split(records, method="random", test_fraction=0.3, seed=5)
    c = make_split(records, method="random", test_fraction=0.3, seed=6)
    assert a.train_ids == b.train_ids != c.train_ids
    n_ids = len(a.train_ids) + len({it.pid for it in a.test.images})
    assert n_ids == 143 and len({it.pid for it in a.test.images}) == round(143 * 0.3)
    assert not set(a.train_ids) & {it.pid for it in a.test.images}


def test_single_image_test_ids_are_dropped_and_counted(handinfo):
    # keep one image of test id 0000155 (> 1050) to make it a single-image identity
    records = aspect_records(handinfo, "dorsal_r")
    victim = sorted({it.pid for it in records.items if int(it.pid) > 1050})[0]
    first = next(it for it in records.items if it.pid == victim)
    records.items = [it for it in records.items if it.pid != victim or it is first]
    split = make_split(records)
    assert split.test.dropped_ids == 1
    assert victim not in {it.pid for it in split.test.images}


def test_manifest_round_trip(handinfo, tmp_path):
    split = make_split(aspect_records(handinfo, "palmar_l"))
    save_manifest(split, tmp_path / "split.json", root="/data/11k")
    doc = json.loads((tmp_path / "split.json").read_text())
    assert doc["test_splits"][0]["gallery"][0].keys() == {"image", "id"}
    back = load_manifest(tmp_path / "split.json")
    assert back.train == split.train and back.val == split.val
    assert split_summary(back) == split_summary(split)
    for s, t in zip(split.test.splits, back.test.splits):
        assert [split.test.images[i] for i in s.query] == [back.test.images[i] for i in t.query]
        assert [split.test.images[i] for i in s.gallery] == [back.test.images[i] for i in t.gallery]


def test_gallery_all_adds_cross_aspect_distractors(handinfo):
    splits = {a: make_split(aspect_records(handinfo, a)) for a in EXPECTED}
    main, others = splits["dorsal_r"], [splits[a] for a in ("dorsal_l", "palmar_r", "palmar_l")]
    proto = gallery_all(main, others)
    s = proto.splits[0]
    assert len(s.gallery) == 71 + 73 + 71 + 75
    assert np.array_equal(s.query, main.test.splits[0].query)
    query_ids = {proto.images[i].pid for i in s.query}
    distractors = [proto.images[i].pid for i in s.gallery[71:]]
    assert all(":" in pid for pid in distractors)  # offset per aspect: never a true match
    assert not query_ids & set(distractors)


def test_pk_sampler_properties():
    labels = [0] * 9 + [1] * 2 + [2] * 5 + [3] * 4 + [4] * 1 + [5] * 7
    sampler = PKSampler(labels, p=3, k=4, seed=0)
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) % 12 == 0 and len(first) == len(sampler)
    for b in range(0, len(first), 12):
        batch = [labels[i] for i in first[b : b + 12]]
        counts = {lab: batch.count(lab) for lab in set(batch)}
        assert len(counts) == 3 and set(counts.values()) == {4}  # P distinct ids x K each
    sampler.set_epoch(0)
    assert list(sampler) == first  # (seed, epoch) fixes the order
    sampler.set_epoch(1)
    assert list(sampler) != first
    # an identity with fewer than K images still yields K by drawing again
    assert sum(labels[i] == 4 for i in first) % 4 == 0
    with pytest.raises(ValueError, match="at least P=7 identities"):
        PKSampler(labels, p=7, k=2)


def test_pk_sampler_covers_the_training_set():
    labels = np.repeat(np.arange(30), 7)
    sampler = PKSampler(labels, p=4, k=4, seed=3)
    seen = set(sampler)
    assert len(seen) >= 0.9 * len(labels)


def test_pk_sampler_epochs_have_one_length():
    # uneven identities make the greedy packing leave a different remainder each epoch; a
    # per-batch schedule (OneCycleLR) sized from len(sampler) must never be over-stepped
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(50), rng.integers(1, 9, size=50))
    sampler = PKSampler(labels, p=4, k=4, seed=1)
    n_chunks = sum(-(-int(c) // 4) for c in np.bincount(labels))
    assert len(sampler) == n_chunks // 4 * 16
    for epoch in range(40):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler)
        for b in range(0, len(order), 16):
            batch = labels[order[b : b + 16]]
            assert len(set(batch.tolist())) == 4 and np.all(np.bincount(batch)[batch] == 4)


def test_synthetic_dataset_round_trips_through_the_reader(tmp_path):
    rc = data_main(
        [
            "synth",
            "--out",
            str(tmp_path / "s"),
            "--ids",
            "12",
            "--per-id",
            "4",
            "--aspects",
            "dorsal_r",
            "palmar_l",
            "--size",
            "40x30",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    raw = (tmp_path / "s" / "HandInfo.csv").read_text().splitlines()
    assert (
        raw[0]
        == "id,age,gender,skinColor,accessories,nailPolish,aspectOfHand,imageName,irregularities"
    )
    assert raw[1].startswith('"0000000",')
    df = read_handinfo(tmp_path / "s" / "HandInfo.csv")
    assert len(df) == 12 * 4 * 2 and df["id"].nunique() == 12
    assert set(df["aspect"]) == {"dorsal_r", "palmar_l"}
    from PIL import Image

    with Image.open(tmp_path / "s" / "Hands" / df["imageName"].iloc[0]) as im:
        assert im.size == (40, 30)
    cfg = DataConfig(
        root=str(tmp_path / "s"), split="random", aspect="palmar_l", filter_accessories=False
    )
    split = build_split(cfg, EvalConfig())
    assert len(split.train) + len(split.val) + len(split.test.images) == 48


def test_synthetic_generation_is_deterministic(tmp_path):
    from handreid.data.synth import generate

    generate(tmp_path / "a", ids=4, per_id=2, size=(32, 24), seed=1)
    generate(tmp_path / "b", ids=4, per_id=2, size=(32, 24), seed=1)
    for f in (tmp_path / "a" / "Hands").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / "Hands" / f.name).read_bytes()


def test_check_json_on_the_real_metadata(real_root, capsys):
    rc = data_main(["check", "--root", str(real_root), "--json", "--no-decode"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED


def test_check_table_for_one_aspect(real_root, capsys):
    assert (
        data_main(["check", "--root", str(real_root), "--aspect", "palmar_r", "--no-decode"]) == 0
    )
    out = capsys.readouterr().out
    assert "palmar_r" in out and "905" in out and "dorsal_r" not in out
    assert "palmar_r: dropped 848 rows with accessories" in out


# ------------------------------------------------------------------ bad input


def _run_err(args, capsys) -> str:
    rc = data_main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err  # one clear line (progress bars may precede it)
    return errors[0]


def test_missing_csv(tmp_path, capsys):
    err = _run_err(["check", "--root", str(tmp_path)], capsys)
    assert "HandInfo.csv: not found" in err


def test_missing_columns(tmp_path, capsys):
    (tmp_path / "HandInfo.csv").write_text("id,age,imageName\n1,20,a.jpg\n")
    err = _run_err(["check", "--root", str(tmp_path)], capsys)
    assert "missing columns: gender, skinColor, accessories, nailPolish, aspectOfHand" in err


def test_unknown_aspect(real_root, capsys):
    with pytest.raises(SystemExit) as info:
        data_main(["check", "--root", str(real_root), "--aspect", "dorsal"])
    assert info.value.code == 2
    assert (
        "unknown aspect 'dorsal'; valid: dorsal_r, dorsal_l, palmar_r, palmar_l"
        in capsys.readouterr().err
    )
    with pytest.raises(Exception, match="unknown aspect"):
        aspect_records(read_handinfo(REAL_CSV), "left")


def test_missing_images_are_counted(real_root, tmp_path, capsys):
    root = tmp_path / "partial"
    shutil.copytree(real_root, root)
    names = pd.read_csv(REAL_CSV)
    gone = names[(names["aspectOfHand"] == "dorsal right") & (names["accessories"] == 0)]
    for name in gone["imageName"][:5]:
        (root / "Hands" / name).unlink()
    err = _run_err(["check", "--root", str(root), "--aspect", "dorsal_r", "--no-decode"], capsys)
    assert "5 of 2004 listed images are missing (first: Hand_0000002.jpg" in err
    with pytest.raises(DataError, match="5 of"):
        build_split(DataConfig(root=str(root)), EvalConfig())


def _small_dataset(tmp_path):
    from handreid.data.synth import generate

    return generate(tmp_path / "small", ids=6, per_id=3, size=(32, 24), seed=0, accessory_rate=0)


def test_corrupt_images_are_listed_by_check(tmp_path, capsys):
    root = _small_dataset(tmp_path)
    (root / "Hands" / "Hand_0000002.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    full = (root / "Hands" / "Hand_0000005.jpg").read_bytes()
    (root / "Hands" / "Hand_0000005.jpg").write_bytes(full[: len(full) // 3])  # truncated
    err = _run_err(["check", "--root", str(root), "--split", "random"], capsys)
    assert "2 corrupt images: Hand_0000002.jpg, Hand_0000005.jpg" in err


def test_prepare_skips_corrupt_images_and_resumes(tmp_path, caplog):
    root = _small_dataset(tmp_path)
    (root / "Hands" / "Hand_0000004.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "prepared"
    assert data_main(["prepare", "--root", str(root), "--out", str(out), "--short-side", "16"]) == 0
    assert "skipped 1 corrupt" in caplog.text
    from PIL import Image

    with Image.open(out / "Hands" / "Hand_0000001.jpg") as im:
        assert min(im.size) == 16
    assert len(list((out / "Hands").iterdir())) == 17
    # a killed run leaves finished files in place: remove some, rerun, only they are redone
    for name in ("Hand_0000001.jpg", "Hand_0000002.jpg"):
        (out / "Hands" / name).unlink()
    from handreid.data.prepare import prepare

    result = prepare(root, out, short_side=16, workers=1)
    assert (result.written, result.skipped, len(result.corrupt)) == (2, 15, 1)
    assert (out / "HandInfo.csv").read_bytes() == (root / "HandInfo.csv").read_bytes()


def test_too_few_identities_for_the_split(tmp_path, capsys):
    root = _small_dataset(tmp_path)
    err = _run_err(["check", "--root", str(root), "--no-decode", "--split", "standard"], capsys)
    assert "too few identities for the standard split (6 train, 0 test" in err
    assert "data.split=random" in err


def test_synth_rejects_bad_size(capsys, tmp_path):
    with pytest.raises(SystemExit):
        data_main(["synth", "--out", str(tmp_path), "--size", "big"])
    assert "expected WxH" in capsys.readouterr().err


def test_malformed_csv(tmp_path, capsys):
    (tmp_path / "HandInfo.csv").write_bytes(b'id,age\n"unclosed,1\n')
    err = _run_err(["check", "--root", str(tmp_path)], capsys)
    assert "HandInfo.csv" in err


def test_synth_config_builds_data_on_demand():
    cfg = DataConfig(root=None, synth=SynthConfig(ids=8, per_id=3, width=32, height=24))
    split = build_split(cfg, EvalConfig(n_splits=2))
    assert len(split.train_ids) + len({it.pid for it in split.test.images}) == 8
    assert len(split.test.splits) == 2
