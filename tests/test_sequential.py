"""``tood-ablate run --until-decided``: the rounds of seeds on a store with the launcher's MLflow
layout, where each (row, seed) "trains" to a value chosen by the test (run_suite replaced), so
which claims decide at which look is known in advance."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

import tood_ablate.sequential as sequential
from orchestration.folders import storage_root
from orchestration.grid import expand, load_grid, resolved_grid
from orchestration.launch import LaunchOptions, _only_row_seeds, _seeds_of
from orchestration.tracking import create_launch_runs
from orchestration.trial_run import finish_trial
from reports.claim_planner import Plan
from tood.config import ConfigError
from tood_ablate.cli import main as cli_main

# TOOD minus ATSS per seed: anchor-free 5 + 0.1 x noise (decided at the first look, 3 seeds); anchor-based
# 1 + 1.5 x noise: 1.465, 0.37, 1.27 over seeds 0-2, mean 1.035, sd 0.585, one-sided t = 3.06 on 2 degrees
# of freedom, p = (1 - t / sqrt(t^2 + 2)) / 2 = 0.046 > 0.025 (the per-look level): undecided, but
# decidable by 5 seeds, so both its rows get seeds 3 and 4.
NOISE = [0.31, -0.42, 0.18, -0.77, 0.55, 0.09, -0.26, 0.64]
BASE = {"ATSS (anchor-free)": 60.0, "TOOD (anchor-free)": 65.0, "ATSS (anchor-based)": 60.0, "TOOD (anchor-based)": 61.0}
GRID = """study: t3seq
table: table3
base: {base}
seeds: [0]
rows:
  - label: "ATSS (anchor-free)"
    factors: {{detector: atss_af, head: parallel}}
    paper: {{AP: 39.2}}
  - label: "ATSS (anchor-based)"
    factors: {{detector: atss_ab, head: parallel}}
    paper: {{AP: 39.3}}
  - label: "TOOD (anchor-free)"
    factors: {{head: t_head, assigner: tal, anchor_type: anchor_free}}
    paper: {{AP: 42.5}}
  - label: "TOOD (anchor-based)"
    factors: {{head: t_head, assigner: tal, anchor_type: anchor_based}}
    paper: {{AP: 42.4}}
"""


def value(row: str, seed: int) -> float:
    scale = 0.1 if "anchor-free" in row else 1.5
    return BASE[row] + (scale * NOISE[seed] if row.startswith("TOOD") else 0.0)


class FakeLaunches:
    """run_suite with the launcher's MLflow layout: every requested (row, seed) is FINISHED with
    value(row, seed) as AP. ``fail_round``: that round's launch stops with a KILLED trial once."""

    def __init__(self, fail_round: int | None = None, parent_tags: bool = True):
        self.rounds: list[dict[str, list[int]]] = []
        self.trained: list[tuple[str, int]] = []
        self.fail_round = fail_round
        self.parent_tags = parent_tags  # False: parents as launches made them before they carried the design

    def __call__(self, grid_paths, opts: LaunchOptions):
        client = MlflowClient(opts.tracking_uri)
        self.rounds.append({k: list(v) for k, v in opts.row_seeds.items()})
        done = set(self.trained)
        failing = self.fail_round == len(self.rounds)
        for path in grid_paths:
            g = load_grid(path)
            specs = _only_row_seeds(expand(g, opts.profile, _seeds_of(g, opts), opts.overrides), opts.row_seeds)
            parent, ids = create_launch_runs(client, g.study, g.table, opts.profile, str(path),
                                             resolved_grid(g, _seeds_of(g, opts), opts.overrides), specs, opts.name,
                                             opts.parent_tags if self.parent_tags else None)
            for i, (spec, rid) in enumerate(zip(specs, ids)):
                if failing and i == len(ids) - 1:
                    client.set_terminated(rid, "KILLED")
                    continue
                if (spec.row_label, spec.seed) not in done:  # a launch reuses what an earlier one trained
                    self.trained.append((spec.row_label, spec.seed))
                finish_trial(client, rid, spec.config, {"AP": value(spec.row_label, spec.seed)}, step=1)
            client.set_terminated(parent, "KILLED" if failing else "FINISHED")
        folder = storage_root(opts.storage_path) / opts.name
        folder.mkdir(parents=True)
        (folder / "tood_launch.json").write_text(json.dumps({"name": opts.name}))
        if failing:
            self.fail_round = None
        return SimpleNamespace(ok=not failing)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    grid = tmp_path / "t3seq.yaml"
    grid.write_text(GRID.format(base=Path(__file__).resolve().parents[1] / "experiments/base.yaml"))
    opts = LaunchOptions(profile="smoke", tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}", name="seq",
                         storage_path=str(tmp_path / "ray"), quiet=True)
    return grid, opts


