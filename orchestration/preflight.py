"""Checks of a launch's surroundings before any MLflow run or Ray runtime exists.

:func:`check_before_start` turns what would otherwise surface minutes later -- or hang in
Ray's GCS connect or MLflow's HTTP retries -- into one :class:`ConfigError` naming the
flag, the address, folder or file and what was expected: a malformed tracking URI, an
MLflow server that does not answer, a Ray address with nothing listening or a cluster that
wants a token this machine lacks, a storage or store folder that cannot be written, a
dataset that is missing or broken. Each network check is bounded (``CONNECT_TIMEOUT_S``,
``HTTP_TIMEOUT_S``, ``PROBE_TIMEOUT_S``), so a launch that cannot start says so within 15 s.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestration.schema import default_tracking_uri
from tood.config import ConfigError

CONNECT_TIMEOUT_S = 3.0  # TCP connect to a Ray GCS
HTTP_TIMEOUT_S = 5.0  # MLflow server's /health
PROBE_TIMEOUT_S = 8.0  # a Ray GCS client's first call (a GCS answers in well under a second)
TRACKING_FORMS = "sqlite:////abs/path.db, http(s)://host:port, file:/abs/folder or a folder path, databricks"
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy stores, left to MLflow


@dataclass
class Checked:
    """What a launch uses after its checks: the tracking URI with any relative path made
    absolute (trials run in other working directories), and the environment the driver
    needs to join the Ray cluster (``RAY_AUTH_MODE=token`` for a cluster with token auth)."""

    tracking_uri: str
    ray_env: dict[str, str] = field(default_factory=dict)


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


def _absolute(uri: str, flag: str, kind: str, path: str, make_uri) -> str:
    """``make_uri(path)`` with ``path`` absolute; a relative one is resolved against the
    current folder and the change said on stderr."""
    if Path(path).is_absolute():
        return uri
    resolved = make_uri(str(Path(path).resolve()))
    print(f"tood-ablate: {flag}: relative {kind} resolved to {resolved}", file=sys.stderr)
    return resolved


def normalise_tracking_uri(uri: str, flag: str = "--tracking-uri") -> str:
    """``uri`` in one of the accepted forms (``TRACKING_FORMS``) with relative paths made
    absolute (``sqlite:///rel/x.db`` -> ``sqlite:////<cwd>/rel/x.db``); anything else is a
    one-line ConfigError naming ``flag``, the value and the accepted forms."""
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    why = None
    if uri == "databricks" or scheme == "databricks" or scheme.split("+")[0] in DATABASE_SCHEMES:
        return uri
    if scheme == "sqlite":
        rest = uri[len("sqlite:"):]
        slashes = len(rest) - len(rest.lstrip("/"))
        path, _, query = rest[3:].partition("?")
        if slashes >= 3 and path and path != ":memory:":
            return _absolute(uri, flag, "sqlite path", path, lambda p: f"sqlite:///{p}" + (f"?{query}" if query else ""))
        why = (f"malformed sqlite URI: {slashes} slash(es) after 'sqlite:', where three come before a relative path and "
               "four before an absolute one" if slashes < 3 else
               "an in-memory store, gone when the command exits" if path == ":memory:" else "no database path")
    elif scheme in ("http", "https"):
        if parsed.hostname:
            return uri
        why = "no host"
    elif scheme == "file":
        if parsed.netloc in ("", "localhost") and parsed.path:
            return _absolute(uri, flag, "folder", parsed.path, lambda p: Path(p).as_uri())
        why = "malformed file URI"
    elif scheme == "" and uri.strip():
        return _absolute(uri, flag, "folder", uri, lambda p: p)
    else:
        why = f"unknown scheme '{parsed.scheme}'" if parsed.scheme else "empty"
    raise ConfigError(f"{flag} {uri}: {why} (expected one of: {TRACKING_FORMS})")


def check_tracking_uri(uri: str, flag: str = "--tracking-uri") -> str:
    """The URI every later step uses (see :func:`normalise_tracking_uri`), after checking its
    store: an http(s) URI must have an MLflow server answering ``/health``; a sqlite or file
    store needs a writable folder. Databricks and database URIs are left to MLflow."""
    uri = normalise_tracking_uri(uri, flag)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=HTTP_TIMEOUT_S):
                return uri
        except urllib.error.HTTPError:  # it answered (e.g. 401 behind auth): it is there
            return uri
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(f"{flag} {uri}: no MLflow server answers at {health} ({reason}) "
                              f"(expected a running `mlflow server` reachable from this machine)") from None
    if parsed.scheme == "sqlite":
        check_writable(Path(uri[len("sqlite:///"):].partition("?")[0]).parent, flag)
    elif parsed.scheme in ("", "file") and uri != "databricks":
        check_writable(Path(parsed.path or uri), flag)
    return uri


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


def ray_token_source() -> str | None:
    """Where Ray would read this machine's cluster token from ($RAY_AUTH_TOKEN, the file
    $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), or None."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "$RAY_AUTH_TOKEN"
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if path and Path(path).expanduser().is_file() and Path(path).expanduser().read_text().strip():
            return path
    return None


