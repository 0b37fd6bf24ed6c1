from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from handreid.config import Config, LossConfig, apply_overrides
from handreid.errors import HandReIDError
from handreid.losses import LOSSES, LossInputs, build_loss, build_loss_set
from handreid.losses.functional import batch_hard_triplet, supcon
from handreid.losses.heads import ArcFace, CenterHead, IdClassifier
from handreid.models.backbone import set_unfreeze_blocks
from handreid.models.model import build_model
from handreid.models.registry import vision_depth
from handreid.models.weights import build_clip

torch.manual_seed(0)


# ------------------------------------------------------------------ losses vs references


def test_arcface_with_zero_margin_is_scaled_cosine_cross_entropy():
    head = ArcFace(8, 5, scale=16.0, margin=0.0)
    feat, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    cos = F.normalize(feat, dim=-1) @ F.normalize(head.weight, dim=-1).t()
    assert torch.allclose(head(feat, labels), F.cross_entropy(16.0 * cos, labels), atol=1e-5)


def test_arcface_adds_the_margin_to_the_true_class_angle():
    head = ArcFace(2, 2, scale=10.0, margin=0.3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    theta = 0.4
    feat = torch.tensor([[math.cos(theta), math.sin(theta)]])
    logits = head.logits(feat, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(10 * math.cos(theta + 0.3), abs=1e-4)
    assert logits[0, 1].item() == pytest.approx(10 * math.sin(theta), abs=1e-4)


def naive_supcon(a, b, la, lb, t):
    total = 0.0
    for i in range(len(a)):
        logits = [float(a[i] @ b[j]) / t for j in range(len(b))]
        log_z = math.log(sum(math.exp(x) for x in logits))
        pos = [logits[j] - log_z for j in range(len(b)) if la[i] == lb[j]]
        total += -sum(pos) / len(pos)
    return total / len(a)


def test_supcon_matches_a_naive_loop():
    a, b = F.normalize(torch.randn(7, 5), dim=-1), F.normalize(torch.randn(7, 5), dim=-1)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    got = supcon(a, b, labels, labels, 0.5).item()
    assert got == pytest.approx(naive_supcon(a, b, labels, labels, 0.5), rel=1e-5)


def test_supcon_counts_the_matched_pair_as_positive():
    # every label unique: the matched pair is the only positive, so the loss is CE on the diagonal
    a, b = F.normalize(torch.randn(4, 3), dim=-1), F.normalize(torch.randn(4, 3), dim=-1)
    labels = torch.arange(4)
    expected = F.cross_entropy(a @ b.t(), labels)
    assert supcon(a, b, labels, labels, 1.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_batch_hard_triplet_matches_a_naive_loop():
    feats, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    terms = []
    for i in range(8):
        d = [float((feats[i] - feats[j]).norm()) for j in range(8)]
        pos = max(d[j] for j in range(8) if labels[j] == labels[i])
        neg = min(d[j] for j in range(8) if labels[j] != labels[i])
        terms.append(max(0.0, pos - neg + 0.3))
    got = batch_hard_triplet(feats, labels, 0.3).item()
    assert got == pytest.approx(sum(terms) / 8, rel=1e-4)


def test_center_and_id_losses_by_hand():
    center = CenterHead(2, 2)
    with torch.no_grad():
        center.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    feat = torch.tensor([[3.0, 4.0], [1.0, 2.0]])
    assert center(feat, torch.tensor([0, 1])).item() == pytest.approx(0.5 * (25 + 1) / 2)
    head = IdClassifier(3, 4, label_smoothing=0.1)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    expected = F.cross_entropy(head.fc(x), y, label_smoothing=0.1)
    assert head(x, y).item() == pytest.approx(expected.item())


def test_loss_registry_lists_valid_names():
    with pytest.raises(KeyError, match="valid: id, arcface, supcon, triplet, center"):
        build_loss("focal", 4, 3)


def _inputs(dim=6, n=8, classes=4, requires_grad=True):
    feat = torch.randn(n, dim, requires_grad=requires_grad)
    labels = torch.arange(n) % classes
    text = F.normalize(torch.randn(classes, dim), dim=-1)[labels]
    return LossInputs(feat, feat * 1.5, F.normalize(feat, dim=-1), text, labels)


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_is_finite_and_backpropagates(name):
    loss = build_loss(name, 6, 4)
    x = _inputs()
    value = loss(x)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert x.feat.grad is not None and x.feat.grad.abs().sum() > 0
    for p in loss.parameters():  # heads that own parameters get gradients
        assert p.grad is not None and p.grad.abs().sum() > 0


# ------------------------------------------------------------------ backbones and prompts


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return build_model(
        "tiny-vit",
        num_classes=5,
        n_ctx=4,
        templates=("A photo of a X X X X hand.", "{} hand image."),
    )


def test_text_features_differ_across_classes(tiny_vit):
    feats = tiny_vit.encode_text(torch.arange(5))
    assert feats.shape == (5, 32)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(5), atol=1e-5)
    sim = feats @ feats.t()
    assert sim[~torch.eye(5, dtype=torch.bool)].max() < 0.999  # not a constant (SOS) pooling


def test_prompts_of_two_classes_differ_only_in_the_context(tiny_vit):
    p = tiny_vit.prompt
    for t in range(p.num_templates):
        a = p.prompt_embeddings(torch.tensor([0]), t)[0]
        b = p.prompt_embeddings(torch.tensor([3]), t)[0]
        slots = p.slots[t]
        assert int(slots.sum()) == 4
        assert torch.equal(a[~slots], b[~slots])
        assert not torch.allclose(a[slots], b[slots])


def test_text_feature_is_clip_eot_feature_when_context_equals_the_words():
    """With the context set to the embedding of 'X', our text tower equals CLIP's encode_text."""
    import open_clip

    torch.manual_seed(1)
    clip = build_clip("tiny-vit", "none")
    tok = open_clip.get_tokenizer("tiny-vit")
    model = build_model("tiny-vit", 2)  # same architecture; load the same weights
    model.prompt.text_encoder.load_state_dict(
        {
            k: v
            for k, v in clip.state_dict().items()
            if k.split(".")[0]
            in ("transformer", "positional_embedding", "ln_final", "text_projection")
        },
        strict=False,
    )
    text = "A photo of a X X X X hand."
    tokens = tok([text])
    with torch.no_grad():
        model.prompt.template_embeddings.copy_(clip.token_embedding(tok([text])))
        x_embed = clip.token_embedding(tok("X"))[0, 1]
        model.prompt.ctx.copy_(x_embed.expand(2, 4, -1))
        ours = model.encode_text(torch.tensor([0]))
        reference = F.normalize(clip.encode_text(tokens), dim=-1)
    assert torch.allclose(ours, reference, atol=1e-5)


def _grad_names(module) -> set[str]:
    """Parameters the backward pass reached (RN bottlenecks start with a zero-init bn3, so
    some reached gradients are exactly zero at initialisation)."""
    return {n for n, p in module.named_parameters() if p.grad is not None}


def test_stage1_gradients_reach_only_the_prompt_context(tiny_vit):
    tiny_vit.zero_grad(set_to_none=True)
    tiny_vit.set_stage(1)
    labels = torch.tensor([0, 1, 2, 2])
    img = tiny_vit.encode_image(torch.randn(4, 3, *tiny_vit.preprocess["size"])).unit
    text = tiny_vit.encode_text(labels)
    (supcon(img, text, labels, labels) + supcon(text, img, labels, labels)).backward()
    assert _grad_names(tiny_vit) == {"prompt.ctx"}
    assert all(p.grad is None for n, p in tiny_vit.named_parameters() if n != "prompt.ctx")


@pytest.mark.parametrize(
    "backbone, n, trained_prefixes",
    [
        ("tiny-vit", 1, ("visual.transformer.resblocks.1.", "visual.ln_post.", "visual.proj")),
        ("tiny-vit", 0, ()),
        ("tiny-rn", 2, ("visual.layer3.", "visual.layer4.", "visual.attnpool.")),
        ("tiny-rn", -1, ("visual.",)),
    ],
)
def test_stage2_gradients_reach_only_unfrozen_blocks_and_heads(backbone, n, trained_prefixes):
    torch.manual_seed(0)
    model = build_model(backbone, 4)
    losses = build_loss_set(LossConfig(), model.embed_dim, 4)
    model.set_stage(2, n)
    model.train()
    size = model.preprocess["size"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.no_grad():
        text = model.encode_text(torch.arange(4))
    out = model.encode_image(torch.randn(8, 3, *size))
    total, _ = losses(LossInputs(out.feat, out.bn_feat, out.unit, text[labels], labels))
    total.backward()
    got = _grad_names(model)
    visual = {name for name in got if name.startswith("visual.")}
    assert got - visual == {"bnneck.weight"}  # BNNeck bias frozen, prompts and text frozen
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith("visual.") and name.startswith(trained_prefixes)
    }
    assert visual == expected
    assert _grad_names(losses) == {n for n, _ in losses.named_parameters()}


def test_frozen_batchnorm_stays_in_eval_mode():
    model = build_model("tiny-rn", 3)
    model.set_stage(2, 1)
    model.train()
    assert not model.visual.bn1.training and not model.visual.layer3[0].bn1.training
    assert model.visual.layer4[0].bn1.training and model.bnneck.training
    running = model.visual.layer1[0].bn1.running_mean.clone()
    model.encode_image(torch.randn(4, 3, 64, 64) * 5 + 3)
    assert torch.equal(model.visual.layer1[0].bn1.running_mean, running)


@pytest.mark.parametrize("name", list(LOSSES))
def test_with_each_loss_alone_its_own_parameters_move(name):
    torch.manual_seed(0)
    cfg = apply_overrides(Config(), {f"loss.{n}.use": n == name for n in LOSSES})
    model = build_model("tiny-vit", 4)
    losses = build_loss_set(cfg.loss, model.embed_dim, 4)
    assert list(losses.losses) == [name]
    model.set_stage(2, -1)
    params = [p for p in model.parameters() if p.requires_grad] + list(losses.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.no_grad():
        text = model.encode_text(torch.arange(4))
    out = model.encode_image(torch.randn(8, 3, *model.preprocess["size"]))
    total, parts = losses(LossInputs(out.feat, out.bn_feat, out.unit, text[labels], labels))
    assert set(parts) == {name}
    total.backward()
    opt.step()
    moved = [not torch.equal(a, b) for a, b in zip(before, params)]
    n_model = len(params) - len(list(losses.parameters()))
    assert any(moved[:n_model])  # the image tower learns from this loss
    assert all(moved[n_model:])  # and so does every parameter of its own head


# ------------------------------------------------------------------ real architectures


@pytest.mark.parametrize(
    "name, expected",
    [
        # ViT-B/16 resblock: 12*768^2 + 13*768 = 7,087,872; head: ln_post 1,536 + proj 393,216
        ("ViT-B-16", {0: 0, 2: 2 * 7_087_872 + 1_536 + 393_216, -1: 86_192_640}),
        # RN50: layer3 7,098,368 + layer4 14,964,736 + attnpool 14,789,632
        ("RN50", {0: 0, 2: 7_098_368 + 14_964_736 + 14_789_632, -1: 38_316_896}),
    ],
)
def test_trainable_parameter_counts_on_real_architectures(name, expected):
    visual = build_clip(name, "none").visual
    for n, count in expected.items():
        set_unfreeze_blocks(visual, n)
        assert sum(p.numel() for p in visual.parameters() if p.requires_grad) == count
    assert vision_depth(name) == {"ViT-B-16": 12, "RN50": 4}[name]


def test_local_checkpoint_loads_identical_weights(tmp_path):
    clip = build_clip("tiny-rn", "none")
    path = tmp_path / "tiny-rn.pt"
    torch.save(clip.state_dict(), path)
    again = build_clip("tiny-rn", str(path))
    for (k, a), (_, b) in zip(clip.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(HandReIDError, match="pretrained checkpoint not found"):
        build_clip("tiny-rn", str(tmp_path / "missing.pt"))


def test_offline_openai_error_names_model_tag_and_the_fix(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network wait
    with pytest.raises(HandReIDError) as info:
        build_clip("RN50", "openai", cache_dir=str(tmp_path))
    msg = str(info.value)
    assert "RN50" in msg and "'openai'" in msg and "model.pretrained=/path/to/RN50-openai.pt" in msg
    with pytest.raises(HandReIDError, match="no pretrained tag 'imagenet' for RN50"):
        build_clip("RN50", "imagenet")
