"""The cache of built inputs: generated data, pretrained weights, stage-1 results.

``cache_root()`` is ``$HANDREID_CACHE``, else ``~/.cache/handreid``. Whoever needs an input
builds it there on first use (under a file lock), except inside ``read_only(root, fix)``:
there ``cache_root()`` is ``root``, a cache someone else filled, and an input missing
from it is refused (``require``) with one line that names the file and ``fix`` (what to
change), instead of being generated, pretrained or downloaded. A search's trials run so:
the driver builds everything once and every node reads its copy (``search.assets``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from handreid.errors import HandReIDError

_shared: tuple[Path, str] | None = None  # (root, fix) while read_only is entered


class NotPrepared(HandReIDError):
    """An input that a read-only cache should hold is not there."""


def cache_root() -> Path:
    if _shared is not None:
        return _shared[0]
    return Path(os.environ.get("HANDREID_CACHE", Path.home() / ".cache" / "handreid"))


def may_build() -> bool:
    """False inside ``read_only``: inputs come from the cache or not at all."""
    return _shared is None


def require(path: Path, what: str) -> None:
    """Refuse to build ``what`` (to be at ``path``) inside ``read_only``; no-op outside."""
    if _shared is not None:
        fix = _shared[1]
        raise NotPrepared(f"{what} is not at {path} (not prepared, or not visible here); {fix}")


@contextmanager
def read_only(root: str | Path, fix: str) -> Iterator[Path]:
    """Use ``root`` as the cache, read only, in this process; ``fix`` completes the line of
    a refusal (e.g. which setting makes the file visible)."""
    global _shared
    before, _shared = _shared, (Path(root), fix)
    try:
        yield Path(root)
    finally:
        _shared = before
