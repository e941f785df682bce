"""Results are never silently stale, and launches that meet on one store train each key once.

Code provenance (``orchestration.provenance``): fingerprints, the staleness text, what a reused
run carries, the report's note. Leases (``orchestration.lease``): races of real processes on a
real sqlite store, dead holders, a waiter that copies the holder's result. The slow tests run the
``tood-ablate`` CLI (fixtures of tests/test_orchestration.py) on the smoke grid at one epoch:
a simulated code change (``TOOD_PRETEND_CHANGED``), and two launches at once into one sqlite
store and into one ``mlflow server`` on 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from orchestration import lease as leases
from orchestration.grid import expand_grid, load_grid, resolved_grid
from orchestration.mlflow_store import prepare_store
from orchestration.payload import TrialPayload
from orchestration.provenance import (NOT_TRAINING, PACKAGE, PRETEND_ENV, CodeFingerprint, code_fingerprint, stale_keys,
                                      staleness)
from orchestration.reuse import copy_result
from orchestration.schema import CODE_COMMIT_TAG, CODE_FILES_TAG, CODE_HASH_TAG, COMMIT_TAG, DIRTY_TAG, WAITED_TAG
from orchestration.suite import trial_key
from orchestration.tracking import create_launch_runs
from orchestration.trial_run import finish_trial, log_metrics, start_attempt
from tests.test_cluster import Service, _free_port, _healthy
from tests.test_orchestration import SMOKE, Driver, _cli, _env, launch  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
# fork: the racers start at once with everything imported. The parent never opens a store it
# hands to them (a forked child would inherit MLflow's cached store and its connections).
FORK = multiprocessing.get_context("fork")


# ------------------------------------------------------------------ code provenance


def test_fingerprint_hashes_the_training_sources_and_nothing_else(monkeypatch):
    fp = code_fingerprint()
    every = {f"tood/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")}
    assert set(fp.files) == every - set(NOT_TRAINING)
    assert {"tood/engine.py", "tood/evaluate.py", "tood/eval/coco_map.py", "tood/losses.py"} <= set(fp.files)
    assert not set(NOT_TRAINING) & set(fp.files) and set(NOT_TRAINING) <= every  # each exclusion names a real file
    for name, digest in fp.files.items():  # reference: the bytes of the file
        assert digest == hashlib.sha256((ROOT / name).read_bytes()).hexdigest()[:12], name
    text = "\n".join(f"{n} {d}" for n, d in sorted(fp.files.items()))
    assert fp.tood_hash == hashlib.sha256(text.encode()).hexdigest()[:16]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    assert fp.commit == (head or "unknown")

    monkeypatch.setenv(PRETEND_ENV, "tood/engine.py,tood/losses.py")
    changed = code_fingerprint()
    assert {n for n in fp.files if fp.files[n] != changed.files[n]} == {"tood/engine.py", "tood/losses.py"}
    assert changed.tood_hash != fp.tood_hash and changed.commit == fp.commit
    assert CodeFingerprint.from_tags(changed.tags()) == changed


def _tags(commit: str, files: dict[str, str], dirty: bool = False) -> dict[str, str]:
    text = "\n".join(f"{n} {d}" for n, d in sorted(files.items()))
    return CodeFingerprint(commit, dirty, hashlib.sha256(text.encode()).hexdigest()[:16], files).tags()


def test_staleness_names_the_training_commit_and_counts_changed_files():
    now = {"tood/a.py": "1", "tood/b.py": "2", "tood/c.py": "3"}
    current = CodeFingerprint.from_tags(_tags("f" * 40, now))
    assert staleness(_tags("a" * 40, now), current) is None  # another commit, the same training code
    # b changed, c removed, d added: 3 files
    old = _tags("abc1234" + "0" * 33, {"tood/a.py": "1", "tood/b.py": "9", "tood/d.py": "4"})
    assert staleness(old, current) == "trained by commit abc1234, tood/ changed since in 3 files"
    one = _tags("abc1234" + "0" * 33, {**now, "tood/a.py": "0"}, dirty=True)
    assert staleness(one, current) == "trained by commit abc1234 (dirty), tood/ changed since in 1 file"
    unlisted = {**one, CODE_FILES_TAG: "{}"}
    assert staleness(unlisted, current) == "trained by commit abc1234 (dirty), tood/ changed since in files not recorded"
    # runs from before code hashes: judged by their commit only
    assert staleness({COMMIT_TAG: "1234567abc"}, current) == "trained by commit 1234567 (code hash not recorded)"
    assert staleness({COMMIT_TAG: "f" * 40}, current) is None and staleness({}, current) is None
    assert staleness(old, None) is None  # a launch that recorded no code judges nothing


def test_rerun_stale_selects_exactly_the_results_of_other_code():
    here = code_fingerprint()

    def run(tags: dict[str, str]) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(tags=tags))

    other = {**here.files, "tood/engine.py": "0" * 12}
    finished = {"same": run(here.tags()), "other": run(_tags(here.commit, other)),
                "old commit": run({COMMIT_TAG: "0" * 40}), "same commit": run({COMMIT_TAG: here.commit})}
    assert stale_keys(finished) == ({"other", "old commit"} if here.commit != "unknown" else {"other"})


def _smoke_launch(client: MlflowClient, name: str, seeds=(0,)) -> tuple[str, list[str], list]:
    grid, specs = load_grid(SMOKE), expand_grid(SMOKE, seeds=list(seeds))
    parent, ids = create_launch_runs(client, grid.study, grid.table, "proxy", str(SMOKE),
                                     resolved_grid(grid, list(seeds), {}), specs, name)
    return parent, ids, specs


def _train_by_hand(client: MlflowClient, run_id: str, config: dict, ap: float) -> None:
    """What a trial that trains leaves in its run (attempt, code tags, metrics, FINISHED)."""
    start_attempt(client, run_id)
    for k, v in code_fingerprint().tags().items():
        client.set_tag(run_id, k, v)
    log_metrics(client, run_id, {"loss_total": 1.0, "attempt_wall_s": 2.0}, step=1)
    finish_trial(client, run_id, config, {"AP": ap}, step=1)


def test_plan_marks_results_of_other_code_and_rerun_stale_plans_them(tmp_path, monkeypatch):
    """`tood-ablate plan` counts the finished trials that other code trained, and with
    --rerun-stale plans them as trainings instead of reuses."""
    from orchestration.plan import _lines, plan

    uri = f"sqlite:///{tmp_path / 'db'}"
    client = MlflowClient(uri)
    _, ids, specs = _smoke_launch(client, "A")
    _train_by_hand(client, ids[0], specs[0].config, 40.0)
    monkeypatch.setenv(PRETEND_ENV, "tood/engine.py")  # the second one trained by other code
    _train_by_hand(client, ids[1], specs[1].config, 41.0)
    monkeypatch.delenv(PRETEND_ENV)
    plain = plan([SMOKE], "proxy", [0], tracking_uri=uri, slots=1)
    assert (plain["finished_in_store"], plain["stale_in_store"], plain["to_train"]) == (2, 1, len(specs) - 2)
    assert any(line.startswith("  stale                    1 of the finished") and "--rerun-stale trains them" in line
               for line in _lines(plain))
    fresh = plan([SMOKE], "proxy", [0], tracking_uri=uri, slots=1, rerun_stale=True)
    assert (fresh["finished_in_store"], fresh["stale_in_store"], fresh["to_train"]) == (1, 1, len(specs) - 1)


def test_reused_run_carries_its_sources_code_and_the_report_notes_it(tmp_path, monkeypatch):
    from reports.collect import collect_study
    from reports.trials import stale_notes

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'db'}")
    _, old_ids, specs = _smoke_launch(client, "old")
    _train_by_hand(client, old_ids[0], specs[0].config, 30.0)
    monkeypatch.setenv(PRETEND_ENV, "tood/engine.py")  # the code changes; the next launch reuses the old result
    parent, new_ids, _ = _smoke_launch(client, "new")
    assert client.get_run(new_ids[0]).data.tags[CODE_HASH_TAG] == code_fingerprint().tood_hash  # the launch's, at creation
    assert copy_result(client, old_ids[0], new_ids[0])
    source, copied = client.get_run(old_ids[0]).data.tags, client.get_run(new_ids[0]).data.tags
    for tag in (CODE_COMMIT_TAG, DIRTY_TAG, CODE_HASH_TAG, CODE_FILES_TAG):
        assert copied[tag] == source[tag], tag
    assert copied[COMMIT_TAG] == client.get_run(parent).data.tags[COMMIT_TAG]  # the launch's commit stays
    _train_by_hand(client, new_ids[1], specs[1].config, 31.0)  # trained by the new code: not stale

    data = collect_study(client, "smoke", parent)
    commit = code_fingerprint().commit[:7]
    expected = f"trained by commit {commit}{' (dirty)' if code_fingerprint().dirty else ''}, tood/ changed since in 1 file"
    assert dict(zip(data.trials["row"], data.trials["stale"])) == {"parallel head + ATSS": expected, "T-head + TAL": ""}
    (note,) = stale_notes(data.trials)
    assert note.startswith("Reused across a code change (1 of 2 trials") and f"parallel head + ATSS seed 0: {expected}" in note
    assert "--rerun-stale" in note

    # a source from before code hashes: the copy drops the launch's code tags and keeps the source's commit
    _, older_ids, _ = _smoke_launch(client, "older")
    for tag in (CODE_COMMIT_TAG, DIRTY_TAG, CODE_HASH_TAG, CODE_FILES_TAG):
        client.delete_tag(new_ids[1], tag)
    client.set_tag(new_ids[1], COMMIT_TAG, "1234567" + "0" * 33)
    copy_result(client, new_ids[1], older_ids[1])
    tags = client.get_run(older_ids[1]).data.tags
    assert CODE_HASH_TAG not in tags and tags[CODE_COMMIT_TAG] == "1234567" + "0" * 33
    assert staleness(tags, code_fingerprint()) == "trained by commit 1234567 (code hash not recorded)"


# ------------------------------------------------------------------ store creation


def _touch_store(uri: str, barrier, results) -> None:
    barrier.wait()
    try:
        prepare_store(uri)
        MlflowClient(uri).search_experiments(max_results=1)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 -- the test reports what failed
        results.put(f"{type(e).__name__}: {e}"[:300])


def test_three_processes_create_one_fresh_sqlite_store_at_once(tmp_path):
    """Without the lock this fails most times (MLflow's migration race: 'Online migration
    expected to match one row', 'table ... already exists')."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    barrier, results = FORK.Barrier(3), FORK.Queue()
    procs = [FORK.Process(target=_touch_store, args=(uri, barrier, results)) for _ in range(3)]
    for p in procs:
        p.start()
    outcome = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcome == ["ok"] * 3
    assert (tmp_path / "fresh.db.lock").exists()


# ------------------------------------------------------------------ leases


def _race(uri: str, keys: list[str], run_id: str, barrier, done, results) -> None:
    barrier.wait()
    prepare_store(uri)  # a fresh store: its creation races too
    client = MlflowClient(uri)
    holder, watch = leases.Holder(run_id, "race"), leases.Watch()
    won = [isinstance(leases.try_acquire(client, key, holder, watch), leases.Lease) for key in keys]
    results.put((run_id, won))
    done.wait()  # winners hold their leases until every process has tried


def test_processes_racing_for_a_lease_have_exactly_one_winner(tmp_path):
    uri = f"sqlite:///{tmp_path / 'db'}"
    keys, n = ["k0", "k1", "k2"], 4
    barrier, done, results = FORK.Barrier(n), FORK.Barrier(n + 1), FORK.Queue()
    procs = [FORK.Process(target=_race, args=(uri, keys, f"run{i}", barrier, done, results)) for i in range(n)]
    for p in procs:
        p.start()
    won = dict(results.get(timeout=180) for _ in procs)
    done.wait(timeout=60)
    for p in procs:
        p.join(timeout=60)
    client = MlflowClient(uri)
    for i, key in enumerate(keys):
        winners = [run for run, w in won.items() if w[i]]
        assert len(winners) == 1, (key, won)
        current = leases.latest(client, key)
        assert (current.generation, current.run_id, current.state) == (0, winners[0], "held")


def test_threads_racing_for_a_lease_have_exactly_one_winner(tmp_path):
    uri = f"sqlite:///{tmp_path / 'db'}"
    prepare_store(uri)
    barrier, won = threading.Barrier(6), []

    def race(i: int) -> None:
        client = MlflowClient(uri)
        barrier.wait()
        got = leases.try_acquire(client, "k", leases.Holder(f"run{i}", "race"), leases.Watch())
        won.append(isinstance(got, leases.Lease))
        if isinstance(got, leases.Lease):
            got.close("retry")  # stop beating; the lease stays held

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(won) == [False] * 5 + [True]


def test_dead_holder_is_taken_over_and_a_retry_takes_its_own_lease_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'db'}")
    prepare_store(client.tracking_uri)
    a = leases.try_acquire(client, "k", leases.Holder("runA", "A"), leases.Watch(), heartbeat_s=0.1)
    time.sleep(0.35)
    held = leases.try_acquire(client, "k", leases.Holder("runB", "B"), leases.Watch())
    assert isinstance(held, leases.LeaseState) and held.run_id == "runA" and "launch A" in held.holder
    assert abs(held.heartbeat_ms - time.time() * 1000) < 1000  # beating
    a.close("retry")  # killed: the heartbeat stops, the lease stays
    client.set_experiment_tag(a.experiment_id, "tood.lease.heartbeat", str(int(time.time() * 1000) - 120_000))
    b = leases.try_acquire(client, "k", leases.Holder("runB", "B"), leases.Watch(), ttl_s=60)
    assert isinstance(b, leases.Lease)
    old = client.get_experiment(a.experiment_id)
    assert old.tags["tood.lease.state"] == "taken_over" and old.lifecycle_stage == "deleted"
    assert (leases.latest(client, "k").generation, leases.latest(client, "k").run_id) == (1, "runB")
    a.close("finished")  # the old holder, had it only been frozen, leaves the new lease alone
    assert leases.latest(client, "k").state == "held"
    # B's attempt dies; B's retry (same run) takes the lease at once, another run may not
    b.close("retry")
    assert isinstance(leases.try_acquire(client, "k", leases.Holder("runC", "C"), leases.Watch()), leases.LeaseState)
    retry = leases.try_acquire(client, "k", leases.Holder("runB", "B"), leases.Watch())
    assert isinstance(retry, leases.Lease) and leases.latest(client, "k").generation == 2
    retry.close("finished")
    assert leases.latest(client, "k").state == "released"
    free = leases.try_acquire(client, "k", leases.Holder("runC", "C"), leases.Watch())
    assert isinstance(free, leases.Lease) and leases.latest(client, "k").generation == 3
    free.close("failed")
    assert not (tmp_path / "mlruns").exists()  # lease experiments store no artifact (their default location is the cwd's)


