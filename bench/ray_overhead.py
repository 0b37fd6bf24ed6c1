"""Ray overhead: one tiny configuration trained standalone versus as a one-trial search,
and how many trivial trials per minute the search engine turns over.

    python -m bench.ray_overhead
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from bench.common import Timer, emit

REPO = Path(__file__).resolve().parents[1]
FIXED = {
    "data.synth.ids": 32,
    "data.synth.per_id": 6,
    "train.stage1_epochs": 3,
    "train.epochs": 8,
    "train.patience": 0,
}


def standalone(tmp: str) -> float:
    from handreid.config import load_config
    from handreid.train.trainer import train

    cfg = load_config(REPO / "spaces/base/tiny.yml", {**FIXED, "train.stage1_cache": f"{tmp}/s1a"})
    with Timer() as t:
        train(cfg, f"{tmp}/standalone", evaluate_on_test=False)
    return t.seconds


def one_trial_search(tmp: str) -> float:
    from search.driver import run_search
    from search.rundir import SearchOptions
    from search.space import load_space

    space = Path(tmp) / "one.yml"
    space.write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "spaces/base/tiny.yml"),
                "fixed": FIXED,
                "search": {"optim.scheduler": {"type": "categorical", "choices": ["cosine"]}},
                "tune": {
                    "num_samples": 1,
                    "top_k": 0,
                    "confirm": {"seeds": 0},
                    "max_concurrent": 1,
                    "scheduler": {"grace_period": 8, "max_epochs": 8},
                },
            }
        )
    )
    with Timer() as t:
        run_search(load_space(space), SearchOptions(name="one", storage=f"{tmp}/runs", verbose=0))
    return t.seconds


def trivial_trials(tmp: str, n: int = 60) -> float:
    from ray import tune

    def trainable(config):
        tune.report({"score": config["x"]})

    tuner = tune.Tuner(
        trainable,
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(num_samples=n, metric="score", mode="max"),
        run_config=tune.RunConfig(storage_path=f"{tmp}/trivial", verbose=0),
    )
    with Timer() as t:
        tuner.fit()
    return n / t.seconds * 60


def main() -> None:
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HANDREID_CACHE"] = tmp
        from handreid.config import load_config
        from handreid.data.build import synthetic_root

        synthetic_root(load_config(REPO / "spaces/base/tiny.yml", FIXED).data.synth)
        alone = standalone(tmp)
        with Timer() as init:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        searched = one_trial_search(tmp)
        per_minute = trivial_trials(tmp)
        ray.shutdown()
    line = (
        f"tiny config (8 epochs): standalone {alone:.1f}s, one-trial search {searched:.1f}s "
        f"({searched / alone:.2f}x; + {init.seconds:.1f}s ray.init); trivial trials: "
        f"{per_minute:.0f}/min"
    )
    emit(
        "ray_overhead",
        line,
        {
            "standalone_s": alone,
            "one_trial_search_s": searched,
            "ray_init_s": init.seconds,
            "ratio": searched / alone,
            "trivial_trials_per_min": per_minute,
        },
    )


if __name__ == "__main__":
    main()
