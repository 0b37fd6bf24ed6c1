"""The memory estimate of a run (handreid.train.memory) against the peak a CPU measures for
the same steps (bench.memory_estimate), and how it moves with depth, batch and precision.
The full-size check is a benchmark: ``python -m bench.memory_estimate`` (BENCHMARKS.md)."""

from __future__ import annotations

import pytest

from handreid.train import memory
from handreid.train.memory import MemoryInputs, estimate_many


def tiny(backbone: str = "tiny-vit", **kw) -> MemoryInputs:
    return MemoryInputs(backbone, **{"batch_size": 16, "stage1_batch_size": 16, **kw})


@pytest.mark.parametrize("backbone, unfreeze", [("tiny-vit", -1), ("tiny-rn", 1)])
def test_the_estimate_is_near_the_measured_peak(backbone, unfreeze):
    """Stage 1 (text tower over the batch's prompts) and two stage-2 steps with all five
    losses and AdamW, under CUDA's autocast policy: the estimated peak within 30% of what
    the live tensors of the real steps add up to."""
    from bench.memory_estimate import measure

    row = measure(backbone, unfreeze, batch=16, stage1_batch=16, device="cpu")
    for stage in ("stage1", "stage2"):
        ratio = row["estimate"][stage] / row["measured"][stage]
        assert 0.7 < ratio < 1.3, (stage, row)


def test_more_depth_more_batch_and_fp32_need_more():
    runs = {
        "all": tiny(unfreeze_blocks=-1),
        "one": tiny(unfreeze_blocks=1),
        "frozen": tiny(unfreeze_blocks=0),
        "batch 32": tiny(unfreeze_blocks=-1, batch_size=32),
        "fp32": tiny(unfreeze_blocks=-1, mixed_precision="no"),
    }
    est = {name: e for name, e in zip(runs, estimate_many(runs.values()).values())}
    assert est["frozen"].activations < est["one"].activations < est["all"].activations
    assert est["frozen"].gradients < est["one"].gradients < est["all"].gradients
    assert est["all"].optimiser == 3 * est["all"].gradients  # two moments and the step's copy
    ratio = est["batch 32"].activations / est["all"].activations
    assert 1.8 < ratio <= 2.0  # per sample, plus a fixed part (the bf16 weight copies)
    assert est["fp32"].activations > 1.3 * est["all"].activations
    assert est["all"].weights == est["one"].weights == est["frozen"].weights
    assert est["all"].train_flops > est["one"].train_flops > est["frozen"].eval_flops > 0
    assert est["all"].gpu_bytes() > est["all"].peak + memory.CUDA_OVERHEAD


def test_fake_tensors_count_what_real_ones_save(monkeypatch):
    """The seam into torch: a step on fake tensors saves what the same step computed on the
    CPU saves (where torch lacks fake tensors, the estimate computes at two batches)."""
    inputs = tiny("tiny-rn", unfreeze_blocks=2, batch_size=8, stage1_batch_size=8)
    fake = memory._estimate(*memory._build(memory._model_key(inputs)), inputs, {})
    monkeypatch.setattr(memory, "shapes_only", lambda: None)
    real = memory._estimate(*memory._build(memory._model_key(inputs)), inputs, {})
    assert fake.activations == pytest.approx(real.activations, rel=0.02)
    assert fake.stage1_activations == pytest.approx(real.stage1_activations, rel=0.02)
    assert fake.train_flops == real.train_flops and fake.eval_flops == real.eval_flops
