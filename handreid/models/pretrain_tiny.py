"""Contrastive pretraining of the tiny CLIPs on synthetic hands: ``model.pretrained: tiny-synth``.

Randomly initialised tiny CLIPs make the CPU demo's early epochs noise. This module trains
both towers of ``tiny-vit`` / ``tiny-rn`` with CLIP's symmetric InfoNCE on generated hands
and captions built from their rendered attributes (aspect, gender, age band, skin colour,
ring, nail polish; :func:`handreid.data.synth.caption`). The identities come from their own
random stream (:data:`PRETRAIN_STREAM`) and id range (:data:`PRETRAIN_FIRST_ID` on), so no
demo or test identity is ever seen. The result is deterministic given the settings, built
once under a file lock into ``$HANDREID_CACHE/pretrained/`` and written in OpenAI's
state-dict format, so :func:`handreid.models.weights.build_clip` loads it into QuickGELU
towers exactly as it loads OpenAI's ``ViT-B-16.pt``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from handreid.cache import cache_root, require
from handreid.errors import HandReIDError
from handreid.models.registry import (
    SYNTH_PRETRAINED,
    TINY_BACKBONES,
    _quiet_create,
    preprocess_cfg,
    register_tiny_configs,
)

if TYPE_CHECKING:
    from handreid.data.synth import Hand

log = logging.getLogger(__name__)

PRETRAIN_STREAM = 7  # SeedSequence spawn key: a family of identities apart from seed-only data
PRETRAIN_FIRST_ID = 9_000_000  # pretraining pids are 9000000 and up; datasets count from 0
THREADS = 1  # torch threads while pretraining: the result depends on it, so it is fixed
VERSION = 1  # bump when the recipe or the renderer changes: a new cache file


@dataclass(frozen=True)
class PretrainSettings:
    ids: int = 400
    per_id: int = 2  # images per identity and aspect
    aspects: tuple[str, ...] = ("dorsal_r", "dorsal_l", "palmar_r", "palmar_l")
    width: int = 64
    height: int = 48
    accessory_rate: float = 0.3
    seed: int = 0
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05


DEFAULT_SETTINGS = PretrainSettings()  # what model.pretrained=tiny-synth means


def cache_file(backbone: str, settings: PretrainSettings | None = None) -> Path:
    """Where the weights for ``backbone`` and ``settings`` are cached."""
    from handreid.data.synth import RENDER_VERSION

    settings = settings or DEFAULT_SETTINGS

    doc = {
        "backbone": backbone,
        "version": VERSION,
        "render": RENDER_VERSION,  # the hands it learnt from
        "threads": THREADS,
        **asdict(settings),
    }
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / "pretrained" / f"{backbone}-{SYNTH_PRETRAINED}-{key}.pt"


def ensure_pretrained(backbone: str, settings: PretrainSettings | None = None) -> Path:
    """The cached weights file, pretrained now (once, under a lock) if missing."""
    from filelock import FileLock

    settings = settings or DEFAULT_SETTINGS
    if backbone not in TINY_BACKBONES:
        raise HandReIDError(
            f"model.pretrained={SYNTH_PRETRAINED} exists for {', '.join(TINY_BACKBONES)} only, "
            f"not {backbone}"
        )
    path = cache_file(backbone, settings)
    if path.is_file():
        return path  # built: no lock (a read-only copy may not allow one)
    require(path, f"the {SYNTH_PRETRAINED} weights of {backbone}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            log.info(
                "%s: pretraining %s on %d synthetic hands (once; cached at %s)",
                SYNTH_PRETRAINED,
                backbone,
                settings.ids * settings.per_id * len(settings.aspects),
                path,
            )
            start = time.perf_counter()
            _save(path, pretrain(backbone, settings))
            log.info(
                "%s: %s done in %.0f s", SYNTH_PRETRAINED, backbone, time.perf_counter() - start
            )
    return path


def prepare(pretrained: str, backbones) -> list[Path]:
    """Build the files ``model.pretrained`` = ``pretrained`` needs for ``backbones`` (all a
    search may draw), so a search's driver can build them, logging, before its trials start;
    nothing for any other value of ``pretrained``."""
    if pretrained != SYNTH_PRETRAINED:
        return []
    backbones = list(dict.fromkeys(backbones))
    missing = [b for b in backbones if b in TINY_BACKBONES and not cache_file(b).is_file()]
    workers = min(len(missing), os.cpu_count() or 1)
    if workers > 1:  # each build is single-threaded (THREADS): one process per backbone
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        log.info(
            "%s: pretraining %s in parallel (once; cached in %s)",
            SYNTH_PRETRAINED,
            ", ".join(missing),
            cache_file(missing[0]).parent,
        )
        start = time.perf_counter()
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_build_quietly, missing, [DEFAULT_SETTINGS] * len(missing)))
        log.info("%s: done in %.0f s", SYNTH_PRETRAINED, time.perf_counter() - start)
    return [ensure_pretrained(b) for b in backbones]


def _build_quietly(backbone: str, settings: PretrainSettings) -> str:
    """One backbone's file, in a worker process of :func:`prepare` (no progress bar: the
    parent says what runs; the settings travel, the worker's module has its own defaults)."""
    from filelock import FileLock

    path = cache_file(backbone, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            _save(path, pretrain(backbone, settings, progress=False))
    return str(path)


def _save(path: Path, state: dict[str, torch.Tensor]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


# ------------------------------------------------------------------ data


@dataclass
class Corpus:
    images: torch.Tensor  # (n, 3, H, W) uint8, resized to the model's input
    captions: list[str]
    tokens: torch.Tensor  # (n, context_length)
    caption_ids: torch.Tensor  # (n,) index of the distinct caption: equal captions are positives
    pids: list[str]


def pretraining_hands(settings: PretrainSettings) -> Iterator[Hand]:
    """The generated hands pretraining sees: their own identities (stream and id range)."""
    from handreid.data.synth import hands

    return hands(
        ids=settings.ids,
        per_id=settings.per_id,
        aspects=settings.aspects,
        size=(settings.width, settings.height),
        seed=settings.seed,
        accessory_rate=settings.accessory_rate,
        first_id=PRETRAIN_FIRST_ID,
        stream=PRETRAIN_STREAM,
    )


def build_corpus(settings: PretrainSettings, size: tuple[int, int], tokenizer) -> Corpus:
    """The pretraining images (through a JPEG round trip, as datasets are stored) and captions."""
    from torchvision.transforms import v2

    from handreid.data.synth import caption

    resize = v2.Resize(size, antialias=True)
    images, captions, pids = [], [], []
    for hand in pretraining_hands(settings):
        buf = io.BytesIO()
        hand.image.save(buf, format="JPEG", quality=90)
        arr = np.array(Image.open(buf).convert("RGB"))
        images.append(resize(torch.from_numpy(arr).permute(2, 0, 1)))
        captions.append(caption(hand.row()))
        pids.append(hand.ident.pid)
    distinct = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    return Corpus(
        images=torch.stack(images),
        captions=captions,
        tokens=tokenizer(captions),
        caption_ids=torch.tensor([distinct[c] for c in captions]),
        pids=pids,
    )


# ------------------------------------------------------------------ training


def clip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, caption_ids: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE; pairs with the same caption count as positives (the targets
    are uniform over them), since many images of a batch share a description."""
    logits = logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def pretrain(
    backbone: str, settings: PretrainSettings = PretrainSettings(), *, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Train both towers of a fresh ``backbone`` (QuickGELU, as OpenAI's CLIPs) and return its
    state dict in OpenAI's format. Deterministic for ``settings`` on a given machine, whatever
    the caller's thread count (a Ray trial has 1, a shell all cores) and random state."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # CPU reductions split by thread count: fix it
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            return _pretrain(backbone, settings, progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain(backbone: str, settings: PretrainSettings, progress: bool) -> dict:
    import open_clip
    from tqdm import tqdm

    register_tiny_configs()
    clip = _quiet_create(backbone, None, None, quick_gelu=True)
    pre = preprocess_cfg(clip)
    corpus = build_corpus(settings, pre["size"], open_clip.get_tokenizer(backbone))
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(clip.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(settings.seed)
    n = len(corpus.captions)
    clip.train()
    bar = tqdm(
        range(settings.steps),
        desc=f"pretrain {backbone}",
        disable=not progress or not sys.stderr.isatty(),
    )
    for step in bar:
        idx = torch.randint(n, (settings.batch_size,), generator=gen)
        images = (corpus.images[idx].float() / 255 - mean) / std
        loss = clip_loss(
            clip.encode_image(images),
            clip.encode_text(corpus.tokens[idx]),
            clip.logit_scale,
            corpus.caption_ids[idx],
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, 4.6052)  # CLIP's cap of 100
        if step % 50 == 0 or step == settings.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if bar.disable and progress:
                log.info(
                    "pretrain %s: step %d/%d, loss %.3f",
                    backbone,
                    step + 1,
                    settings.steps,
                    loss.item(),
                )
    return openai_state_dict(clip)


def openai_state_dict(clip) -> dict[str, torch.Tensor]:
    """``clip``'s weights plus the extra entries of OpenAI's releases (see
    :data:`handreid.models.weights.OPENAI_EXTRA_KEYS`)."""
    state = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    state["input_resolution"] = torch.tensor(preprocess_cfg(clip)["size"][0])
    state["context_length"] = torch.tensor(clip.context_length)
    state["vocab_size"] = torch.tensor(clip.vocab_size)
    return state
