"""Stage 1: prompt learning on cached image features, and its content-addressed cache.

Stage 1 depends only on the backbone and its weights, the training split, the prompt
settings, the stage-1 optimiser settings and the seed -- never on a stage-2 parameter --
so its result (the learned context) is stored under a hash of exactly those and reused by
every run that shares them. A file lock makes concurrent runs compute it once: one
computes, the others wait and then load it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from tqdm import tqdm

from handreid.data.hands11k import Item
from handreid.losses.functional import supcon
from handreid.train.checkpoint import atomic_save
from handreid.train.optim import make_optimizer, make_scheduler

log = logging.getLogger(__name__)


def _pretrained_identity(pretrained: str) -> Any:
    path = Path(pretrained)
    if path.is_file():
        stat = path.stat()
        return {"file": str(path.resolve()), "size": stat.st_size, "mtime": int(stat.st_mtime)}
    return pretrained


def stage1_key(cfg, train_items: list[Item], *, images: str | Path) -> str:
    """Hash of everything stage 1 depends on: ``images`` is the folder the images are read
    from (``data.root``, ``data.prepared`` or the synthetic data's cache). Stage 1 trains on
    the unit pre-BN feature, so ``model.retrieval_feature`` is not one of its inputs."""
    split = hashlib.sha256("\n".join(f"{it.path}\t{it.pid}" for it in train_items).encode())
    deps = {
        "images": str(Path(images).resolve()),
        "backbone": cfg.model.backbone,
        "activation": cfg.model.activation,  # QuickGELU or GELU changes the text tower
        "pretrained": _pretrained_identity(cfg.model.pretrained),
        "split": split.hexdigest(),
        "n_ctx": cfg.model.n_ctx,
        "templates": list(cfg.model.templates),
        "optimizer": cfg.optim.name,
        "lr_prompt": cfg.optim.lr_prompt,
        "weight_decay_prompt": cfg.optim.weight_decay_prompt,
        "epochs": cfg.train.stage1_epochs,
        "batch_size": cfg.train.stage1_batch_size,
        "temperature": cfg.train.stage1_temperature,
        "mixed_precision": cfg.train.mixed_precision,
        "seed": cfg.train.seed,
    }
    return hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:20]


def train_prompts(
    model,
    image_feats: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    optimizer: str,
    temperature: float,
    seed: int,
    accelerator,
) -> list[float]:
    """Train only the prompt context with i2t + t2i SupCon; returns the loss per epoch."""
    model.set_stage(1)
    params = [model.prompt.ctx]
    opt = make_optimizer(optimizer, [{"params": params, "lr": lr, "weight_decay": weight_decay}])
    steps_per_epoch = -(-len(labels) // batch_size)
    sched = make_scheduler(
        opt, "cosine", total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch
    )
    gen = torch.Generator().manual_seed(seed)
    device = accelerator.device
    feats, labels = image_feats.to(device), labels.to(device)
    history = []
    for _ in tqdm(range(epochs), desc="stage 1", leave=False, disable=None):
        total = 0.0
        for idx in torch.randperm(len(labels), generator=gen).split(batch_size):
            idx = idx.to(device)
            with accelerator.autocast():
                text = model.encode_text(labels[idx])
                img = feats[idx]
                loss = supcon(img, text.float(), labels[idx], labels[idx], temperature) + supcon(
                    text.float(), img, labels[idx], labels[idx], temperature
                )
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(labels))
    model.prompt.ctx.requires_grad_(False)
    return history


def cached_stage1(
    cache_dir: str | Path, key: str, compute: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """Load stage-1 result ``key`` or compute it once under a lock. Returns (result, hit)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.pt"
    with FileLock(str(cache_dir / f"{key}.lock")):
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=False), True
        start = time.time()
        result = compute()
        result["seconds"] = time.time() - start
        atomic_save(result, path)
        with open(cache_dir / "computations.log", "a") as fh:  # one line per computation
            fh.write(f"{key}\t{os.getpid()}\t{result['seconds']:.2f}\n")
        return result, False
