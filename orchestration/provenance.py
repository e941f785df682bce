"""Which code produced a result, and whether a reused result was produced by other code.

A trial's key (:mod:`orchestration.suite`) covers its config and inputs, not the code: a
refactor of ``tood/`` keeps every key, so a store's finished runs stay reusable after it. That
reuse is allowed (it keeps a published store usable across harmless changes) but never silent:
every run records :class:`CodeFingerprint` tags (names in :mod:`orchestration.schema`) and
:func:`staleness` says, for a result produced by other code than the launch that shows it,
"trained by commit abc1234, tood/ changed since in 3 files". ``tood-ablate run --rerun-stale``
retrains exactly those.

What the hash covers: every ``tood/**/*.py`` that shapes a trial's weights or the metrics it
logs (evaluation included: a reused result reports the metrics its own code computed), except
:data:`NOT_TRAINING`. Per-file digests go into a compact JSON tag so that the number of files
that differ comes from the run's tags alone (no artifact download per run).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tood
from orchestration.schema import CODE_COMMIT_TAG, CODE_FILES_TAG, CODE_HASH_TAG, COMMIT_TAG, DIRTY_TAG

PACKAGE = Path(tood.__file__).resolve().parent
# Modules no trial runs, or whose change changes keys rather than results:
NOT_TRAINING = (
    "tood/cli.py",  # the `tood` command's argument parsing
    "tood/detect.py",  # `tood detect` on image files
    "tood/eval/diagnostics.py",  # `tood-ablate diagnose`: measures recomputed from checkpoints, never logged by a trial
    "tood/data/fingerprint.py",  # what a trial key hashes: a change there changes keys, not results
)
# Tests only: comma-separated tood/ paths whose content is taken as changed (their digests are
# salted), to simulate a code change without editing the sources.
PRETEND_ENV = "TOOD_PRETEND_CHANGED"
FILES_TAG_LIMIT = 7500  # MLflow keeps tag values up to 8000 characters; past this the file list is not recorded


@dataclass(frozen=True)
class CodeFingerprint:
    """The code of one process: git ``commit`` ('unknown' outside a checkout), ``dirty``
    (tracked files modified; None when unknown), ``tood_hash`` (16 hex digits over the training
    sources) and ``files`` (repository-relative path -> 12-hex-digit digest; {} when not recorded)."""

    commit: str
    dirty: bool | None
    tood_hash: str
    files: dict[str, str]

    def tags(self) -> dict[str, str]:
        """The run tags that record this fingerprint (the file list left out past ``FILES_TAG_LIMIT``)."""
        files = json.dumps(self.files, sort_keys=True, separators=(",", ":"))
        tags = {CODE_COMMIT_TAG: self.commit, DIRTY_TAG: {True: "true", False: "false"}.get(self.dirty, "unknown"),
                CODE_HASH_TAG: self.tood_hash}
        if len(files) <= FILES_TAG_LIMIT:
            tags[CODE_FILES_TAG] = files
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> CodeFingerprint | None:
        """The fingerprint a run recorded; None for a run from before code hashes were recorded."""
        if CODE_HASH_TAG not in tags:
            return None
        try:
            files = json.loads(tags.get(CODE_FILES_TAG) or "{}")
        except ValueError:
            files = {}
        dirty = {"true": True, "false": False}.get(tags.get(DIRTY_TAG, ""))
        return cls(tags.get(CODE_COMMIT_TAG) or tags.get(COMMIT_TAG) or "unknown", dirty, tags[CODE_HASH_TAG], files)


def training_sources(package: Path = PACKAGE) -> list[Path]:
    """The ``.py`` files of ``package`` (the ``tood`` folder) that the hash covers, sorted."""
    return sorted(p for p in package.rglob("*.py")
                  if "__pycache__" not in p.parts and _relative(p, package) not in NOT_TRAINING)


def _relative(path: Path, package: Path) -> str:
    return f"{package.name}/{path.relative_to(package).as_posix()}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=PACKAGE, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def code_fingerprint() -> CodeFingerprint:
    """This checkout's fingerprint (computed once per process and :data:`PRETEND_ENV` value)."""
    return _fingerprint(os.environ.get(PRETEND_ENV, ""))


@functools.lru_cache(maxsize=4)
def _fingerprint(pretend: str) -> CodeFingerprint:
    salted = {p.strip() for p in pretend.split(",") if p.strip()}
    files = {}
    for path in training_sources():
        name = _relative(path, PACKAGE)
        digest = hashlib.sha256(path.read_bytes() + (b"\0pretend-changed" if name in salted else b""))
        files[name] = digest.hexdigest()[:12]
    text = "\n".join(f"{name} {digest}" for name, digest in sorted(files.items()))
    commit = (_git("rev-parse", "HEAD") or "").strip() or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    return CodeFingerprint(commit, None if status is None else bool(status.strip()),
                           hashlib.sha256(text.encode()).hexdigest()[:16], files)


def changed_files(before: dict[str, str], after: dict[str, str]) -> int:
    """Files added, removed or changed between two per-file digest maps."""
    return sum(before.get(name) != after.get(name) for name in set(before) | set(after))


def staleness(run_tags: dict[str, str], current: CodeFingerprint | None) -> str | None:
    """Why a run's numbers may not be what ``current``'s code would give, or None.

    A run that recorded its code: None when its hash equals ``current``'s, else 'trained by commit
    abc1234, tood/ changed since in 3 files' ('(dirty)' after the commit when its work tree had
    modified files; 'in files not recorded' when either side has no file list). A run from before
    code hashes were recorded: 'trained by commit abc1234 (code hash not recorded)' when its
    commit differs from ``current``'s, else None. ``current`` None (a launch that recorded no
    code): None."""
    if current is None:
        return None
    recorded = CodeFingerprint.from_tags(run_tags)
    if recorded is None:
        commit = run_tags.get(CODE_COMMIT_TAG) or run_tags.get(COMMIT_TAG) or "unknown"
        if commit in ("unknown", current.commit):
            return None
        return f"trained by commit {commit[:7]} (code hash not recorded)"
    if recorded.tood_hash == current.tood_hash:
        return None
    dirty = " (dirty)" if recorded.dirty else ""
    if recorded.files and current.files:
        n = changed_files(recorded.files, current.files)
        where = f"in {n} file{'s' if n != 1 else ''}"
    else:
        where = "in files not recorded"
    return f"trained by commit {recorded.commit[:7]}{dirty}, tood/ changed since {where}"


def stale_keys(finished: dict[str, Any]) -> set[str]:
    """The keys whose finished run (``orchestration.reuse.finished_by_key``'s: key -> MLflow run)
    was trained by other code than this checkout's: what ``--rerun-stale`` retrains."""
    current = code_fingerprint()
    return {key for key, run in finished.items() if staleness(run.data.tags, current)}
