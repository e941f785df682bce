"""Suite launches: trial keys, dedup within and across launches, the schedule, suite resume.

The end-to-end tests run the real ``tood-ablate`` CLI on local Ray with a sqlite store
(fixtures of tests/test_orchestration.py) on two tiny grids that share a row.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import signal
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestration.grid import expand_grid
from orchestration.suite import estimated_cost, schedule, trial_key, unique_trials
from tood.build import SCHEME_FIELDS, build_criterion, unused_criterion_fields
from tood.config import build_config
from tests.test_orchestration import SMOKE, _study_runs, launch  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]


def _smoke_rows() -> list[dict]:
    return yaml.safe_load(SMOKE.read_text())["rows"]


def _write_grid(folder: Path, study: str, labels: list[str], seeds=(0,)) -> Path:
    """A copy of the smoke grid named ``study`` with the smoke rows of ``labels``."""
    rows = [r for r in _smoke_rows() if r["label"] in labels]
    path = folder / f"{study}.yaml"
    path.write_text(yaml.safe_dump({"study": study, "table": "smoke", "base": str(ROOT / "experiments/base.yaml"),
                                    "seeds": list(seeds), "rows": rows}, sort_keys=False))
    return path


# ------------------------------------------------------------------ keys and schedule


def test_trial_key_ignores_names_and_described_paths_but_not_values():
    cfg = expand_grid(SMOKE)[0].config
    key = trial_key(cfg)
    assert len(key) == 16 and key == trial_key(copy.deepcopy(cfg))
    renamed = copy.deepcopy(cfg)
    renamed["name"] = "elsewhere"
    renamed["train"]["workers"] = 7
    renamed["data"]["root"] = "/somewhere/else"  # the synthetic recipe describes the data
    renamed["model"]["backbone"]["pretrained"] = "/other/file.pth"  # ... and the pre-training recipe the weights
    assert trial_key(renamed) == key
    for section, name, value in [("train", "lr", 0.123), ("train", "seed", 5), ("criterion", "atss_topk", 5), ("test", "nms_iou", 0.5)]:
        changed = copy.deepcopy(cfg)
        changed[section][name] = value
        assert trial_key(changed) != key, f"{section}.{name} must change the key"
    real = copy.deepcopy(cfg)
    real["data"]["synthetic"] = None  # real data: the folder is the dataset
    moved = copy.deepcopy(real)
    moved["data"]["root"] = "/data/coco2"
    assert trial_key(real) != trial_key(moved)


PERTURBED = {"warmup_epochs": 2, "topk": 5, "alpha": 0.5, "beta": 4.0, "conflict": "min_area", "atss_topk": 5,
             "center_radius": 2.5, "center_scale_factor": 0.5, "fovea_sigma": 0.3, "iou_inside_gt": False}


def _describe(obj):
    """A criterion as plain data: dataclass fields and object attributes, recursively."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _describe(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "__dict__"):
        return {"type": type(obj).__name__, **{k: _describe(v) for k, v in vars(obj).items()}}
    if isinstance(obj, (list, tuple)):
        return [_describe(x) for x in obj]
    return obj


@pytest.mark.parametrize("assigner", sorted(SCHEME_FIELDS))
def test_key_leaves_out_exactly_the_criterion_fields_a_scheme_does_not_read(assigner):
    cfg = expand_grid(SMOKE)[0].config
    cfg["criterion"]["assigner"] = assigner
    base, key = _describe(build_criterion(build_config(cfg, "base"))), trial_key(cfg)
    assert set(PERTURBED) == {f for fields in SCHEME_FIELDS.values() for f in fields}
    for name, value in PERTURBED.items():
        changed = copy.deepcopy(cfg)
        changed["criterion"][name] = value
        built = _describe(build_criterion(build_config(changed, name)))
        if name in unused_criterion_fields(assigner):
            assert built == base and trial_key(changed) == key, f"{assigner}: {name} is read after all"
        else:
            assert built != base and trial_key(changed) != key, f"{assigner}: {name} changes nothing"


def test_rows_shared_by_studies_are_one_trial(tmp_path):
    a = expand_grid(_write_grid(tmp_path, "a", ["parallel head + ATSS", "T-head + TAL"], seeds=(0, 1)))
    b = expand_grid(_write_grid(tmp_path, "b", ["T-head + TAL"], seeds=(1, 2)))
    trials = unique_trials([a, b])
    # a: 2 rows x seeds {0, 1}; b adds T-head + TAL seed 2 only (seed 1 is shared)
    assert len(trials) == 5
    shared = [t for t in trials if len(t.users) == 2]
    assert len(shared) == 1 and shared[0].primary[0] == 0
    (si, ti), (sj, tj) = shared[0].users
    assert (a[ti].row_label, a[ti].seed) == (b[tj].row_label, b[tj].seed) == ("T-head + TAL", 1)


