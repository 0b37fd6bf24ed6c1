"""What stage 2 trains, checked through the real Trainer on the tiny CPU config.

Every head that owns parameters is in an optimiser and moves (METHOD.md sections 3, 7);
blocks frozen by ``unfreeze_blocks`` stay put (section 2); the text tower and the prompt
context stay untouched in stage 2. Only the Trainer's public steps are used, and tensors
are looked up again after training, so a wrapped or re-placed model is compared as it is.
"""

from __future__ import annotations

import pytest
import torch

from handreid.config import apply_overrides
from handreid.losses import LOSSES
from handreid.train.trainer import Trainer

ALL_LOSSES = {f"loss.{name}.use": True for name in LOSSES}


def stage2_trainer(cfg, out) -> Trainer:
    """A trainer ready for ``train_epoch``."""
    trainer = Trainer(cfg, out)
    trainer.setup()
    trainer.setup_stage2()
    trainer.compute_text_features()
    return trainer


def unwrapped(trainer: Trainer):
    return trainer.accelerator.unwrap_model(trainer.model)


def head_parameters(trainer: Trainer) -> dict[str, torch.nn.Parameter]:
    """Parameters of the loss heads (classifier, ArcFace, centers) and the BNNeck scale."""
    return {
        **dict(trainer.losses.named_parameters()),
        "bnneck.weight": unwrapped(trainer).bnneck.weight,
    }


def text_side(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Prompt context, text tower parameters and the prompt buffers."""
    prompt = unwrapped(trainer).prompt
    return {**dict(prompt.named_parameters()), **dict(prompt.named_buffers())}


def snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in tensors.items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, t in before.items() if not torch.equal(t, after[name])}


def optimised(trainer: Trainer) -> set[int]:
    """ids of the parameters in the stage-2 optimisers."""
    opts = [trainer.optimizer] + ([trainer.center_opt] if trainer.center_opt else [])
    return {id(p) for opt in opts for group in opt.param_groups for p in group["params"]}


def test_every_head_parameter_is_optimised_and_moves(tiny_cfg, tmp_path):
    trainer = stage2_trainer(apply_overrides(tiny_cfg(), ALL_LOSSES), tmp_path / "run")
    assert set(trainer.losses.losses) == set(LOSSES)
    heads = head_parameters(trainer)
    assert set(heads) == {
        "losses.id.head.fc.weight",
        "losses.arcface.head.weight",
        "losses.center.head.centers",
        "bnneck.weight",
    }
    in_opt = optimised(trainer)
    assert [name for name, p in heads.items() if id(p) not in in_opt] == []
    before = snapshot(heads)
    trainer.train_epoch(1)
    assert changed(before, head_parameters(trainer)) == set(heads)


@pytest.mark.parametrize(
    "backbone, trained",
    [
        ("tiny-vit", ("transformer.resblocks.1.", "ln_post.", "proj")),
        ("tiny-rn", ("layer4.", "attnpool.")),
    ],
)
def test_frozen_blocks_stay_and_unfrozen_blocks_move(tiny_cfg, tmp_path, backbone, trained):
    cfg = apply_overrides(tiny_cfg(), {"model.backbone": backbone, "model.unfreeze_blocks": 1})
    trainer = stage2_trainer(cfg, tmp_path / "run")

    def frozen() -> dict[str, torch.Tensor]:  # parameters and BatchNorm statistics
        state = unwrapped(trainer).visual.state_dict()
        return {name: t for name, t in state.items() if not name.startswith(trained)}

    def unfrozen() -> dict[str, torch.Tensor]:
        named = unwrapped(trainer).visual.named_parameters()
        return {name: p for name, p in named if name.startswith(trained)}

    before_frozen, before_unfrozen = snapshot(frozen()), snapshot(unfrozen())
    assert before_frozen and before_unfrozen
    trainer.train_epoch(1)
    assert changed(before_frozen, frozen()) == set()
    assert changed(before_unfrozen, unfrozen()) == set(before_unfrozen)


def test_stage2_leaves_the_text_tower_and_the_prompt_context_untouched(tiny_cfg, tmp_path):
    trainer = Trainer(apply_overrides(tiny_cfg(), ALL_LOSSES), tmp_path / "run")
    trainer.setup()
    trainer.stage1()
    before = snapshot(text_side(trainer))
    assert "ctx" in before and any(n.startswith("text_encoder.transformer.") for n in before)
    trainer.setup_stage2()
    trainer.compute_text_features()
    in_opt = optimised(trainer)
    assert [name for name, p in text_side(trainer).items() if id(p) in in_opt] == []
    trainer.train_epoch(1)
    assert changed(before, text_side(trainer)) == set()
