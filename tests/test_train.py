from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from handreid.eval.metrics import rank_k_and_map, rank_k_and_map_naive, summarize_splits
from handreid.train.optim import make_scheduler
from handreid.train.stage1 import cached_stage1
from handreid.train.trainer import Trainer, train

REPORT_KEYS = {
    "epoch",
    "val_mAP",
    "val_rank1",
    "loss",
    "loss_id",
    "loss_arcface",
    "loss_supcon",
    "loss_triplet",
    "loss_center",
    "lr_visual",
    "lr_heads",
    "epoch_seconds",
    "images_per_second",
    "best_val_mAP",
    "best_epoch",
    "status",
}


def test_training_beats_the_untrained_model(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        **{
            "model.backbone": "tiny-rn",
            "data.synth.ids": 32,
            "data.synth.per_id": 6,
            "train.epochs": 25,
        }
    )
    untrained = Trainer(cfg, tmp_path / "untrained")
    untrained.setup()
    before = untrained.validate()["val_mAP"]
    result = train(cfg, tmp_path / "run")  # its speed is a benchmark (BENCHMARKS.md), not a test
    assert result["status"] == "done" and result["epochs"] == 25
    assert result["val_mAP"] > before + 10, (before, result["val_mAP"])
    test = result["test"]
    assert len(test["per_split"]) == 10 and test["mAP_std"] > 0
    for name in ("config.yaml", "split.json", "history.csv", "metrics.json", "best.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["test"]["mAP"] == pytest.approx(test["mAP"])


def test_report_is_called_once_per_epoch_with_the_documented_keys(tiny_cfg, tmp_path):
    calls = []
    result = train(
        tiny_cfg(),
        tmp_path / "run",
        report=lambda m, ckpt: calls.append((m, ckpt)),
        evaluate_on_test=False,
    )
    assert [m["epoch"] for m, _ in calls] == [1, 2, 3]
    for metrics, path in calls:
        assert REPORT_KEYS <= set(metrics)
        assert path is not None and path.is_file()
    assert calls[-1][0]["status"] == "done" and "test" not in result
    assert calls[-1][0]["best_val_mAP"] == max(m["val_mAP"] for m, _ in calls)


def test_cosine_is_stepped_per_batch_to_zero_at_the_true_last_step(tiny_cfg, tmp_path):
    lrs = []
    train(
        tiny_cfg(**{"optim.scheduler": "cosine"}),
        tmp_path / "run",
        report=lambda m, _: lrs.append(m["lr_visual"]),
        evaluate_on_test=False,
    )
    base = 0.002
    assert lrs[0] < base and lrs[1] < lrs[0]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "onecycle", "step"])
def test_schedulers_over_the_total_step_count(kind):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = make_scheduler(
        opt, kind, total_steps=20, steps_per_epoch=5, warmup_epochs=1, step_epochs=2, gamma=0.5
    )
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if kind == "cosine":
        assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # warmup over one epoch
        assert lrs[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 14 / 15)))
        assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # after the last step
    elif kind == "step":
        assert lrs[5] == 1.0 and lrs[14] == 1.0 and lrs[15] == 0.5
    else:
        assert max(lrs) == pytest.approx(1.0, rel=1e-3) and lrs.index(max(lrs)) in (4, 5)


def test_gradient_clipping_happens_before_the_step(tiny_cfg, tmp_path, monkeypatch):
    norms = []
    original = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    train(
        tiny_cfg(**{"optim.grad_clip": 0.01, "train.epochs": 1, "train.stage1_epochs": 0}),
        tmp_path / "run",
        evaluate_on_test=False,
    )
    assert norms and max(norms) <= 0.01 + 1e-6


