"""The full-size path users run: ViT-B-16 and RN50 at 224 px under bf16 autocast, weights from
a local file in OpenAI's format (written by bench.openai_weights, random but laid out and
typed like OpenAI's releases), through the ``handreid-train`` CLI on generated hands, with
CUDA's autocast dtype rules emulated on the CPU (``tests.test_losses_autocast``): linears
and matmuls in bf16, acos/exp/norm/softmax/losses in fp32, as on a GPU.

The shipped base configs are loaded as they are; the overrides only shrink the data and the
schedule (one stage-1 epoch, two stage-2 steps, one test split), point at the local weights
and move the run to the CPU. Each backbone's two ``unfreeze_blocks`` values share one stage-1
cache (stage 1 does not depend on it): the first run computes stage 1, the second reuses it.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from bench.openai_weights import write_openai_weights
from handreid.train.cli import main
from tests.conftest import REPO
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
def openai_file(tmp_path_factory):
    """OpenAI-format weights per backbone, written once per session (~350 / 250 MB)."""
    root = tmp_path_factory.mktemp("openai-weights")
    files = {}

    def get(backbone: str):
        if backbone not in files:
            files[backbone] = write_openai_weights(backbone, root / f"{backbone}.pt")
        return files[backbone]

    return get


@pytest.fixture(scope="session")
def stage1_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    return lambda backbone: root / backbone


@pytest.mark.slow
@pytest.mark.parametrize("unfreeze", [2, -1])
@pytest.mark.parametrize("backbone", ["ViT-B-16", "RN50"])
def test_full_size_bf16_run_through_the_cli(
    tmp_path, openai_file, stage1_cache, backbone, unfreeze
):
    weights, out = openai_file(backbone), tmp_path / "run"
    sets = {
        **SMALL,
        "model.pretrained": weights,
        "model.unfreeze_blocks": unfreeze,
        "train.stage1_cache": stage1_cache(backbone),
    }
    argv = ["--config", str(BASE[backbone]), "--out", str(out)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    with cuda_autocast():  # CUDA's autocast dtype rules, emulated on the CPU
        assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["val_mAP"]) and metrics["epochs"] == 1
    model = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert model["backbone"] == backbone and model["pretrained"] == str(weights)
    assert model["activation"] == "quick_gelu" and model["unfreeze_blocks"] == unfreeze
