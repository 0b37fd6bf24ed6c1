"""What every trial reads is prepared once by the driver, where every node sees it
(``search.assets``): trials read it there, read only, and never generate, pretrain or
download; a node that cannot see a file fails at once in one line; the tiny-synth towers
are the same bits whichever process builds them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml

from handreid.cache import NotPrepared, read_only
from handreid.models import pretrain_tiny, weights
from handreid.models.pretrain_tiny import PretrainSettings
from handreid.models.registry import TINY_BACKBONES, register_tiny_configs
from search.assets import MANIFEST, attached, check_visible, localize, prepare_assets
from search.rundir import SearchOptions
from search.space import load_space
from tests.conftest import REPO, TINY_YML

TINY = PretrainSettings(ids=6, per_id=1, steps=3, batch_size=8)
BUILD = """
import json, sys, torch
from handreid.models import pretrain_tiny
from handreid.models.pretrain_tiny import PretrainSettings
torch.set_num_threads(int(sys.argv[1]))
for backbone in pretrain_tiny.TINY_BACKBONES:
    print(pretrain_tiny.ensure_pretrained(backbone, PretrainSettings(**json.loads(sys.argv[2]))))
"""


def build_elsewhere(cache, threads: int) -> list[str]:
    """The towers as another node builds them: its own process, cache and thread count."""
    env = {**os.environ, "HANDREID_CACHE": str(cache), "OMP_NUM_THREADS": str(threads)}
    doc = json.dumps({**TINY.__dict__, "aspects": list(TINY.aspects)})
    out = subprocess.run(
        [sys.executable, "-c", BUILD, str(threads), doc],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-len(TINY_BACKBONES) :]


def test_tiny_synth_towers_are_identical_whichever_process_builds_them(tmp_path):
    node1, node2 = (build_elsewhere(tmp_path / f"node{i}", i + 1) for i in range(2))
    for backbone, path1, path2 in zip(TINY_BACKBONES, node1, node2):
        assert path1 != path2 and backbone in path1  # two caches, as on two nodes
        a, b = (torch.load(p, weights_only=True) for p in (path1, path2))
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (backbone, key)
        digests = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (path1, path2)}
        assert len(digests) == 1, backbone  # the files too, byte for byte


def small_space(tmp_path, **fixed):
    doc = {
        "base": str(TINY_YML.with_name("tiny_pretrained.yml")),
        "fixed": {
            "data.synth.ids": 8,
            "data.synth.per_id": 4,
            "model.backbone": "tiny-rn",
            **fixed,
        },
        "search": {"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-3}},
        "tune": {
            "num_samples": 1,
            "scheduler": {"type": "asha", "grace_period": 1, "max_epochs": 1},
        },
    }
    path = tmp_path / "space.yml"
    path.write_text(yaml.safe_dump(doc))
    return load_space(path)


@pytest.fixture
def driver_cache(tmp_path, monkeypatch):
    """The driver's own cache, with a 3-step tiny-synth pretraining."""
    monkeypatch.setattr(pretrain_tiny, "DEFAULT_SETTINGS", TINY)
    monkeypatch.setenv("HANDREID_CACHE", str(tmp_path / "driver-cache"))
    return tmp_path / "driver-cache"


def trial_cfg(space):
    return space.trial_config(
        {"optim.lr_visual": 1e-4},
        {"train.epochs": 1, "train.stage1_epochs": 1, "eval.n_splits": 1},
    )


def test_the_driver_prepares_once_and_trials_read_there_without_building(
    tmp_path, driver_cache, monkeypatch
):
    from handreid.train.trainer import train

    space = small_space(tmp_path)
    opts = SearchOptions(name="s", storage=str(tmp_path / "store"))
    location = prepare_assets(space, opts)
    assert location == str(tmp_path / "store" / "s" / "assets")
    manifest = json.loads((tmp_path / "store" / "s" / "assets" / MANIFEST).read_text())
    assert sorted(e.split("/")[0] for e in manifest["entries"]) == ["pretrained", "synth"]
    assert prepare_assets(space, opts) == location  # again (a resume): nothing rebuilt

    shutil.rmtree(driver_cache)  # the node's own cache: nothing in it
    monkeypatch.setenv("HANDREID_CACHE", str(tmp_path / "node-cache"))
    cfg = trial_cfg(space)
    with attached(location, cfg):
        result = train(cfg, tmp_path / "trial", evaluate_on_test=False)
    assert result["status"] == "done"
    assert not (tmp_path / "node-cache").exists() and not driver_cache.exists()


def test_a_trial_refuses_a_missing_input_in_one_line_without_building_it(tmp_path, driver_cache):
    space = small_space(tmp_path)
    opts = SearchOptions(name="s", storage=str(tmp_path / "store"))
    location = prepare_assets(space, opts)
    towers = pretrain_tiny.cache_file("tiny-rn").relative_to(driver_cache)
    (tmp_path / "store" / "s" / "assets" / towers).unlink()  # not visible on this node
    start = time.monotonic()
    with pytest.raises(NotPrepared) as err:
        with attached(location, trial_cfg(space)):
            pass
    line = str(err.value)
    assert "\n" not in line and str(towers) in line and "--storage" in line
    assert time.monotonic() - start < 5  # at once: nothing pretrained

    shutil.rmtree(tmp_path / "store" / "s" / "assets")  # a node that sees no storage at all
    with pytest.raises(NotPrepared, match=r"cannot see the run's inputs at .*manifest.json; "):
        with attached(location, trial_cfg(space)):
            pass


