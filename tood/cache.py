"""Files made on first use and then reused: the synthetic proxy, the synthetically pre-trained backbone.

Several trials on one machine may ask for the same file at once; :func:`exclusive` makes one of
them build it while the others wait. A file found on disk must have been made by the recipe now
asked for (:func:`require_recipe`), so a changed config never silently reuses stale data.
"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tood.config import ConfigError


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if absent) for the ``with`` body."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def require_recipe(path: Path, made: str, found: Any, key: str, wanted: Any, remedy: str) -> None:
    """Raise a :class:`ConfigError` naming ``path`` and both recipes unless ``found == wanted``."""
    if found != wanted:
        raise ConfigError(f"{path}: {made} with {found} but {key} asks for {wanted} (expected equal: {remedy})")
