"""Stage 1: prompt learning on cached image features, and its content-addressed cache.

Stage 1 depends only on the backbone and its weights, the training split, the prompt
settings, the stage-1 optimiser settings and the seed -- never on a stage-2 parameter --
so its result (the learned context) is stored under a key and reused by every run that
shares them. The key is derived from what stage 1 reads, not from a list: the trainer
reads stage 1's settings through a :class:`ConfigReads` view that records every field
read, and the key holds those fields' values (less :data:`PLACEMENT`), the training
items, the images' bytes, the device type and the versions of the libraries that compute
it. A read after the key was taken raises. A file lock makes concurrent runs compute it
once: one computes, the others wait and then load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
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

# Fields stage 1 reads that do not change what it computes: where it runs (the device type
# is keyed itself) and how much the memory holds. tests/test_stage1_key.py perturbs each and
# requires the same result, bit for bit. (Not eval.batch_size: the features of a batch of 1
# differ in the last bits from those of a batch of 128, and so does the learned context.)
PLACEMENT = frozenset({"train.cpu", "data.num_workers", "data.decode_cache_mib", "model.cache_dir"})


class ConfigReads:
    """A read-only view of a frozen config tree that records the dotted key and value of
    every field read through it (``reads``). A method of a section counts as reading the
    whole section. Inside :meth:`sealed`, reading a field not read before raises."""

    def __init__(self, node: Any, path: str = "", state: dict | None = None):
        self._node, self._path = node, path
        self._state = state if state is not None else {"reads": {}, "sealed": False}

    @property
    def reads(self) -> dict[str, Any]:
        return self._state["reads"]

    @contextlib.contextmanager
    def sealed(self) -> Iterator[None]:
        self._state["sealed"] = True
        try:
            yield
        finally:
            self._state["sealed"] = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(self._node, name)
        key = f"{self._path}.{name}" if self._path else name
        if dataclasses.is_dataclass(value):
            return ConfigReads(value, key, self._state)
        if callable(value):  # a method may read any field of its section
            self._record(self._path or "config", dataclasses.asdict(self._node))
        else:
            self._record(key, value)
        return value

    def _record(self, key: str, value: Any) -> None:
        if self._state["sealed"] and key not in self.reads:
            raise RuntimeError(f"stage 1 read {key} after its cache key was taken")
        self.reads[key] = value


def _identity(value: Any) -> Any:
    """What a read value stands for: a file by its path, size and time, tuples as lists."""
    if isinstance(value, (tuple, list)):
        return [_identity(v) for v in value]
    if isinstance(value, dict):
        return {k: _identity(v) for k, v in value.items()}
    if isinstance(value, str) and value and Path(value).is_file():
        stat = Path(value).stat()
        return {
            "file": str(Path(value).resolve()),
            "size": stat.st_size,
            "mtime": int(stat.st_mtime),
        }
    return value


def images_digest(root: str | Path, items: list[Item]) -> str:
    """A hash of the bytes of the images stage 1 reads (wherever they lie: a copied or
    moved dataset keeps its key, a re-prepared one does not)."""
    digest = hashlib.sha256()
    for it in items:
        digest.update(it.path.encode() + b"\0")
        digest.update(hashlib.sha256((Path(root) / it.path).read_bytes()).digest())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    import open_clip
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "open_clip": open_clip.__version__,
    }


def stage1_key(
    reads: Mapping[str, Any], train_items: list[Item], *, images: str | Path, device: Any
) -> str:
    """Hash of everything stage 1 depends on: the config values it read (``reads``, less
    :data:`PLACEMENT`), the training items, the bytes of their images under ``images``
    (``data.root``, ``data.prepared`` or the synthetic data's cache), the device type and
    the library versions."""
    split = hashlib.sha256("\n".join(f"{it.path}\t{it.pid}" for it in train_items).encode())
    deps = {
        "config": {k: _identity(v) for k, v in sorted(reads.items()) if k not in PLACEMENT},
        "split": split.hexdigest(),
        "images": images_digest(images, train_items),
        "device": torch.device(device).type,
        "versions": library_versions(),
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
