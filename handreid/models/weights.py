"""Pretrained weights for a backbone: ``build_clip`` with an open_clip tag, a local file
(OpenAI's TorchScript release or open_clip's formats) or ``tiny-synth`` (the tiny CLIPs
pretrained on synthetic hands by :mod:`handreid.models.pretrain_tiny`), and the activation
(GELU or QuickGELU) the weights were trained with.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

from handreid.cache import cache_root, may_build, require
from handreid.errors import HandReIDError
from handreid.models.registry import SYNTH_PRETRAINED, _quiet_create, available_backbones

log = logging.getLogger(__name__)


# OpenAI's CLIP weights were trained with QuickGELU (x * sigmoid(1.702 x)) in both towers, but
# open_clip builds `ViT-B-16` and `RN50` with nn.GELU even for pretrained="openai" (it only warns).
# `activation` says which one to build: "auto" follows what the weights were trained with
# (open_clip's tag registry; OpenAI's own file format); "gelu" / "quick_gelu" are honoured as
# written, and a value that contradicts known weights is refused rather than overridden, so the
# run's config.yaml never claims an architecture other than the one that trained.
ACTIVATIONS = ("auto", "gelu", "quick_gelu")
# Entries of OpenAI's released TorchScript archives (ViT-B-16.pt, RN50.pt) that are not weights;
# open_clip's own checkpoints share every other key name, so these mark OpenAI's format.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def is_checkpoint_path(pretrained: str) -> bool:
    """``pretrained`` names a file (it has a suffix or a slash) rather than a tag."""
    return bool(Path(pretrained).suffix) or "/" in pretrained


def tag_quick_gelu(name: str, pretrained: str | None) -> bool | None:
    """Whether open_clip's registry says tag ``pretrained`` of ``name`` was trained with
    QuickGELU; None for ``none``, a file or an unknown tag."""
    import open_clip

    if pretrained in ("none", "", None) or is_checkpoint_path(pretrained):
        return None
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    return bool(cfg.get("quick_gelu", False)) if cfg else None


def activation_mismatch(activation: str, trained_quick_gelu: bool | None, weights: str) -> str:
    """Why ``activation`` cannot hold ``weights`` ('' when it can)."""
    if activation == "auto" or trained_quick_gelu is None:
        return ""
    if (activation == "quick_gelu") == trained_quick_gelu:
        return ""
    right = "quick_gelu" if trained_quick_gelu else "gelu"
    return (
        f"{activation!r} does not fit {weights}, which were trained with "
        f"{'QuickGELU' if trained_quick_gelu else 'GELU'}; use {right} (or auto)"
    )


def resolve_quick_gelu(
    activation: str, trained_quick_gelu: bool | None, weights: str
) -> bool | None:
    """True / False: build QuickGELU / GELU towers; None: keep the model config's own."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    problem = activation_mismatch(activation, trained_quick_gelu, weights)
    if problem:
        raise HandReIDError(f"model.activation: {problem}")
    return trained_quick_gelu if activation == "auto" else activation == "quick_gelu"


def build_clip(
    name: str,
    pretrained: str = "none",
    cache_dir: str | None = None,
    activation: str = "auto",
):
    """Create an open_clip CLIP model; ``pretrained`` is a tag (``openai``), a file, ``none`` or
    ``tiny-synth`` (the tiny backbones pretrained on synthetic hands, built on first use);
    ``activation`` is ``auto`` (what the weights were trained with), ``gelu`` or ``quick_gelu``."""

    if name not in available_backbones():
        raise KeyError(f"unknown backbone {name!r}; valid: {', '.join(available_backbones())}")
    if pretrained in ("none", "", None):
        return _quiet_create(name, None, cache_dir, resolve_quick_gelu(activation, None, ""))
    if pretrained == SYNTH_PRETRAINED:  # tiny CLIPs pretrained here, built on first use
        from handreid.models.pretrain_tiny import ensure_pretrained

        path = ensure_pretrained(name)
        return _from_file(name, path, activation, f"the {SYNTH_PRETRAINED} weights in {path}")
    if is_checkpoint_path(pretrained):
        return _from_file(name, Path(pretrained), activation)
    check_tag(name, pretrained)
    weights = f"the {pretrained!r} weights of {name}"
    trained = tag_quick_gelu(name, pretrained)
    fetched = fetched_file(name, pretrained)
    if fetched.is_file() or not may_build():  # fetched once (a search's driver): no download
        if not fetched.is_file():
            require(fetched, weights)
        return _from_file(name, fetched, activation, f"{weights} in {fetched}", trained)
    return _download(name, pretrained, cache_dir, resolve_quick_gelu(activation, trained, weights))


def check_tag(name: str, tag: str) -> None:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise HandReIDError(
            f"no pretrained tag {tag!r} for {name}; known tags: {', '.join(tags) or 'none'}"
        )


