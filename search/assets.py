"""What every trial reads, made once by the driver where every node sees it.

Before any trial, and again on a resume, ``prepare_assets`` builds in the driver's own
cache (``$HANDREID_CACHE``, kept between runs) what the space's trials read: the generated
data, the ``tiny-synth`` towers and the weights of a ``model.pretrained`` tag such as
``openai`` (one download, ``handreid.models.weights.fetch_pretrained``), for every
backbone the space may draw. It puts them, in the cache's own layout, in
``<experiment>/assets`` on the run's storage: hard links (or copies) with a storage path,
which every node mounts; an upload with an object-store URI, which each node copies once
into its own cache (``localize``). ``manifest.json``, written last, lists the files.

Trials and test evaluations enter ``attached``: the folder is their cache, read only
(``handreid.cache.read_only``). They never generate data, pretrain or download; a node that
cannot see a file fails at once, in one line naming the path and the setting to change.
The user's own paths (``data.root``, ``data.prepared``, a ``model.pretrained`` file) are
checked the same way (``check_visible``); the stage-1 cache is ``<run dir>/stage1_cache``
(``search.launch.make_trainable``), on the same storage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from handreid.cache import NotPrepared, cache_root, read_only
from search.rundir import SearchOptions, experiment_path, is_uri
from search.space import SearchSpace

log = logging.getLogger(__name__)

ASSETS = "assets"
MANIFEST = "manifest.json"
SHARED = (
    "--storage must be a folder that every node mounts at the same path (NFS), or an "
    "object-store URI"
)


def assets_location(opts: SearchOptions) -> str:
    """``<experiment>/assets``: a folder, or a URI with URI storage."""
    return f"{experiment_path(opts).rstrip('/')}/{ASSETS}"


# ------------------------------------------------------------------ the driver


def prepare_assets(space: SearchSpace, opts: SearchOptions) -> str:
    """Build what the trials read and put it at ``assets_location(opts)``; returns it. A
    location whose manifest already lists what this space's trials read (a resume, maybe
    on a new head) is used as it is: nothing is built again."""
    location = assets_location(opts)
    root = cache_root()
    entries = [str(p.relative_to(root)) for p in wanted(space)]
    if read_manifest(location).get("entries") == entries and complete(location):
        return location
    built = build(space)
    files = {str(f.relative_to(root)): f.stat().st_size for p in built for f in walk(p)}
    if is_uri(location):
        upload(root, entries, location)
    else:
        place(root, entries, Path(location))
    write_manifest(location, {"entries": entries, "files": files})
    log.info("the trials' inputs (%d files) are at %s", len(files), location)
    return location


def complete(location: str) -> bool:
    """Every file the manifest lists is there (not checked on an object store)."""
    files = read_manifest(location).get("files", {})
    return is_uri(location) or all((Path(location) / rel).is_file() for rel in files)


def wanted(space: SearchSpace) -> list[Path]:
    """Where in the driver's cache the trials' inputs are (built or not): the generated
    data, and the pretrained weights of every backbone the space may draw."""
    from handreid.data.build import synthetic_dir
    from handreid.models.pretrain_tiny import cache_file
    from handreid.models.registry import SYNTH_PRETRAINED
    from handreid.models.weights import fetched_file, is_checkpoint_path

    cfg = space.trial_config({})
    out = [] if (cfg.data.root or cfg.data.prepared) else [synthetic_dir(cfg.data.synth)]
    pretrained = cfg.model.pretrained
    if pretrained == SYNTH_PRETRAINED:
        out += [cache_file(b) for b in backbones(space)]
    elif pretrained not in ("none", "", None) and not is_checkpoint_path(pretrained):
        out += [fetched_file(b, pretrained) for b in backbones(space)]
    return out


def build(space: SearchSpace) -> list[Path]:
    """Build (or find) in the driver's cache what ``wanted`` names."""
    from handreid.data.build import resolve_root
    from handreid.models import pretrain_tiny
    from handreid.models.registry import SYNTH_PRETRAINED
    from handreid.models.weights import fetch_pretrained, is_checkpoint_path

    cfg = space.trial_config({})
    out: list[Path] = []
    if not (cfg.data.root or cfg.data.prepared):
        out.append(resolve_root(cfg.data))  # the generated data
    pretrained = cfg.model.pretrained
    if pretrained == SYNTH_PRETRAINED:  # in parallel, one process per backbone
        out += pretrain_tiny.prepare(pretrained, backbones(space))
    elif pretrained not in ("none", "", None) and not is_checkpoint_path(pretrained):
        out += [fetch_pretrained(b, pretrained, cfg.model.cache_dir) for b in backbones(space)]
    return out