# Run in a child process: Ray reads RAY_AUTH_MODE once per process, and a GCS client in token
# mode without a token aborts its process.
_PROBE = """import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1])
except Exception as e:
    print("auth" if type(e).__name__ == "AuthenticationError" else "error " + (str(e).splitlines() or [type(e).__name__])[0])
else:
    print("ok")
"""


def _probe_gcs(gcs: str, token: bool) -> str:
    """'ok', 'auth' (the GCS refused the request's credentials), 'timeout' or 'error <why>'."""
    env = {**os.environ, "RAY_AUTH_MODE": "token" if token else "disabled"}
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, gcs], env=env, capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "timeout"
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else f"error exit status {out.returncode}"


def _ray_auth_env(gcs: str, flag: str, address: str) -> dict[str, str]:
    """The environment a driver needs to join the GCS at ``gcs``: ``RAY_AUTH_MODE=token`` when
    the cluster requires a token (``ray start --head`` enables token auth whenever a token
    exists on the head), nothing otherwise. The GCS is asked once without a token, like
    ``ray.init(address=host:port)`` would, and once with this machine's token."""
    where = f"{flag} {address}: the Ray cluster at {gcs}"
    without = _probe_gcs(gcs, token=False)
    if without == "ok":
        return {}
    if without != "auth":
        why = f"no answer within {PROBE_TIMEOUT_S:.0f} s" if without == "timeout" else without[len("error "):]
        raise ConfigError(f"{where} does not answer as a Ray GCS ({why}) (expected the GCS port of a running Ray head)")
    source = ray_token_source()
    if source is None:
        raise ConfigError(f"{where} requires token authentication and this machine has no token (expected "
                          "RAY_AUTH_TOKEN=<the head's token, from `ray get-auth-token` there>, or the head's "
                          "~/.ray/auth_token copied to this machine)")
    if _probe_gcs(gcs, token=True) != "ok":
        raise ConfigError(f"{where} rejects the token from {source} (expected the token the head was started with: "
                          "`ray get-auth-token` on the head prints it)")
    return {"RAY_AUTH_MODE": "token"}


def check_ray_address(address: str | None, flag: str = "--address") -> dict[str, str]:
    """The environment the driver needs to join ``address`` (see :func:`_ray_auth_env`).
    ``None`` (a local runtime) needs nothing; ``auto`` must find a running cluster the way
    ``ray.init`` does; ``host:port`` / ``ray://host:port`` must accept a TCP connection. A
    Ray Client address (``ray://``) cannot be asked cheaply: token mode is set whenever a
    token is available."""
    if not address:
        return {}
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            found = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as e:
            raise ConfigError(f"{flag} auto: no running Ray cluster found on this machine ({str(e).splitlines()[0]}) "
                              "(expected `ray start --head` first, or --address host:port)") from None
        _connect(*_split_host_port(found, flag), flag, f"auto ({found})")
        return _ray_auth_env(found, flag, f"auto ({found})")
    if address.startswith("ray://"):
        _connect(*_split_host_port(address[len("ray://"):], flag), flag, address)
        return {"RAY_AUTH_MODE": "token"} if ray_token_source() else {}
    _connect(*_split_host_port(address, flag), flag, address)
    return _ray_auth_env(address, flag, address)