def test_every_paper_study_shares_full_tood():
    """The paper's suite: full TOOD is a row of Tables 2, 3, 4, 6 and top-m; dedup trains it once."""
    from orchestration.grid import expand, load_grid
    from orchestration.launch import suite_grids

    grids = [load_grid(p) for p in suite_grids(ROOT / "experiments")]
    specs = [expand(g, "proxy") for g in grids]
    trials = unique_trials(specs)
    tood = [t for t in trials if {grids[si].study for si, _ in t.users} >= {"table2_assign", "table3_tood", "table4_alpha_beta", "table6_alignment", "topm"}]
    assert len(tood) == 3  # its three shared seeds (Tables 3 and 6 add seeds 3 and 4)
    assert len(trials) < sum(len(s) for s in specs)


def test_schedule_runs_seed_rounds_slowest_first(tmp_path):
    specs = [expand_grid(_write_grid(tmp_path, "a", ["parallel head + ATSS", "T-head + TAL"], seeds=(3, 1)))]
    order = schedule(unique_trials(specs), specs)
    got = [(specs[0][t.primary[1]].seed, specs[0][t.primary[1]].row_label) for t in order]
    # seeds in sorted order per row; the T-head (cost factor 1.2) before the parallel head
    assert got == [(1, "T-head + TAL"), (1, "parallel head + ATSS"), (3, "T-head + TAL"), (3, "parallel head + ATSS")]


def test_estimated_cost_and_eta_by_hand():
    cfg = {"train": {"epochs": 4, "batch_size": 8, "eval_every": 2, "max_iters_per_epoch": None},
           "data": {"img_scale": [160, 160], "synthetic": {"n_train": 100, "n_val": 20}},
           "model": {"head": {"type": "t_head"}}}
    assert estimated_cost(cfg) == pytest.approx(1.2 * (100 * 4 + 0.5 * 20 * 2))
    cfg["train"]["max_iters_per_epoch"] = 5  # 5 x 8 = 40 images an epoch
    assert estimated_cost(cfg) == pytest.approx(1.2 * (40 * 4 + 0.5 * 20 * 2))


# ------------------------------------------------------------------ end to end


