"""The smoke grid on a Ray cluster started with `ray start --head`, tracked by an MLflow server.

Both services listen on 127.0.0.1 only, run in their own sessions and are stopped by
killing their process groups (recorded pids); the test checks nothing of them is left.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = ROOT / "experiments/smoke.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (zombies excluded)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(p) for p, s, st in (line.split()[:3] for line in out.splitlines()) if int(s) == sid and not st.startswith("Z")]


class Service:
    """A command in its own session; ``stop`` ends its whole process group by the recorded pid."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]):
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_until(self, ready, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"{what} exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{what} not ready after {timeout} s: {self.log.read_text()[-3000:]}"
            time.sleep(0.5)  # polling interval

    def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while _session_pids(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)
        assert not _session_pids(self.proc.pid), f"processes left of {self.proc.args[:2]}"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def services(tmp_path):
    # Ray resolves "this node" to its outward-facing address unless clusters are limited to
    # one machine; with that limit every Ray connection stays on 127.0.0.1. The cluster uses
    # token authentication with a token of its own (not ~/.ray/auth_token).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "TOOD_FAIL_ONCE_AT_EPOCH"):
        env.pop(key, None)
    ray_tmp = Path(tempfile.mkdtemp(prefix="tood-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    started: list[Service] = []
    try:
        gcs = _free_port()
        ports = {flag: _free_port() for flag in ("dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                 "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
                                                 "object-manager-port")}
        head = Service([str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={ray_tmp}", "--object-store-memory=100000000",
                        "--disable-usage-stats", *(f"--{flag}={port}" for flag, port in ports.items())],
                       tmp_path / "ray-head.log", env)
        started.append(head)
        mlflow_port = _free_port()
        server = Service([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                          "--artifacts-destination", str(tmp_path / "server-artifacts")],
                         tmp_path / "mlflow-server.log", env)
        started.append(server)
        head.wait_until(lambda: _port_open(gcs) and "Ray runtime started" in head.log.read_text(), "ray head")
        server.wait_until(lambda: _healthy(f"http://127.0.0.1:{mlflow_port}/health"), "mlflow server")
        yield {"address": f"127.0.0.1:{gcs}", "tracking_uri": f"http://127.0.0.1:{mlflow_port}", "env": env, "ray_tmp": ray_tmp}
    finally:
        for service in started:
            service.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_smoke_grid_on_a_ray_cluster_with_an_mlflow_server(tmp_path, services):
    uri = services["tracking_uri"]
    cmd = [sys.executable, "-m", "tood_ablate", "run", str(SMOKE), "--name", "cluster", "--address", services["address"],
           "--tracking-uri", uri, "--storage-path", str(tmp_path / "shared"), "--quiet"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=services["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tood-ablate/smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags["tood.role"] == "parent"]
    children = [r for r in runs if r.data.tags["tood.role"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"AP", "PCC", "top10_iou", "n_correct"} <= set(run.data.metrics) and 0 <= run.data.metrics["AP"] <= 100
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss_total")) == [1, 2]
        # artifacts went through the server into its artifact store
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())
        assert config["model"]["head"]["type"] == run.data.tags["tood.factor.head"]
    assert len(list((tmp_path / "server-artifacts").rglob("config.yaml"))) == 2
    # the trials ran in the cluster's worker processes, not in a runtime of the driver's own
    worker_logs = list(services["ray_tmp"].glob("session_*/logs/worker-*"))
    assert worker_logs and not list(tmp_path.glob("**/session_*"))
    assert (tmp_path / "shared/cluster/tood_launch.json").is_file()

    status = subprocess.run([sys.executable, "-m", "tood_ablate", "status", "cluster", "--storage-path", str(tmp_path / "shared")],
                            cwd=tmp_path, env=services["env"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and status.stdout.count("FINISHED  head=") == 2, status.stdout + status.stderr
