"""Space parsing and conversion, without Ray."""

from __future__ import annotations

import sys

import optuna
import pytest
import yaml

from handreid.errors import ConfigError
from search.space import config_key, load_space
from tests.conftest import CENTER_LOSS, REPO, TINY_YML

optuna.logging.set_verbosity(optuna.logging.WARNING)


class RecordingTrial:
    """Stands in for an Optuna trial: records each suggest call and returns a fixed value."""

    def __init__(self, values=None):
        self.calls, self.values = [], values or {}

    def _pick(self, name, default):
        return self.values.get(name, default)

    def suggest_float(self, name, low, high, log=False, step=None):
        self.calls.append(("float", name, low, high, log))
        return self._pick(name, low)

    def suggest_int(self, name, low, high, log=False, step=1):
        self.calls.append(("int", name, low, high, log))
        return self._pick(name, high)

    def suggest_categorical(self, name, choices):
        self.calls.append(("categorical", name, tuple(choices)))
        return self._pick(name, choices[0])


def write_space(tmp_path, search, **sections):
    doc = {"base": str(REPO / "spaces" / "base" / "tiny.yml"), "search": search, **sections}
    path = tmp_path / "space.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_the_shipped_spaces_load_and_cover_the_seed_parameters():
    covered = set()
    for name in ("demo", "vitb16", "rn50", "compare"):
        space = load_space(REPO / "spaces" / f"{name}.yml")
        covered |= {p.key for p in space.params}
        assert space.start_points, name
        assert len(space.optuna_points()) == len(space.start_points)
        assert space.warnings == [], name
    assert {
        "loss.arcface.scale",
        "loss.arcface.margin",
        "optim.lr_visual",
        "loss.triplet.use",
        "loss.center.use",
        "model.unfreeze_blocks",
        "optim.scheduler",
        "loss.center.weight",
    } <= covered


def test_a_range_that_can_freeze_the_encoder_is_flagged(tmp_path):
    frozen_ok = {"type": "int", "low": 1, "high": 2}
    frozen_too = {"type": "int", "low": 0, "high": 2}
    assert load_space(write_space(tmp_path, {"model.unfreeze_blocks": frozen_ok})).warnings == []
    (line,) = load_space(write_space(tmp_path, {"model.unfreeze_blocks": frozen_too})).warnings
    assert "search.model.unfreeze_blocks can draw 0" in line and "never changes" in line
    both = {
        "model.unfreeze_blocks": frozen_too,
        "model.retrieval_feature": {"type": "categorical", "choices": ["pre_bn", "pre_post"]},
    }
    assert load_space(write_space(tmp_path, both)).warnings == []  # post-BN part can move


def test_a_space_that_compares_backbones_balances_or_is_warned(tmp_path):
    search = {"model.backbone": {"type": "categorical", "choices": ["tiny-vit", "tiny-rn"]}}
    (line,) = load_space(write_space(tmp_path, search)).warnings
    assert "without tune.balance" in line
    balanced = write_space(tmp_path, search, tune={"balance": "model.backbone"})
    assert load_space(balanced).warnings == []
    for name in ("demo", "compare"):  # every shipped space that searches the backbone
        assert load_space(REPO / "spaces" / f"{name}.yml").tune.balance == "model.backbone"


