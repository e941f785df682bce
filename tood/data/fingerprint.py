"""Content fingerprints of the files a training config reads through a path.

A config that names its data by a path (``data.root`` with ``data.synthetic`` null) or its
backbone weights by a file (``model.backbone.pretrained`` with ``model.backbone.pretrain``
null) says nothing about what the path holds. :func:`fingerprint_inputs` gives one hex digest
per such input, so a key built from the config and the digests changes when the data or the
weights change at the same path. Inputs that the config itself describes (the synthetic
generator's recipe, the synthetic pre-training recipe) get no fingerprint: the recipe is the
fingerprint, and a file made by another recipe is an error where it is used.

What is hashed:

- an annotation file (``data.train_ann``, ``data.val_ann`` under ``data.root``) and the weights
  file: SHA-256 of the bytes. A relabelled box changes the digest; a ``touch`` does not.
- an image folder (``data.train_images``, ``data.val_images``): SHA-256 of the sorted listing of
  every file below it (symlinks followed), one ``relative/path <size> <mtime_ns>`` line each.
  Image bytes are NOT read: COCO train2017 is 118k files and 18 GB, a listing costs one stat
  per file. The trade-off: an image replaced by another of the same size with the old
  modification time kept (``cp -p``, ``rsync -t``) goes unnoticed, and an image touched
  without a change in content changes the digest (the trial trains again: conservative).

Content digests are cached in a JSON file (:func:`cache_path`) by absolute path, size,
modification and status-change times (ns) and inode, so a 450 MB COCO annotation file is read
once and then costs a stat. The status-change time and the inode catch a file replaced with
its old size and modification time kept (nothing can set them back). A file changed less
than :data:`RACY_NS` before it was hashed is not cached: a second write within the file
system's timestamp granularity could leave every stat field unchanged.

Missing inputs get the digest :data:`MISSING` and unreadable ones ``unreadable: <error>``
(the launch's preflight and the trial report them).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

MISSING = "missing"
CACHE_ENV = "TOOD_FINGERPRINT_CACHE"
CACHE_VERSION = 1
RACY_NS = 2_000_000_000  # FAT and some network file systems stamp times to 2 s
CHUNK = 1 << 20  # bytes read at a time


def cache_path() -> Path:
    """The digest cache: ``$TOOD_FINGERPRINT_CACHE`` or ``~/.cache/tood-ablate/fingerprints.json``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache/tood-ablate/fingerprints.json")


def hash_bytes(path: Path) -> str:
    """SHA-256 hex digest of the bytes of ``path`` (every read of a file's content goes here)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class DigestCache:
    """Content digests by absolute path, valid while the file's :func:`_signature` is unchanged.
    Read from :func:`cache_path` on creation, written back by :meth:`save` when it changed; an
    unreadable cache counts as empty and an unwritable one is skipped (it only saves time)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_path()
        self.entries = self._load()
        self.added: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        ok = isinstance(data, dict) and data.get("version") == CACHE_VERSION and isinstance(data.get("files"), dict)
        return data["files"] if ok else {}

    def digest(self, path: Path) -> str:
        """SHA-256 of the file at ``path``, from the cache when its signature matches."""
        name = os.path.abspath(path)
        st = os.stat(name)
        entry = self.entries.get(name)
        if isinstance(entry, dict) and entry.get("stat") == _signature(st):
            return entry["sha256"]
        digest = hash_bytes(Path(name))
        after = os.stat(name)
        settled = time.time_ns() - max(after.st_mtime_ns, after.st_ctime_ns) >= RACY_NS
        if _signature(after) == _signature(st) and settled:  # not changed while or just before it was read
            self.entries[name] = self.added[name] = {"stat": _signature(st), "sha256": digest}
        return digest

    def save(self) -> None:
        """Merge the new digests into the cache file (atomic replace; another writer's entries kept)."""
        if not self.added:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            files = {**self._load(), **self.added}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": CACHE_VERSION, "files": files}, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError:
            return
        self.added = {}


def image_set_digest(folder: Path) -> str:
    """SHA-256 of the sorted ``relative/path <size> <mtime_ns>`` lines of every file below
    ``folder`` (symlinks followed; a dangling one lists size and time -1). No image is read."""
    lines, seen = [], set()
    stack = [(str(folder), "")]  # (directory, its path relative to folder with a trailing /)
    while stack:
        d, prefix = stack.pop()
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir():
                    stack.append((e.path, f"{prefix}{e.name}/"))
                    continue
                try:
                    s = e.stat()
                    size, mtime = s.st_size, s.st_mtime_ns
                except OSError:
                    size = mtime = -1
                lines.append(f"{prefix}{e.name} {size} {mtime}\n")
    lines.sort()
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def path_inputs(cfg: dict[str, Any]) -> dict[str, tuple[str, Path]]:
    """Input name -> (kind ``"file"`` or ``"images"``, path) of what ``cfg`` (a plain dict of
    ``tood.config.Config``) reads through a path it does not describe; paths as the COCO loader
    (:func:`tood.data.loaders.split_paths`) and :func:`tood.build.build_model` open them."""
    data, backbone = cfg.get("data", {}), cfg.get("model", {}).get("backbone", {})
    out: dict[str, tuple[str, Path]] = {}
    if "root" in data and data.get("synthetic") is None:  # (a partial config without data reads nothing)
        root = Path(data["root"])
        for split in ("train", "val"):
            out[f"{split}_ann"] = ("file", root / data[f"{split}_ann"])
            out[f"{split}_images"] = ("images", root / data[f"{split}_images"])
    if backbone.get("pretrained") and backbone.get("pretrain") is None:
        out["pretrained"] = ("file", Path(backbone["pretrained"]))
    return out


def fingerprint_inputs(cfg: dict[str, Any], memo: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
    """Input name (``train_ann``, ``train_images``, ``val_ann``, ``val_images``, ``pretrained``)
    -> hex digest, or :data:`MISSING`, for the inputs of :func:`path_inputs`; empty for a config
    with synthetic data and no weights file.

    ``memo`` (optional, kept by the caller) reuses digests across the configs of one call site,
    so a grid of many trials on COCO lists its 118k images once rather than once per trial;
    only pass one where the files cannot change between the calls.
    """
    wanted = path_inputs(cfg)
    if not wanted:
        return {}
    memo = {} if memo is None else memo
    cache = None
    out = {}
    for name, (kind, path) in wanted.items():
        slot = (kind, os.path.abspath(path))
        if slot not in memo:
            try:
                if kind == "images":
                    memo[slot] = image_set_digest(path) if path.is_dir() else MISSING
                else:
                    cache = cache or DigestCache()
                    memo[slot] = cache.digest(path) if path.is_file() else MISSING
            except OSError as e:  # unreadable: the trial will fail on it, and say so
                memo[slot] = f"unreadable: {type(e).__name__}"
        out[name] = memo[slot]
    if cache is not None:
        cache.save()
    return out
