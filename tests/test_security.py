"""Security defaults: the local Ray runtime listens on loopback only, secret-looking params
are masked before they reach MLflow, and MLflow calls survive a short outage (bounded)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestration.masking import MASK, is_secret_name, mask_nested, mask_secrets
from orchestration.mlflow_store import retry

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["token", "auth_token", "db.password", "mlflow.client_secret", "s3.access_key",
                                  "api_key", "api-key", "key", "aws.secret_access_key", "credentials.file", "apikey"])
def test_secret_names_are_masked(name):
    assert is_secret_name(name)
    assert mask_secrets({name: "hunter2", "train.lr": 0.01}) == {name: MASK, "train.lr": 0.01}
    *parents, leaf = name.split(".")  # the same name nested, as in the config.yaml artifact
    nested: dict = {leaf: "hunter2"}
    for p in reversed(parents):
        nested = {p: nested}
    assert mask_nested({"train": {"lr": 0.01}, **nested}) == {"train": {"lr": 0.01}, **_replace_leaf(nested, MASK)}


def _replace_leaf(d: dict, value):
    return {k: _replace_leaf(v, value) if isinstance(v, dict) else value for k, v in d.items()}


@pytest.mark.parametrize("name", ["criterion.topk", "criterion.atss_topk", "trial_key", "tood.trial_key", "keypoints",
                                  "monkey", "tokenizer_width", "model.head.type", "train.seed"])
def test_ordinary_names_are_kept(name):
    assert not is_secret_name(name)
    assert mask_secrets({name: 3}) == {name: 3}


class Flaky:
    """Raises ``error`` the first ``n`` calls, then returns the number of calls."""

    def __init__(self, n: int, error: Exception):
        self.n, self.error, self.calls = n, error, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.n:
            raise self.error
        return self.calls


def test_retry_rides_out_connection_errors_and_locks_within_its_budget():
    refused = Exception("API request to http://127.0.0.1:5/api/2.0/mlflow/runs/log-batch failed: Max retries exceeded "
                        "with url (Caused by NewConnectionError(... [Errno 111] Connection refused))")
    assert retry(Flaky(3, refused), budget_s=10) == 4
    assert retry(Flaky(2, Exception("(sqlite3.OperationalError) database is locked")), budget_s=10) == 3


def test_retry_gives_up_after_its_budget_and_on_other_errors():
    f = Flaky(10**6, Exception("Connection refused"))
    with pytest.raises(Exception, match="Connection refused"):
        retry(f, budget_s=1.0)
    assert 3 <= f.calls <= 6  # 0.1 + 0.2 + 0.4 s of backoff fit in 1 s, 0.8 more do not
    g = Flaky(1, ValueError("RESOURCE_DOES_NOT_EXIST: run 'x' not found"))
    with pytest.raises(ValueError):
        retry(g, budget_s=10)
    assert g.calls == 1


def _listening() -> dict[int, list[str]]:
    """pid -> local addresses of its listening TCP sockets (``ss -ltnpH``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found: dict[int, list[str]] = {}
    for line in out.splitlines():
        fields = line.split()
        for part in line.split("pid=")[1:]:
            found.setdefault(int(part.split(",")[0]), []).append(fields[3])
    return found


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])  # the field after the state; comm may hold spaces
        children.setdefault(ppid, []).append(int(text.split()[0]))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out


@pytest.mark.slow
def test_local_ray_runtime_listens_on_loopback_only(tmp_path):
    """Start the tool's local runtime in a child process and list every listening socket of
    that process and its descendants (GCS, raylet, workers, agents) while a task runs."""
    script = textwrap.dedent("""
        import os, sys, time
        from orchestration.tuner import ray_runtime
        import ray
        with ray_runtime(None, True):
            @ray.remote
            def pid():
                return os.getpid()
            print(ray.get(pid.remote()), ray.nodes()[0]["NodeManagerAddress"], flush=True)
            sys.stdin.readline()  # the test lists the sockets, then lets the runtime stop
    """)
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "RAY_USAGE_STATS_ENABLED": "0",
           "TOOD_RAY_OBJECT_STORE_MB": "100", "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        worker, node_ip = proc.stdout.readline().split()
        tree = _descendants(proc.pid)
        assert int(worker) in tree and node_ip == "127.0.0.1"
        mine = {pid: addrs for pid, addrs in _listening().items() if pid in tree}
        assert len(mine) >= 3, mine  # gcs_server, raylet, the worker at least
        wide = {pid: [a for a in addrs if not a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:"))]
                for pid, addrs in mine.items()}
        assert not any(wide.values()), f"listening beyond loopback: {wide}"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
