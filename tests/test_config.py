from __future__ import annotations

import dataclasses

import pytest
import yaml

from handreid.config import (
    Config,
    apply_overrides,
    dump_config,
    flatten,
    load_config,
    parse_set_args,
    to_dict,
)
from handreid.errors import ConfigError
from tests.conftest import TINY_YML


def test_defaults_are_valid_and_frozen():
    cfg = Config()
    assert cfg.model.backbone == "ViT-B-16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.seed = 3  # type: ignore[misc]


def test_yaml_round_trip(tmp_path):
    cfg = load_config(TINY_YML, {"loss.arcface.margin": 0.25})
    path = tmp_path / "resolved.yml"
    dump_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["loss"]["arcface"]["margin"] == 0.25


def test_overrides_replace_only_their_key():
    cfg = load_config(TINY_YML)
    new = apply_overrides(cfg, {"loss.arcface.margin": 0.35, "optim.scheduler": "onecycle"})
    assert new.loss.arcface.margin == 0.35
    assert new.optim.scheduler == "onecycle"
    assert new.loss.arcface.scale == cfg.loss.arcface.scale
    changed = {k for k, v in flatten(to_dict(new)).items() if flatten(to_dict(cfg))[k] != v}
    assert changed == {"loss.arcface.margin", "optim.scheduler"}


def test_flat_dict_of_trial_parameters():
    trial = {"loss.center.use": False, "model.unfreeze_blocks": 1, "optim.lr_visual": 3e-4}
    cfg = apply_overrides(load_config(TINY_YML), trial)
    assert (cfg.loss.center.use, cfg.model.unfreeze_blocks, cfg.optim.lr_visual) == (False, 1, 3e-4)


def test_set_args_parse_yaml_values():
    assert parse_set_args(["a.b=0.3", "c=[x, y]", "d=true", "e=1e-4"]) == {
        "a.b": 0.3,
        "c": ["x", "y"],
        "d": True,
        "e": "1e-4",
    }
    # YAML 1.1 reads 1e-4 as a string; float fields accept it
    assert apply_overrides(Config(), {"optim.lr_visual": "1e-4"}).optim.lr_visual == 1e-4


def test_ints_are_accepted_for_floats_but_not_the_reverse():
    assert apply_overrides(Config(), {"loss.arcface.scale": 30}).loss.arcface.scale == 30.0
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        apply_overrides(Config(), {"train.epochs": 2.5})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim.lr_visual": 0.0}, r"optim\.lr_visual: must be > 0"),
        ({"optim.lr_prompt": -1e-3}, r"optim\.lr_prompt: must be > 0"),
        ({"loss.arcface.margin": -0.1}, r"loss\.arcface\.margin: must be in"),
        ({"loss.triplet.margin": -0.1}, r"loss\.triplet\.margin: must be >= 0"),
        ({"loss.center.weight": -1.0}, r"loss\.center\.weight: must be >= 0"),
        (
            {"train.batch_size": 30, "train.num_instances": 4},
            r"train\.batch_size: must be a multiple",
        ),
        (
            {"model.unfreeze_blocks": 13},
            r"model\.unfreeze_blocks: must be -1 .* up to 12 for ViT-B-16",
        ),
        ({"model.backbone": "RN50", "model.unfreeze_blocks": 5}, r"up to 4 for RN50"),
        ({"model.unfreeze_blocks": -2}, r"model\.unfreeze_blocks"),
        ({"train.mixed_precision": "fp8"}, r"train\.mixed_precision: must be one of 'no', 'bf16'"),
        ({"loss.id.use": "on"}, r"loss\.id\.use: expected true or false, got 'on'"),
        ({"model.backbone": "ViT-Q-99"}, r"model\.backbone: unknown backbone 'ViT-Q-99'"),
        ({"optim.lr_visual": "fast"}, r"optim\.lr_visual: expected a number"),
        ({"data.aspect": "dorsal"}, r"data\.aspect: must be one of 'dorsal_r'"),
        (
            {"model.templates": ["A photo of X X hand."]},
            r"exactly n_ctx=4 'X' placeholders \(found 2\)",
        ),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), overrides)


def test_every_loss_off_is_rejected():
    off = {f"loss.{n}.use": False for n in ("id", "arcface", "supcon", "triplet", "center")}
    with pytest.raises(ConfigError, match="every loss is switched off"):
        apply_overrides(Config(), off)
    zero = {**{k: False for k in list(off)[1:]}, "loss.id.weight": 0.0}
    with pytest.raises(ConfigError, match="every loss is switched off"):
        apply_overrides(Config(), zero)


def test_unknown_keys_get_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("loss:\n  arcface:\n    margni: 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert (
        str(info.value)
        == f"{bad}: loss.arcface.margni: unknown key 'margni'; did you mean 'margin'?"
    )
    with pytest.raises(
        ConfigError, match=r"optim\.lr_visul: not a config key; did you mean 'lr_visual'"
    ):
        apply_overrides(Config(), {"optim.lr_visul": 1e-4})
    with pytest.raises(ConfigError, match="is a section, not a value"):
        apply_overrides(Config(), {"loss.arcface": 1})


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.yml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yml: malformed YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yml")
    notmap = tmp_path / "list.yml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(notmap)


@pytest.mark.parametrize(
    "content, args, expected",
    [
        ("loss:\n  arcface:\n    margin: -1\n", [], "loss.arcface.margin: must be in"),
        ("trian: {}\n", [], "unknown key 'trian'; did you mean 'train'?"),
        ("{}\n", ["--set", "train.batch_size=30"], "train.batch_size: must be a multiple"),
        ("{}\n", ["--set", "nonsense"], "--set expects key=value"),
    ],
)
def test_cli_bad_config_is_one_line(tmp_path, capsys, content, args, expected):
    from handreid.train.cli import main

    path = tmp_path / "cfg.yml"
    path.write_text(content)
    rc = main(["--config", str(path), *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "Traceback" not in err
    assert expected in err


def test_base_configs_carry_the_seed_best_settings():
    from tests.conftest import REPO

    vit = load_config(REPO / "spaces" / "base" / "vitb16.yml")
    assert (vit.model.backbone, vit.loss.arcface.scale, vit.loss.arcface.margin) == (
        "ViT-B-16",
        20,
        0.3,
    )
    assert vit.optim.scheduler == "onecycle" and len(vit.loss.enabled()) == 5
    rn = load_config(REPO / "spaces" / "base" / "rn50.yml")
    assert (rn.model.backbone, rn.loss.arcface.scale, rn.loss.arcface.margin) == ("RN50", 35, 0.4)
    assert not rn.loss.triplet.use and rn.loss.center.weight == 3e-4
    assert rn.optim.lr_visual == 7e-5 and rn.optim.scheduler == "cosine"
    for cfg in (vit, rn):  # the research code's placeholders are filled: 4 X's for n_ctx=4
        assert cfg.model.n_ctx == 4 and cfg.data.split == "standard"
