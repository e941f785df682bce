"""The folders a command writes to: where a launch's Ray storage lives, and the check that a
folder (storage, a sqlite store's, a report's output) can be written before anything is put there.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tood.config import ConfigError

DEFAULT_STORAGE = "runs/ray"  # relative to the folder the command runs in


def storage_root(path: str | None) -> Path:
    """The folder of a launch's Ray storage (``--storage-path``, default ``<cwd>/runs/ray``), absolute."""
    return Path(path or DEFAULT_STORAGE).resolve()


def _writable_dir(path: Path) -> str | None:
    """Why files cannot be created in ``path`` (made if absent), or None. Probes the nearest
    existing ancestor with a real file, since permission bits do not bind root."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent folder"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".tood-probe-")
    except OSError as e:
        return f"cannot create files in {probe} ({e.strerror})"
    os.close(fd)
    os.unlink(name)
    return None


def check_writable(path: str | Path, flag: str) -> None:
    """ConfigError naming ``flag`` unless ``path`` is (or can be made) a writable folder."""
    why = _writable_dir(Path(path))
    if why is not None:
        raise ConfigError(f"{flag} {path}: not writable: {why} (expected a folder this user can write)")
