"""Faults outside the driver: a worker node of a two-node local Ray cluster killed mid-grid
(and replaced), and the MLflow server stopped mid-grid and started again.

Every service listens on 127.0.0.1 only (see ``JOIN_ON_LOOPBACK`` for the second node), runs in its own session and is stopped by its
recorded process group (``tests.test_cluster.Service``), which also checks nothing is left.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.test_cluster import BIN, Service, _free_port, _healthy, _port_open
from tests.test_faults import _checkpoint_epochs, smoke_grid
from tests.test_orchestration import FINAL, _steps, _study_runs

pytestmark = pytest.mark.slow
NODE_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
              "node-manager-port", "object-manager-port")


def _env() -> dict[str, str]:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "TOOD_FAIL_ONCE_AT_EPOCH", "TOOD_FAIL_ONCE_TRIAL"):
        env.pop(key, None)
    return env


# `ray start` of a worker node refuses to run where clusters are limited to one machine (the
# setting that keeps every Ray address on 127.0.0.1), and without the limit it rewrites
# 127.0.0.1 to the outward-facing address. The second node therefore runs `ray start` with
# both undone in its own process only; the processes it starts keep the limit (environment).
JOIN_ON_LOOPBACK = """
import sys
import ray._private.ray_constants as constants, ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()
"""


def _ray_node(log: Path, env: dict, ray_tmp: Path, *args: str, join: bool = False) -> Service:
    ports = [f"--{flag}={_free_port()}" for flag in NODE_PORTS]
    ray = [sys.executable, "-c", JOIN_ON_LOOPBACK] if join else [str(BIN / "ray")]
    return Service([*ray, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={ray_tmp}",
                    "--object-store-memory=80000000", "--disable-usage-stats", *ports, *args], log, env)


def _mlflow_server(tmp: Path, port: int, env: dict, log: str) -> Service:
    server = Service([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                      "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}", "--artifacts-destination", str(tmp / "artifacts")],
                     tmp / log, env)
    server.wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/health"), "mlflow server")
    return server


def _driver(tmp: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tood_ablate", "run", *args, "--storage-path", str(tmp / "ray"),
                             "--quiet"], cwd=tmp, env=env, stdout=(tmp / "driver.log").open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _check_every_epoch_once(client: MlflowClient, children: dict, epochs: int) -> None:
    for name, run in children.items():
        assert run.info.status == "FINISHED", (name, run.data.tags.get("tood.error"))
        for metric in ("loss_total", "lr", "epoch_AP"):
            assert _steps(client, run, metric) == list(range(1, epochs + 1)), (name, metric)
        assert set(FINAL) <= set(run.data.metrics), name


def test_killed_worker_node_is_replaced_and_its_trials_finish(tmp_path):
    """The head has no CPUs, so every trial runs on the worker node (its own resource
    ``tood_worker``); that node is killed once a trial checkpointed, a replacement joins."""
    env, started = _env(), []
    ray_tmp = Path(tempfile.mkdtemp(prefix="tood-ray-", dir="/tmp"))
    driver = None
    try:
        gcs = _free_port()
        head = _ray_node(tmp_path / "head.log", env, ray_tmp, "--head", f"--port={gcs}", "--num-cpus=0",
                         "--include-dashboard=false", f"--dashboard-port={_free_port()}")
        started.append(head)
        head.wait_until(lambda: _port_open(gcs) and "Ray runtime started" in head.log.read_text(), "ray head")
        node_args = (f"--address=127.0.0.1:{gcs}", "--num-cpus=2", '--resources={"tood_worker": 1}')
        worker = _ray_node(tmp_path / "worker1.log", env, ray_tmp, *node_args, join=True)
        started.append(worker)
        worker.wait_until(lambda: "Ray runtime started" in worker.log.read_text(), "ray worker node")
        port = _free_port()
        started.append(_mlflow_server(tmp_path, port, env, "mlflow.log"))
        uri = f"http://127.0.0.1:{port}"
        grid = smoke_grid(tmp_path / "grid.yaml", rows=[0, 1], epochs=3)
        driver = _driver(tmp_path, env, str(grid), "--name", "node", "--address", f"127.0.0.1:{gcs}", "--tracking-uri", uri)
        deadline = time.monotonic() + 600
        while not _checkpoint_epochs(tmp_path / "ray/node") and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # polling interval
        assert _checkpoint_epochs(tmp_path / "ray/node") and driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        worker.stop()  # SIGTERM then SIGKILL to the node's whole process group: raylet and trial workers
        started.remove(worker)
        replacement = _ray_node(tmp_path / "worker2.log", env, ray_tmp, *node_args, join=True)
        started.append(replacement)
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-4000:]
        client, parents, children = _study_runs(uri)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 2  # 0 lost, 0 duplicated (_study_runs asserts unique names)
        _check_every_epoch_once(client, children, 3)
        assert max(int(r.data.tags["tood.attempts"]) for r in children.values()) >= 2  # something was rescheduled
        assert list(ray_tmp.glob("session_*/logs/worker-*"))  # trials ran in the cluster's workers
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, 9)
            driver.wait(timeout=60)
        for service in reversed(started):
            service.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


OUTAGE_TIMEOUT_S = 600.0  # the longest the outage may wait for an epoch's metrics to arrive


def _recv(conn: socket.socket) -> bytes:
    chunk = conn.recv(65536)
    if not chunk:
        raise ConnectionError("the client closed the connection")
    return chunk


class DownServer:
    """Stands on the stopped server's port while it is down: every connection is read to its
    end and dropped unanswered (a client sees "Connection aborted", as from a server that
    died mid-request). It records the newest metric timestamp of the refused log-batch
    requests, so the outage can last until an epoch's metrics were stamped while it was down
    however slow the machine is, rather than for a fixed time."""

    def __init__(self, port: int):
        self.newest_ms = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.running = True
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                self._note(conn)

    def _note(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                data += _recv(conn)
            head, body = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            length = int(next((line.split(":", 1)[1] for line in lines if line.lower().startswith("content-length:")), "0"))
            while len(body) < length:
                body += _recv(conn)
        except (OSError, ValueError):
            return
        if "/runs/log-batch" in lines[0]:
            stamps = [int(m["timestamp"]) for m in json.loads(body or b"{}").get("metrics", [])]
            self.newest_ms = max([self.newest_ms, *stamps])

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=10)
        self.sock.close()


def test_mlflow_server_restarted_mid_grid_loses_no_metrics(tmp_path):
    """Stop the server once a trial checkpointed; keep it down until a trial's metrics,
    stamped during the outage, were refused (``DownServer``); start it again on the same
    port and store. MLflow's own HTTP retries are off, so mlflow_store.retry alone carries the
    trials through; the metrics stamped during the outage must be in the store."""
    env = {**_env(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "TOOD_RAY_OBJECT_STORE_MB": "100"}
    port, driver, servers, down_server = _free_port(), None, [], None
    try:
        servers.append(_mlflow_server(tmp_path, port, env, "mlflow1.log"))
        uri = f"http://127.0.0.1:{port}"
        grid = smoke_grid(tmp_path / "grid.yaml", rows=[0, 1], epochs=3)
        driver = _driver(tmp_path, env, str(grid), "--name", "outage", "--tracking-uri", uri)
        deadline = time.monotonic() + 600
        while not _checkpoint_epochs(tmp_path / "ray/outage") and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # polling interval
        assert _checkpoint_epochs(tmp_path / "ray/outage") and driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        down = time.time()
        servers.pop().stop()
        down_server = DownServer(port)
        deadline = time.monotonic() + OUTAGE_TIMEOUT_S
        while down_server.newest_ms / 1000 < down and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # polling interval: the outage lasts until an epoch's metrics were refused
        down_server.stop()
        down_server, up = None, time.time()
        servers.append(_mlflow_server(tmp_path, port, env, "mlflow2.log"))
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-4000:]
        client, parents, children = _study_runs(uri)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
        _check_every_epoch_once(client, children, 3)
        stamped = [m.timestamp / 1000 for r in children.values() for key in ("loss_total", "epoch_AP")
                   for m in client.get_metric_history(r.info.run_id, key)]
        assert any(down <= t <= up for t in stamped), f"none logged while the server was down: {[round(t - down, 1) for t in sorted(stamped)]}, up at {up - down:.1f} s"
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, 9)
            driver.wait(timeout=60)
        if down_server is not None:
            down_server.stop()
        for server in servers:
            server.stop()
