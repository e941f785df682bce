"""Whether this machine can join the Ray cluster at an address: something accepts connections
there (within ``CONNECT_TIMEOUT_S``), it answers as a Ray GCS (within ``PROBE_TIMEOUT_S``), and
if it requires token authentication, this machine has a token it accepts. The answer is the
environment a driver needs to join it.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tood.config import ConfigError

CONNECT_TIMEOUT_S = 3.0  # TCP connect to a Ray GCS
PROBE_TIMEOUT_S = 8.0  # a Ray GCS client's first call (a GCS answers in well under a second)


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