def _seeds(rounds: dict[str, list[int]], row: str) -> list[int]:
    return rounds[f"t3seq/{row}"]


def test_decided_claim_stops_and_undecided_gets_seeds_up_to_max(setup, monkeypatch):
    grid, opts = setup
    fake = FakeLaunches()
    monkeypatch.setattr(sequential, "run_suite", fake)
    assert sequential.run_until_decided([grid], opts, max_seeds=5, looks=(3, 5), alpha=0.05) == 0
    first, second = fake.rounds  # look 1 at 3 seeds, look 2 at 5: no third round
    assert all(seeds == [0, 1, 2] for seeds in first.values())
    # anchor-free: +5.0 over 3 seeds is decided at the first look (one-sided t at 0.025 per look): no more seeds
    assert _seeds(second, "TOOD (anchor-free)") == [0, 1, 2] and _seeds(second, "ATSS (anchor-free)") == [0, 1, 2]
    # anchor-based: undecided at the first look and decidable: both rows of the pair get seeds 3 and 4
    assert _seeds(second, "TOOD (anchor-based)") == [0, 1, 2, 3, 4] and _seeds(second, "ATSS (anchor-based)") == [0, 1, 2, 3, 4]
    assert len(fake.trained) == len(set(fake.trained)) == 4 * 3 + 2 * 2  # nothing trained twice
    table = (Path(opts.storage_path) / "seq_sequential_claims.md").read_text()
    assert "| t3seq | TOOD (anchor-free) > ATSS (anchor-free) (AP) | direction | 0 | one-sided paired t | 3 | 3,5 |" in table
    assert "Trainings spent: 16; a fixed design with 5 seeds in every row: 20." in table
    # the same table on the study's parent run, as an MLflow table artifact
    client = MlflowClient(opts.tracking_uri)
    parent = client.search_runs([client.get_experiment_by_name("tood-ablate/t3seq").experiment_id],
                                "tags.`tood.role` = 'parent'", order_by=["attributes.start_time DESC"])[0]
    assert "sequential_claims.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.parametrize("tagged_at_launch", [True, False])