def test_holder_with_a_clock_ahead_is_dead_once_its_heartbeat_stops_changing(tmp_path):
    """A heartbeat stamped in the waiter's future (clock skew) never looks old; a waiter then
    judges by how long it saw the same value."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'db'}")
    prepare_store(client.tracking_uri)
    a = leases.try_acquire(client, "k", leases.Holder("runA", "A"), leases.Watch())
    a.close("retry")
    client.set_experiment_tag(a.experiment_id, "tood.lease.heartbeat", str(int(time.time() * 1000) + 3_600_000))
    watch, holder = leases.Watch(), leases.Holder("runB", "B")
    assert isinstance(leases.try_acquire(client, "k", holder, watch, ttl_s=0.5), leases.LeaseState)
    time.sleep(0.6)
    assert isinstance(leases.try_acquire(client, "k", holder, watch, ttl_s=0.5), leases.Lease)


def _trial(ids: list[str], specs: list, i: int, launch_dir: Path, alias: str | None = None, reuse: str = "any") -> TrialPayload:
    return TrialPayload(trial_key(specs[i].config), ids[i], specs[i].name, specs[i].config,
                        alias_run_ids=[alias] if alias else [], storage=str(launch_dir), reuse=reuse)


def test_waiting_trial_copies_the_holders_result_instead_of_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'db'}")
    _, a, specs = _smoke_launch(client, "A")
    _, b, _ = _smoke_launch(client, "B")
    _, b_alias, _ = _smoke_launch(client, "B-alias")
    held = leases.claim(client, _trial(a, specs, 0, tmp_path / "ray/A"), heartbeat_s=0.2)
    assert isinstance(held, leases.Lease)

    def holder_trains() -> None:
        time.sleep(1.5)
        _train_by_hand(client, a[0], specs[0].config, 33.0)
        held.close("finished")

    thread = threading.Thread(target=holder_trains)
    thread.start()
    t0 = time.monotonic()
    start_attempt(client, b[0])
    assert leases.claim(client, _trial(b, specs, 0, tmp_path / "ray/B", alias=b_alias[0])) is None
    thread.join()
    assert time.monotonic() - t0 >= 1.5  # it waited for the holder
    for rid in (b[0], b_alias[0]):
        run = client.get_run(rid)
        assert run.info.status == "FINISHED" and run.data.tags["tood.reused_from"] == a[0] and run.data.metrics["AP"] == 33.0
        assert "attempt_wall_s" in run.data.metrics  # the holder's attempt metric, copied; the copy is tagged reused
    waited = client.get_run(b[0]).data.tags[WAITED_TAG]
    assert waited.startswith("launch A on ") and f"run {a[0]}" in waited and waited.endswith(" s)")
    # a key finished before the trial starts: copied at once, no lease taken
    _, c, _ = _smoke_launch(client, "C")
    assert leases.claim(client, _trial(c, specs, 0, tmp_path / "ray/C")) is None
    assert client.get_run(c[0]).data.tags["tood.reused_from"] == a[0] and WAITED_TAG not in client.get_run(c[0]).data.tags
    # --rerun trains it anyway; --rerun-stale does not reuse a result of other code
    rerun = leases.claim(client, _trial(c, specs, 0, tmp_path / "ray/C", reuse="none"))
    assert isinstance(rerun, leases.Lease)
    rerun.close("finished")
    monkeypatch.setenv(PRETEND_ENV, "tood/losses.py")
    assert isinstance(leases.claim(client, _trial(c, specs, 0, tmp_path / "ray/C", reuse="fresh")), leases.Lease)


def test_waiter_trains_when_the_holder_fails_and_gives_up_after_its_limit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'db'}")
    _, a, specs = _smoke_launch(client, "A")
    _, b, _ = _smoke_launch(client, "B")
    held = leases.claim(client, _trial(a, specs, 1, tmp_path / "ray/A"))
    with pytest.raises(leases.LeaseWaitTimeout, match="waited 1 s for launch A on"):
        leases.claim(client, _trial(b, specs, 1, tmp_path / "ray/B"), wait_s=1.0)
    threading.Timer(0.5, held.close, args=("failed",)).start()  # the holder fails for good, no result
    got = leases.claim(client, _trial(b, specs, 1, tmp_path / "ray/B"), wait_s=30)
    assert isinstance(got, leases.Lease) and leases.latest(client, got.key).run_id == b[1]
    got.close("finished")


# ------------------------------------------------------------------ end to end (local Ray, the CLI)


def _trainings(uri: str) -> dict[str, int]:
    """Per trial key of the store: the runs that trained it (an ``attempt_wall_s`` metric and no
    ``tood.reused_from``: a reused copy carries its source's metrics). Every trial run must be FINISHED."""
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments(filter_string="name LIKE 'tood-ablate/%'")]
    counts: dict[str, int] = {}
    for run in client.search_runs(exps, "tags.`tood.role` = 'trial'", max_results=1000):
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("tood.error"))
        key = run.data.tags["tood.trial_key"]
        trained = "tood.reused_from" not in run.data.tags and "attempt_wall_s" in run.data.metrics
        counts[key] = counts.get(key, 0) + trained
    return counts


