"""Faults during a launch on the local Ray runtime: a trial's worker killed with SIGKILL
mid-epoch, a loss that goes NaN, and eight processes writing to one sqlite store at once.
Every run is bounded by deadlines; the drivers run in their own sessions and are killed by
their process groups afterwards (the ``launch`` fixture)."""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestration.tracking import ensure_experiment
from orchestration.trial_run import log_metrics
from tests.test_orchestration import FINAL, SMOKE, _steps, _study_runs, launch  # noqa: F401 (fixture)
from tests.test_security import _descendants

pytestmark = pytest.mark.slow


def smoke_grid(path: Path, rows: list[int], epochs: int, row_sets: dict[int, dict] | None = None) -> Path:
    """The smoke grid with only ``rows``, ``epochs`` epochs and extra ``set:`` per row index."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["base"] = str(SMOKE.parent / raw["base"])
    raw["rows"] = [{**raw["rows"][i], "set": {**raw["rows"][i]["set"], "train.epochs": epochs, **(row_sets or {}).get(i, {})}}
                   for i in rows]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _trial_processes(driver_pid: int) -> list[int]:
    """Ray worker processes of the driver's runtime now running a Tune trial."""
    found = []
    for pid in _descendants(driver_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::ImplicitFunc") or cmd.startswith("ray::run_trial"):
            found.append(pid)
    return found


def _checkpoint_epochs(storage: Path) -> list[int]:
    """Epochs of the Tune checkpoints persisted so far (checkpoint_00000k holds epoch k + 1)."""
    return [int(p.name.rsplit("_", 1)[1]) + 1 for p in storage.glob("trial_*/checkpoint_*")]


def test_kill_9_of_a_running_trial_resumes_its_last_checkpoint_in_the_same_run(launch):
    grid = smoke_grid(launch.path / "grid.yaml", rows=[1], epochs=3)
    driver = launch.start("run", str(grid), "--name", "kill9")
    storage, killed, deadline = launch.path / "ray/kill9", None, time.monotonic() + 600
    while killed is None and time.monotonic() < deadline and driver.proc.poll() is None:
        epochs = _checkpoint_epochs(storage)
        if epochs and (launch.path / "mlruns.db").exists():
            _, _, children = _study_runs(launch.uri)
            (run,) = children.values()
            logged = _steps(MlflowClient(launch.uri), run)
            # epoch k's metrics and checkpoint are both out and epoch k + 1 is under way: kill now
            if logged and max(logged) == max(epochs) < 3:
                pids = _trial_processes(driver.proc.pid)
                if len(pids) == 1:
                    os.kill(pids[0], signal.SIGKILL)
                    killed = (pids[0], max(epochs))
        time.sleep(0.2)  # polling interval
    assert killed is not None, driver.output()
    assert driver.wait(timeout=600) == 0, driver.output()
    client, (parent,), children = _study_runs(launch.uri)
    (run,) = children.values()
    assert parent.info.status == "FINISHED" and run.info.status == "FINISHED"
    assert run.data.tags["tood.attempts"] == "2" and run.data.tags["tood.resumed_from_epoch"] == str(killed[1])
    for metric in ("loss_total", "loss_cls", "lr", "epoch_AP"):
        assert _steps(client, run, metric) == [1, 2, 3], metric  # every epoch exactly once
    assert set(FINAL) <= set(run.data.metrics) and "tood.error" not in run.data.tags
    assert not Path(f"/proc/{killed[0]}").exists() or "ImplicitFunc" not in Path(f"/proc/{killed[0]}/cmdline").read_text()


def test_nan_loss_ends_failed_with_the_reason_and_the_grid_goes_on(launch):
    diverge = {"train.lr": 1.0e12, "train.warmup_iters": 0}
    grid = smoke_grid(launch.path / "grid.yaml", rows=[0, 1], epochs=3, row_sets={0: diverge})
    driver = launch.start("run", str(grid), "--name", "nan")
    assert driver.wait(timeout=900) == 1, driver.output()  # a failed trial: exit status 1
    client, (parent,), children = _study_runs(launch.uri)
    assert parent.info.status == "FAILED" and len(children) == 2
    bad, good = children["head=parallel,assigner=atss,seed=0"], children["head=t_head,assigner=tal,seed=0"]
    assert bad.info.status == "FAILED"
    assert re.search(r"NonFiniteLossError: epoch \d, iteration \d+: loss term 'loss_\w+' is (nan|inf|-inf)", bad.data.tags["tood.error"])
    assert "AP" not in bad.data.metrics  # no final result for the failed trial
    assert good.info.status == "FINISHED" and _steps(client, good) == [1, 2, 3] and set(FINAL) <= set(good.data.metrics)


def _writer(uri: str, run_id: str, n: int) -> None:
    client = MlflowClient(uri)
    for step in range(1, n + 1):
        log_metrics(client, run_id, {"loss_total": step / 10, "lr": 0.01, "epoch_AP": float(step)}, step)


def test_eight_processes_write_to_one_sqlite_store(tmp_path, monkeypatch):
    """Eight trials' worth of concurrent metric batches: none lost to "database is locked"."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = ensure_experiment(client, "concurrency")
    from orchestration.mlflow_store import enable_wal

    enable_wal(uri)
    with sqlite3.connect(tmp_path / "mlruns.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    runs = [client.create_run(exp).info.run_id for _ in range(8)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(uri, rid, 40)) for rid in runs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 8
    for rid in runs:
        for metric in ("loss_total", "lr", "epoch_AP"):
            assert sorted(m.step for m in client.get_metric_history(rid, metric)) == list(range(1, 41))
