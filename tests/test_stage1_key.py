"""The stage-1 cache key changes if and only if a config field can change stage 1's result.

No list of fields here: every leaf of the config tree is perturbed in turn (values chosen
from its type; a field that names something real takes a value from ``NAMED``) and the
trainer's own key is taken. A perturbation that keeps the key must keep the learned
context bit for bit (checked jointly, one stage-1 run for all of them); a field whose
perturbation changes the key must change the context (one run each).
"""

from __future__ import annotations

import dataclasses
import shutil
import types
import typing
from pathlib import Path

import pytest
import torch

import handreid.train.trainer as trainer_module
from handreid.config import Config, ConfigError, apply_overrides, flatten, load_config, to_dict
from handreid.data.build import resolve_root
from handreid.errors import HandReIDError
from handreid.train.trainer import Trainer
from tests.conftest import TINY_YML, tiny_overrides

BASE = {
    "data.synth.ids": 8,
    "data.synth.per_id": 4,
    "data.synth.aspects": ["dorsal_r", "dorsal_l", "palmar_r", "palmar_l"],
    "model.templates": ["A photo of a {} hand."],  # n_ctx may then change on its own
    "train.stage1_epochs": 2,
    "train.stage1_batch_size": 8,
    "eval.n_splits": 2,
}
PER_FIELD = 2  # perturbations tried per field


def leaves(cls: type, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """(dotted key, type) of every leaf of the config tree."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        out += leaves(tp, key + ".") if dataclasses.is_dataclass(tp) else [(key, tp)]
    return out


def by_type(tp, value) -> list:
    """Other values of ``value``'s type, the config's validation picks the legal ones."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return ([None] if value is not None else []) + by_type(inner[0], value)
    if origin is typing.Literal:
        return [c for c in args if c != value]
    if origin is tuple and typing.get_origin(args[0]) is typing.Literal:
        choices = typing.get_args(args[0])
        more = [c for c in choices if c not in value][:1]
        return [list(value) + more] if more else [list(value)[:-1]]
    if origin is tuple and args[0] is int:
        return [[*value, max(value, default=0) + 1], [*value, 1, 2]]
    if tp is bool:
        return [not value]
    if tp is int:
        return [value + 1, 0, 1, value * 2, value + 4]
    if tp is float:
        return [value * 1.5, value * 0.5, value + 0.25, 0.5, 0.1]
    return []  # a string: it names something (see NAMED)


@pytest.fixture(scope="module")
def named(tmp_path_factory) -> dict[str, list]:
    """Values for fields that name something real: a copy of the synthetic images (the same
    bytes elsewhere), other weights, another backbone, other templates, scratch folders."""
    tmp = tmp_path_factory.mktemp("named")
    base = load_config(TINY_YML, tiny_overrides(**BASE))
    copy = tmp / "images"
    shutil.copytree(resolve_root(base.data), copy)
    from handreid.models.weights import build_clip

    torch.manual_seed(7)
    weights = tmp / "tiny-vit-other.pt"
    torch.save(build_clip("tiny-vit").state_dict(), weights)
    return {
        "data.root": [str(copy)],
        "data.prepared": [str(copy)],
        "model.backbone": ["tiny-rn"],
        "model.pretrained": [str(weights)],
        "model.cache_dir": [str(tmp / "open_clip")],
        "model.templates": [["A close-up of the {} of a person."], ["{} hand.", "A {}."]],
        "train.stage1_cache": [str(tmp / "elsewhere")],
    }


def perturbations(base: Config, named: dict[str, list]) -> tuple[dict, list[str]]:
    """key -> up to PER_FIELD legal other values; and the fields with no value to try."""
    values = flatten(to_dict(base))
    out, untried = {}, []
    for key, tp in leaves(Config):
        candidates = named.get(key) or by_type(tp, values[key])
        legal = []
        for value in candidates:
            if value == values[key] or value in legal:
                continue
            try:
                apply_overrides(base, {key: value})
            except ConfigError:
                continue
            legal.append(value)
            if len(legal) == PER_FIELD:
                break
        if legal:
            out[key] = legal
        elif key in named or not candidates:  # else the field admits one value: it is inert
            untried.append(key)
    return out, untried


def run_dir(tmp: Path, counter=[0]) -> Path:  # noqa: B006 - a counter across calls
    counter[0] += 1
    return tmp / f"run{counter[0]}"


def stage1_key(cfg: Config, tmp: Path) -> str:
    trainer = Trainer(cfg, run_dir(tmp))
    try:
        trainer.setup()
        return trainer.stage1_inputs()[0]
    finally:
        trainer.close()


def stage1_context(cfg: Config, tmp: Path, monkeypatch) -> torch.Tensor:
    """What stage 1 computes (the cache bypassed)."""
    monkeypatch.setattr(trainer_module, "cached_stage1", lambda _d, _k, compute: (compute(), False))
    trainer = Trainer(cfg, run_dir(tmp))
    try:
        trainer.setup()
        trainer.stage1()
        return trainer.model.prompt.ctx.detach().cpu().clone()
    finally:
        trainer.close()


@pytest.mark.slow  # about 170 set-ups and 30 stage-1 runs of the tiny CLIP
def test_the_stage1_key_changes_iff_stage1_can_change(named, tmp_path, monkeypatch):
    base = load_config(TINY_YML, tiny_overrides(**BASE, **{"train.stage1_cache": None}))
    tried, untried = perturbations(base, named)
    assert not untried, f"no value to try for {untried}: give them one in NAMED"
    base_key = stage1_key(base, tmp_path)
    keeps, changes = {}, {}
    for key, values in tried.items():
        for value in values:
            moved = stage1_key(apply_overrides(base, {key: value}), tmp_path) != base_key
            (changes if moved else keeps).setdefault(key, []).append(value)

    reference = stage1_context(base, tmp_path, monkeypatch)

    def same(overrides: dict) -> bool:
        ctx = stage1_context(apply_overrides(base, overrides), tmp_path, monkeypatch)
        return torch.equal(ctx, reference)

    def moving(group: dict) -> list[str]:
        """The keys of ``group`` that change stage 1: one run for the whole group, halved
        where it differs (or cannot run: two values that only fail together)."""
        try:
            if same(group):
                return []
        except HandReIDError:
            if len(group) == 1:
                raise
        if len(group) == 1:
            return list(group)
        items = list(group.items())
        return moving(dict(items[: len(items) // 2])) + moving(dict(items[len(items) // 2 :]))

    for round_ in range(PER_FIELD):  # every key-keeping value at once, one run per round
        joint: dict = {}
        for key, values in keeps.items():
            if len(values) > round_:
                try:
                    apply_overrides(base, {**joint, key: values[round_]})
                except ConfigError:
                    continue  # not legal with the others: on its own below
                joint[key] = values[round_]
        alone = [{k: v[round_]} for k, v in keeps.items() if len(v) > round_ and k not in joint]
        wrong = moving(joint) if joint else []
        wrong += [k for group in alone for k in moving(group)]
        assert not wrong, f"the key stays but stage 1 changes: {wrong}"

    # the key moved: stage 1 must be able to move too
    overkeyed = [k for k, values in changes.items() if all(same({k: v}) for v in values)]
    assert not overkeyed, f"the key moves but stage 1 does not: {overkeyed}"
    # examples that the machinery works
    assert {"train.stage1_temperature", "model.activation", "model.templates"} <= set(changes)
    assert {"loss.arcface.margin", "optim.lr_visual", "train.epochs"} <= set(keeps)
