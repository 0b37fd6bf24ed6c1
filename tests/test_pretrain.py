"""The tiny CLIPs pretrained on synthetic hands (``model.pretrained: tiny-synth``)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from handreid.data.synth import caption, draw_identity, hands, render
from handreid.models import pretrain_tiny
from handreid.models.pretrain_tiny import (
    PRETRAIN_FIRST_ID,
    PretrainSettings,
    build_corpus,
    pretrain,
)
from handreid.models.registry import SYNTH_PRETRAINED, TINY_BACKBONES
from handreid.models.weights import build_clip

REPO = Path(__file__).resolve().parents[1]
TINY = PretrainSettings(ids=6, per_id=1, steps=3, batch_size=8)


@pytest.fixture
def tiny_default(monkeypatch, tmp_path):
    """``model.pretrained: tiny-synth`` means a 3-step pretraining, cached under tmp_path."""
    monkeypatch.setattr(pretrain_tiny, "DEFAULT_SETTINGS", TINY)
    monkeypatch.setenv("HANDREID_CACHE", str(tmp_path))
    return TINY


def test_pretraining_is_deterministic_for_a_seed():
    threads = torch.get_num_threads()
    try:  # neither the caller's random state nor its thread count may matter
        torch.manual_seed(123)
        torch.set_num_threads(1)
        a = pretrain("tiny-rn", TINY)
        torch.manual_seed(456)
        torch.set_num_threads(3)
        b = pretrain("tiny-rn", TINY)
    finally:
        torch.set_num_threads(threads)
    other = pretrain("tiny-rn", dataclasses.replace(TINY, seed=1))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
def test_marker_builds_once_and_loads_every_weight(backbone, tiny_default, caplog):
    from open_clip.transformer import QuickGELU

    from handreid.models.model import build_model

    with caplog.at_level(logging.INFO, logger="handreid.models.pretrain_tiny"):
        clip = build_clip(backbone, SYNTH_PRETRAINED)
    assert f"pretraining {backbone}" in caplog.text
    path = pretrain_tiny.cache_file(backbone)
    assert (
        path.is_file()
        and str(tiny_default.seed)
        and path.is_relative_to(pretrain_tiny.cache_file(backbone).parent)
    )
    state = torch.load(path, weights_only=True)
    own = clip.state_dict()
    weights = {
        k: v
        for k, v in state.items()
        if k not in ("input_resolution", "context_length", "vocab_size")
    }
    assert weights.keys() == own.keys()  # every weight, nothing left at random init
    assert all(torch.equal(own[k], weights[k]) for k in own)
    assert any(isinstance(m, QuickGELU) for m in clip.modules())  # as OpenAI's weights load
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="handreid.models.pretrain_tiny"):
        model = build_model(backbone, 3, pretrained=SYNTH_PRETRAINED)  # the trainer's path
    assert "pretraining" not in caplog.text  # cached
    visual = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    assert all(torch.equal(v, weights[k]) for k, v in visual.items())


def test_pretraining_identities_are_disjoint_from_every_dataset():
    from handreid.config import load_config
    from search.space import load_space

    # every pretraining identity, one small image each (build_corpus draws from the same)
    settings = dataclasses.replace(
        pretrain_tiny.DEFAULT_SETTINGS, per_id=1, aspects=("dorsal_r",), width=16, height=16
    )
    drawn = list(pretrain_tiny.pretraining_hands(settings))
    assert min(int(h.ident.pid) for h in drawn) >= PRETRAIN_FIRST_ID
    synths = [load_space(REPO / "spaces" / "demo.yml").base.data.synth]
    synths += [
        load_config(REPO / "spaces" / "base" / n).data.synth
        for n in ("tiny.yml", "tiny_pretrained.yml")
    ]
    assert max(s.ids for s in synths) < PRETRAIN_FIRST_ID  # dataset pids count from 0

    def shapes(drawn) -> set[tuple]:
        return {(round(h.ident.palm_w, 9), round(h.ident.thumb_angle, 9)) for h in drawn}

    pretraining = shapes(drawn)
    for seed in {s.seed for s in synths} | {0, 1, 2, 3}:  # the demo's, the tests' seeds
        datasets = shapes(hands(ids=100, per_id=1, size=(16, 16), seed=seed))
        assert not pretraining & datasets, f"seed {seed}"


def _diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, float) - np.asarray(b, float)).sum(-1)


def test_captions_say_what_is_drawn():
    ident = draw_identity(np.random.default_rng(0), "0000001")
    spots = np.array([[0.2, 0.1, 0.09], [-0.3, 0.4, 0.08], [0.5, -0.2, 0.1], [0.0, 0.6, 0.09]])
    ident = dataclasses.replace(  # an older man's wrinkles and spots, whatever was drawn
        ident, gender="male", age=62, skin_name="dark", nail_polish=1, wrinkles=2, age_spots=spots
    )

    def draw(aspect="dorsal_r", accessory=False, **change):
        return np.asarray(
            render(
                dataclasses.replace(ident, **change),
                aspect,
                (128, 96),
                np.random.default_rng(5),
                accessory,
            )
        )

    base = draw()
    ring = draw(accessory=True)
    changed = _diff(base, ring) > 60
    assert changed.sum() > 15  # a visible ring
    assert (ring[changed].max(-1) > 170).mean() > 0.5  # bright metal on dark skin
    assert (_diff(base, draw(nail_polish=0)) > 60).sum() > 20  # polish is visible on the back
    palm = draw("palmar_r")
    assert np.array_equal(palm, draw("palmar_r", nail_polish=0))  # and not on the palm
    assert (_diff(base, draw(wrinkles=0, age_spots=None)) > 30).sum() > 20  # age shows
    assert base.mean() < draw(skin=np.array([236.0, 200, 180])).mean()  # skin tone shows

    row = hands(ids=1, per_id=1, size=(32, 24), seed=0).__next__().row()
    row.update(gender="male", age=62, skinColor="dark", accessories=1, nailPolish=1)
    assert caption(row) == "dorsal right hand of an older man, dark skin, a ring, nail polish."
    row.update(
        gender="female", age=25, skinColor="very fair", accessories=0, aspectOfHand="palmar left"
    )
    assert caption(row) == "palmar left hand of a young woman, very fair skin, no ring."


def test_captions_fit_the_tiny_text_tower():
    import open_clip

    from handreid.models.registry import register_tiny_configs

    register_tiny_configs()
    longest = "dorsal right hand of a middle-aged woman, very fair skin, no ring, bare nails."
    tokens = open_clip.get_tokenizer("tiny-vit")([longest])[0]
    assert (tokens != 0).sum() < tokens.numel()  # not truncated


def test_corpus_captions_follow_the_rows():
    corpus = build_corpus(TINY, (64, 64), lambda texts: torch.zeros(len(texts)))
    drawn = list(pretrain_tiny.pretraining_hands(TINY))
    assert corpus.captions == [caption(h.row()) for h in drawn]
    assert len(set(corpus.captions)) > 5 and corpus.pids == [h.ident.pid for h in drawn]
    ids = corpus.caption_ids.tolist()
    assert all(
        (ids[i] == ids[j]) == (corpus.captions[i] == corpus.captions[j])
        for i in range(len(ids))
        for j in range(len(ids))
    )


def test_data_cli_pretrain(tiny_default, capsys):
    from handreid.data.cli import main

    assert main(["pretrain", "--backbone", "tiny-vit"]) == 0
    out = capsys.readouterr().out
    assert str(pretrain_tiny.cache_file("tiny-vit")) in out and "model.pretrained=tiny-synth" in out
    assert main(["pretrain", "--backbone", "tiny-vit", "--steps", "0"]) == 2
    assert "error: --steps must be >= 1" in capsys.readouterr().err


def test_prepare_builds_what_a_search_may_draw(tiny_default):
    assert pretrain_tiny.prepare("none", TINY_BACKBONES) == []
    paths = pretrain_tiny.prepare(SYNTH_PRETRAINED, ["tiny-vit", "tiny-vit"])
    assert paths == [pretrain_tiny.cache_file("tiny-vit")] and paths[0].is_file()


def test_a_dataset_cached_by_another_renderer_is_not_reused(tmp_path, monkeypatch):
    """The cache key of a generated dataset includes the renderer's version."""
    from handreid.config import SynthConfig
    from handreid.data import build

    monkeypatch.setenv("HANDREID_CACHE", str(tmp_path))
    cfg = SynthConfig(ids=4, per_id=2)
    now = build.synthetic_root(cfg)
    monkeypatch.setattr(build, "RENDER_VERSION", build.RENDER_VERSION - 1)
    assert build.synthetic_root(cfg) != now


