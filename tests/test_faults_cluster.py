"""Faults outside the driver: a worker node of a two-node local Ray cluster killed mid-grid
(and replaced), and the MLflow server stopped mid-grid and started again.

Every service listens on 127.0.0.1 only (see ``JOIN_ON_LOOPBACK`` for the second node), runs in its own session and is stopped by its
recorded process group (``tests.test_cluster.Service``), which also checks nothing is left.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
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
    return subprocess.Popen([sys.executable, "-m", "orchestration.launch", "run", *args, "--storage-path", str(tmp / "ray"),
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


OUTAGE_S = 20.0  # how long the server stays down: the fault's length, within the 60 s retry budget


def test_mlflow_server_restarted_mid_grid_loses_no_metrics(tmp_path):
    """Stop the server once a trial checkpointed, keep it down OUTAGE_S, start it again on the
    same port and store. MLflow's own HTTP retries are off, so tracking.retry alone carries
    the trials through; metrics stamped during the outage must be in the store."""
    env = {**_env(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "TOOD_RAY_OBJECT_STORE_MB": "100"}
    port, driver, servers = _free_port(), None, []
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
        while time.time() - down < OUTAGE_S and driver.poll() is None:
            time.sleep(0.5)  # the outage lasts OUTAGE_S; the trials keep training meanwhile
        up = time.time()
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
        for server in servers:
            server.stop()
