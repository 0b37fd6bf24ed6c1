"""Images are decoded once per run, not once per epoch, and gallery_all reads only the
images it scores."""

from __future__ import annotations

from collections import Counter

import handreid.data.dataset as dataset_module
from handreid.data.hands11k import aspect_records, read_handinfo
from handreid.data.splits import gallery_all, make_split
from handreid.train.trainer import train
from tests.conftest import REAL_CSV


def test_a_run_decodes_each_train_and_validation_image_once(tiny_cfg, tmp_path, monkeypatch):
    reads: Counter[str] = Counter()
    real = dataset_module.read_image

    def counted(path):
        reads[str(path)] += 1
        return real(path)

    monkeypatch.setattr(dataset_module, "read_image", counted)  # workers 0: in this process
    cfg = tiny_cfg(**{"train.epochs": 3, "data.pad": 2, "data.random_erasing": 0.5})
    result = train(cfg, tmp_path / "run", report=lambda *_: None)
    assert result["epochs"] == 3 and result["test"]["mAP"] >= 0
    # stage 1's features, 3 epochs of training and 3 validations, then the test set once
    assert set(reads.values()) == {1}, reads.most_common(2)


def test_a_run_over_the_memory_bound_reads_the_files_each_pass(tiny_cfg, tmp_path, monkeypatch):
    reads: Counter[str] = Counter()
    real = dataset_module.read_image
    monkeypatch.setattr(dataset_module, "read_image", lambda p: reads.update([str(p)]) or real(p))
    cfg = tiny_cfg(**{"train.epochs": 2, "data.decode_cache_mib": 0})
    train(cfg, tmp_path / "run", evaluate_on_test=False)
    assert max(reads.values()) > 2  # the bound is honoured: nothing kept


def test_gallery_all_holds_only_the_images_it_scores():
    handinfo = read_handinfo(REAL_CSV)
    aspects = ("dorsal_r", "dorsal_l", "palmar_r", "palmar_l")
    splits = {a: make_split(aspect_records(handinfo, a)) for a in aspects}
    main, others = splits["dorsal_r"], [splits[a] for a in aspects[1:]]
    proto = gallery_all(main, others)
    scored = set()
    for s in proto.splits:
        scored |= set(s.query.tolist()) | set(s.gallery.tolist())
    assert scored == set(range(len(proto.images)))  # every extracted image is scored
    # the same galleries as before: each split's distractors are the other aspects' galleries
    for i, s in enumerate(proto.splits):
        expected = [o.test.images[j].path for o in others for j in o.test.splits[i].gallery]
        assert [
            proto.images[j].path for j in s.gallery[len(main.test.splits[i].gallery) :]
        ] == expected
    used = [len({int(j) for t in o.test.splits for j in t.gallery}) for o in others]
    assert len(proto.images) == len(main.test.images) + sum(used) == 2600  # of 4,114
