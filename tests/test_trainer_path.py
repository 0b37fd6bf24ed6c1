"""The trainer off the tiny default path: decoded images, pre+post retrieval, prepared
images, refused settings, slim checkpoints, resume guards and the evaluation loop."""

from __future__ import annotations

import os

import pytest
import torch

from handreid.config import load_config
from handreid.errors import ConfigError, HandReIDError
from handreid.train.trainer import Trainer, train
from tests.conftest import TINY_YML, tiny_overrides


def test_decoded_images_give_the_same_scores_as_reading_files(tiny_cfg, tmp_path):
    common = {"train.epochs": 1, "eval.n_splits": 2, "data.pad": 2, "data.random_erasing": 0.5}
    files = train(tiny_cfg(**common, **{"data.decode_cache_mib": 0}), tmp_path / "files")
    memory = train(tiny_cfg(**common), tmp_path / "memory")  # decoded once, kept
    assert memory["test"]["mAP"] == files["test"]["mAP"]
    assert memory["val_mAP"] == files["val_mAP"]


def test_pre_post_retrieval_trains_and_shares_stage1_with_pre_bn(tiny_cfg, tmp_path):
    joint = tiny_cfg(**{"train.epochs": 1, "model.retrieval_feature": "pre_post"})
    first = train(joint, tmp_path / "joint")  # computes stage 1 itself
    assert first["status"] == "done" and first["test"]["mAP"] >= 0
    second = train(tiny_cfg(**{"train.epochs": 1}), tmp_path / "pre", evaluate_on_test=False)
    # stage 1 learns on the unit pre-BN feature whatever the retrieval feature
    assert second["stage1_key"] == first["stage1_key"] and second["stage1_cache"] == "hit"


def test_stage1_key_depends_on_the_images_bytes_not_where_they_lie(tiny_cfg, tmp_path):
    import shutil

    from handreid.data.build import build_split, resolve_root
    from handreid.train.stage1 import stage1_key

    cfg = tiny_cfg()
    root = resolve_root(cfg.data)
    items = build_split(cfg.data, cfg.eval, root=root).train
    reads = {"model.backbone": cfg.model.backbone}
    here = stage1_key(reads, items, images=root, device="cpu")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert stage1_key(reads, items, images=copy, device="cpu") == here
    assert stage1_key(reads, items, images=root, device="cuda") != here
    image = copy / items[0].path
    image.write_bytes(image.read_bytes() + b"\0")
    assert stage1_key(reads, items, images=copy, device="cpu") != here


@pytest.mark.parametrize("library", ["torch", "torchvision", "open_clip"])
def test_stage1_key_depends_on_the_library_versions(tiny_cfg, monkeypatch, library):
    """A stage 1 computed under another torch, torchvision or open_clip is not reused."""
    from handreid.data.build import build_split, resolve_root
    from handreid.train import stage1

    cfg = tiny_cfg()
    root = resolve_root(cfg.data)
    items = build_split(cfg.data, cfg.eval, root=root).train
    reads = {"model.backbone": cfg.model.backbone}
    here = stage1.stage1_key(reads, items, images=root, device="cpu")
    versions = stage1.library_versions()
    assert set(versions) == {"torch", "torchvision", "open_clip"}
    monkeypatch.setattr(stage1, "library_versions", lambda: {**versions, library: "0.0.0"})
    assert stage1.stage1_key(reads, items, images=root, device="cpu") != here


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("train.grad_accum", 2, "gradient accumulation is not supported"),
        ("train.mixed_precision", "fp16", "fp16 is not supported"),
    ],
)
def test_unsupported_precision_and_accumulation_are_refused(key, value, words, capsys):
    from handreid.train.cli import main

    with pytest.raises(ConfigError, match=words) as err:
        load_config(TINY_YML, {key: value})
    assert err.value.key == key
    assert main(["--config", str(TINY_YML), "--set", f"{key}={value}"]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in lines[0]


def test_prepared_images_are_read_instead_of_the_root(tiny_cfg, tmp_path):
    from handreid.data.build import resolve_root
    from handreid.data.prepare import prepare

    raw = resolve_root(tiny_cfg().data)
    prepare(raw, tmp_path / "prepared", short_side=32, workers=1)
    cfg = tiny_cfg(
        **{"data.root": str(tmp_path / "gone"), "data.prepared": str(tmp_path / "prepared")}
    )
    result = train(cfg, tmp_path / "run", evaluate_on_test=False)
    assert result["status"] == "done"
    with pytest.raises(HandReIDError, match="data.prepared: .* has no HandInfo.csv"):
        train(tiny_cfg(**{"data.prepared": str(tmp_path)}), tmp_path / "bad")


# ------------------------------------------------------------------ checkpoints


def _frozen_keys(run) -> set[str]:
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    return set(ckpt["model"])


@pytest.mark.parametrize(("backbone", "n"), [("tiny-vit", 1), ("tiny-rn", 1)])
def test_checkpoints_hold_only_what_training_changes(tiny_cfg, tmp_path, backbone, n):
    cfg = tiny_cfg(**{"model.backbone": backbone, "model.unfreeze_blocks": n, "train.epochs": 1})
    train(cfg, tmp_path / "run", evaluate_on_test=False)
    trainer = Trainer(cfg, tmp_path / "probe")
    trainer.setup()
    trainer.setup_stage2()
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    saved = _frozen_keys(tmp_path / "run")
    assert trainable <= saved and "prompt.ctx" in saved and "bnneck.running_mean" in saved
    leftover = saved - trainable - {"prompt.ctx"}
    assert all(
        k.startswith("bnneck.") or "bn" in k or "running" in k or "num_batches" in k
        for k in leftover
    ), leftover  # only BatchNorm state beyond the parameters
    assert not any(k.startswith("prompt.text_encoder") for k in saved)
    full = model.state_dict()
    assert len(saved) < len(full) / 2
    # best.pt is the best epoch's checkpoint itself: no second write
    assert (
        os.stat(tmp_path / "run" / "best.pt").st_ino
        == os.stat(tmp_path / "run" / "checkpoint.pt").st_ino
    )


def test_best_weights_without_per_epoch_checkpoints_are_slim(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        **{"model.unfreeze_blocks": 1, "train.epochs": 1, "train.keep_checkpoints": False}
    )
    result = train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert "optimizer" not in best and "visual.conv1.weight" not in best["model"]
    assert result["test"]["mAP"] >= 0


def test_resume_refuses_other_frozen_weights(tmp_path):
    from handreid.models.weights import build_clip

    weights = tmp_path / "tiny.pt"
    torch.manual_seed(1)
    torch.save(build_clip("tiny-vit", "none").state_dict(), weights)
    cfg = load_config(
        TINY_YML,
        tiny_overrides(
            **{
                "model.pretrained": str(weights),
                "model.unfreeze_blocks": 1,
                "train.stage1_cache": str(tmp_path / "s1"),
                "train.epochs": 2,
            }
        ),
    )

    class Killed(BaseException):
        pass

    def die(metrics, _path):
        raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "run", report=die)
    torch.manual_seed(2)
    torch.save(build_clip("tiny-vit", "none").state_dict(), weights)  # same path, new weights
    with pytest.raises(HandReIDError, match="other frozen weights"):
        train(cfg, tmp_path / "run")


