"""Checks of a launch's surroundings before any MLflow run or Ray runtime exists.

:func:`check_before_start` turns what would otherwise surface minutes later -- or hang in
Ray's GCS connect or MLflow's HTTP retries -- into one :class:`ConfigError` naming the
flag, the address or folder and what was expected: an MLflow server that does not answer,
a Ray address with nothing listening, a storage or store folder that cannot be written.
Each network check is bounded (``CONNECT_TIMEOUT_S``, ``HTTP_TIMEOUT_S``), so a launch
that cannot start says so within 15 s.
"""
from __future__ import annotations

import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from orchestration.schema import default_tracking_uri
from tood.config import ConfigError

CONNECT_TIMEOUT_S = 3.0  # TCP connect to a Ray GCS
HTTP_TIMEOUT_S = 5.0  # MLflow server's /health


def storage_root(path: str | None) -> Path:
    """The folder of a launch's Ray storage (``--storage-path``, default ``<cwd>/runs/ray``), absolute."""
    return Path(path or "runs/ray").resolve()


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


def check_tracking_uri(uri: str, flag: str = "--tracking-uri") -> None:
    """An http(s) URI must have an MLflow server answering ``/health``; a sqlite or file
    store needs a writable folder. Other schemes (databricks, ...) are left to MLflow."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=HTTP_TIMEOUT_S):
                return
        except urllib.error.HTTPError:  # it answered (e.g. 401 behind auth): it is there
            return
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(f"{flag} {uri}: no MLflow server answers at {health} ({reason}) "
                              f"(expected a running `mlflow server` reachable from this machine)") from None
    elif parsed.scheme == "sqlite":
        db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if db and db != ":memory:":
            check_writable(Path(db).parent, flag)
    elif parsed.scheme in ("", "file"):
        check_writable(Path(parsed.path or uri), flag)


def _split_host_port(address: str, flag: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {address}: malformed address (expected auto, host:port or ray://host:port)")
    return host.strip("[]"), int(port)


def _connect(host: str, port: int, flag: str, address: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else e.strerror or str(e)
        raise ConfigError(f"{flag} {address}: nothing accepts connections at {host}:{port} ({reason}) "
                          f"(expected the GCS port of a running Ray head, e.g. `ray start --head --port={port}`)") from None


def check_ray_address(address: str | None, flag: str = "--address") -> None:
    """``None`` (a local runtime) needs nothing; ``auto`` must find a running cluster the way
    ``ray.init`` does; ``host:port`` / ``ray://host:port`` must accept a TCP connection."""
    if not address:
        return
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            found = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as e:
            raise ConfigError(f"{flag} auto: no running Ray cluster found on this machine ({str(e).splitlines()[0]}) "
                              "(expected `ray start --head` first, or --address host:port)") from None
        _connect(*_split_host_port(found, flag), flag, f"auto ({found})")
        return
    bare = address[len("ray://"):] if address.startswith("ray://") else address
    _connect(*_split_host_port(bare, flag), flag, address)


def check_before_start(opts: Any, specs: list) -> None:
    """Everything a launch of ``specs`` (:class:`orchestration.grid.TrialSpec`) with ``opts``
    (:class:`orchestration.launch.LaunchOptions`) needs from outside, checked before any MLflow
    run is created and before Ray starts; raises :class:`ConfigError`."""
    check_writable(storage_root(opts.storage_path), "--storage-path")
    if opts.tracking_uri:
        check_tracking_uri(opts.tracking_uri, "--tracking-uri")
    else:
        flag = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default tracking store"
        check_tracking_uri(default_tracking_uri(), flag)
    check_ray_address(opts.address, "--address")
    for root in sorted({s.config["data"]["root"] for s in specs if s.config["data"].get("synthetic") is not None}):
        if not (Path(root) / ".synth.lock").exists():  # generated by the driver before trials start
            check_writable(root, "data.root of the grid's trials")
