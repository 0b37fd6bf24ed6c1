"""The ReID model: a CLIP image tower, a BNNeck, and the prompt learner for text features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from handreid.models.backbone import freeze_frozen_batchnorm, set_unfreeze_blocks
from handreid.models.heads import BNNeck
from handreid.models.prompt import PromptLearner
from handreid.models.registry import preprocess_cfg
from handreid.models.weights import build_clip


@dataclass
class ImageOutput:
    feat: torch.Tensor  # projected embedding, before the BNNeck
    bn_feat: torch.Tensor  # after the BNNeck (ID / ArcFace heads)

    @property
    def unit(self) -> torch.Tensor:
        return F.normalize(self.feat, dim=-1)


class HandReIDModel(nn.Module):
    def __init__(
        self,
        clip: nn.Module,
        tokenizer,
        num_classes: int,
        n_ctx: int,
        templates,
        retrieval_feature: str = "pre_bn",
    ):
        super().__init__()
        self.visual = clip.visual
        self.embed_dim = (
            clip.text_projection.shape[-1]
            if isinstance(clip.text_projection, torch.Tensor)
            else clip.text_projection.out_features
        )
        self.bnneck = BNNeck(self.embed_dim)
        self.prompt = PromptLearner(clip, tokenizer, num_classes, n_ctx, templates)
        self.retrieval_feature = retrieval_feature
        self.preprocess = preprocess_cfg(clip)
        self.num_classes = num_classes

    def encode_image(self, images: torch.Tensor) -> ImageOutput:
        feat = self.visual(images)
        return ImageOutput(feat=feat, bn_feat=self.bnneck(feat))

    def encode_text(self, labels: torch.Tensor) -> torch.Tensor:
        return self.prompt(labels)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The L2-normalised retrieval feature (pre-BN, optionally concatenated with post-BN)."""
        out = self.encode_image(images)
        if self.retrieval_feature == "pre_post":
            joint = torch.cat([F.normalize(out.feat, dim=-1), F.normalize(out.bn_feat, dim=-1)], -1)
            return F.normalize(joint, dim=-1)
        return out.unit

    def set_stage(self, stage: int, unfreeze_blocks: int = -1) -> None:
        """Stage 1: only the prompt context trains. Stage 2: image tower (per N) and BNNeck."""
        self.requires_grad_(False)
        if stage == 1:
            self.prompt.ctx.requires_grad_(True)
        else:
            set_unfreeze_blocks(self.visual, unfreeze_blocks)
            self.bnneck.weight.requires_grad_(True)

    def train(self, mode: bool = True) -> HandReIDModel:
        super().train(mode)
        if mode:
            freeze_frozen_batchnorm(self.visual)
        return self


def build_model(
    backbone: str,
    num_classes: int,
    *,
    pretrained: str = "none",
    cache_dir: str | None = None,
    n_ctx: int = 4,
    templates=("A photo of a X X X X hand.",),
    retrieval_feature: str = "pre_bn",
    activation: str = "auto",
) -> HandReIDModel:
    """``activation``: ``auto`` (what the weights were trained with: QuickGELU for OpenAI's),
    ``gelu`` or ``quick_gelu``; see :func:`handreid.models.weights.build_clip`."""
    import open_clip

    clip = build_clip(backbone, pretrained, cache_dir, activation)
    tokenizer = open_clip.get_tokenizer(backbone)
    return HandReIDModel(clip, tokenizer, num_classes, n_ctx, templates, retrieval_feature)
