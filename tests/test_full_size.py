"""The full-size path users run: ViT-B-16 and RN50 at 224 px under bf16 autocast, weights from
a local file in OpenAI's format (written by bench.openai_weights, random but laid out and
typed like OpenAI's releases), through the ``handreid-train`` CLI on generated hands, with
CUDA's autocast dtype rules emulated on the CPU (``tests.test_losses_autocast``): linears
and matmuls in bf16, acos/exp/norm/softmax/losses in fp32, as on a GPU.

On a CPU without bf16 units (``conftest.cpu_has_bf16``; ``HANDREID_ASSUME_NO_BF16=1``
simulates one) torch runs every bf16 matmul in its reference GEMM, and one full-size step
takes more than ten minutes. There the full-size runs are fp32, with no bf16 matmul at all
(checked), and the CUDA-policy emulation, which checks dtypes and not speed, runs through
the same CLI on the tiny backbones (``test_tiny_bf16_run_through_the_cli``, on every CPU).

The shipped base configs are loaded as they are; the overrides only shrink the data and the
schedule (one stage-1 epoch, two stage-2 steps, one test split), point at the local weights
and move the run to the CPU. Each backbone's two ``unfreeze_blocks`` values share one stage-1
cache (stage 1 does not depend on it): the first run computes stage 1, the second reuses it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from handreid.train.cli import main
from tests.conftest import REPO, TINY_YML, cpu_has_bf16
from tests.test_losses_autocast import cuda_autocast

BASE = {"ViT-B-16": REPO / "spaces/base/vitb16.yml", "RN50": REPO / "spaces/base/rn50.yml"}

SMALL = {
    "data.root": "null",  # generated hands, drawn small and read at the model's 224 px
    "data.split": "random",
    "data.num_workers": 0,
    "data.synth.ids": 4,  # 2 train ids x (5 train + 1 val) images, 2 test ids
    "data.synth.per_id": 6,
    "train.cpu": "true",
    "train.mixed_precision": "bf16",
    "train.stage1_epochs": 1,
    "train.stage1_batch_size": 8,
    "train.epochs": 1,  # P=2 x K=4: two stage-2 steps
    "train.batch_size": 8,
    "train.num_instances": 4,
    "train.patience": 0,
    "eval.n_splits": 1,
    "eval.batch_size": 16,
}


@pytest.fixture(scope="session")
def stage1_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    return lambda backbone: root / backbone


class NoBf16Matmul(TorchDispatchMode):
    """Fails on any matmul or convolution with a bf16 operand: the reference-GEMM path."""

    OPS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._schema.name.split("::")[-1].startswith(self.OPS):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            assert all(t.dtype != torch.bfloat16 for t in tensors), f"bf16 {func}"
        return func(*args, **kwargs)


def cli_run(config, out, sets: dict) -> None:
    argv = ["--config", str(config), "--out", str(out)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0


@pytest.mark.slow
@pytest.mark.parametrize("unfreeze", [2, -1])
@pytest.mark.parametrize(  # a backbone's two runs in one xdist worker: one stage-1 cache
    "backbone", [pytest.param(b, marks=pytest.mark.xdist_group(f"full-{b}")) for b in BASE]
)
def test_full_size_run_through_the_cli(tmp_path, openai_file, stage1_cache, backbone, unfreeze):
    """bf16 under the CUDA policy where the CPU has bf16 units, fp32 where it has none."""
    weights, out = openai_file(backbone), tmp_path / "run"
    bf16 = cpu_has_bf16()
    sets = {
        **SMALL,
        "model.pretrained": weights,
        "model.unfreeze_blocks": unfreeze,
        "train.stage1_cache": stage1_cache(backbone),
        "train.mixed_precision": "bf16" if bf16 else "'no'",  # quoted: YAML's `no` is False
    }
    # CUDA's autocast dtype rules, emulated on the CPU; else fp32, and no bf16 matmul
    with cuda_autocast() if bf16 else NoBf16Matmul():
        cli_run(BASE[backbone], out, sets)
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["val_mAP"]) and metrics["epochs"] == 1
    model = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert model["backbone"] == backbone and model["pretrained"] == str(weights)
    assert model["activation"] == "quick_gelu" and model["unfreeze_blocks"] == unfreeze


@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-rn"])
def test_tiny_bf16_run_through_the_cli(tmp_path, backbone):
    """The full-size tests' CLI path under the CUDA-policy emulation at tiny size, on every
    CPU (bf16 matmuls this small are fast even in the reference GEMM)."""
    out = tmp_path / "run"
    sets = {
        **SMALL,
        "model.backbone": backbone,
        "train.mixed_precision": "bf16",
        "train.stage1_cache": tmp_path / "stage1",
    }
    with cuda_autocast():
        cli_run(TINY_YML, out, sets)
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["val_mAP"]) and metrics["epochs"] == 1
