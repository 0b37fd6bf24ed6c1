"""Backbones from open_clip's registry, plus the tiny configs used by tests and the CPU demo."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from handreid.errors import HandReIDError

log = logging.getLogger(__name__)

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


def build_clip(name: str, pretrained: str = "none", cache_dir: str | None = None):
    """Create an open_clip CLIP model; ``pretrained`` is a tag (``openai``), a file or ``none``."""
    import open_clip

    if name not in available_backbones():
        raise KeyError(f"unknown backbone {name!r}; valid: {', '.join(available_backbones())}")
    if pretrained in ("none", "", None):
        return _quiet_create(name, None, cache_dir)
    if Path(pretrained).suffix or "/" in pretrained:
        if not Path(pretrained).is_file():
            raise HandReIDError(f"pretrained checkpoint not found: {pretrained}")
        return _quiet_create(name, pretrained, cache_dir)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise HandReIDError(
            f"no pretrained tag {pretrained!r} for {name}; known tags: {', '.join(tags) or 'none'}"
        )
    try:
        return _quiet_create(name, pretrained, cache_dir)
    except Exception as err:  # network or hub failure: say how to run offline
        raise HandReIDError(
            f"could not load {name} weights {pretrained!r} ({type(err).__name__}); on an offline "
            f"machine download them elsewhere and pass the file: --set model.pretrained=/path/to/"
            f"{name}-{pretrained}.pt (or set model.cache_dir to a filled open_clip cache)"
        ) from None


def _quiet_create(name: str, pretrained: str | None, cache_dir: str | None):
    import open_clip

    root = logging.getLogger()
    level = root.level
    if pretrained is None:  # open_clip warns about random init, which is what we asked for
        root.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir)
    finally:
        root.setLevel(level)


def preprocess_cfg(clip) -> dict[str, Any]:
    """Input size, mean and std the model expects."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(clip)
    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return {"size": size, "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}