def dataset_cache_file() -> Path:
    """Where :func:`check_dataset` remembers the splits it validated: ``datasets.json`` beside
    the content-digest cache of :mod:`tood.data.fingerprint` (``~/.cache/tood-ablate/`` unless
    ``$TOOD_FINGERPRINT_CACHE`` moves it), keyed by the digests of the annotation file and of
    the image folder's listing, and the split."""
    from tood.data.fingerprint import cache_path

    return cache_path().with_name("datasets.json")


def check_dataset(ann: Path, images: Path, train: bool, quiet: bool = True) -> int:
    """The number of categories of the COCO split ``ann`` / ``images``, after
    :func:`tood.data.coco.validate_coco` accepted it (raises its DatasetError). A split with
    the same content as one validated before is not read again: the annotation file's digest
    costs a stat while its path, size, mtime, ctime and inode stay (the fingerprint cache), the
    image folder's a listing; COCO train's 118k image headers take minutes to check."""
    from tood.data.coco import load_coco_json, validate_coco
    from tood.data.fingerprint import DigestCache, image_set_digest

    try:
        digests = DigestCache()
        key = json.dumps([digests.digest(ann), image_set_digest(images), train])
        digests.save()
    except OSError:
        key = None  # missing or unreadable: validate_coco says what
    try:
        known = json.loads(dataset_cache_file().read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    if key and not quiet:
        print(f"tood-ablate: validating {ann} and {images} (once: remembered in {dataset_cache_file()})", file=sys.stderr)
    _, cat_ids, _ = validate_coco(load_coco_json(ann), ann, images, train)
    if key:
        try:
            dataset_cache_file().parent.mkdir(parents=True, exist_ok=True)
            tmp = dataset_cache_file().with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({**known, key: len(cat_ids)}, indent=1))
            os.replace(tmp, dataset_cache_file())
        except OSError:
            pass  # a cache that cannot be written costs a validation next time, nothing more
    return len(cat_ids)


def check_datasets(specs: list, quiet: bool = True) -> None:
    """Every split the trials of ``specs`` read from disk (not synthetic: the driver generates
    those), found, parsed and validated in this process (:func:`check_dataset`), each distinct
    one once, and its category count equal to the trial's ``model.num_classes``."""
    from tood.config import build_config
    from tood.data.coco import DatasetError
    from tood.data.loaders import split_paths

    seen: set[tuple[Path, Path, bool, int]] = set()
    for spec in specs:
        if spec.config["data"].get("synthetic") is not None:
            continue
        data = build_config(spec.config, f"trial {spec.name}").data
        for train in (True, False):
            ann, images = split_paths(data, train)
            classes = spec.config["model"]["num_classes"]
            if (ann, images, train, classes) in seen:
                continue
            seen.add((ann, images, train, classes))
            field_name = "data.train_ann" if train else "data.val_ann"
            try:
                found = check_dataset(ann, images, train, quiet)
            except DatasetError as e:
                head, *problems = str(e).splitlines()  # several problems: one a line, after a head line
                text = " ".join([head, "; ".join(p.strip() for p in problems)]).strip()
                raise ConfigError(f"{field_name}: {text} (trial {spec.name}; data.root {data.root}: --set data.root=PATH "
                                  "points the grid at the dataset)") from None
            if found != classes:
                raise ConfigError(f"{ann}: has {found} categories but model.num_classes is {classes} "
                                  f"(expected equal; set --set model.num_classes={found})")


def check_before_start(opts: Any, specs: list) -> Checked:
    """Everything a launch of ``specs`` (:class:`orchestration.grid.TrialSpec`) with ``opts``
    (:class:`orchestration.launch.LaunchOptions`) needs from outside, checked before any MLflow
    run is created and before Ray starts; raises :class:`ConfigError`."""
    check_writable(storage_root(opts.storage_path), "--storage-path")
    if opts.tracking_uri:
        uri = check_tracking_uri(opts.tracking_uri, "--tracking-uri")
    else:
        flag = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default tracking store"
        uri = check_tracking_uri(default_tracking_uri(), flag)
    ray_env = check_ray_address(opts.address, "--address")
    for root in sorted({s.config["data"]["root"] for s in specs if s.config["data"].get("synthetic") is not None}):
        if not (Path(root) / ".synth.lock").exists():  # generated by the driver before trials start
            check_writable(root, "data.root of the grid's trials")
    check_datasets(specs, quiet=opts.quiet)
    return Checked(uri, ray_env)