def _launch_runs(uri: str, study: str, launch_name: str):
    """(client, parent, {trial name: child run}) of one launch of ``study``."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"tood-ablate/{study}")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`tood.role` = 'parent' and attributes.run_name = '{launch_name}'")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len({r.info.run_name for r in children}) == len(children), "two child runs of one trial"
    return client, parent, {r.info.run_name: r for r in children}


def _finished(uri: str, study: str) -> dict:
    return _study_runs(uri, study)[2]


def test_shared_row_trains_once_and_later_launches_reuse_it(launch, monkeypatch):
    monkeypatch.chdir(launch.path)
    a = _write_grid(launch.path, "study_a", ["parallel head + ATSS", "T-head + TAL"])
    b = _write_grid(launch.path, "study_b", ["T-head + TAL"])
    first = launch.start("run", str(a), str(b), "--name", "both", "--set", "train.epochs=1")
    assert first.wait(timeout=600) == 0, first.output()
    runs_a, runs_b = _finished(launch.uri, "study_a"), _finished(launch.uri, "study_b")
    assert len(runs_a) == 2 and len(runs_b) == 1
    assert all(r.info.status == "FINISHED" for r in [*runs_a.values(), *runs_b.values()])
    (tal_b,) = runs_b.values()
    tal_a = runs_a[tal_b.info.run_name]
    assert tal_b.data.tags["tood.reused_from"] == tal_a.info.run_id  # trained once, in study_a
    assert tal_b.data.metrics == tal_a.data.metrics and "AP" in tal_b.data.metrics
    assert tal_a.data.tags["tood.attempts"] == "1" and tal_b.data.tags["tood.attempts"] == "0"

    again = launch.start("run", str(a), "--name", "again", "--set", "train.epochs=1")
    assert again.wait(timeout=300) == 0, again.output()
    record = json.loads((launch.path / "ray/again/tood_launch.json").read_text())
    assert record["trainings"] == {"without_dedup": 2, "unique": 2, "reused_runs": 2, "to_train": 0,
                                   "shared_prefixes": 0, "branches": 0, "saved_trial_epochs": 0}
    client, _, reused = _launch_runs(launch.uri, "study_a", "again")
    assert len(reused) == 2  # both rows of the second launch read the first launch's runs
    for name, r in reused.items():
        src = client.get_run(r.data.tags["tood.reused_from"])
        assert src.info.run_id == runs_a[name].info.run_id and src.data.tags["tood.attempts"] == "1"
        assert r.info.status == "FINISHED" and r.data.metrics == src.data.metrics and r.data.tags["tood.attempts"] == "0"

    rerun = launch.start("run", str(b), "--name", "rerun", "--rerun", "--set", "train.epochs=1")
    assert rerun.wait(timeout=600) == 0, rerun.output()
    changed = launch.start("run", str(b), "--name", "changed", "--set", "train.epochs=1", "--set", "train.lr=0.001")
    assert changed.wait(timeout=600) == 0, changed.output()
    keys = {}
    for name, reused_expected in (("both", True), ("rerun", False), ("changed", False)):
        _, _, runs = _launch_runs(launch.uri, "study_b", name)
        (run,) = runs.values()
        keys[name] = run.data.tags["tood.trial_key"]
        assert ("tood.reused_from" in run.data.tags) == reused_expected, name
        assert run.info.status == "FINISHED"
        if not reused_expected:
            assert run.data.tags["tood.attempts"] == "1"  # trained by this launch
    assert keys["both"] == keys["rerun"] != keys["changed"]

@pytest.mark.slow
def test_suite_resumes_after_the_driver_is_killed(launch, monkeypatch):
    """SIGKILL the driver of a two-study launch once one trial finished; `resume` finishes
    both studies: no trial trained twice, no duplicate run, nothing left RUNNING."""
    monkeypatch.chdir(launch.path)
    a = _write_grid(launch.path, "study_a", ["parallel head + ATSS", "T-head + TAL"], seeds=(0, 1))
    b = _write_grid(launch.path, "study_b", ["T-head + TAL"], seeds=(0, 1))
    driver = launch.start("run", str(a), str(b), "--name", "cut", "--max-concurrent", "1", "--set", "train.epochs=2")
    deadline, done = time.monotonic() + 600, []
    while time.monotonic() < deadline and driver.proc.poll() is None and not done:
        if (launch.path / "mlruns.db").exists() and (launch.path / "ray/cut/tood_launch.json").exists():
            done = [r for r in _finished(launch.uri, "study_a").values() if r.info.status == "FINISHED"]
        time.sleep(0.5)  # polling interval of the store, not a wait for a result
    assert done and driver.proc.poll() is None, driver.output()
    driver.signal(signal.SIGKILL)
    driver.stop()
    resumed = launch.start("resume", "cut")
    assert resumed.wait(timeout=900) == 0, resumed.output()
    client, _, runs_a = _study_runs(launch.uri, "study_a")
    _, _, runs_b = _study_runs(launch.uri, "study_b")
    assert len(runs_a) == 4 and len(runs_b) == 2  # one child run per (row, seed), no duplicates
    for run in [*runs_a.values(), *runs_b.values()]:
        assert run.info.status == "FINISHED" and "AP" in run.data.metrics
    for run in runs_b.values():  # study_b's rows were trained once, in study_a
        source = runs_a[run.info.run_name]
        assert run.data.tags["tood.reused_from"] == source.info.run_id and run.data.metrics == source.data.metrics
    for run in runs_a.values():
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss_total"))
        assert steps == [1, 2], run.info.run_name  # every epoch logged once: nothing trained twice
    first = {r.info.run_id for r in done}
    assert all(runs_a[r.info.run_name].info.end_time == r.info.end_time for r in done if r.info.run_id in first)


def test_suite_progress_line_by_hand():
    from types import SimpleNamespace

    from orchestration.progress import suite_line

    def trial(status, cost, epoch=None, seconds=None, reused=False):
        result = {"epoch": epoch} if epoch is not None else {}
        if status == "TERMINATED" and epoch == 4:
            result["done"] = True  # the trainable returned
        if seconds is not None:
            result["time_total_s"] = seconds
        if reused:
            result["already_finished"] = 1.0
        return SimpleNamespace(status=status, last_result=result, config={"trial": {"key": "k", "run_id": "r", "name": "t", "cost": cost, "config": {"train": {"epochs": 4}}}})

    trials = [trial("TERMINATED", 10.0, 4, 100.0), trial("TERMINATED", 30.0, 4, 300.0), trial("TERMINATED", 50.0, 4, 9.0, reused=True),
              trial("RUNNING", 20.0, 1), trial("PENDING", 40.0), trial("ERROR", 99.0)]
    # 10 s a unit (the resumed trial's time says nothing); the running trial has 20 * 3/4 = 15 units
    # left (150 s in one slot), the pending one's 40 units take the other slot: 400 s
    assert suite_line(trials, slots=2) == "suite: 3/6 trials done, 1 running, ETA 7 min"
    assert suite_line(trials[3:], slots=2) == "suite: 0/3 trials done, 1 running, ETA -"
    # interrupted: Tune ends the running and pending trials TERMINATED; they are still to run, in
    # order into the slot that frees first: 15 units (slot 1: 150 s), 40 (slot 2: 400 s), 60 (slot 1:
    # 150 + 600 = 750 s) -> 12.5 min
    stopped = trials[:3] + [trial("TERMINATED", 20.0, 1), trial("TERMINATED", 40.0), trial("TERMINATED", 60.0)]
    assert suite_line(stopped, slots=2) == "suite: 3/6 trials done, 0 running, ETA 12 min"