def test_the_report_decides_the_claims_at_the_looks_of_the_rounds(setup, monkeypatch, tagged_at_launch):
    """Every round's parent carries the design (at creation; parents of launches made before get it
    when the rounds end), and the report's claims read it: the same verdicts as the rounds' table,
    at the per-look level 0.05 / 3 on the seeds where each claim stopped."""
    from reports.claim_tests import SequentialDesign, decide
    from reports.claims import compare
    from reports.collect import collect_study
    from reports.tables import summarize

    grid, opts = setup
    monkeypatch.setattr(sequential, "run_suite", FakeLaunches(parent_tags=tagged_at_launch))
    assert sequential.run_until_decided([grid], opts, max_seeds=8, looks=(3, 5, 8), alpha=0.05) == 0
    client = MlflowClient(opts.tracking_uri)
    parents = client.search_runs([client.get_experiment_by_name("tood-ablate/t3seq").experiment_id],
                                 "tags.`tood.role` = 'parent'", order_by=["attributes.start_time DESC"])
    tags = [{k: p.data.tags.get(k) for k in ("tood.looks", "tood.alpha")} for p in parents]
    want = {"tood.looks": "3,5,8", "tood.alpha": "0.05"}
    assert tags == [want] * len(parents) if tagged_at_launch else tags[0] == want
    data = collect_study(client, "t3seq")
    assert data.design == SequentialDesign((3, 5, 8), 0.05)
    claims = [c for c in compare(data.study, data.table, summarize(data), data.trials, design=data.design) if c.is_claim]
    rounds = {line.split(" | ")[1]: line.split(" | ")[8] for line in
              (Path(opts.storage_path) / "seq_sequential_claims.md").read_text().splitlines() if line.startswith("| t3seq")}
    assert {c.claim: c.verdict for c in claims} == rounds
    # by hand: anchor-based TOOD - ATSS = 1.5 x NOISE + 1 over seeds 0.., tested at the first look that decides
    d = [1 + 1.5 * x for x in NOISE]
    expected = decide(d[:len(claims[1].diff.seeds)], "greater", 0.0, None, (3, 5, 8), 0.05).test
    assert claims[1].test.level == pytest.approx(0.05 / 3) and claims[1].test.p_value == pytest.approx(expected.p_value)
    # the study's summary run (what the MLflow UI shows on one row) carries the same verdicts
    import csv
    import tempfile

    (summary,) = client.search_runs([data.experiment_id], "tags.`tood.role` = 'summary'")
    with tempfile.TemporaryDirectory() as tmp:
        with open(client.download_artifacts(summary.info.run_id, "claims.csv", tmp)) as f:
            logged = {r["Claim"]: r["Verdict"] for r in csv.DictReader(f)}
    assert logged == rounds


def test_interrupted_round_continues_with_the_same_plan(setup, monkeypatch):
    grid, opts = setup
    fake = FakeLaunches(fail_round=2)
    monkeypatch.setattr(sequential, "run_suite", fake)
    assert sequential.run_until_decided([grid], opts, max_seeds=5, looks=(3, 5)) == 1  # round 2 cut short
    # the same command again: round 2's launch exists (it is resumed with `tood-ablate resume seq-r2`; here its
    # killed trial is simply absent), so the plan is read from the store again and asks the same seeds
    assert sequential.run_until_decided([grid], opts, max_seeds=5, looks=(3, 5)) == 0
    assert _seeds(fake.rounds[-1], "TOOD (anchor-based)") == [0, 1, 2, 3, 4]
    assert _seeds(fake.rounds[-1], "TOOD (anchor-free)") == [0, 1, 2]
    assert len(fake.trained) == len(set(fake.trained))


def test_first_round_cut_short_on_another_machine_still_gives_every_row_the_first_look(setup, monkeypatch):
    """Round 1 stops with a trial KILLED; the same command then runs where the launch folders are
    gone (a new machine with the committed store): every row still gets the first look's seeds,
    a row with some of them finished included, and nothing trains twice."""
    grid, opts = setup
    fake = FakeLaunches(fail_round=1)
    monkeypatch.setattr(sequential, "run_suite", fake)
    assert sequential.run_until_decided([grid], opts, max_seeds=3, looks=(3,)) == 1
    assert fake.trained[-1] != ("TOOD (anchor-based)", 2)  # the killed trial
    elsewhere = dataclasses.replace(opts, storage_path=str(Path(opts.storage_path).parent / "ray-new-machine"))
    assert sequential.run_until_decided([grid], elsewhere, max_seeds=3, looks=(3,)) == 0
    assert all(seeds == [0, 1, 2] for seeds in fake.rounds[1].values()), fake.rounds[1]
    assert ("TOOD (anchor-based)", 2) in fake.trained and len(fake.trained) == len(set(fake.trained)) == 12