def _download(name: str, tag: str, cache_dir: str | None, quick_gelu: bool | None):
    """open_clip's ``tag`` weights of ``name``, through its download (and its own cache)."""
    try:
        return _quiet_create(name, tag, cache_dir, quick_gelu)
    except Exception as err:  # network or hub failure: say how to run offline
        raise HandReIDError(
            f"could not load {name} weights {tag!r} ({type(err).__name__}); on an offline "
            f"machine download them elsewhere and pass the file: --set model.pretrained=/path/to/"
            f"{name}-{tag}.pt (or set model.cache_dir to a filled open_clip cache)"
        ) from None


def fetched_file(name: str, tag: str) -> Path:
    """Where ``fetch_pretrained`` keeps the ``tag`` weights of ``name``."""
    return cache_root() / "pretrained" / f"{name}-{tag}.pt"


def fetch_pretrained(name: str, tag: str, cache_dir: str | None = None) -> Path:
    """open_clip's ``tag`` weights of ``name`` as one file in the cache, in OpenAI's format
    (downloaded once, under a lock). A search's driver fetches them before any trial; the
    trials then load that file (``build_clip`` prefers it) and never download."""
    import torch
    from filelock import FileLock

    from handreid.models.pretrain_tiny import openai_state_dict

    path = fetched_file(name, tag)
    if path.is_file():
        return path
    weights = f"the {tag!r} weights of {name}"
    require(path, weights)
    check_tag(name, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            log.info("fetching %s into %s (once)", weights, path)
            clip = _download(name, tag, cache_dir, tag_quick_gelu(name, tag))
            tmp = path.with_suffix(".tmp")
            torch.save(openai_state_dict(clip), tmp)
            tmp.replace(path)
    return path


def _from_file(
    name: str,
    path: Path,
    activation: str,
    weights: str | None = None,
    trained_quick_gelu: bool | None = True,
):
    """A local checkpoint: OpenAI's format goes into QuickGELU towers (or what
    ``trained_quick_gelu`` says the weights were trained with, for fetched tags); others
    through open_clip. ``weights`` names them in messages (default: the OpenAI weights in
    the file)."""
    if not path.is_file():
        raise HandReIDError(f"pretrained checkpoint not found: {path}")
    state = read_openai_state_dict(path)
    if state is None:
        if activation == "auto":
            log.warning(
                "%s is not in OpenAI's format, so %s keeps its config's activation; if it holds "
                "OpenAI weights in open_clip's layout, set model.activation=quick_gelu",
                path,
                name,
            )
        return _quiet_create(name, str(path), None, resolve_quick_gelu(activation, None, ""))
    weights = weights or f"the OpenAI weights in {path}"
    quick_gelu = resolve_quick_gelu(activation, trained_quick_gelu, weights)
    clip = _quiet_create(name, None, None, quick_gelu)
    towers = {True: "QuickGELU", False: "GELU"}.get(quick_gelu, "its config's")
    log.info("loading %s into %s with %s towers", weights, name, towers)
    try:
        missing, unexpected = clip.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape mismatch: another architecture's weights
        raise HandReIDError(f"{weights} do not fit {name}: {str(err).splitlines()[-1]}") from None
    if missing or unexpected:
        raise HandReIDError(
            f"{weights} do not fit {name}: {len(missing)} missing keys (e.g. "
            f"{missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    return clip


def read_openai_state_dict(path: str | Path) -> dict[str, Any] | None:
    """The weights in an OpenAI CLIP file, or None for a file in another format.

    OpenAI's releases are TorchScript archives, which open_clip's ``create_model`` cannot read
    (it loads with ``weights_only=True``); a plain ``torch.save`` of such an archive's state
    dict is accepted too. Both carry :data:`OPENAI_EXTRA_KEYS`, which are dropped here, as
    open_clip's ``build_model_from_openai_state_dict`` does. Weights come as stored (OpenAI's
    are partly fp16); ``load_state_dict`` casts them to the model's dtype.
    """
    import torch

    path = Path(path)
    if path.suffix in (".safetensors", ".npz", ".npy") or not zipfile.is_zipfile(path):
        return None  # open_clip's other formats; OpenAI's files are zip archives
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, not gone
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        if not all(k in state for k in OPENAI_EXTRA_KEYS):
            raise HandReIDError(
                f"{path} is a TorchScript archive but not an OpenAI CLIP release; save its "
                f"state_dict() with torch.save and pass that file"
            )
    else:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception:  # not a plain tensor dict: open_clip reports on it
            return None
        if not isinstance(state, dict) or not all(k in state for k in OPENAI_EXTRA_KEYS):
            return None
    return {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds ``constants.pkl`` (torch.serialization checks the same)."""
    with zipfile.ZipFile(path) as archive:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in archive.namelist())
