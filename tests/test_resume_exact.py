"""A resumed run replays the uninterrupted one bit for bit, with the real data settings:
loader workers, padding and random erasing on."""

from __future__ import annotations

import csv

import pytest
import torch

from handreid.train.trainer import train


class Killed(BaseException):
    pass


def die_after(epoch: int):
    def report(metrics, _path):
        if metrics["epoch"] == epoch:
            raise Killed

    return report


def history(run) -> list[dict]:
    with (run / "history.csv").open() as fh:
        return [
            {k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_second")}
            for row in csv.DictReader(fh)
        ]


def test_resume_with_two_workers_and_augmentation_equals_an_uninterrupted_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        **{
            "train.epochs": 3,
            "train.stage1_epochs": 1,
            "data.num_workers": 2,
            "data.pad": 4,
            "data.random_erasing": 0.5,
        }
    )
    full = train(cfg, tmp_path / "full", evaluate_on_test=False)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", report=die_after(1), evaluate_on_test=False)
    resumed = train(cfg, tmp_path / "resumed", evaluate_on_test=False)
    assert resumed["resumed_from_epoch"] == 1
    assert history(tmp_path / "resumed") == history(tmp_path / "full")  # every loss, every epoch
    assert resumed["val_mAP"] == full["val_mAP"]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_state_every_k_epochs_writes_less_and_resumes_to_the_same_run(
    tiny_cfg, tmp_path, monkeypatch
):
    from handreid.train import checkpoint as ckpt

    written: dict[str, list] = {}
    real = ckpt.atomic_save

    def counted(obj, path):
        real(obj, path)
        written.setdefault(str(path.parent), []).append((path.name, path.stat().st_size))

    monkeypatch.setattr(ckpt, "atomic_save", counted)
    common = {"train.epochs": 6, "data.pad": 2, "data.random_erasing": 0.5}
    every = train(tiny_cfg(**common), tmp_path / "every", evaluate_on_test=False)
    cfg = tiny_cfg(**common, **{"train.checkpoint_every": 3})
    sparse = train(cfg, tmp_path / "sparse", evaluate_on_test=False)
    assert history(tmp_path / "sparse") == history(tmp_path / "every")  # the same training
    states = [n for n, _ in written[str(tmp_path / "sparse")] if n == "checkpoint.pt"]
    assert len(states) == 2  # epochs 3 and 6
    bytes_every = sum(size for _, size in written[str(tmp_path / "every")])
    bytes_sparse = sum(size for _, size in written[str(tmp_path / "sparse")])
    assert bytes_sparse < bytes_every / 2, (bytes_sparse, bytes_every)
    # the best weights are those of the best epoch, wherever it fell
    a = torch.load(tmp_path / "every" / "best.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "sparse" / "best.pt", weights_only=False)["model"]
    assert sparse["best_epoch"] == every["best_epoch"] and all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(Killed):  # killed after epoch 5: its last state is epoch 3's
        train(cfg, tmp_path / "resumed", report=die_after(5), evaluate_on_test=False)
    seen = []
    resumed = train(
        cfg,
        tmp_path / "resumed",
        report=lambda m, _: seen.append(m["epoch"]),
        evaluate_on_test=False,
    )
    assert resumed["resumed_from_epoch"] == 3 and seen == [4, 5, 6]  # at most k - 1 replayed
    assert history(tmp_path / "resumed") == history(tmp_path / "every")
    c = torch.load(tmp_path / "resumed" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], c[k]) for k in a)