def test_a_row_with_some_first_look_seeds_finished_gets_the_rest():
    """A row in no claim (e.g. one that did not train long enough to compare) whose first round was
    cut short keeps its finished seeds and gets the rest of the first look's."""
    import pandas as pd

    grid = SimpleNamespace(study="s", rows=[{"label": "a"}, {"label": "b"}, {"label": "c"}])
    trials = pd.DataFrame({"row": ["a", "a", "a", "b"], "seed": [0, 1, 2, 1], "status": ["FINISHED"] * 3 + ["FINISHED"]})
    studies = [SimpleNamespace(study="s", trials=trials)]
    plan = SimpleNamespace(seeds={"s/a/AP": {3, 4}})
    assert sequential.row_seeds_for_round([grid], studies, plan, 3) == {"s/a": [0, 1, 2, 3, 4], "s/b": [0, 1, 2], "s/c": [0, 1, 2]}
    assert sequential.row_seeds_for_round([grid], [], None, 3) == {"s/a": [0, 1, 2], "s/b": [0, 1, 2], "s/c": [0, 1, 2]}


def test_bad_options_are_config_errors(setup):
    grid, opts = setup
    with pytest.raises(ConfigError, match="--max-seeds: got 2"):
        sequential.run_until_decided([grid], opts, max_seeds=2, looks=(3, 5))
    with pytest.raises(ConfigError, match="--looks"):
        sequential.run_until_decided([grid], opts, max_seeds=5, looks=(5, 3))
    with pytest.raises(ConfigError, match="--alpha: got 0.7"):
        sequential.run_until_decided([grid], opts, max_seeds=5, looks=(3, 5), alpha=0.7)
    with pytest.raises(ConfigError, match="--seeds: not with --until-decided"):
        sequential.run_until_decided([grid], LaunchOptions(**{**opts.__dict__, "seeds": [0]}), max_seeds=5, looks=(3, 5))
    assert math.isfinite(value("TOOD (anchor-based)", 4))


