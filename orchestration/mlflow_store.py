"""Talking to an MLflow store that other processes share.

Trials, the driver and other launches write to one store at once, so every call that can meet
a locked sqlite file or a restarting tracking server goes through :func:`retry`; a sqlite store
is created under a file lock and switched to WAL mode before anyone writes to it. Small
artifacts (a grid, a config, final metrics) are written through :func:`log_yaml`.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from mlflow.tracking import MlflowClient

T = TypeVar("T")

TRANSIENT = ("locked", "Connection refused", "Max retries exceeded", "Connection reset", "Connection aborted",
             "RemoteDisconnected", "Read timed out", "503 Service Unavailable", "502 Bad Gateway")
RETRY_BUDGET_S = 60.0  # how long a trial waits for a locked store or a restarting server


def retry(fn: Callable[..., T], *args: Any, budget_s: float | None = None, **kwargs: Any) -> T:
    """Call an MLflow client method, retrying with bounded backoff (0.1 s doubling to 5 s, at
    most ``budget_s``, default ``RETRY_BUDGET_S``) while a sqlite store is locked by another
    trial or the tracking server cannot be reached; other errors, and the last one, propagate.
    Only idempotent calls go through here (a metric batch keeps its timestamps)."""
    deadline = time.monotonic() + (RETRY_BUDGET_S if budget_s is None else budget_s)
    delay = 0.1
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # sqlalchemy's OperationalError / requests' ConnectionError arrive wrapped or bare
            if not any(t in str(e) for t in TRANSIENT) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def enable_wal(tracking_uri: str) -> None:
    """Put a sqlite store in WAL mode (persistent in the file): readers no longer block the
    writer, so concurrent trials wait less on "database is locked" (MLflow itself sets a
    20 s busy timeout; :func:`retry` covers what is left)."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    with contextlib.closing(sqlite3.connect(tracking_uri[len("sqlite:///"):], timeout=30)) as db:
        db.execute("PRAGMA journal_mode=WAL")


STORE_LOCK_SUFFIX = ".lock"  # beside a sqlite store: the file that serialises its creation


def prepare_store(tracking_uri: str) -> None:
    """Create (migrate) a sqlite store and put it in WAL mode under an exclusive ``flock`` of
    ``<store>.lock``: two launches creating one fresh store at once otherwise race in MLflow's
    schema migration (``alembic ... CommandError: Online migration expected to match one row``).
    Other stores are left to MLflow (a server migrates its own database once, at its start).
    Call it before the first ``MlflowClient(tracking_uri)`` of a process: the client opens (and
    creates) the store when it is constructed."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    import fcntl

    db = Path(tracking_uri[len("sqlite:///"):].partition("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would
    with open(str(db) + STORE_LOCK_SUFFIX, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            retry(MlflowClient(tracking_uri).search_experiments, max_results=1)
            enable_wal(tracking_uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def log_yaml(client: MlflowClient, run_id: str, name: str, data: Any) -> None:
    """Log ``data`` as the artifact file ``name`` of run ``run_id``: YAML for a ``.yaml`` name, JSON otherwise."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(yaml.safe_dump(data, sort_keys=False) if name.endswith(".yaml") else json.dumps(data, indent=2))
        retry(client.log_artifact, run_id, str(path))
