"""Trials packed by memory: ``--gpus-per-trial auto`` (the real spaces' default) gives each
trial the share of a GPU its configuration's memory estimate needs, through Tune's
per-config resource request."""

from __future__ import annotations

import pytest

from handreid.train.memory import GiB, MemoryEstimate, MemoryInputs
from search import resources
from tests.conftest import REPO, small_space


def stub_estimates(monkeypatch, gib_by_depth: dict[int, float]) -> None:
    """Estimates without building models: the peak by unfrozen depth."""

    def fake(items):
        out = {}
        for i in items:
            peak = int(gib_by_depth.get(i.unfreeze_blocks, 1.0) * GiB)
            out[i] = MemoryEstimate(
                i, weights=peak, gradients=0, optimiser=0, activations=0, stage1_activations=0
            )
        return out

    monkeypatch.setattr("handreid.train.memory.estimate_many", fake)


def test_the_real_spaces_default_to_auto_and_the_flag_takes_it():
    from search.cli import build_parser
    from search.space import load_space

    for name in ("vitb16", "rn50", "compare"):
        assert load_space(REPO / "spaces" / f"{name}.yml").tune.gpus_per_trial == "auto"
    args = build_parser().parse_args(["--space", "s.yml", "--gpus-per-trial", "auto"])
    assert args.gpus_per_trial == "auto"
    assert build_parser().parse_args(["--gpus-per-trial", "0.25"]).gpus_per_trial == 0.25
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--gpus-per-trial", "some"])


def test_every_memory_configuration_a_space_can_draw_is_enumerated():
    from search.space import load_space

    compare = load_space(REPO / "spaces" / "compare.yml")
    combos = resources.memory_params(compare)
    vit = [c for c in combos if c["model.backbone"] == "ViT-B-16"]
    rn = [c for c in combos if c["model.backbone"] == "RN50"]
    assert len(vit) == 8 and len(rn) == 5  # each backbone's own unfreeze_blocks branch
    assert {c["model.unfreeze_blocks (model.backbone=RN50)"] for c in rn} == {1, 2, 3, 4, -1}
    assert len(resources.memory_params(load_space(REPO / "spaces" / "vitb16.yml"))) == 8


def test_shares_follow_each_configuration_and_tune_asks_for_them(tmp_path, monkeypatch):
    from ray import tune
    from ray.tune.trainable.function_trainable import wrap_function

    from search.launch import trial_resources
    from search.rundir import SearchOptions
    from search.space import load_space

    space = load_space(
        small_space(
            tmp_path,
            num_samples=2,
            fixed={"model.backbone": "tiny-vit"},
            search={"model.unfreeze_blocks": {"type": "categorical", "choices": [1, -1]}},
            tune={"resources": {"cpus": 1, "gpus": "auto"}},
        )
    )
    stub_estimates(monkeypatch, {1: 3.0, -1: 7.0})  # reserved: peak x 1.25 + 1 GiB
    shares = resources.gpu_shares(space, 1.0, int(40 * GiB))
    assert sorted(shares.shares.values()) == [0.125, 0.25]  # 40 // 4.75 and 40 // 9.75
    opts = SearchOptions(name="a", storage=str(tmp_path), gpu_memory=40.0)
    assert trial_resources(space, opts) == (1.0, 0.25)  # eval tasks: the largest share

    trainable = wrap_function(tune.with_resources(lambda config: None, shares))
    search_trial = trainable.default_resource_request({"model.unfreeze_blocks": 1})
    assert search_trial.required_resources == {"CPU": 1.0, "GPU": 0.125}
    confirm_run = {"config_id": "3", "train_seed": 1, "params": {"model.unfreeze_blocks": -1}}
    assert trainable.default_resource_request(confirm_run).required_resources["GPU"] == 0.25


def test_a_configuration_no_gpu_holds_is_refused_in_one_line(tmp_path, monkeypatch):
    from handreid.errors import HandReIDError
    from search.space import load_space

    lr = {"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-3}}
    space = load_space(
        small_space(tmp_path, num_samples=1, fixed={"model.backbone": "tiny-vit"}, search=lr)
    )
    stub_estimates(monkeypatch, {-1: 30.0})
    with pytest.raises(HandReIDError) as err:
        resources.gpu_shares(space, 1.0, int(24 * GiB))
    assert "tiny-vit (unfreeze all, batch 16) needs 38.5 GiB" in str(err.value)
    assert "more than a GPU's 24.0 GiB" in str(err.value) and "\n" not in str(err.value)


def test_a_real_estimate_packs_tiny_trials(tmp_path):
    from search.space import load_space

    lr = {"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-3}}
    space = load_space(
        small_space(tmp_path, num_samples=1, fixed={"model.backbone": "tiny-rn"}, search=lr)
    )
    shares = resources.gpu_shares(space, 1.0, int(8 * GiB))
    (inputs,) = shares.shares
    assert inputs == MemoryInputs(
        "tiny-rn", batch_size=16, stage1_batch_size=32, mixed_precision="no"
    )
    assert shares.largest == 0.1428  # 1/7: the CUDA context dominates a tiny trial


@pytest.mark.slow
def test_auto_on_a_cluster_without_gpus_is_refused_before_any_trial(ray_local, tmp_path, capsys):
    from search.cli import main

    space = small_space(tmp_path, num_samples=1, max_epochs=1)
    args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--quiet"]
    assert main([*args, "--gpus-per-trial", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --gpus-per-trial auto: the cluster has no GPUs; pass --gpus-per-trial 0 to "
        "train on CPUs"
    )
    assert not (tmp_path / "runs").exists()
