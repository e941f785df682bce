"""Tracking URIs as given on the command line, in the environment or in a launch's record:
checked against the forms MLflow accepts, with relative paths made absolute (trials run in
other working directories), and the store behind one checked before it is used: a server must
answer within ``HTTP_TIMEOUT_S``, a sqlite or file store needs a folder this user can write.
"""
from __future__ import annotations

import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from orchestration.folders import check_writable
from tood.config import ConfigError

HTTP_TIMEOUT_S = 5.0  # MLflow server's /health
TRACKING_FORMS = "sqlite:////abs/path.db, http(s)://host:port, file:/abs/folder or a folder path, databricks"
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy stores, left to MLflow


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
