"""Write random CLIP weights in OpenAI's file format, for offline tests and device checks.

OpenAI publishes CLIP as TorchScript archives (``ViT-B-16.pt``, ``RN50.pt``): open_clip's
parameter names, most weights in fp16, plus ``input_resolution``, ``context_length`` and
``vocab_size`` entries. This writes the same layout from open_clip's random init (seeded), so
the offline route ``--set model.pretrained=/path/to/ViT-B-16.pt`` can be exercised without
a download. Nothing is downloaded here.

    python -m bench.openai_weights --backbone ViT-B-16 --out /tmp/ViT-B-16.pt [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

FORMATS = ("torchscript", "state_dict")


def openai_archive(backbone: str, seed: int = 0) -> nn.Module:
    """A module whose ``state_dict()`` is an OpenAI release's: open_clip's keys, fp16 where
    OpenAI stored fp16 (open_clip's ``convert_weights_to_lp``), and the three extra entries."""
    import open_clip

    from handreid.models.registry import register_tiny_configs

    register_tiny_configs()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns about the random init we ask for
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip = open_clip.create_model(backbone, pretrained=None)
    finally:
        root.setLevel(level)
    open_clip.model.convert_weights_to_lp(clip, dtype=torch.float16)
    archive = nn.Module()  # CLIP has int context_length / vocab_size attributes: a fresh holder
    for name, child in clip.named_children():
        archive.add_module(name, child)
    for name, param in clip.named_parameters(recurse=False):
        archive.register_parameter(name, param)
    size = open_clip.get_model_preprocess_cfg(clip)["size"]
    extra = {
        "input_resolution": size if isinstance(size, int) else size[0],
        "context_length": clip.context_length,
        "vocab_size": clip.vocab_size,
    }
    for name, value in extra.items():
        archive.register_buffer(name, torch.tensor(value))
    return archive


def write_openai_weights(
    backbone: str, path: str | Path, seed: int = 0, *, fmt: str = "torchscript"
) -> Path:
    """Write seeded random weights of ``backbone`` to ``path`` in OpenAI's format:
    ``torchscript`` (an archive, as OpenAI publishes) or ``state_dict`` (``torch.save`` of the
    archive's state dict). Returns the path."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    archive = openai_archive(backbone, seed)
    if fmt == "state_dict":
        torch.save(archive.state_dict(), path)
        return path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, not gone
        torch.jit.script(archive).save(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openai_weights", description=__doc__)
    parser.add_argument("--backbone", required=True, help="open_clip model name, e.g. ViT-B-16")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=FORMATS, default="torchscript", dest="fmt")
    args = parser.parse_args(argv)
    from handreid.models.registry import available_backbones

    if args.backbone not in available_backbones():
        parser.error(
            f"unknown backbone {args.backbone!r}; valid: {', '.join(available_backbones())}"
        )
    start = time.perf_counter()
    path = write_openai_weights(args.backbone, args.out, args.seed, fmt=args.fmt)
    print(
        f"wrote {args.backbone} OpenAI-format weights ({args.fmt}, seed {args.seed}) to {path}: "
        f"{path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
