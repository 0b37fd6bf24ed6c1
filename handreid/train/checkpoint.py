"""Resumable training state: what it holds, and its atomic save and load.

A checkpoint holds only what cannot be rebuilt: the trainable tensors of the model (every
parameter that trains in stage 2, the learned prompt context, the BNNeck, and the running
statistics of BatchNorm layers that train), the loss heads and centers, the optimiser,
scheduler and RNG state, and the progress. Frozen weights are rebuilt from the pretrained
source (or the seeded random construction) when the run is set up again; a fingerprint of
them guards against resuming over different weights.

A run directory holds ``checkpoint.pt`` (the state of the latest epoch that wrote one:
every ``train.checkpoint_every`` epochs, the last, and each of ``train.checkpoint_epochs``;
see :func:`checkpoint_due`), ``best.pt`` (the best epoch's trainable tensors) and
``metrics.json`` (the run's results); ``check_same_config`` refuses to resume a directory
of another configuration, and ``finished_run`` finds a run that already ended.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from handreid.config import Config, flatten, to_dict
from handreid.errors import HandReIDError

CHECKPOINT = "checkpoint.pt"
# keys that may change between a run and its resumption (where it runs, not what it trains)
RESUMABLE = {
    "train.cpu",
    "data.num_workers",
    "data.root",
    "train.stage1_cache",
    "eval.batch_size",
    "data.decode_cache_mib",
    "train.checkpoint_every",
    "train.checkpoint_epochs",
}
BEST = "best.pt"
METRICS = "metrics.json"


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_link(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` name the same file as ``src`` (a hard link: no bytes written), atomically.
    Falls back to a copy where the filesystem has no hard links."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def checkpoint_due(train_cfg, epoch: int, status: str) -> bool:
    """Whether epoch ``epoch`` (ending with ``status``) writes the resumable state."""
    return (
        epoch % train_cfg.checkpoint_every == 0
        or epoch in train_cfg.checkpoint_epochs
        or status != "running"
    )


def trainable_keys(model: nn.Module) -> list[str]:
    """State-dict keys that training can change: trainable parameters, the prompt context,
    the BNNeck, and the buffers of every module that owns a trainable parameter (e.g. the
    running statistics of an unfrozen BatchNorm). Frozen BatchNorm layers stay in eval mode,
    so their buffers never change."""
    keys = {name for name, p in model.named_parameters() if p.requires_grad}
    keys.add("prompt.ctx")
    for mod_name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if mod_name == "bnneck" or any(p.requires_grad for p in own):
            prefix = f"{mod_name}." if mod_name else ""
            keys.update(prefix + b for b, _ in module.named_buffers(recurse=False))
    keys.update(f"bnneck.{n}" for n, _ in model.bnneck.named_parameters())  # its frozen bias too
    state = model.state_dict()
    return sorted(k for k in keys if k in state)


def trainable_state(model: nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: state[k] for k in keys}


@torch.no_grad()
def frozen_fingerprint(model: nn.Module, keys: list[str]) -> float:
    """A cheap checksum of everything a checkpoint leaves out (computed once per run)."""
    kept = set(keys)
    total = torch.zeros((), dtype=torch.float64)
    for i, (name, tensor) in enumerate(model.state_dict().items()):
        if name not in kept and tensor.is_floating_point():
            total += tensor.double().abs().sum().cpu() * (1 + i % 7)  # order-sensitive
    return float(total)


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's tensors over a model rebuilt from its pretrained source."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise HandReIDError(f"checkpoint holds tensors the model lacks: {unexpected[:3]}")


def check_fingerprint(saved: float | None, ours: float) -> None:
    if saved is not None and not np.isclose(saved, ours, rtol=1e-9, atol=0.0):
        raise HandReIDError(
            "the checkpoint was trained over other frozen weights than this run's pretrained "
            "source (model.pretrained changed, or the weights file was replaced)"
        )


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


@dataclass
class Progress:
    """What survives a restart besides the weights: the epoch counter and early stopping."""

    epoch: int = 0  # epochs completed
    best_map: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    status: str = "running"  # running, done or early_stopped
    history: list[dict[str, Any]] = field(default_factory=list)


def check_same_config(cfg: Config, out: Path, state: dict[str, Any]) -> None:
    """Refuse to resume a run directory that holds a run of another configuration."""
    saved = flatten(state.get("config") or {})
    ours = flatten(to_dict(cfg))
    changed = [k for k in ours if k in saved and saved[k] != ours[k] and k not in RESUMABLE]
    if changed:
        key = changed[0]
        raise HandReIDError(
            f"{out} holds a checkpoint of a different configuration ({key}: "
            f"{saved[key]!r} there, {ours[key]!r} now); use another output directory"
        )


def finished_run(cfg: Config, out_dir: str | Path, *, with_test: bool = True) -> dict | None:
    """The ``metrics.json`` of a run of ``cfg`` that already ended in ``out_dir`` (its
    checkpoint done or early-stopped, the test scored unless ``with_test`` is False), else
    None. A checkpoint of another configuration there is refused, as on resumption."""
    out = Path(out_dir)
    if not (out / METRICS).is_file() or not (out / CHECKPOINT).is_file():
        return None
    result = json.loads((out / METRICS).read_text())
    ended = ("done", "early_stopped")
    if result.get("status") not in ended or (with_test and not result.get("test")):
        return None
    state = load(out / CHECKPOINT)
    check_same_config(cfg, out, state)
    progress = Progress(**state["progress"])
    same = progress.status in ended and progress.epoch == result.get("epochs")
    return result if same else None


def write_json(path: Path, doc: dict[str, Any]) -> None:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean(doc), indent=2))
    tmp.replace(path)