def test_a_refused_resume_leaves_the_run_config_alone(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(**{"train.epochs": 1}), run, evaluate_on_test=False)
    before = (run / "config.yaml").read_text()
    with pytest.raises(HandReIDError, match="different configuration"):
        train(tiny_cfg(**{"train.epochs": 1, "optim.lr_visual": 0.01}), run)
    assert (run / "config.yaml").read_text() == before


# ------------------------------------------------------------------ the evaluation loop


def test_validation_reuses_its_loaders_and_runs_under_autocast(tiny_cfg, tmp_path, monkeypatch):
    import handreid.train.trainer as trainer_mod
    from handreid.train.data import RunData

    built, autocast = [], []
    plain = RunData.plain_loader
    original = trainer_mod.extract_features

    def counting_loader(self, *args, **kw):
        built.append(kw)
        return plain(self, *args, **kw)

    def recording(model, loader, device, **kw):
        autocast.append(torch.is_autocast_enabled("cpu"))
        return original(model, loader, device, **kw)

    monkeypatch.setattr(RunData, "plain_loader", counting_loader)
    monkeypatch.setattr(trainer_mod, "extract_features", recording)
    cfg = tiny_cfg(**{"train.epochs": 3, "train.mixed_precision": "bf16"})
    train(cfg, tmp_path / "run", evaluate_on_test=False)
    assert len(built) == 2  # val and gallery, once per run (not per epoch)
    assert autocast and all(autocast)


def test_batches_are_copied_without_waiting_and_loaders_keep_their_workers(
    tiny_cfg, tmp_path, monkeypatch
):
    """Copies to the device are asynchronous (pinned memory on CUDA), and every loader keeps
    its worker processes between epochs."""
    copies = []
    to = torch.Tensor.to

    def recording(self, *args, **kw):
        if args and isinstance(args[0], torch.device):
            copies.append(kw.get("non_blocking", False))
        return to(self, *args, **kw)

    cfg = tiny_cfg(**{"train.epochs": 1, "data.num_workers": 1})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    trainer.setup_stage2()
    trainer.compute_text_features()
    loaders = [trainer.data.train_loader, trainer.data.val_loader, trainer.data.gallery_loader]
    assert all(loader.persistent_workers for loader in loaders)
    monkeypatch.setattr(torch.Tensor, "to", recording)
    trainer.train_epoch(1)
    trainer.validate()
    assert copies and all(copies)


def test_cudnn_picks_its_kernels_once_on_cuda(monkeypatch):
    from handreid.train.trainer import configure_backends

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    configure_backends(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True
