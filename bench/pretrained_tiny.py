"""Does pretraining the tiny CLIPs on synthetic hands (``model.pretrained: tiny-synth``) help
the demo? On the demo's data (spaces/demo.yml), per backbone, with the demo's start point:

- the pretraining's wall time (both towers, first use);
- test mAP (10 splits) of random init untrained, pretrained zero-shot (frozen towers: the
  retrieval feature is the image tower's, which stage 1 does not change), random init
  fine-tuned and pretrained fine-tuned (the start point's settings, the space's epochs);
- over ``--configs`` configurations drawn from the demo space, trained to the space's last
  epoch with each init, the Spearman rank correlation of the best validation mAP up to each
  candidate rung (epoch r) with the final best (as ``bench.tabular describe``): what the
  demo's ASHA settings are chosen from.

    python -m bench.pretrained_tiny [--configs 24] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit
from bench.tabular import _train_one, sample_configs

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "spaces" / "demo.yml"
RUNGS = (1, 2, 3, 4, 5, 6, 7, 8, 9)


def init_overrides() -> dict[str, dict]:
    """Per init, what turns the demo's configuration into that init's: the same settings
    (the trial's, or the start point's learning rates) from random weights or pretrained."""
    return {
        "random": {"model.pretrained": "none"},
        "pretrained": {"model.pretrained": "tiny-synth"},
    }


def pretrain_seconds() -> dict[str, float]:
    from handreid.models.pretrain_tiny import TINY_BACKBONES, ensure_pretrained

    seconds = {}
    for backbone in TINY_BACKBONES:
        start = time.perf_counter()
        ensure_pretrained(backbone)
        seconds[backbone] = time.perf_counter() - start
    return seconds


def test_maps(tmp: str, seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> dict[str, dict[str, float]]:
    """Test mAP of the four variants for each backbone's demo start point; fine-tuning is
    repeated over ``seeds`` (train.seed), mean and standard deviation reported."""
    from handreid.train.trainer import Trainer, evaluate_test, train
    from search.space import load_space

    space = load_space(SPACE)
    out = {}
    for point in space.start_points:
        backbone = point["model.backbone"]
        res = {}
        for init, extra in init_overrides().items():
            flat = {**extra, "train.stage1_cache": f"{tmp}/s1"}
            cfg = space.trial_config(point, flat)
            run = f"{tmp}/{backbone}-{init}"
            untrained = Trainer(cfg, f"{run}-untrained")
            untrained.setup()
            untrained.setup_stage2()
            untrained.save_best(None)
            name = "untrained" if init == "random" else "zero_shot"
            res[f"{init}_{name}"] = evaluate_test(cfg, f"{run}-untrained", trainer=untrained)["mAP"]
            tuned = [
                train(space.trial_config(point, {**flat, "train.seed": seed}), f"{run}-{seed}")[
                    "test"
                ]["mAP"]
                for seed in seeds
            ]
            res[f"{init}_finetuned"] = float(np.mean(tuned))
            res[f"{init}_finetuned_std"] = float(np.std(tuned))
        out[backbone] = res
    return out


def curves(configs: list[dict], tmp: str, workers: int) -> list[dict]:
    """Every configuration trained with each init (stage-1 caches warmed first, in order)."""
    # lr_visual is searched, so the trial's value wins over the base's
    inits = init_overrides()
    jobs = [
        (i, c, tmp, {"model.pretrained": extra["model.pretrained"]})
        for extra in inits.values()
        for i, c in enumerate(configs)
    ]
    warm = {}
    for job in jobs:
        warm.setdefault((job[1]["model.backbone"], job[3]["model.pretrained"]), job)
    for index, (_, params, _, extra) in enumerate(warm.values()):
        _train_one((-1 - index, params, tmp, extra))
    with mp.get_context("spawn").Pool(workers) as pool:
        rows = pool.map(_train_one, jobs)
    for row, job in zip(rows, jobs):
        row["init"] = job[3]["model.pretrained"]
    return rows


def spearman(rows: list[dict]) -> dict[str, float]:
    from scipy.stats import spearmanr

    final = np.array([max(r["val_mAP"]) for r in rows])
    top = int(np.argmax(final))
    stats = {"rows": len(rows), "final_median": float(np.median(final))}
    for rung in RUNGS:
        early = np.array([max(r["val_mAP"][:rung]) for r in rows])
        stats[f"spearman_epoch{rung}"] = float(spearmanr(early, final).statistic)
        stats[f"best_row_rank_epoch{rung}"] = int((early > early[top]).sum()) + 1
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as the curves' workers and a demo trial (1 CPU each)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HANDREID_CACHE"] = tmp
        seconds = pretrain_seconds()
        maps = test_maps(tmp)
        rows = curves(sample_configs(args.configs), tmp, args.workers)
    corr = {}
    for init in ("none", "tiny-synth"):
        for backbone in ("all", *maps):
            sel = [r for r in rows if r["init"] == init]
            sel = [r for r in sel if backbone in ("all", r["params"]["model.backbone"])]
            corr[f"{init}/{backbone}"] = spearman(sel)
    parts = [f"pretraining {seconds['tiny-vit']:.0f}+{seconds['tiny-rn']:.0f} s"]
    for backbone, res in maps.items():
        parts.append(
            f"{backbone} test mAP random {res['random_untrained']:.1f}, zero-shot "
            f"{res['pretrained_zero_shot']:.1f}, fine-tuned {res['random_finetuned']:.1f} -> "
            f"{res['pretrained_finetuned']:.1f}±{res['pretrained_finetuned_std']:.1f}"
        )
    for key, st in corr.items():
        parts.append(
            f"{key} ({st['rows']} configs, median final {st['final_median']:.1f}) Spearman "
            + ", ".join(f"e{r} {st[f'spearman_epoch{r}']:.2f}" for r in RUNGS)
            + ", best row ranks "
            + ", ".join(f"e{r} {st[f'best_row_rank_epoch{r}']}" for r in RUNGS)
        )
    emit(
        "pretrained_tiny",
        "; ".join(parts),
        {"pretrain_seconds": seconds, "test_mAP": maps, "spearman": corr, "curves": rows},
    )


if __name__ == "__main__":
    main()
