"""No host sync per training step: a value read back from the device (``.item()``,
``bool()``, ``float()``, ``int()``, ``.tolist()`` on a tensor) stalls the GPU until every
queued kernel has run. The epoch may read its sums once at its end; a step may not."""

from __future__ import annotations

import itertools
import traceback

import pytest
import torch

from handreid.train.trainer import Trainer

READS = ("item", "__bool__", "__float__", "__int__", "tolist")


def count_reads(monkeypatch) -> list[tuple[int, str]]:
    """Patch the tensor methods that read a value back; each call appends (tensor id,
    where it was called from)."""
    calls: list[tuple[int, str]] = []
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            where = traceback.extract_stack(limit=2)[0]
            calls.append((id(self), f"{where.filename}:{where.lineno}"))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def optimizer_steps(trainer: Trainer) -> set[int]:
    """The optimisers' step counters: host tensors by design (torch keeps them on the CPU
    unless ``capturable``), so reading them syncs nothing on a GPU."""
    opts = [trainer.optimizer, trainer.center_opt]
    return {id(s["step"]) for o in opts if o for s in o.state.values() if "step" in s}


@pytest.fixture
def stage2(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        **{
            "train.mixed_precision": "bf16",
            "optim.grad_clip": 1.0,  # every per-step path on: clipping, centers, all losses
            "data.pad": 2,
            "data.random_erasing": 0.5,
        }
    )
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    trainer.setup_stage2()
    trainer.compute_text_features()
    batches = list(itertools.islice(itertools.cycle(trainer.data.train_loader), 6))
    return trainer, batches


def syncs_in_an_epoch(trainer: Trainer, batches, steps: int, monkeypatch) -> list[str]:
    trainer.data.train_loader = batches[:steps]
    trainer.train_epoch(1)  # warm-up: optimiser state and its step counters exist
    with monkeypatch.context() as patch:
        calls = count_reads(patch)
        trainer.train_epoch(2)
    host = optimizer_steps(trainer)
    return [where for tensor, where in calls if tensor not in host]


def test_a_training_step_reads_nothing_back_from_the_device(stage2, monkeypatch):
    trainer, batches = stage2
    short = syncs_in_an_epoch(trainer, batches, 2, monkeypatch)
    long = syncs_in_an_epoch(trainer, batches, 6, monkeypatch)
    per_step = (len(long) - len(short)) / 4
    extra = sorted(set(long) - set(short)) or sorted(long)
    assert per_step == 0, f"{per_step:g} host syncs per step, e.g. at {extra[:3]}"
    assert len(short) <= 16, short  # the epoch's own: its loss sums and the non-finite check
