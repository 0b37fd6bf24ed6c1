"""Path-valued config fields in a search: made absolute before any trial starts (Ray runs
each trial in its own folder), and a missing input refused there, in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import small_space


def test_path_fields_are_found_from_their_metadata():
    from handreid.config import path_keys

    assert path_keys() == {
        "data.root": "input",
        "data.prepared": "input",
        "model.pretrained": "input_or_tag",
        "model.cache_dir": "cache",
        "train.stage1_cache": "cache",
    }


def test_relative_paths_become_absolute_and_tags_stay(tmp_path, monkeypatch):
    from handreid.config import absolute_paths, load_config, missing_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        overrides={
            "model.backbone": "tiny-vit",
            "model.pretrained": "weights/w.pt",
            "data.prepared": "prep",
            "train.stage1_cache": "~/s1",
        }
    )
    cfg = absolute_paths(cfg)
    assert cfg.model.pretrained == str(tmp_path / "weights" / "w.pt")
    assert cfg.data.prepared == str(tmp_path / "prep")
    assert cfg.train.stage1_cache == str(Path("~/s1").expanduser())
    assert cfg.data.root is None and cfg.model.cache_dir is None
    assert missing_paths(cfg) == [
        f"data.prepared: {tmp_path / 'prep'} does not exist",
        f"model.pretrained: {tmp_path / 'weights' / 'w.pt'} does not exist",
    ]  # the caches are made when first used
    tagged = absolute_paths(load_config(overrides={"model.pretrained": "openai"}))
    assert tagged.model.pretrained == "openai" and missing_paths(tagged) == []


def test_a_space_makes_set_and_fixed_paths_absolute(tmp_path, monkeypatch):
    from search.space import load_space

    space_file = small_space(tmp_path, num_samples=1, fixed={"data.prepared": "prep"})
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    space = load_space(space_file, {"model.pretrained": "w.pt"})
    cfg = space.trial_config({})
    assert cfg.data.prepared == str(elsewhere / "prep")
    assert cfg.model.pretrained == str(elsewhere / "w.pt")
    assert space.fixed["model.pretrained"] == str(elsewhere / "w.pt")  # as search.json records


def test_a_missing_input_is_refused_in_one_line_before_ray(tmp_path, monkeypatch, capsys):
    from search.cli import main

    space = small_space(tmp_path, num_samples=1, max_epochs=1)
    monkeypatch.chdir(tmp_path)
    args = ["--space", str(space), "--storage", "runs", "--quiet"]
    assert main([*args, "--set", "model.pretrained=missing/tiny.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {space}: model.pretrained: {tmp_path / 'missing' / 'tiny.pt'} does not exist"
    )
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written
    import ray

    assert not ray.is_initialized()


@pytest.mark.slow
def test_relative_pretrained_and_prepared_work_inside_a_trial(tmp_path, monkeypatch, capsys):
    """Ray runs the trial in its own folder: relative paths from the command line must
    reach it absolute (before, the trial failed reading them)."""
    import ray

    from bench.openai_weights import write_openai_weights
    from handreid.data.synth import generate
    from search.cli import main

    generate(tmp_path / "prep", ids=16, per_id=4, size=(64, 48), seed=3)  # an 11k layout
    write_openai_weights("tiny-vit", tmp_path / "weights" / "tiny-vit.pt")
    space = small_space(
        tmp_path,
        num_samples=1,
        max_epochs=1,
        fixed={"model.backbone": "tiny-vit", "data.split": "random"},
        search={"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
        tune={"max_failures": 0},
    )
    monkeypatch.chdir(tmp_path)
    sets = ["model.pretrained=weights/tiny-vit.pt", "data.prepared=prep"]
    args = ["--space", str(space), "--storage", "runs", "--name", "rel", "--quiet"]
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        code = main([*args, *(a for s in sets for a in ("--set", s))])
    finally:
        ray.shutdown()
    assert code == 0, capsys.readouterr().err
    config = (tmp_path / "runs" / "rel" / "best" / "tiny-vit" / "config.yaml").read_text()
    assert f"pretrained: {tmp_path / 'weights' / 'tiny-vit.pt'}" in config
    assert f"prepared: {tmp_path / 'prep'}" in config