@pytest.mark.parametrize(("backbone", "unfreeze"), [("tiny-vit", 1), ("tiny-rn", 1)])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_cfg, tmp_path, backbone, unfreeze):
    # partially unfrozen: the checkpoint holds only the trainable part (and the unfrozen
    # BatchNorm statistics of tiny-rn); the frozen rest is rebuilt on resume
    cfg = tiny_cfg(
        **{
            "train.epochs": 4,
            "data.random_erasing": 0.5,
            "data.pad": 2,
            "model.backbone": backbone,
            "model.unfreeze_blocks": unfreeze,
        }
    )
    full = train(cfg, tmp_path / "full")

    class Killed(BaseException):
        pass

    def die_after_two(metrics, _path):
        if metrics["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", report=die_after_two)
    seen = []
    resumed = train(cfg, tmp_path / "resumed", report=lambda m, _: seen.append(m["epoch"]))
    assert seen == [3, 4]
    assert resumed["resumed_from_epoch"] == 2
    for key in ("val_mAP", "val_rank1", "best_epoch", "epochs"):
        assert resumed[key] == full[key]
    assert resumed["test"]["mAP"] == full["test"]["mAP"]
    a = torch.load(tmp_path / "full" / "best.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_is_not_trained_again(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 2})
    train(cfg, tmp_path / "run", evaluate_on_test=False)
    calls = []
    again = train(
        cfg, tmp_path / "run", report=lambda m, _: calls.append(m), evaluate_on_test=False
    )
    assert calls == [] and again["epochs"] == 2 and again["status"] == "done"


def test_early_stopping_on_a_flat_validation_curve(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        **{
            "train.epochs": 10,
            "train.patience": 2,
            "optim.lr_visual": 1e-12,
            "optim.lr_heads": 1e-12,
            "model.unfreeze_blocks": 0,
        }
    )
    epochs = []
    result = train(cfg, tmp_path / "run", report=lambda m, _: epochs.append(m["epoch"]))
    assert result["status"] == "early_stopped"
    assert epochs == [1, 2, 3] and result["best_epoch"] == 1
    assert "test" in result  # the best checkpoint is still evaluated


def scripted_curve(monkeypatch, curve):
    """Epochs that train nothing and score ``curve``, one value per epoch, in the loop."""
    values = iter(curve)
    monkeypatch.setattr(
        Trainer, "train_epoch", lambda self, e: {"loss": 0.0, "images_per_second": 0.0}
    )
    monkeypatch.setattr(
        Trainer, "validate", lambda self: {"val_mAP": next(values), "val_rank1": 0.0}
    )


# OneCycle over 10 epochs warms up for 3: its peak is at epoch 1, then the warm-up dips
WARM_UP_DIP = [0.5, 0.4, 0.3, 0.6, 0.7, 0.8, 0.7, 0.65, 0.9, 0.85]


def test_patience_does_not_count_inside_the_warm_up(tiny_cfg, tmp_path, monkeypatch):
    """Epochs 2-3 are worse than epoch 1 but inside OneCycle's warm-up: with patience 2 the
    run is not stopped there; it stops after two bad epochs past it (7 and 8)."""
    scripted_curve(monkeypatch, WARM_UP_DIP)
    cfg = tiny_cfg(**{"optim.scheduler": "onecycle", "train.epochs": 10, "train.patience": 2})
    epochs = []
    result = train(
        cfg, tmp_path / "run", report=lambda m, _: epochs.append(m["epoch"]), evaluate_on_test=False
    )
    assert result["status"] == "early_stopped"
    assert epochs == list(range(1, 9)) and result["best_epoch"] == 6


@pytest.mark.parametrize(
    "overrides, stopped_at",
    [
        ({"optim.scheduler": "onecycle"}, 5),  # warm-up 3 epochs: bad epochs 4 and 5 count
        ({"optim.scheduler": "cosine", "optim.warmup_epochs": 2.5}, 4),  # epochs 3 and 4
        ({"optim.scheduler": "cosine", "train.patience_after": 0.6}, 7),  # epochs 6 and 7
        ({"optim.scheduler": "cosine"}, 3),  # no warm-up: epochs 2 and 3, as before
    ],
)
def test_early_stopping_waits_for_the_warm_up_and_patience_after(
    tiny_cfg, tmp_path, monkeypatch, overrides, stopped_at
):
    scripted_curve(monkeypatch, [0.5] + [0.3] * 9)  # never better than epoch 1
    cfg = tiny_cfg(**{"train.epochs": 10, "train.patience": 2, **overrides})
    result = train(cfg, tmp_path / "run", evaluate_on_test=False)
    assert result["status"] == "early_stopped" and result["epochs"] == stopped_at


def test_a_nan_loss_ends_the_run_as_diverged(tiny_cfg, tmp_path, monkeypatch):
    from handreid.losses import LossSet

    original = LossSet.forward
    calls = {"n": 0}

    def poisoned(self, x):
        calls["n"] += 1
        total, parts = original(self, x)
        return (total * float("nan"), parts) if calls["n"] > 3 else (total, parts)

    monkeypatch.setattr(LossSet, "forward", poisoned)
    reports = []
    result = train(tiny_cfg(), tmp_path / "run", report=lambda m, _: reports.append(m))
    assert result["status"] == "diverged" and "non-finite loss" in result["error"]
    assert reports[-1]["status"] == "diverged"
    assert "test" not in result
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "diverged"


def test_out_of_memory_ends_the_run_as_oom(tiny_cfg, tmp_path, monkeypatch):
    def oom(self, epoch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Trainer, "train_epoch", oom)
    reports = []
    result = train(tiny_cfg(), tmp_path / "run", report=lambda m, _: reports.append(m))
    assert result["status"] == "oom" and "batch_size=16" in result["error"]
    assert reports[-1]["status"] == "oom"


def test_a_search_trial_raises_out_of_memory_so_tune_retries_it(tiny_cfg, tmp_path, monkeypatch):
    """In a search the OOM may come from a neighbour on the same GPU: the trial raises, and
    Tune runs it again from its last checkpoint (max_failures) instead of ending it (the
    retry itself: tests/test_search.py)."""

    def oom(self, epoch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Trainer, "train_epoch", oom)
    reports = []
    with pytest.raises(torch.OutOfMemoryError):
        train(tiny_cfg(), tmp_path / "run", report=lambda m, _: reports.append(m), raise_oom=True)
    assert not reports or reports[-1].get("status") != "oom"  # no final "oom" result told


def test_stage1_cache_is_hit_by_runs_that_share_stage1(tiny_cfg, tmp_path):
    first = train(tiny_cfg(), tmp_path / "a", evaluate_on_test=False)
    assert first["stage1_cache"] == "miss"
    second = train(
        tiny_cfg(**{"optim.lr_visual": 1e-4, "loss.arcface.margin": 0.1}),
        tmp_path / "b",
        evaluate_on_test=False,
    )
    assert second["stage1_cache"] == "hit" and second["stage1_key"] == first["stage1_key"]
    third = train(tiny_cfg(**{"optim.lr_prompt": 0.02}), tmp_path / "c", evaluate_on_test=False)
    assert third["stage1_cache"] == "miss"
    log = (tmp_path / "stage1" / "computations.log").read_text().splitlines()
    assert len(log) == 2
    a = torch.load(tmp_path / "a" / "best.pt", weights_only=False)["model"]["prompt.ctx"]
    b = torch.load(tmp_path / "b" / "best.pt", weights_only=False)["model"]["prompt.ctx"]
    assert torch.equal(a, b)


def _race(cache_dir, key, barrier):
    barrier.wait()

    def compute():
        time.sleep(1.0)
        return {"ctx": torch.arange(3.0)}

    result, hit = cached_stage1(cache_dir, key, compute)
    return hit


def _race_worker(args):
    return _race(*args)


def test_two_processes_racing_compute_stage1_once(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            hits = pool.map(_race_worker, [(tmp_path, "k", barrier)] * 2)
    assert sorted(hits) == [False, True]
    assert len((tmp_path / "computations.log").read_text().splitlines()) == 1


def test_trainer_runs_with_ray_and_optuna_blocked(tmp_path):
    code = f"""
import sys
sys.modules["ray"] = None
sys.modules["optuna"] = None
from handreid.config import load_config
from handreid.train.trainer import train
cfg = load_config("spaces/base/tiny.yml", {{"data.synth.ids": 8, "data.synth.per_id": 4,
    "train.epochs": 1, "train.stage1_epochs": 1, "train.stage1_cache": "{tmp_path}/s1"}})
r = train(cfg, "{tmp_path}/run")
assert r["status"] == "done", r
assert not any(m == "ray" or m.startswith(("ray.", "optuna")) for m in sys.modules
               if sys.modules[m] is not None)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_cli_writes_outputs_and_prints_results(tmp_path, capsys):
    from handreid.train.cli import main
    from tests.conftest import TINY_YML

    rc = main(
        [
            "--config",
            str(TINY_YML),
            "--out",
            str(tmp_path / "run"),
            "--cpu",
            "--set",
            "data.synth.ids=8",
            "--set",
            "data.synth.per_id=4",
            "--set",
            "train.epochs=1",
            "--set",
            "train.stage1_epochs=1",
            "--set",
            f"train.stage1_cache={tmp_path}/s1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "Rank-1" in out and "test" in out and "splits" in out
    assert (tmp_path / "run" / "config.yaml").is_file()


# ------------------------------------------------------------------ evaluator


def test_vectorised_metrics_match_the_naive_reference():
    rng = np.random.default_rng(0)
    for _ in range(5):
        q, g = rng.integers(1, 30), rng.integers(1, 40)
        sim = rng.normal(size=(q, g)).round(1)  # rounding creates ties
        q_ids, g_ids = rng.integers(0, 6, q), rng.integers(0, 6, g)
        fast, slow = rank_k_and_map(sim, q_ids, g_ids), rank_k_and_map_naive(sim, q_ids, g_ids)
        assert fast.keys() == slow.keys()
        for k in fast:
            assert fast[k] == pytest.approx(slow[k], nan_ok=True), k


def test_metrics_on_hand_made_cases():
    # query 0: its match ranks 2nd -> AP 1/2; query 1: matches rank 1 and 3 -> AP (1 + 2/3) / 2
    sim = np.array([[0.9, 0.8, 0.1, 0.0], [0.6, 0.2, 0.9, 0.5]])
    m = rank_k_and_map(sim, ["a", "b"], ["x", "a", "b", "b"], ks=(1, 2))
    assert m["rank1"] == pytest.approx(50.0)  # only query 1 hits at rank 1
    assert m["rank2"] == pytest.approx(100.0)
    assert m["mAP"] == pytest.approx(100 * (0.5 + (1 + 2 / 3) / 2) / 2)
    none = rank_k_and_map(np.ones((1, 2)), ["z"], ["x", "y"])
    assert none["num_valid_queries"] == 0 and np.isnan(none["mAP"])
    s = summarize_splits(
        [
            {"rank1": 50, "rank5": 60, "rank10": 70, "mAP": 40},
            {"rank1": 70, "rank5": 80, "rank10": 90, "mAP": 60},
        ]
    )
    assert s["rank1"] == 60 and s["rank1_std"] == 10 and s["mAP"] == 50


def test_test_features_are_extracted_once_for_all_splits(tiny_cfg, tmp_path, monkeypatch):
    import handreid.train.trainer as trainer_mod

    calls = []
    original = trainer_mod.extract_features

    def counting(model, loader, device, **kw):
        calls.append(kw.get("desc"))
        return original(model, loader, device, **kw)

    monkeypatch.setattr(trainer_mod, "extract_features", counting)
    result = train(tiny_cfg(**{"train.epochs": 1}), tmp_path / "run")
    assert calls.count("test") == 1 and len(result["test"]["per_split"]) == 10


def test_resuming_a_directory_of_another_configuration_is_refused(tiny_cfg, tmp_path, capsys):
    from handreid.errors import HandReIDError

    train(tiny_cfg(**{"train.epochs": 1}), tmp_path / "run", evaluate_on_test=False)
    with pytest.raises(HandReIDError, match=r"different configuration \(optim.lr_visual: 0.002"):
        train(tiny_cfg(**{"train.epochs": 2, "optim.lr_visual": 0.01}), tmp_path / "run")
    with pytest.raises(HandReIDError, match=r"train.epochs: 1 there, 2 now"):
        train(tiny_cfg(**{"train.epochs": 2}), tmp_path / "run")
    # where it runs may change: the same configuration on another device resumes
    again = train(
        tiny_cfg(**{"train.epochs": 1, "data.num_workers": 1}),
        tmp_path / "run",
        evaluate_on_test=False,
    )
    assert again["epochs"] == 1 and again["status"] == "done"
