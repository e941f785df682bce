"""Grid launches on a real local Ray runtime, tracked in a real sqlite MLflow store.

The end-to-end tests run the ``tood-ablate`` CLI as a subprocess in its own session (so
that the test can interrupt it, and can kill whatever it leaves behind) on the smoke
grid, then read the MLflow store back through ``MlflowClient``.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestration.grid import expand_grid, load_grid, resolved_grid
from orchestration.progress import counts, describe, trial_line
from orchestration.tracking import create_launch_runs, reconcile
from orchestration.trial_run import finish_trial, log_metrics, record_error, start_attempt
from tood.config import build_config, flatten
from tood.eval.alignment import PCC_PROTOCOL
from tood_ablate.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments/smoke.yaml"
FINAL = ("AP", "AP50", "AP75", "PCC", "top10_iou", "n_correct", "n_redundant", "n_error")


os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOOD_RAY_OBJECT_STORE_MB": "100", "PYTHONUNBUFFERED": "1", **extra}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "TOOD_FAIL_ONCE_AT_EPOCH", "TOOD_FAIL_ONCE_TRIAL"):
        if key not in extra:
            env.pop(key, None)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tood_ablate", *args]


class Driver:
    """A ``tood-ablate`` subprocess in its own process group; ``stop`` kills what is left of it."""

    def __init__(self, cwd: Path, *args: str, env: dict | None = None):
        self.log = cwd / f"driver-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(_cli(*args), cwd=cwd, env=env or _env(), stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=60)


@pytest.fixture
def launch(tmp_path):
    """Start CLI commands in tmp_path (storage tmp_path/ray, store tmp_path/mlruns.db); kill leftovers after."""
    drivers: list[Driver] = []
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"

    def start(command: str, *args: str, env: dict | None = None) -> Driver:
        common = ["--storage-path", str(tmp_path / "ray"), "--quiet"]
        if command == "run":
            common += ["--tracking-uri", uri]
        drivers.append(Driver(tmp_path, command, *args, *common, env=env))
        return drivers[-1]

    yield SimpleNamespace(start=start, uri=uri, path=tmp_path)
    for d in drivers:
        d.stop()


def _study_runs(uri: str, study: str = "smoke"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"tood-ablate/{study}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tood.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("tood.role") == "trial"]
    children = {r.info.run_name: r for r in trials}
    assert len(children) == len(trials), "two child runs with the same trial name"
    return client, parents, children


def _steps(client: MlflowClient, run, metric: str = "loss_total") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))


def _download(client: MlflowClient, run_id: str, name: str, dst: Path) -> str:
    return Path(client.download_artifacts(run_id, name, str(dst))).read_text()


# ------------------------------------------------------------------ end to end on local Ray


def test_smoke_grid_end_to_end(launch, monkeypatch):
    monkeypatch.chdir(launch.path)  # relative data roots resolve as in the driver
    t0 = time.monotonic()
    driver = launch.start("run", str(SMOKE), "--name", "e2e")
    assert driver.wait(timeout=600) == 0, driver.output()
    print(f"smoke grid wall time: {time.monotonic() - t0:.1f} s")
    client, parents, children = _study_runs(launch.uri)
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.info.run_name == "e2e"
    tags = parent.data.tags
    assert (tags["tood.study"], tags["tood.table"], tags["tood.profile"], tags["tood.seeds"], tags["tood.num_trials"]) == (
        "smoke", "smoke", "proxy", "0", "2")
    grid = yaml.safe_load(_download(client, parent.info.run_id, "grid.yaml", launch.path))
    assert [r["label"] for r in grid["rows"]] == ["parallel head + ATSS", "T-head + TAL"] and grid["seeds"] == [0]

    specs = {s.name: s for s in expand_grid(SMOKE)}
    assert set(children) == set(specs) == {"head=parallel,assigner=atss,seed=0", "head=t_head,assigner=tal,seed=0"}
    for name, run in children.items():
        spec, t = specs[name], run.data.tags
        assert run.info.status == "FINISHED" and t["mlflow.parentRunId"] == parent.info.run_id
        assert (t["tood.role"], t["tood.row"], t["tood.row_index"], t["tood.seed"], t["tood.attempts"]) == (
            "trial", spec.row_label, str(spec.row_index), "0", "1")
        assert t["tood.factor.head"] == spec.factors["head"] and t["tood.factor.assigner"] == spec.factors["assigner"]
        assert float(t["tood.paper.AP"]) == spec.paper["AP"] and "tood.error" not in t
        assert len(t["tood.git_commit"]) == 40 or t["tood.git_commit"] == "unknown"
        m = run.data.metrics
        assert set(FINAL) <= set(m) and 0 <= m["AP"] <= 100 and -1 <= m["PCC"] <= 1 and 0 <= m["top10_iou"] <= 1
        assert all(m[k] == int(m[k]) >= 0 for k in ("n_correct", "n_redundant", "n_error"))
        assert _steps(client, run) == [1, 2] and _steps(client, run, "epoch_AP") == [1, 2]
        assert [x.step for x in client.get_metric_history(run.info.run_id, "AP")] == [2]
        # params: the flattened resolved config; artifacts: that config and the final metrics
        params = run.data.params
        assert params["model.head.type"] == spec.config["model"]["head"]["type"] and params["train.epochs"] == "2"
        assert set(params) == set(flatten(spec.config)) | {"eval.pcc_protocol"}
        assert params["eval.pcc_protocol"] == PCC_PROTOCOL
        config = yaml.safe_load(_download(client, run.info.run_id, "config.yaml", launch.path / name))
        assert config == spec.config and build_config(config, name).model.head.type == spec.factors["head"]
        final = json.loads(_download(client, run.info.run_id, "metrics.json", launch.path / name))
        assert final["AP"] == pytest.approx(m["AP"]) and final["n_error"] == m["n_error"]

    status = subprocess.run(_cli("status", "e2e", "--storage-path", str(launch.path / "ray")), cwd=launch.path,
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "parent FINISHED, 2 trials" in status.stdout
    assert status.stdout.count("FINISHED  head=") == 2 and "epoch   2" in status.stdout
    assert "child runs by status: FINISHED 2" in status.stdout

    # the PCC diagnostics re-evaluate the launch's checkpoints: their PCC@50 is the PCC the trial logged
    diag = subprocess.run(_cli("diagnose", str(SMOKE), "--storage", str(launch.path / "ray"), "--out", str(launch.path / "diag")),
                          cwd=launch.path, env=_env(), capture_output=True, text=True, timeout=300)
    assert diag.returncode == 0, diag.stderr[-3000:]
    trials = {(t["row"], t["seed"]): t for t in json.loads((launch.path / "diag.json").read_text())["trials"]}
    for name, run in children.items():
        measures = trials[(specs[name].row_label, 0)]["measures"]
        assert measures["AP"] == pytest.approx(run.data.metrics["AP"], abs=1e-6)
        assert measures["PCC@50"] == pytest.approx(run.data.metrics["PCC"], abs=1e-6)
        assert measures["spearman@50"] == pytest.approx(run.data.metrics["PCC_spearman"], abs=1e-6)
    assert "| T-head + TAL | 1 |" in (launch.path / "diag.md").read_text()

    again = subprocess.run(_cli("run", str(SMOKE), "--name", "e2e", "--storage-path", str(launch.path / "ray"), "--tracking-uri",
                                launch.uri), cwd=launch.path, env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "a launch named 'e2e' exists" in again.stderr
    assert len(_study_runs(launch.uri)[1]) == 1  # nothing created


@pytest.mark.slow
def test_publish_results_of_a_launch_trained_with_set(launch):
    """`tood-ablate publish` of a launch run with --set: the report, the per-seed CSV with the
    command in its header, the packing JSON, the PCC diagnostics of the trials the launch trained
    (found with the launch's --set: PCC@50 equals the logged PCC), a copy of the store and the
    folder's index entry."""
    driver = launch.start("run", str(SMOKE), "--name", "pub", "--set", "train.epochs=1")
    assert driver.wait(timeout=600) == 0, driver.output()
    _, _, children = _study_runs(launch.uri)
    out = launch.path / "published"
    command = "tood-ablate run experiments/smoke.yaml --set train.epochs=1"
    proc = subprocess.run(_cli("publish", "--tracking-uri", launch.uri, "--out", str(out), "--command", command,
                               "--launch", "pub", "--storage-path", str(launch.path / "ray"), "--diagnose", str(SMOKE)),
                          cwd=launch.path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (out / "smoke" / "report.html").is_file() and (out / "report.html").is_file()
    assert f"command: {command}" in (out / "per_seed.csv").read_text()
    assert json.loads((out / "suite_packing.json").read_text())["trials_trained"] == 2
    diag = json.loads((out / "alignment_diagnostics_smoke.json").read_text())
    assert "--set=train.epochs=1" in diag["command"]
    by_row = {t["row"]: t["measures"] for t in diag["trials"]}
    for run in children.values():
        assert by_row[run.data.tags["tood.row"]]["PCC@50"] == pytest.approx(run.data.metrics["PCC"], abs=1e-6)
    copied = _study_runs(f"sqlite:///{out / 'mlruns.db'}")[2]
    assert {n: r.data.metrics["AP"] for n, r in copied.items()} == {n: r.data.metrics["AP"] for n, r in children.items()}
    entry = yaml.safe_load((launch.path / "index.yaml").read_text())["folders"]["published"]
    assert entry["launch"] == "pub" and entry["command"] == command and entry["studies"]["smoke"]["launch"] == "pub"
    assert not (ROOT / "benchmarks/results/bench_suite_pub.json").exists()  # nothing written into the repository


def test_failed_trial_is_retried_from_its_checkpoint_in_the_same_run(launch):
    env = _env(TOOD_FAIL_ONCE_AT_EPOCH="1", TOOD_FAIL_ONCE_TRIAL="t_head")
    driver = launch.start("run", str(SMOKE), "--name", "retry", env=env)
    assert driver.wait(timeout=600) == 0, driver.output()
    client, parents, children = _study_runs(launch.uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2  # no duplicate runs
    failed_once = children["head=t_head,assigner=tal,seed=0"]
    assert failed_once.info.status == "FINISHED" and failed_once.data.tags["tood.attempts"] == "2"
    assert failed_once.data.tags["tood.resumed_from_epoch"] == "1" and "tood.error" not in failed_once.data.tags
    assert _steps(client, failed_once) == [1, 2]  # epoch 1 before the fault, epoch 2 after the restore: once each
    other = children["head=parallel,assigner=atss,seed=0"]
    assert other.data.tags["tood.attempts"] == "1" and "tood.resumed_from_epoch" not in other.data.tags
    assert (launch.path / "ray/retry/faults" / failed_once.info.run_id).read_text() == "1"


@pytest.mark.slow
def test_trial_out_of_retries_ends_failed(launch):
    env = _env(TOOD_FAIL_ONCE_AT_EPOCH="1", TOOD_FAIL_ONCE_TRIAL="parallel")
    driver = launch.start("run", str(SMOKE), "--name", "fail", "--max-failures", "0", env=env)
    assert driver.wait(timeout=600) == 1, driver.output()
    client, parents, children = _study_runs(launch.uri)
    assert parents[0].info.status == "FAILED"
    failed = children["head=parallel,assigner=atss,seed=0"]
    assert failed.info.status == "FAILED" and "InjectedFault: injected fault after epoch 1" in failed.data.tags["tood.error"]
    assert _steps(client, failed) == [1]
    assert children["head=t_head,assigner=tal,seed=0"].info.status == "FINISHED"


def test_bad_grid_or_options_fail_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"study: s\ntable: smoke\nbase: {ROOT / 'experiments/base.yaml'}\nrows:\n  - label: a\n    factors: {{assigner: atts}}\n")
    cases = [
        (["run", str(bad)], "bad.yaml: rows[0].factors.assigner: unknown value 'atts' (expected one of: tal, atss, max_iou, center_sampling, fovea)"),
        (["run", str(SMOKE), "--seeds", "0,x"], "--seeds: got '0,x' (expected comma-separated integers"),
        (["run", str(SMOKE), "--seeds", "1,1"], "--seeds: got [1, 1] (expected a non-empty list of distinct"),
        (["run", str(SMOKE), "--cpus-per-trial", "-1"], "--cpus-per-trial: got -1.0 (expected a number >= 0)"),
        (["run", str(SMOKE), "--workers-per-trial", "0"], "--workers-per-trial: got 0 (expected an integer >= 1)"),
        (["run", str(SMOKE), "--set", "train.epoch=3"], "--set: override train.epoch: unknown key 'train.epoch'; did you mean 'epochs'?"),
        (["run", str(SMOKE), "--profile", "gpu"], "profiles: unknown profile 'gpu' (expected one of: coco, proxy, proxy_long, proxy_budget, smoke)"),
        (["status", "nothing"], "no launch named 'nothing'"),
        (["resume", "nothing"], "no launch named 'nothing'"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("tood-ablate: error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no store, no storage, no data


# ------------------------------------------------------------------ interruption and resume


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigint_then_sigkill", "sigkill"])
def test_interrupted_driver_is_resumed_without_duplicates(launch, how):
    """Kill the driver once a trial finished; `resume` finishes the grid in the same runs and
    does not run the finished trials again."""
    driver = launch.start("run", str(SMOKE), "--name", "cut", "--seeds", "0,1", "--max-concurrent", "1", "--set", "train.epochs=3")
    deadline, finished = time.monotonic() + 600, {}
    while time.monotonic() < deadline and driver.proc.poll() is None and not finished:
        if (launch.path / "mlruns.db").exists() and (launch.path / "ray/cut/tood_launch.json").exists():
            _, _, children = _study_runs(launch.uri)
            finished = {n: r for n, r in children.items() if r.info.status == "FINISHED"}
        time.sleep(0.5)  # polling interval of the store, not a wait for a result
    assert finished and driver.proc.poll() is None, driver.output()
    if how == "sigint_then_sigkill":
        driver.signal(signal.SIGINT)
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    driver.stop()
    client, (parent,), before = _study_runs(launch.uri)
    assert len(before) == 4 and any(r.info.status != "FINISHED" for r in before.values())
    if how == "sigint_then_sigkill":  # Tune stopped gracefully and the driver reconciled the runs
        assert parent.info.status == "KILLED" and {r.info.status for r in before.values()} <= {"FINISHED", "KILLED"}
    else:  # nothing reconciled: the runs stay as the killed driver left them
        assert parent.info.status == "RUNNING"
    done_before = {n: r for n, r in before.items() if r.info.status == "FINISHED"}

    resumed = launch.start("resume", "cut")
    assert resumed.wait(timeout=900) == 0, resumed.output()
    client, parents, after = _study_runs(launch.uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert set(after) == set(before) and all(r.info.status == "FINISHED" for r in after.values())
    for name, run in after.items():
        assert set(_steps(client, run)) == {1, 2, 3} and "AP" in run.data.metrics
        if name in done_before:  # not re-run
            old = done_before[name]
            assert run.data.tags["tood.attempts"] == old.data.tags["tood.attempts"] and run.info.end_time == old.info.end_time
            assert _steps(client, run) == [1, 2, 3]


# ------------------------------------------------------------------ data parallel (Ray Train)


@pytest.mark.slow
def test_data_parallel_trials_with_two_gloo_workers(launch):
    env = _env(TOOD_FAIL_ONCE_AT_EPOCH="1", TOOD_FAIL_ONCE_TRIAL="t_head")
    driver = launch.start("run", str(SMOKE), "--name", "ddp", "--workers-per-trial", "2", env=env)
    assert driver.wait(timeout=900) == 0, driver.output()
    client, parents, children = _study_runs(launch.uri)
    assert parents[0].info.status == "FINISHED" and len(children) == 2
    for name, run in children.items():
        assert run.info.status == "FINISHED" and set(FINAL) <= set(run.data.metrics) and _steps(client, run) == [1, 2]
        assert run.data.params["train.batch_size"] == "8"
    retried = children["head=t_head,assigner=tal,seed=0"].data.tags
    assert retried["tood.attempts"] == "2" and retried["tood.resumed_from_epoch"] == "1"
    for run in children.values():  # rank 0 checkpointed into the launch's storage, where a retry finds it
        assert (launch.path / "ray/ddp/work" / run.info.run_id / "last.pt").is_file()


# ------------------------------------------------------------------ MLflow layout without Ray


def test_launch_runs_layout_and_reconcile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a local store keeps its artifacts in <cwd>/mlartifacts
    client = MlflowClient(f"sqlite:///{tmp_path / 'db'}")
    path = ROOT / "experiments/table6_alignment.yaml"
    grid = load_grid(path)
    specs = expand_grid(path, seeds=[0, 1])
    parent, ids = create_launch_runs(client, grid.study, grid.table, "proxy", str(path), resolved_grid(grid, [0, 1], {}), specs, "L")
    assert len(ids) == 8 == len(set(ids))
    p = client.get_run(parent)
    assert p.info.status == "RUNNING" and p.data.tags["tood.seeds"] == "0,1" and p.data.tags["tood.num_trials"] == "8"
    exp = client.get_experiment(p.info.experiment_id)
    assert exp.name == "tood-ablate/table6_alignment" and exp.artifact_location == (tmp_path / "mlartifacts/tood-ablate/table6_alignment").as_uri()
    runs = [client.get_run(i) for i in ids]
    assert [r.info.status for r in runs] == ["SCHEDULED"] * 8
    assert [r.info.run_name for r in runs[:2]] == ["head=parallel,assigner=atss,seed=0", "head=parallel,assigner=atss,seed=1"]
    assert runs[7].data.tags["tood.paper.n_error"] == "69013" and runs[7].data.tags["tood.row"] == "T-head + TAL"
    assert runs[7].data.params["model.head.type"] == "t_head" and runs[7].data.params["train.seed"] == "1"

    # trial 0 finishes after a failed attempt, trial 1 fails for good, trial 2 was running, the rest never started
    a = start_attempt(client, ids[0])
    record_error(client, ids[0], RuntimeError("first"), final=False)
    assert client.get_run(ids[0]).info.status == "RUNNING"
    b = start_attempt(client, ids[0])
    assert (a.number, b.number, b.finished) == (1, 2, False)
    finish_trial(client, ids[0], specs[0].config, {"AP": 12.5, "epoch": 3.0}, step=3)
    done = client.get_run(ids[0])
    assert done.info.status == "FINISHED" and "tood.error" not in done.data.tags and "epoch" not in done.data.metrics
    assert [m.step for m in client.get_metric_history(ids[0], "AP")] == [3]
    again = start_attempt(client, ids[0])
    assert again.finished and again.final_metrics == {"AP": 12.5} and client.get_run(ids[0]).data.tags["tood.attempts"] == "2"
    start_attempt(client, ids[1])
    start_attempt(client, ids[2])
    counts_ = reconcile(client, parent, {ids[1]: "TuneError: boom"})
    assert counts_ == {"FINISHED": 1, "FAILED": 1, "KILLED": 6}
    assert client.get_run(ids[1]).data.tags["tood.error"] == "TuneError: boom"
    assert client.get_run(ids[2]).info.status == "KILLED" and client.get_run(parent).info.status == "FAILED"


def test_resume_reuses_what_another_launch_finished_meanwhile(tmp_path, monkeypatch):
    """Launch A is interrupted; launch B of the same store then finishes two of A's keys. On
    resume, A's unstarted trial takes B's result (its alias run of another study too), while
    A's started trial keeps its own run and history and trains on."""
    from orchestration.resume import reuse_finished_elsewhere
    from orchestration.payload import TrialPayload
    from orchestration.suite import trial_key

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'db'}")
    path = ROOT / "experiments/table6_alignment.yaml"
    grid, specs = load_grid(path), expand_grid(path, seeds=[0])
    make = lambda name: create_launch_runs(client, grid.study, grid.table, "proxy", str(path), resolved_grid(grid, [0], {}), specs, name)[1]
    a, a_alias, b = make("A"), make("A-alias"), make("B")
    trials = [TrialPayload(trial_key(spec.config), a[i], spec.name, spec.config, alias_run_ids=[a_alias[i]]) for i, spec in enumerate(specs)]
    start_attempt(client, a[1])  # A's trial 1 started before the interrupt
    log_metrics(client, a[1], {"loss_total": 2.0}, step=1)
    for i in (0, 1):  # B finishes both keys
        start_attempt(client, b[i])
        for epoch in (1, 2):
            log_metrics(client, b[i], {"loss_total": 1.0 / epoch}, step=epoch)
        finish_trial(client, b[i], specs[i].config, {"AP": 40.0 + i}, step=2)
        client.set_tag(b[i], "tood.host", f'{{"cpu": "B{i}"}}')  # where B trained it

    assert reuse_finished_elsewhere(client, trials) == 1
    for rid in (a[0], a_alias[0]):
        run = client.get_run(rid)
        assert run.info.status == "FINISHED" and run.data.tags["tood.reused_from"] == b[0] and run.data.metrics["AP"] == 40.0
        assert run.data.tags["tood.host"] == '{"cpu": "B0"}'  # the copy says where its result was trained
        assert [(m.step, m.value) for m in client.get_metric_history(rid, "loss_total")] == [(1, 1.0), (2, 0.5)]
    started = client.get_run(a[1])
    assert started.info.status == "RUNNING" and "tood.reused_from" not in started.data.tags and "AP" not in started.data.metrics
    assert [m.step for m in client.get_metric_history(a[1], "loss_total")] == [1]
    assert client.get_run(a_alias[1]).info.status == "SCHEDULED"
    assert {client.get_run(r).info.status for r in a[2:] + a_alias[2:]} == {"SCHEDULED"}  # nobody finished those keys
    assert reuse_finished_elsewhere(client, trials) == 0  # nothing left to fill


def test_progress_lines():
    def trial(name, status, result, failures=0):
        config = {"trial": {"key": name, "run_id": name, "name": name, "config": {"train": {"epochs": 2}}}}
        return SimpleNamespace(config=config, status=status, last_result=result, num_failures=failures)

    lines = [trial_line(t) for t in (
        trial("a", "TERMINATED", {"epoch": 2, "AP": 12.34, "epoch_AP": 1.0, "done": True}),
        trial("b", "RUNNING", {"epoch": 1, "epoch_AP": 3.0}, failures=1),
        trial("c", "PENDING", {}), trial("d", "ERROR", {"epoch": 1, "epoch_AP": float("nan")}),
        # an interrupt ends every trial TERMINATED: half-way through, or never started
        trial("e", "TERMINATED", {"epoch": 1, "epoch_AP": 2.0, "done": False}), trial("f", "TERMINATED", {}))]
    assert [describe(l) for l in lines] == [
        ["a", "done", "2/2", "12.3"], ["b", "running (retry 1)", "1/2", "3.0"], ["c", "pending", "-", "-"], ["d", "failed", "1/2", "-"],
        ["e", "stopped", "1/2", "2.0"], ["f", "stopped", "-", "-"]]
    assert counts(lines) == "1 done, 1 running, 1 pending, 2 stopped, 1 failed"


def test_log_levels_silence_tunes_interrupt_noise(caplog):
    """An interrupted launch must not print one Tune warning per never-started trial; the
    launcher's own summary counts them. Other Tune warnings still come through."""
    from ray.tune.analysis import experiment_analysis

    from orchestration.tuner import set_log_level

    set_log_level(quiet=False)
    with caplog.at_level(logging.WARNING):
        experiment_analysis.logger.warning("Failed to fetch metrics for 49 trial(s)")
        logging.getLogger("ray.tune").warning("a warning the user should see")
        # Tune's hint names its Python API; the launcher prints `tood-ablate resume` instead
        tune_log = logging.getLogger("ray.tune.tune")
        tune_log.warning("Experiment has been interrupted, but the most recent state was saved.\nResume experiment with: Tuner.restore(...)")
    assert [r.getMessage() for r in caplog.records] == ["a warning the user should see"]
