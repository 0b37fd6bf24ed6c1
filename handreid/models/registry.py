"""Backbones from open_clip's registry, plus the tiny configs used by tests and the CPU demo.

Which backbones exist, how deep their image towers are, their input preprocessing, and
building one with random weights. Loading pretrained weights into one (tags, files,
``tiny-synth``) is :mod:`handreid.models.weights`, one floor up.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

TINY_CONFIG_DIR = Path(__file__).parent / "model_configs"


@functools.cache
def register_tiny_configs() -> None:
    """Add ``tiny-vit`` and ``tiny-rn`` to open_clip's model-config registry (idempotent)."""
    import open_clip

    open_clip.add_model_config(TINY_CONFIG_DIR)


def _vision_cfg(name: str) -> dict[str, Any]:
    import open_clip

    register_tiny_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise KeyError(name)
    return cfg["vision_cfg"]


@functools.cache
def available_backbones() -> tuple[str, ...]:
    """open_clip models whose image tower is a plain ViT or a ModifiedResNet."""
    import open_clip

    register_tiny_configs()
    names = []
    for name in open_clip.list_models():
        vision = _vision_cfg(name)
        if "layers" in vision and not vision.get("timm_model_name"):
            names.append(name)
    return tuple(names)


def vision_depth(name: str) -> int:
    """Number of unfreezable blocks: ViT resblocks, or ResNet stages."""
    layers = _vision_cfg(name)["layers"]
    return len(layers) if isinstance(layers, (list, tuple)) else int(layers)


# `model.pretrained` marker: the tiny CLIPs pretrained on synthetic hands by
# handreid.models.pretrain_tiny (imported only when used: it imports torch), built on first use
# and cached in OpenAI's format.
SYNTH_PRETRAINED = "tiny-synth"
TINY_BACKBONES = ("tiny-vit", "tiny-rn")  # the configs in model_configs/


def _quiet_create(
    name: str, pretrained: str | None, cache_dir: str | None, quick_gelu: bool | None = None
):
    import open_clip

    root = logging.getLogger()
    level = root.level
    if pretrained is None:  # open_clip warns about random init, which is what we asked for
        root.setLevel(logging.ERROR)
    # force_quick_gelu sets the config before open_clip's tag check (no mismatch warning);
    # quick_gelu=False overrides a `-quickgelu` config
    kwargs = {"force_quick_gelu": True} if quick_gelu else {}
    if quick_gelu is False:
        kwargs["quick_gelu"] = False
    try:
        return open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir, **kwargs)
    finally:
        root.setLevel(level)


def preprocess_cfg(clip) -> dict[str, Any]:
    """Input size, mean and std the model expects."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(clip)
    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return {"size": size, "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}
