"""OpenAI's CLIP weights go into QuickGELU towers (open_clip 3.x builds GELU for ViT-B-16/RN50).

Weights come from bench.openai_weights: random, in OpenAI's file format (a TorchScript archive
as OpenAI publishes, or a torch.save of its state dict). The project's model, built from such
a file, must match open_clip's QuickGELU model holding the same weights and differ from the
GELU one. RN50's image tower has no GELU (ReLU convs, attention pool), so the text tower,
which the prompt learner runs, is checked too.
"""

from __future__ import annotations

import logging
import warnings

import open_clip
import pytest
import torch

from bench.openai_weights import write_openai_weights
from handreid.config import apply_overrides, load_config
from handreid.errors import ConfigError, HandReIDError
from handreid.models.model import HandReIDModel, build_model
from handreid.models.registry import register_tiny_configs
from handreid.models.weights import build_clip

EXTRA = ("input_resolution", "context_length", "vocab_size")


def file_state(path) -> dict:
    """The file's weights, read without the project's reader."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except RuntimeError:  # not TorchScript: a saved state dict
            state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k not in EXTRA}


def open_clip_model(backbone: str, state: dict, quick_gelu: bool):
    register_tiny_configs()
    clip = open_clip.create_model(backbone, force_quick_gelu=quick_gelu)
    clip.load_state_dict(state)
    return clip.eval()


def twin(backbone: str, clip, model: HandReIDModel) -> HandReIDModel:
    """A HandReIDModel on ``clip`` with ``model``'s prompt context (same text inputs)."""
    tokenizer = open_clip.get_tokenizer(backbone)
    other = HandReIDModel(clip, tokenizer, model.num_classes, model.prompt.ctx.shape[1], TEMPLATES)
    other.prompt.ctx.data.copy_(model.prompt.ctx)
    return other.eval()


TEMPLATES = ("A photo of a X X X X hand.",)


def check_quick_gelu_towers(backbone: str, path, size: int) -> HandReIDModel:
    model = build_model(backbone, 3, pretrained=str(path), templates=TEMPLATES).eval()
    state = file_state(path)
    got = model.visual.state_dict()
    for key, value in state.items():  # the file's weights, cast to the model's fp32
        if key.startswith("visual."):
            assert torch.equal(got[key[7:]], value.float()), key
    quick, gelu = (open_clip_model(backbone, state, q) for q in (True, False))
    images, labels = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    with torch.no_grad():
        feat = model.encode_image(images).feat
        text = model.encode_text(labels)
        torch.testing.assert_close(feat, quick.encode_image(images))
        torch.testing.assert_close(text, twin(backbone, quick, model).encode_text(labels))
        assert (text - twin(backbone, gelu, model).encode_text(labels)).abs().max() > 1e-3
        if any(isinstance(m, torch.nn.GELU) for m in gelu.visual.modules()):  # not RN's
            assert (feat - gelu.encode_image(images)).abs().max() > 1e-3
    return model


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-rn"])
def test_openai_file_builds_quick_gelu_towers(tmp_path, backbone, fmt):
    path = write_openai_weights(backbone, tmp_path / f"{backbone}.pt", seed=1, fmt=fmt)
    check_quick_gelu_towers(backbone, path, 64)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["ViT-B-16", "RN50"])
def test_real_size_openai_file_matches_open_clips_openai_loader(openai_file, backbone):
    path = openai_file(backbone)  # the file the full-size runs train from (conftest)
    model = check_quick_gelu_towers(backbone, path, 224)
    with warnings.catch_warnings():  # open_clip's own reader of OpenAI files agrees
        warnings.simplefilter("ignore", FutureWarning)
        reference = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images).feat, reference.encode_image(images))


def test_explicit_gelu_with_openai_weights_is_refused(tmp_path):
    path = write_openai_weights("tiny-vit", tmp_path / "w.pt")
    with pytest.raises(HandReIDError, match=r"model.activation: 'gelu' does not fit the OpenAI"):
        build_clip("tiny-vit", str(path), activation="gelu")
    acts = {
        type(m).__name__
        for m in build_clip("tiny-vit", str(path), activation="quick_gelu").modules()
    }
    assert "QuickGELU" in acts and "GELU" not in acts
    cfg = load_config("spaces/base/vitb16.yml")
    with pytest.raises(ConfigError, match=r"^model.activation: 'gelu' does not fit the 'openai'"):
        apply_overrides(cfg, {"model.activation": "gelu"})


@pytest.mark.parametrize("name", ["vitb16", "rn50"])
def test_base_configs_ask_for_quick_gelu(name):
    assert load_config(f"spaces/base/{name}.yml").model.activation == "quick_gelu"


def test_other_files_and_random_init_keep_the_configs_activation(tmp_path, caplog):
    gelu = build_clip("tiny-vit", "none")
    assert {type(m).__name__ for m in gelu.modules()} >= {"GELU"}
    path = tmp_path / "open_clip.pt"  # open_clip's layout: same keys, no OpenAI extras
    torch.save(gelu.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        again = build_clip("tiny-vit", str(path))
    assert "QuickGELU" not in {type(m).__name__ for m in again.modules()}
    assert "set model.activation=quick_gelu" in caplog.text
    script = tmp_path / "script.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(script))
    with pytest.raises(HandReIDError, match="TorchScript archive but not an OpenAI CLIP release"):
        build_clip("tiny-vit", str(script))
