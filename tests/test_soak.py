"""A soak of the whole machinery: a small grid trains against a real `mlflow server` on 127.0.0.1
while, at moments drawn from a seeded generator (counted in checkpointed epochs, not in seconds),
a trial's worker is killed with SIGKILL, the driver's whole process group is killed (then
`tood-ablate resume`), or the tracking server is stopped and started again on its port and store.
Afterwards every trial finished exactly once, every epoch's metrics are in the store once, no run
is left RUNNING, and the final metrics equal those of the same grid trained undisturbed (CPU
training is repeatable: tests/test_repeatable.py)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cluster import Service, _free_port
from tests.test_faults import _trial_processes, smoke_grid
from tests.test_faults_cluster import _check_every_epoch_once, _mlflow_server
from tests.test_orchestration import FINAL, _env, _study_runs

pytestmark = pytest.mark.slow

SEED, KILLS, EPOCHS = 7, 6, 4
DEADLINE_S = 1500


def _start(tmp: Path, env: dict, log: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tood_ablate", *args, "--storage-path", str(tmp / "ray"), "--quiet"],
                            cwd=tmp, env=env, stdout=(tmp / log).open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _progress(storage: Path) -> int:
    """Epochs checkpointed so far, summed over the trials (a trial's newest checkpoint counts)."""
    newest: dict[str, int] = {}
    for ckpt in storage.glob("trial_*/checkpoint_*"):
        newest[ckpt.parent.name] = max(newest.get(ckpt.parent.name, 0), int(ckpt.name.rsplit("_", 1)[1]) + 1)
    return sum(newest.values())


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=120)


def _soak(tmp: Path, env: dict, grid: Path, uri: str, server: list[Service], port: int) -> list[str]:
    """Train ``grid`` into ``uri`` through KILLS faults; returns the faults as done, in order."""
    rng = random.Random(SEED)
    total = 2 * EPOCHS  # checkpointed epochs of the two trials when all is done
    at = sorted(rng.sample(range(1, total), KILLS))  # after this many checkpointed epochs ...
    kinds = [rng.choice(("worker", "driver", "server")) for _ in at]  # ... this fault
    driver = _start(tmp, env, "driver0.log", "run", str(grid), "--name", "soak", "--tracking-uri", uri, "--max-failures", "20")
    done, deadline, resumes = [], time.monotonic() + DEADLINE_S, 0
    try:
        for threshold, kind in zip(at, kinds):
            while _progress(tmp / "ray/soak") < threshold and driver.poll() is None:
                assert time.monotonic() < deadline, f"no progress to {threshold} epochs: {(tmp / f'driver{resumes}.log').read_text()[-3000:]}"
                time.sleep(0.5)  # polling interval
            if driver.poll() == 0:
                break  # the grid ended before this threshold
            workers = _trial_processes(driver.pid) if driver.poll() is None else []
            if kind == "worker" and workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
            elif kind == "server":
                server.pop().stop()
                server.append(_mlflow_server(tmp, port, env, f"mlflow-{len(done)}.log"))
            else:  # the driver, or a worker fault with no trial running: kill the driver instead
                kind = "driver"
                _kill_group(driver)
                resumes += 1
                driver = _start(tmp, env, f"driver{resumes}.log", "resume", "soak")
            done.append(kind)
        while True:  # let it finish; a launch that ended with failed trials is resumed
            code = driver.wait(timeout=max(1.0, deadline - time.monotonic()))
            if code == 0:
                return done
            assert resumes < KILLS + 3, (tmp / f"driver{resumes}.log").read_text()[-3000:]
            resumes += 1
            driver = _start(tmp, env, f"driver{resumes}.log", "resume", "soak")
    finally:
        if driver.poll() is None:
            _kill_group(driver)


def test_soak_kills_workers_driver_and_tracking_server_and_loses_nothing(tmp_path):
    env = {**_env(), "TOOD_RAY_OBJECT_STORE_MB": "100"}
    grid = smoke_grid(tmp_path / "grid.yaml", rows=[0, 1], epochs=EPOCHS)
    calm = tmp_path / "calm"
    calm.mkdir()
    assert _start(calm, env, "driver.log", "run", str(grid), "--name", "calm", "--tracking-uri",
                  f"sqlite:///{calm / 'mlruns.db'}").wait(timeout=DEADLINE_S) == 0, (calm / "driver.log").read_text()[-3000:]
    _, _, expected = _study_runs(f"sqlite:///{calm / 'mlruns.db'}")

    port = _free_port()
    server = [_mlflow_server(tmp_path, port, env, "mlflow.log")]
    try:
        uri = f"http://127.0.0.1:{port}"
        faults = _soak(tmp_path, env, grid, uri, server, port)
        client, parents, children = _study_runs(uri)
        assert len(faults) >= KILLS - 2, faults  # the last thresholds may come after the grid ended
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert set(children) == set(expected)  # each trial once: no lost and no duplicated run
        _check_every_epoch_once(client, children, EPOCHS)
        every = client.search_runs([parents[0].info.experiment_id], max_results=1000)
        assert not [r.info.run_name for r in every if r.info.status == "RUNNING"]
        for name, run in children.items():
            for metric in FINAL:
                assert run.data.metrics[metric] == expected[name].data.metrics[metric], (name, metric, faults)
        print(f"soak faults in order: {faults}")
    finally:
        for s in server:
            s.stop()
