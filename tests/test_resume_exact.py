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