def backbones(space: SearchSpace) -> list[str]:
    """Every backbone a trial of the space may train."""
    for param in space.params:
        if param.key == "model.backbone":
            return list(dict.fromkeys(c for branch in param.branches for c in branch.choices))
    return [space.trial_config({}).model.backbone]


def walk(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def place(root: Path, entries: list[str], dest: Path) -> None:
    """Hard-link (or copy, across filesystems) each entry of ``root`` into ``dest``."""
    for entry in entries:
        for src in walk(root / entry):
            target = dest / src.relative_to(root)
            if target.is_file() and target.stat().st_size == src.stat().st_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:  # another filesystem (or no hard links there)
                shutil.copy2(src, tmp)
            tmp.replace(target)


def upload(root: Path, entries: list[str], location: str) -> None:
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(location)
    for entry in entries:
        fs.create_dir(f"{base}/{entry}".rsplit("/", 1)[0], recursive=True)
        pyarrow.fs.copy_files(str(root / entry), f"{base}/{entry}", destination_filesystem=fs)


def read_manifest(location: str) -> dict[str, Any]:
    """The manifest at ``location``, or {} where there is none (or it cannot be read)."""
    try:
        if not is_uri(location):
            return json.loads((Path(location) / MANIFEST).read_text())
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(location)
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            return json.loads(f.readall())
    except (OSError, ValueError):
        return {}


def write_manifest(location: str, doc: dict[str, Any]) -> None:
    text = json.dumps(doc, indent=1, sort_keys=True)
    if is_uri(location):
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(location)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{MANIFEST}") as f:
            f.write(text.encode())
        return
    Path(location).mkdir(parents=True, exist_ok=True)
    tmp = Path(location) / (MANIFEST + ".tmp")
    tmp.write_text(text)
    tmp.replace(Path(location) / MANIFEST)


# ------------------------------------------------------------------ a trial


@contextmanager
def attached(location: str | None, cfg) -> Iterator[None]:
    """Inside: the run's assets are this process's cache, read only, and ``cfg``'s own
    paths are checked to be visible here. ``location`` None: the process's own cache."""
    check_visible(cfg)
    if location is None:
        yield
        return
    root = localize(location) if is_uri(location) else check_assets(Path(location), SHARED)
    fix = f"the driver prepares it before any trial ({SHARED})"
    with read_only(root, fix):
        yield


def node() -> str:
    try:
        import ray

        return f"node {ray.util.get_node_ip_address()}"
    except Exception:  # not in Ray
        return "this node"


def check_assets(root: Path, fix: str) -> Path:
    """``root``, once every file its manifest lists is visible here."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise NotPrepared(f"{node()} cannot see the run's inputs at {manifest}; {fix}")
    for rel in json.loads(manifest.read_text())["files"]:
        if not (root / rel).is_file():
            raise NotPrepared(f"{node()} cannot see {root / rel}, one of the run's inputs; {fix}")
    return root


def localize(location: str) -> Path:
    """A copy of the assets at URI ``location`` in this node's cache, made once (a lock
    keeps the trials of one node from copying it twice) and again when they change."""
    from filelock import FileLock

    remote = read_manifest(location)
    if not remote:
        raise NotPrepared(
            f"{node()} cannot read the run's inputs at {location}/{MANIFEST}; the driver "
            f"writes them there before any trial (check that every node can reach the storage)"
        )
    local = cache_root() / ASSETS / hashlib.sha256(location.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local) + ".lock"):
        if read_manifest(str(local)) != remote:
            (local / MANIFEST).unlink(missing_ok=True)
            _download(location, remote["entries"], local)
            write_manifest(str(local), remote)
    return check_assets(local, f"copied from {location}; delete {local} to copy it again")


def _download(location: str, entries: list[str], local: Path) -> None:
    import pyarrow.fs

    for entry in entries:
        target = local / entry
        if target.is_dir():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(f"{location}/{entry}", str(target))


def check_visible(cfg) -> None:
    """The config's own inputs (not built by the driver) are visible on this node."""
    from handreid.data.hands11k import CSV_NAME
    from handreid.models.weights import is_checkpoint_path

    where = "mount it at the same path on every node"
    needed = []
    if cfg.data.prepared:
        needed.append((Path(cfg.data.prepared) / CSV_NAME, "data.prepared"))
    elif cfg.data.root:
        needed.append((Path(cfg.data.root) / CSV_NAME, "data.root (--data-root)"))
    if is_checkpoint_path(cfg.model.pretrained):
        needed.append((Path(cfg.model.pretrained), "model.pretrained"))
    for path, setting in needed:
        if not path.is_file():
            raise NotPrepared(f"{node()} cannot see {path}: {where}, or change {setting}")
