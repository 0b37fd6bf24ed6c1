"""Time saved by a stage-1 cache hit: the same run twice, stage 1 computed then reused.

python -m bench.stage1_cache
"""

from __future__ import annotations

import os
import tempfile

from bench.common import emit
from handreid.config import load_config
from handreid.train.trainer import train


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HANDREID_CACHE"] = tmp
        cfg = load_config(
            "spaces/base/tiny.yml",
            {
                "data.synth.ids": 48,
                "data.synth.per_id": 8,
                "train.stage1_epochs": 30,
                "train.epochs": 1,
                "train.stage1_cache": f"{tmp}/s1",
            },
        )
        miss = train(cfg, f"{tmp}/a", evaluate_on_test=False)
        hit = train(cfg, f"{tmp}/b", evaluate_on_test=False)
    assert (miss["stage1_cache"], hit["stage1_cache"]) == ("miss", "hit")
    saved = miss["stage1_seconds"] - hit["stage1_seconds"]
    line = (
        f"stage 1 (30 epochs, tiny-vit, {miss['num_classes']} train ids): "
        f"computed {miss['stage1_seconds']:.2f}s, "
        f"reused {hit['stage1_seconds']:.3f}s; {saved:.2f}s saved per trial that shares it"
    )
    emit("stage1_cache", line, {"miss_s": miss["stage1_seconds"], "hit_s": hit["stage1_seconds"]})


if __name__ == "__main__":
    main()
