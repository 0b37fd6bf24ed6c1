"""Which image-encoder parameters train: ``unfreeze_blocks`` as METHOD.md section 2 defines."""

from __future__ import annotations

from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn


def _blocks_and_tail(visual: nn.Module) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """The ordered blocks of the tower and the parameters after them (head of the tower)."""
    if isinstance(visual, VisionTransformer):
        tail = list(visual.ln_post.parameters())
        if isinstance(visual.proj, nn.Parameter):
            tail.append(visual.proj)
        return list(visual.transformer.resblocks), tail
    if isinstance(visual, ModifiedResNet):
        stages = [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
        return stages, list(visual.attnpool.parameters())
    raise TypeError(f"unsupported image tower {type(visual).__name__}")


def set_unfreeze_blocks(visual: nn.Module, n: int) -> None:
    """0: all frozen; N >= 1: last N blocks plus the head; -1: the whole tower."""
    blocks, tail = _blocks_and_tail(visual)
    if not -1 <= n <= len(blocks):
        raise ValueError(f"unfreeze_blocks must be in [-1, {len(blocks)}], got {n}")
    visual.requires_grad_(n == -1)
    if n > 0:
        for block in blocks[-n:]:
            block.requires_grad_(True)
        for param in tail:
            param.requires_grad_(True)


def freeze_frozen_batchnorm(module: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode (no stat drift)."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in sub.parameters()):
                sub.eval()