@pytest.mark.slow
def test_until_decided_end_to_end_on_tiny_trainings(tmp_path):
    """The real command on Table 6's two ends at the smoke profile: round 1 trains seeds 0 and 1 of
    both rows, round 2 (if a claim is still open) seed 2; every (row, seed) trains once, nothing is
    left RUNNING, and the claims table lands on the study's latest parent run."""
    import subprocess
    import sys

    from tests.test_orchestration import _env

    grid = tmp_path / "ends.yaml"
    grid.write_text(Path(__file__).resolve().parents[1].joinpath("experiments/demo.yaml").read_text()
                    .replace("study: demo", "study: ends").replace("base: base.yaml",
                    f"base: {Path(__file__).resolve().parents[1] / 'experiments/base.yaml'}"))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = subprocess.run([sys.executable, "-m", "tood_ablate", "run", str(grid), "--profile", "smoke", "--until-decided",
                           "--max-seeds", "3", "--looks", "2,3", "--name", "ends", "--tracking-uri", uri,
                           "--storage-path", str(tmp_path / "ray"), "--cpus-per-trial", "1", "--quiet"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tood-ablate/ends").experiment_id
    runs = client.search_runs([exp], max_results=1000)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    trained = [(r.data.tags["tood.row"], r.data.tags["tood.seed"]) for r in runs  # reused runs hold copies: left out
               if r.data.tags.get("tood.role") == "trial" and "tood.reused_from" not in r.data.tags
               and client.get_metric_history(r.info.run_id, "attempt_wall_s")]
    assert len(trained) == len(set(trained))  # later rounds reuse what earlier ones trained
    assert {s for _, s in trained} <= {"0", "1", "2"} and {(r, s) for r, s in trained if s in ("0", "1")} == \
        {(row, s) for row in ("parallel head + ATSS", "T-head + TAL") for s in ("0", "1")}
    parents = [r for r in runs if r.data.tags.get("tood.role") == "parent"]
    assert {p.info.run_name for p in parents} <= {"ends-r1", "ends-r2"} and "ends-r1" in {p.info.run_name for p in parents}
    latest = max(parents, key=lambda p: p.info.start_time)
    assert "sequential_claims.json" in {a.path for a in client.list_artifacts(latest.info.run_id)}
    assert (tmp_path / "ray" / "ends_sequential_claims.md").read_text().count("| ends |") == 4  # Table 6's four claims


def test_prefix_savings_are_counted_once_per_training(setup, monkeypatch):
    """A training that copied 720 s of warm-up from a shared prefix, on 1 CPU, saved 0.2 CPU h; its
    reused copies in later rounds do not count it again."""
    from orchestration.prefix_tags import PREFIX_SAVED_METRIC

    grid, opts = setup
    monkeypatch.setattr(sequential, "run_suite", FakeLaunches())
    assert sequential.run_until_decided([grid], opts, max_seeds=5, looks=(3, 5)) == 0
    studies = sequential.latest_studies(opts.tracking_uri, [load_grid(grid)])
    client = MlflowClient(opts.tracking_uri)
    first = studies[0].trials.iloc[0]  # a trial of the last round: reused from round 1's training
    source = first["reused_from"] or first["run_id"]
    client.log_metric(source, PREFIX_SAVED_METRIC, 720.0)
    client.set_tag(source, "tood.cpus_per_trial", "1")
    spent, _cpu_h, saved = sequential._spent(opts.tracking_uri, studies)
    assert spent == 16 and saved == pytest.approx(0.2)


def test_the_fixed_design_in_cpu_hours_by_hand():
    plan = Plan(looks=(3, 5), levels=(0.025, 0.025), claims=(), seeds={})
    notes = sequential.sequential_table(plan, [], spent=16, fixed=20, cpu_h=4.0).notes
    # 4.0 CPU h over 16 trainings: 0.25 each; 20 trainings: 5.0 CPU h, 1.0 more than the rounds
    assert "mean of 0.250 CPU h per training, the fixed design would cost about 5.0 CPU h: +1.0 CPU h" in notes[2]
    assert notes[3].startswith("Shared prefixes saved 0.00 CPU h of training over these 16 trainings")
    saved = sequential.sequential_table(plan, [], spent=16, fixed=20, cpu_h=4.0, prefix_cpu_h=0.5).notes[3]
    assert saved.startswith("Shared prefixes saved 0.50 CPU h")
    assert not any("fixed design would cost" in n for n in
                   sequential.sequential_table(plan, [], spent=16, fixed=20, cpu_h=float("nan")).notes)


def test_claims_command_reads_the_state_between_rounds(setup, monkeypatch, capsys):
    """`tood-ablate claims` on a store whose round 2 was cut short: the table of the claims so far
    and the one (row, seed) the next round adds; after the last round, none."""
    grid, opts = setup
    fake = FakeLaunches(fail_round=2)
    monkeypatch.setattr(sequential, "run_suite", fake)
    assert sequential.run_until_decided([grid], opts, max_seeds=5, looks=(3, 5)) == 1
    args = [str(grid), "--tracking-uri", opts.tracking_uri, "--max-seeds", "5", "--looks", "3,5"]
    capsys.readouterr()
    assert cli_main(["claims", *args]) == 0
    out = capsys.readouterr().out
    assert "| t3seq | TOOD (anchor-free) > ATSS (anchor-free) (AP) | direction | 0 | one-sided paired t | 3 | 3,5 |" in out
    asked = {(r, s) for r in ("TOOD (anchor-based)", "ATSS (anchor-based)") for s in (3, 4)}
    (missing,) = asked - set(fake.trained)  # the trial round 2 lost
    assert "The next round adds 1 (row, seed) trials" in out and f"  t3seq/{missing[0]}: seeds {missing[1]}\n" in out
    assert sequential.run_until_decided([grid], opts, max_seeds=5, looks=(3, 5)) == 0
    capsys.readouterr()
    assert cli_main(["claims", *args]) == 0
    assert "No round is left" in capsys.readouterr().out
    assert cli_main(["claims", str(grid), "--tracking-uri", f"sqlite:///{Path(opts.storage_path).parent / 'none.db'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tood-ablate claims: error: ") and "none.db" in err[0], err