def test_prepare_builds_missing_backbones_in_parallel_as_one_would_alone(tiny_default, caplog):
    """Both towers at once (one process each, on a machine with 2+ cores): the same files,
    bit for bit, as a build in this process."""
    if (pretrain_tiny.os.cpu_count() or 1) < 2:
        pytest.skip("one core: prepare builds one backbone at a time")
    with caplog.at_level(logging.INFO, logger="handreid.models.pretrain_tiny"):
        paths = pretrain_tiny.prepare(SYNTH_PRETRAINED, list(TINY_BACKBONES))
    assert "in parallel" in caplog.text
    assert paths == [pretrain_tiny.cache_file(b) for b in TINY_BACKBONES]
    for backbone, path in zip(TINY_BACKBONES, paths):
        built = torch.load(path, weights_only=True)
        alone = pretrain(backbone, TINY, progress=False)
        assert built.keys() == alone.keys()
        assert all(torch.equal(built[k], alone[k]) for k in alone)


def test_the_log_names_the_synthetic_weights_not_openai(tiny_default, caplog):
    """tiny-synth loads through OpenAI's file format, but the log must not call its towers,
    pretrained here on synthetic hands, OpenAI's weights."""
    build_clip("tiny-rn", SYNTH_PRETRAINED)  # built (3 steps), then loaded
    with caplog.at_level(logging.INFO, logger="handreid.models.weights"):
        build_clip("tiny-rn", SYNTH_PRETRAINED)
    said = [r.getMessage() for r in caplog.records if r.name == "handreid.models.weights"]
    assert said and all("OpenAI" not in line for line in said), said
    assert f"loading the {SYNTH_PRETRAINED} weights in " in said[0]