def test_inside_the_read_only_cache_nothing_is_generated_or_pretrained(tmp_path):
    from handreid.config import SynthConfig
    from handreid.data.build import synthetic_root

    with read_only(tmp_path, "change X"):
        with pytest.raises(NotPrepared, match="synthetic data.*; change X$"):
            synthetic_root(SynthConfig(ids=4, per_id=2))
        with pytest.raises(NotPrepared, match="tiny-synth weights of tiny-rn"):
            pretrain_tiny.ensure_pretrained("tiny-rn", TINY)
    assert list(tmp_path.iterdir()) == []


def test_a_trial_refuses_a_path_of_its_config_that_its_node_cannot_see(tmp_path):
    space = small_space(tmp_path, **{"data.root": str(tmp_path / "11k")})
    with pytest.raises(NotPrepared) as err:
        check_visible(trial_cfg(space))
    line = str(err.value)
    assert "\n" not in line
    assert f"cannot see {tmp_path / '11k' / 'HandInfo.csv'}" in line
    assert "change data.root (--data-root)" in line
    pretrained = {"data.root": None, "model.pretrained": str(tmp_path / "ViT-B-16.pt")}
    with pytest.raises(NotPrepared, match="ViT-B-16.pt: mount it .* change model.pretrained$"):
        check_visible(trial_cfg(small_space(tmp_path, **pretrained)))


def test_with_uri_storage_each_node_copies_the_assets_once(tmp_path, driver_cache, monkeypatch):
    space = small_space(tmp_path)
    opts = SearchOptions(name="s", storage=(tmp_path / "bucket").as_uri())
    location = prepare_assets(space, opts)
    assert location.startswith("file://") and (tmp_path / "bucket/s/assets" / MANIFEST).is_file()
    monkeypatch.setenv("HANDREID_CACHE", str(tmp_path / "node-cache"))
    local = localize(location)
    assert local.is_relative_to(tmp_path / "node-cache")
    copied = {p: p.stat().st_mtime_ns for p in local.rglob("*") if p.is_file()}
    assert len(copied) > 3
    assert localize(location) == local  # the second trial on the node copies nothing
    assert {p: p.stat().st_mtime_ns for p in local.rglob("*") if p.is_file()} == copied
    with attached(location, trial_cfg(space)):
        from handreid.data.build import resolve_root

        assert resolve_root(trial_cfg(space).data).is_relative_to(local)


@pytest.fixture
def fake_tag(monkeypatch):
    """A pretrained tag ``fake`` of tiny-vit that open_clip would download: counted."""
    calls = []

    register_tiny_configs()

    def download(name, tag, cache_dir, quick_gelu):
        calls.append(tag)
        torch.manual_seed(0)
        return weights._quiet_create(name, None, None, quick_gelu)

    monkeypatch.setattr(weights, "_download", download)
    monkeypatch.setattr(weights, "check_tag", lambda name, tag: None)
    monkeypatch.setattr(weights, "tag_quick_gelu", lambda name, tag: True)
    return calls


def test_pretrained_weights_are_fetched_once_and_trials_load_the_file(
    tmp_path, fake_tag, monkeypatch
):
    monkeypatch.setenv("HANDREID_CACHE", str(tmp_path / "driver"))
    path = weights.fetch_pretrained("tiny-vit", "fake")
    assert weights.fetch_pretrained("tiny-vit", "fake") == path and fake_tag == ["fake"]
    fetched = weights.build_clip("tiny-vit", "fake")  # the file, not a second download
    assert fake_tag == ["fake"]

    def no_network(*args):
        raise AssertionError("a trial downloaded")

    monkeypatch.setattr(weights, "_download", no_network)
    with read_only(tmp_path / "driver", "fix it"):
        clip = weights.build_clip("tiny-vit", "fake")
        state = fetched.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in clip.state_dict().items())
    with read_only(tmp_path / "elsewhere", "fix it"):
        with pytest.raises(NotPrepared, match=r"'fake' weights of tiny-vit is not at .*; fix it"):
            weights.build_clip("tiny-vit", "fake")


def test_without_network_and_without_a_file_one_line_says_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kw):
        raise OSError("no network")

    monkeypatch.setenv("HANDREID_CACHE", str(tmp_path))
    monkeypatch.setattr(weights, "_quiet_create", offline)
    monkeypatch.setattr(weights, "check_tag", lambda name, tag: None)
    monkeypatch.setattr(weights, "tag_quick_gelu", lambda name, tag: True)
    with pytest.raises(weights.HandReIDError) as err:
        weights.fetch_pretrained("ViT-B-16", "openai")
    line = str(err.value)
    assert "\n" not in line and "--set model.pretrained=/path/to/ViT-B-16-openai.pt" in line