def _children(client: MlflowClient, launch_name: str) -> list:
    """The trial runs of launch ``launch_name`` in study smoke."""
    exp = client.get_experiment_by_name("tood-ablate/smoke").experiment_id
    (parent,) = client.search_runs([exp], f"tags.`tood.role` = 'parent' and attributes.run_name = '{launch_name}'")
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def _record(path: Path, name: str) -> dict:
    return json.loads((path / "ray" / name / "tood_launch.json").read_text())


def _status(path: Path, name: str) -> str:
    proc = subprocess.run(_cli("status", name, "--storage-path", str(path / "ray")), cwd=path, env=_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_code_change_is_marked_stale_and_retrained_only_with_rerun_stale(launch, monkeypatch):
    monkeypatch.chdir(launch.path)
    one_epoch = ("--set", "train.epochs=1")
    first = launch.start("run", str(SMOKE), "--name", "old", *one_epoch)
    assert first.wait(timeout=600) == 0, first.output()
    changed = _env(**{PRETEND_ENV: "tood/engine.py"})  # tood/engine.py differs from the code that trained "old"
    plain = launch.start("run", str(SMOKE), "--name", "plain", *one_epoch, env=changed)
    assert plain.wait(timeout=300) == 0, plain.output()
    assert _record(launch.path, "plain")["trainings"]["to_train"] == 0  # reuse across a code change is allowed ...
    out = _status(launch.path, "plain")
    trained_by = CodeFingerprint.from_tags(_children(MlflowClient(launch.uri), "old")[0].data.tags)
    dirty = " (dirty)" if trained_by.dirty else ""
    stale = f"STALE: trained by commit {trained_by.commit[:7]}{dirty}, tood/ changed since in 1 file"
    assert out.count(stale) == 2 and "2 result(s) reused across a code change" in out  # ... and marked
    assert "STALE" not in _status(launch.path, "old")

    fresh = launch.start("run", str(SMOKE), "--name", "fresh", "--rerun-stale", *one_epoch, env=changed)
    assert fresh.wait(timeout=600) == 0, fresh.output()
    assert _record(launch.path, "fresh")["trainings"]["to_train"] == 2
    again = launch.start("run", str(SMOKE), "--name", "again", "--rerun-stale", *one_epoch, env=changed)
    assert again.wait(timeout=300) == 0, again.output()
    assert _record(launch.path, "again")["trainings"]["to_train"] == 0  # trained by this code now: reused
    assert "STALE" not in _status(launch.path, "again") and "STALE" not in _status(launch.path, "fresh")
    assert set(_trainings(launch.uri).values()) == {2}  # each key: by "old", then by "fresh"
    client = MlflowClient(launch.uri)
    monkeypatch.setenv(PRETEND_ENV, "tood/engine.py")
    for run in _children(client, "fresh"):
        assert run.data.tags[CODE_HASH_TAG] == code_fingerprint().tood_hash  # the trial processes' code, changed too


def _held_leases(client: MlflowClient) -> list:
    """The lease experiments held now (orchestration.lease)."""
    found = client.search_experiments(filter_string="name LIKE 'tood-ablate.lease/%'")
    return [e for e in found if e.tags.get("tood.lease.state") == "held"]


def _waiting(client: MlflowClient, launch_name: str) -> list:
    try:
        return [r for r in _children(client, launch_name) if WAITED_TAG in r.data.tags]
    except ValueError:  # the launch has not created its runs yet
        return []


def _overlapping_launches(path: Path, uri: str, together: bool) -> tuple[Driver, Driver]:
    """Launch X (smoke, seed 0) and Y (seeds 0 and 1) into ``uri``: at once, or Y while X trains.
    In the second case X's training processes (the pids their leases name) are frozen until Y's
    trials wait for them (well inside lease.TTL_S): X still trains when Y arrives, whatever the
    machine's speed, and a paused holder is waited for, not taken over."""
    def start(name: str, seeds: str) -> Driver:
        return Driver(path, "run", str(SMOKE), "--name", name, "--seeds", seeds, "--set", "train.epochs=1",
                      "--storage-path", str(path / "ray"), "--tracking-uri", uri, "--quiet")

    x = start("x", "0")
    if together:
        return x, start("y", "0,1")
    client, deadline, held = None, time.monotonic() + 600, []
    while time.monotonic() < deadline and x.proc.poll() is None and not held:
        if (path / "ray/x/tood_launch.json").exists():
            client = client or MlflowClient(uri)
            held = _held_leases(client)
        time.sleep(0.2)  # polling interval of the store
    assert held, x.output()
    pids = [int(e.tags["tood.lease.pid"]) for e in held]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        y = start("y", "0,1")
        deadline = time.monotonic() + 70
        while time.monotonic() < deadline and y.proc.poll() is None and len(_waiting(client, "y")) < len(pids):
            time.sleep(0.5)  # polling interval of the store
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert len(_waiting(client, "y")) == len(pids), y.output()
    return x, y


@pytest.mark.slow
@pytest.mark.parametrize("together", [True, False], ids=["started_together", "started_while_training"])
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_two_launches_of_overlapping_grids_train_each_key_once(tmp_path, monkeypatch, store, together):
    monkeypatch.chdir(tmp_path)
    services, drivers = [], []
    try:
        if store == "server":
            port = _free_port()
            services.append(Service([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                     "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                                     "--artifacts-destination", str(tmp_path / "artifacts")], tmp_path / "mlflow.log", _env()))
            services[0].wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/health"), "mlflow server")
            uri = f"http://127.0.0.1:{port}"
        else:
            uri = f"sqlite:///{tmp_path / 'mlruns.db'}"  # created by both launches at once when together
        drivers.extend(_overlapping_launches(tmp_path, uri, together))
        for d in drivers:
            assert d.wait(timeout=900) == 0, d.output()
        trainings = _trainings(uri)
        assert len(trainings) == 4 and set(trainings.values()) == {1}, trainings
        client = MlflowClient(uri)
        x_seed0 = _children(client, "x")
        y_seed0 = [r for r in _children(client, "y") if r.data.tags["tood.seed"] == "0"]
        assert len(x_seed0) == len(y_seed0) == 2
        # seed 0: trained by one launch, reused by the other, wherever the race put it
        assert sum("tood.reused_from" in r.data.tags for r in y_seed0 + x_seed0) == 2
        waited = [r.data.tags[WAITED_TAG] for r in y_seed0 + x_seed0 if WAITED_TAG in r.data.tags]
        print(f"{store}, together={together}: {len(waited)} trial(s) waited for another launch: {waited}")
        if not together:  # Y's trials of X's keys waited for X and copied its results
            assert all("tood.reused_from" in r.data.tags for r in y_seed0)
            assert len(waited) >= 1 and all(w.startswith("launch x on ") for w in waited)
    finally:
        for d in drivers:
            d.stop()
        for s in services:
            s.stop()