def test_int_bounds_are_inclusive_and_log_is_passed(tmp_path):
    space = load_space(
        write_space(
            tmp_path,
            {
                "model.unfreeze_blocks": {"type": "int", "low": 0, "high": 2},
                "optim.lr_visual": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            },
        )
    )
    trial = RecordingTrial()
    space.define_by_run(trial)
    assert trial.calls == [
        ("int", "model.unfreeze_blocks", 0, 2, False),
        ("float", "optim.lr_visual", 1e-5, 1e-2, True),
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        t = study.ask()
        space.define_by_run(t)
        seen.add(t.params["model.unfreeze_blocks"])
        assert 1e-5 <= t.params["optim.lr_visual"] <= 1e-2
        study.tell(t, 0.0)
    assert seen == {0, 1, 2}  # both ends are drawn


def test_conditional_parameters_follow_their_condition(tmp_path):
    space = load_space(
        write_space(
            tmp_path,
            {
                "model.backbone": {"type": "categorical", "choices": ["tiny-vit", "tiny-rn"]},
                **CENTER_LOSS,
                "model.unfreeze_blocks": [
                    {"when": {"model.backbone": "tiny-vit"}, "type": "int", "low": 0, "high": 2},
                    {"when": {"model.backbone": "tiny-rn"}, "type": "int", "low": 0, "high": 4},
                ],
            },
        )
    )
    off = RecordingTrial({"model.backbone": "tiny-rn", "loss.center.use": False})
    space.define_by_run(off)
    names = [c[1] for c in off.calls]
    assert "loss.center.weight" not in names
    assert ("int", "model.unfreeze_blocks (model.backbone=tiny-rn)", 0, 4, False) in off.calls
    on = RecordingTrial({"model.backbone": "tiny-vit", "loss.center.use": True})
    space.define_by_run(on)
    assert ("int", "model.unfreeze_blocks (model.backbone=tiny-vit)", 0, 2, False) in on.calls
    assert "loss.center.weight" in [c[1] for c in on.calls]
    cfg = space.trial_config(
        {"model.backbone": "tiny-rn", "model.unfreeze_blocks (model.backbone=tiny-rn)": 3}
    )
    assert (cfg.model.backbone, cfg.model.unfreeze_blocks) == ("tiny-rn", 3)
    assert config_key("model.unfreeze_blocks (model.backbone=tiny-rn)") == "model.unfreeze_blocks"
    assert config_key("model.unfreeze_blocks|model.backbone=tiny-rn") == "model.unfreeze_blocks"


def test_start_points_fill_unlisted_keys_from_the_base(tmp_path):
    space = load_space(
        write_space(
            tmp_path,
            {
                "loss.arcface.scale": {"type": "float", "low": 10, "high": 40},
                "loss.center.use": {"type": "bool"},
                "loss.center.weight": {
                    "type": "float",
                    "low": 1e-4,
                    "high": 1e-3,
                    "when": {"loss.center.use": True},
                },
            },
            start_points=[{"loss.arcface.scale": 35.0}, {"loss.center.use": False}],
        )
    )
    assert space.optuna_points() == [
        {"loss.arcface.scale": 35.0, "loss.center.use": True, "loss.center.weight": 0.0005},
        {"loss.arcface.scale": 20.0, "loss.center.use": False},
    ]


def test_enqueued_start_points_are_evaluated_first(tmp_path):
    space = load_space(
        write_space(
            tmp_path,
            {"loss.arcface.scale": {"type": "float", "low": 10, "high": 40}},
            start_points=[{"loss.arcface.scale": 33.0}],
        )
    )
    study = optuna.create_study()
    for point in space.optuna_points():
        study.enqueue_trial(point)
    trial = study.ask()
    space.define_by_run(trial)
    assert trial.params == {"loss.arcface.scale": 33.0}


@pytest.mark.parametrize(
    "search, extra, message",
    [
        (
            {"loss.arcface.margni": {"type": "float", "low": 0, "high": 1}},
            {},
            r"search\.loss\.arcface\.margni: not a key of the config tree",
        ),
        (
            {"loss.arcface.margin": {"type": "float", "low": 0.5, "high": 0.5}},
            {},
            r"search\.loss\.arcface\.margin: low must be < high, got low=0.5, high=0.5",
        ),
        (
            {"optim.lr_visual": {"type": "float", "low": 0, "high": 1e-2, "log": True}},
            {},
            r"search\.optim\.lr_visual: log scale needs low > 0, got 0",
        ),
        (
            {"optim.scheduler": {"type": "categorical", "choices": []}},
            {},
            r"search\.optim\.scheduler: categorical needs a non-empty `choices` list",
        ),
        (
            {
                "loss.center.weight": {
                    "type": "float",
                    "low": 1e-4,
                    "high": 1e-3,
                    "when": {"loss.center.use": True},
                }
            },
            {},
            r"search\.loss\.center\.weight: `when` points to 'loss.center.use', which is not a "
            r"parameter searched above it",
        ),
        (
            {"loss.arcface.scale": {"type": "float", "low": 10, "high": 40}},
            {"start_points": [{"loss.arcface.scale": 90.0}]},
            r"start_points\.loss\.arcface\.scale: start point value 90.0 is outside the space",
        ),
        (
            {"loss.arcface.scale": {"type": "float", "low": 10, "high": 40}},
            {"start_points": [{"loss.arcface.margin": 0.2}]},
            r"start_points\.loss\.arcface\.margin: start point sets a key that is not searched",
        ),
        (
            {"model.unfreeze_blocks": {"type": "int", "low": 0, "high": 7}},
            {},
            r"search\.model\.unfreeze_blocks: value 7 is invalid here: must be -1 .* up to 2",
        ),
        (
            {"loss.arcface.scale": {"type": "normal", "low": 1, "high": 2}},
            {},
            r"type must be one of float, int, categorical, bool",
        ),
        ({}, {}, r"search: must map at least one dotted config key"),
        (
            {"loss.arcface.scale": {"type": "float", "low": 10, "high": 40}},
            {"tune": {"num_samples": 0}},
            r"tune\.num_samples: must be >= 1",
        ),
        (
            {"loss.arcface.scale": {"type": "float", "low": 10, "high": 40}},
            {"tune": {"scheduler": {"type": "asha", "grace_period": 5, "max_epochs": 2}}},
            r"tune\.max_epochs: must be >= grace_period",
        ),
        (
            {"loss.arcface.scale": {"type": "float", "low": 10, "high": 40}},
            {"tune": {"scheduler": {"type": "asha", "brackets": 0}}},
            r"tune\.brackets: must be >= 1",
        ),
        (
            {"loss.arcface.scale": {"type": "float", "low": 10, "high": 40}},
            {"tune": {"scheduler": {"type": "asha", "judge_after": 1.0}}},
            r"tune\.judge_after: must be in \[0, 1\)",
        ),
        (
            {"loss.arcface.scale": {"type": "float", "low": 10, "high": 40}},
            {"tune": {"num_sample": 3}},
            r"tune\.num_sample: unknown key 'num_sample'; did you mean",
        ),
    ],
)
def test_space_errors_name_the_file_and_key(tmp_path, search, extra, message):
    path = write_space(tmp_path, search, **extra)
    with pytest.raises(ConfigError, match=message) as info:
        load_space(path)
    assert str(info.value).startswith(str(path))


def test_space_cli_errors_are_one_line(tmp_path, capsys):
    from search.cli import main

    path = write_space(tmp_path, {"loss.arcface.margin": {"type": "float", "low": 1, "high": 0}})
    assert main(["--space", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "low must be < high" in err
    assert main(["--space", str(tmp_path / "missing.yml")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["--space", str(path), "--gpus-per-trial", "-1"]) == 2
    assert "--gpus-per-trial must be >= 0" in capsys.readouterr().err


def test_space_layer_imports_no_ray():
    import subprocess

    code = "import sys; sys.modules['ray'] = None; import search.space; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize(
    "tune, flag, message",
    [
        ({}, "model.backbone=tiny-rn", "--set model.backbone: the space searches this key"),
        ({}, "optim.lr_visual=0.001", "--set optim.lr_visual: the space searches this key"),
        (
            {"scheduler": {"type": "asha", "max_epochs": 4}},
            "train.epochs=9",
            "--set train.epochs: the space's tune max_epochs (4) sets it",
        ),
    ],
)
def test_a_set_the_space_would_overwrite_is_refused(tmp_path, capsys, tune, flag, message):
    from search.cli import main

    search = {
        "model.backbone": {"type": "categorical", "choices": ["tiny-vit", "tiny-rn"]},
        "optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    path = write_space(tmp_path, search, tune=tune)
    storage = ["--storage", str(tmp_path / "runs"), "--num-samples", "1", "--quiet"]
    assert main(["--space", str(path), "--set", flag, *storage]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: {message}"), err
    assert "\n" not in err


def test_a_set_wins_over_the_space_fixed_values(tmp_path):
    search = {"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    path = write_space(tmp_path, search, fixed={"train.epochs": 3, "model.backbone": "tiny-vit"})
    space = load_space(path, {"train.epochs": 5, "model.backbone": "tiny-rn"})
    assert space.max_epochs == 5 and space.base.model.backbone == "tiny-rn"
    cfg = space.trial_config({"optim.lr_visual": 1e-3})
    assert cfg.train.epochs == 5 and cfg.model.backbone == "tiny-rn"


@pytest.mark.parametrize("key", ["optim.lr_visual", "data.pad"])
def test_balance_must_name_a_searched_categorical(tmp_path, key):
    doc = {
        "base": str(TINY_YML),
        "search": {
            "model.backbone": {"type": "categorical", "choices": ["tiny-vit", "tiny-rn"]},
            "optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2},
        },
        "tune": {"balance": key},
    }
    path = tmp_path / "space.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="tune.balance"):
        load_space(path)
    doc["tune"]["balance"] = "model.backbone"
    path.write_text(yaml.safe_dump(doc))
    assert load_space(path).balanced() == ("model.backbone", ["tiny-vit", "tiny-rn"])


def test_asha_rungs_are_per_backbone_unless_told_otherwise(tmp_path):
    def space(tune, backbone_searched=True):
        search = {"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2}}
        if backbone_searched:
            search["model.backbone"] = {"type": "categorical", "choices": ["tiny-vit", "tiny-rn"]}
        path = tmp_path / "space.yml"
        path.write_text(yaml.safe_dump({"base": str(TINY_YML), "search": search, "tune": tune}))
        return load_space(path)

    assert space({}).bracket_key() == "model.backbone"
    assert space({}, backbone_searched=False).bracket_key() is None
    assert space({"scheduler": {"bracket_by": None}}).bracket_key() is None
    with pytest.raises(ConfigError, match="tune.scheduler.bracket_by"):
        space({"scheduler": {"bracket_by": "optim.lr_visual"}})
    with pytest.raises(ConfigError, match="tune.scheduler.bracket_by"):
        space({"scheduler": {"bracket_by": "loss.triplet.use"}})


def test_a_copied_space_finds_its_base_in_the_shipped_spaces(tmp_path, capsys):
    """``base:`` is relative to the space file, then to the project's spaces/ folder: a
    shipped space copied elsewhere still loads; a base in neither place names both."""
    copy = tmp_path / "mine.yml"
    copy.write_text((REPO / "spaces" / "demo.yml").read_text())
    assert load_space(copy).base.model.pretrained == "tiny-synth"
    (tmp_path / "base").mkdir()  # a base of its own next to the copy wins
    own = yaml.safe_load((REPO / "spaces" / "base" / "tiny_pretrained.yml").read_text())
    own["train"]["epochs"] = 7
    (tmp_path / "base" / "tiny_pretrained.yml").write_text(yaml.safe_dump(own))
    assert load_space(copy).base.train.epochs == 7
    copy.write_text(copy.read_text().replace("base/tiny_pretrained.yml", "base/gone.yml"))
    from search.cli import main

    assert main(["--space", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "base/gone.yml: file not found" in err
    assert str(tmp_path / "base" / "gone.yml") in err
    assert str(REPO / "spaces" / "base" / "gone.yml") in err
