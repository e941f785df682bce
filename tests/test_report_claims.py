"""reports.stats / claims / compute: paired differences, intervals, verdicts, claims, the column
split and compute totals, on hand-computed numbers and a small MLflow store of known values."""

import os

os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from scipy import stats  # noqa: E402

from reports.claims import compare  # noqa: E402
from reports.collect import collect_study, open_client  # noqa: E402
from orchestration.host import Machine  # noqa: E402
from reports.document import build_study_report, rows_frame  # noqa: E402
from reports.stats import (AGREES, DISAGREES, GREATER, INCONCLUSIVE, LESS, NONE, PAIRED, WELCH, WITHIN,  # noqa: E402
                           Difference, difference, verdict)
from reports.tables import RowSummary  # noqa: E402

T_975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (printed tables)
T_975_DF1 = 12.706204736174704
HOST = Machine("Test CPU", 4, "none", "t", "r", "m")


def test_paired_interval_by_hand_and_scipy():
    row, ref = {0: 22.0, 1: 24.0, 2: 25.0}, {0: 20.0, 1: 21.0, 2: 22.5}  # differences 2, 3, 2.5
    d = difference(row, ref)
    assert (d.kind, d.seeds, d.dropped, d.n_row, d.n_ref) == (PAIRED, (0, 1, 2), (), 3, 3)
    assert d.mean == pytest.approx(2.5) and d.std == pytest.approx(0.5)
    half = T_975_DF2 * 0.5 / math.sqrt(3)
    assert (d.lo, d.hi) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    ci = stats.ttest_rel([22.0, 24.0, 25.0], [20.0, 21.0, 22.5]).confidence_interval(0.95)
    assert (d.lo, d.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert verdict(d, GREATER) == AGREES and verdict(d, LESS) == DISAGREES and verdict(d, WITHIN) == DISAGREES


def test_missing_seed_is_left_out_of_the_pair():
    # seed 2 only in the row, seed 5 only in the reference: paired over seeds 0 and 1 (differences 1, -0.5)
    d = difference({0: 11.0, 1: 12.0, 2: 99.0}, {0: 10.0, 1: 12.5, 5: -99.0})
    assert (d.kind, d.seeds, d.dropped) == (PAIRED, (0, 1), (2, 5))
    assert d.mean == pytest.approx(0.25) and d.std == pytest.approx(math.sqrt(1.125))
    half = T_975_DF1 * math.sqrt(1.125) / math.sqrt(2)
    assert (d.lo, d.hi) == (pytest.approx(0.25 - half), pytest.approx(0.25 + half))
    assert verdict(d, GREATER) == INCONCLUSIVE  # the interval spans 0


def test_one_seed_has_no_interval():
    d = difference({0: 5.0}, {0: 3.0, 1: 4.0})
    assert (d.kind, d.mean, d.seeds) == (NONE, 2.0, (0,)) and math.isnan(d.lo) and math.isnan(d.std)
    assert verdict(d, GREATER) == INCONCLUSIVE and verdict(d, WITHIN) == INCONCLUSIVE
    assert math.isnan(difference({}, {0: 1.0}).mean)


def test_all_equal_differences():
    same = difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert (same.mean, same.std, same.lo, same.hi) == (0.0, 0.0, 0.0, 0.0)
    assert verdict(same, GREATER) == INCONCLUSIVE and verdict(same, WITHIN) == AGREES
    shifted = difference({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert (shifted.mean, shifted.std, shifted.lo, shifted.hi) == (1.0, 0.0, 1.0, 1.0)
    assert verdict(shifted, GREATER) == AGREES and verdict(shifted, LESS) == DISAGREES


def test_unpaired_rows_use_welch():
    row, ref = {0: 1.0, 1: 2.0, 2: 3.0}, {3: 2.0, 4: 4.0}
    d = difference(row, ref)
    assert (d.kind, d.n_row, d.n_ref, d.seeds) == (WELCH, 3, 2, ()) and d.mean == pytest.approx(-1.0)
    # se^2 = 1/3 + 2/2 = 4/3; Welch-Satterthwaite df = (4/3)^2 / ((1/3)^2/2 + 1^2/1) = 32/19
    half = stats.t.ppf(0.975, 32 / 19) * math.sqrt(4 / 3)
    assert (d.lo, d.hi) == (pytest.approx(-1.0 - half), pytest.approx(-1.0 + half))
    ci = stats.ttest_ind([1.0, 2.0, 3.0], [2.0, 4.0], equal_var=False).confidence_interval(0.95)
    assert (d.lo, d.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


@pytest.mark.parametrize("lo,hi,expect,want", [
    (0.1, 2.0, GREATER, AGREES), (-2.0, -0.1, GREATER, DISAGREES), (-0.1, 2.0, GREATER, INCONCLUSIVE),
    (-2.0, -0.1, LESS, AGREES), (0.1, 2.0, LESS, DISAGREES),
    (-0.4, 0.5, WITHIN, AGREES), (-0.6, 0.2, WITHIN, INCONCLUSIVE), (0.6, 1.0, WITHIN, DISAGREES),
    (-1.0, -0.51, WITHIN, DISAGREES), (-1.0, 1.0, WITHIN, INCONCLUSIVE)])
def test_verdict_rules(lo, hi, expect, want):
    assert verdict(Difference(PAIRED, (lo + hi) / 2, 0.1, 3, 3, (0, 1, 2), (), lo, hi), expect) == want


def _summary(label, factors, paper):
    return RowSummary(0, label, factors, paper, 3, 0, 0, {}, {}, [])


def _trials(values):
    """{label: {seed: AP}} -> a trials frame (all FINISHED)."""
    return pd.DataFrame([{"row": label, "seed": seed, "status": "FINISHED", "AP": ap}
                         for label, seeds in values.items() for seed, ap in seeds.items()])


def test_claims_of_table1_topm_table4_table6():
    rows1 = [_summary("FCOS, T-head", {"detector": "fcos", "head": "t_head"}, {"AP": 40.5}),
             _summary("FoveaBox, parallel head", {"detector": "foveabox", "head": "parallel"}, {"AP": 37.3}),
             _summary("FCOS, parallel head", {"detector": "fcos", "head": "parallel"}, {"AP": 38.6})]
    got = compare("t1", "table1", rows1, _trials({"FCOS, T-head": {0: 30.0, 1: 31.0, 2: 32.0},
                                                  "FCOS, parallel head": {0: 29.0, 1: 30.0, 2: 31.0}}))
    # FoveaBox has no T-head row: no pair; FCOS: +1.0 on every seed, the paper +1.9
    assert [(c.claim, c.paper_delta, c.diff.mean, c.verdict) for c in got] == \
        [("FCOS: T-head > parallel head (AP)", pytest.approx(1.9), pytest.approx(1.0), AGREES)]
    rows_m = [_summary(f"m={m}", {"topk": str(m)}, {"AP": 42.5} if m == 13 else {}) for m in (21, 13, 5)]
    got = compare("topm", "topm", rows_m, _trials({"m=13": {0: 30.0, 1: 31.0, 2: 32.0},
                                                   "m=5": {0: 30.1, 1: 31.1, 2: 32.1},
                                                   "m=21": {0: 28.0, 1: 29.0, 2: 30.0}}))
    assert [(c.row, c.expect, c.claim, c.verdict) for c in got] == [
        ("m=5", WITHIN, "m=5 within ±0.5 AP of m=13", AGREES), ("m=21", WITHIN, "m=21 within ±0.5 AP of m=13", DISAGREES)]
    rows4 = [_summary("(1.0, 6)", {"alpha": "1.0", "beta": "6"}, {"AP": 42.5, "AP50": 59.8}),
             _summary("(0.5, 2)", {"alpha": "0.5", "beta": "2"}, {"AP": 42.4, "AP50": 60.0})]
    got = compare("t4", "table4", rows4, _trials({"(1.0, 6)": {0: 30.0, 1: 31.0}, "(0.5, 2)": {0: 31.0, 1: 32.0}}))
    assert [(c.metric, c.expect, c.claim, c.is_claim, c.verdict) for c in got] == [
        ("AP", LESS, "(0.5, 2) < (1.0, 6) (AP)", True, DISAGREES),
        ("AP50", GREATER, "(0.5, 2) > (1.0, 6) (AP50)", False, INCONCLUSIVE)]  # no AP50 values logged
    t6 = {"AP": 39.2, "PCC": 0.408, "top10_iou": 0.637, "n_correct": 30261, "n_redundant": 25428, "n_error": 92677}
    th = {"AP": 41.1, "PCC": 0.440, "top10_iou": 0.644, "n_correct": 30601, "n_redundant": 21838, "n_error": 79189}
    rows6 = [_summary("parallel head + ATSS", {"head": "parallel", "assigner": "atss"}, t6),
             _summary("T-head + ATSS", {"head": "t_head", "assigner": "atss"}, th)]
    got = compare("t6", "table6", rows6, _trials({}))
    assert [(c.metric, c.expect, c.is_claim) for c in got] == [
        ("AP", GREATER, False), ("PCC", GREATER, True), ("top10_iou", GREATER, True), ("n_correct", GREATER, False),
        ("n_redundant", LESS, True), ("n_error", LESS, True)]


# Store "table3_tood": (label, factors, paper AP, {seed: (status, AP, attempt walls, reused_from)}).
# Rows are listed out of the grid file's order: pairing goes by factors, not position.
T3 = [
    ("TOOD (anchor-free)", {"head": "t_head", "assigner": "tal", "anchor_type": "anchor_free"}, 42.5,
     {0: ("FINISHED", 22.0, [200], ""), 1: ("FINISHED", 24.0, [200], ""), 2: ("FINISHED", 25.0, [200], ""),
      3: ("FINISHED", 30.0, [999], "src-run-123")}),
    ("ATSS (anchor-based)", {"detector": "atss_ab", "head": "parallel"}, 39.3,
     {0: ("FINISHED", 20.0, [200], ""), 1: ("FAILED", None, [50, 60, 70], "")}),
    ("ATSS (anchor-free)", {"detector": "atss_af", "head": "parallel"}, 39.2,
     {0: ("FINISHED", 20.0, [100, 300], ""), 1: ("FINISHED", 21.0, [300], ""), 2: ("FINISHED", 22.5, [300], "")}),
    ("TOOD (anchor-based)", {"head": "t_head", "assigner": "tal", "anchor_type": "anchor_based"}, 42.4,
     {0: ("FINISHED", 19.0, [200], ""), 1: ("FINISHED", 19.5, [200], "")}),
]


def build_table3_store(root: Path) -> str:
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("tood-ablate/table3_tood", artifact_location=str(root / "art"))
    parent = client.create_run(exp, run_name="t3", start_time=1000, tags={
        "tood.role": "parent", "tood.study": "table3_tood", "tood.table": "table3", "tood.seeds": "0,1,2,3"}).info.run_id
    grid = {"rows": [{"label": label, "factors": factors, "paper": {"AP": ap}} for label, factors, ap, _ in T3]}
    (root / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    client.log_artifact(parent, str(root / "grid.yaml"))
    for index, (label, factors, ap, seeds) in enumerate(T3):
        for seed, (status, value, walls, reused) in seeds.items():
            tags = {"mlflow.parentRunId": parent, "tood.role": "trial", "tood.table": "table3", "tood.row": label,
                    "tood.row_index": str(index), "tood.seed": str(seed), "tood.attempts": str(len(walls)),
                    "tood.cpus_per_trial": "2", "tood.gpus_per_trial": "0.5",
                    **{f"tood.factor.{k}": v for k, v in factors.items()}, "tood.paper.AP": str(ap)}
            if reused:
                tags["tood.reused_from"] = reused
            rid = client.create_run(exp, run_name=f"{label},seed={seed}", start_time=2000 + 10 * index + seed,
                                    tags=tags).info.run_id
            for attempt, wall in enumerate(walls, start=1):
                client.log_metric(rid, "attempt_wall_s", wall, step=attempt)
            if value is not None:
                for key, v in {"AP": value, "AP50": 2 * value, "AP75": value - 5, "APs": value / 2,
                               "PCC_spearman": 0.25, "epoch_time_s": 10.0 + seed}.items():
                    client.log_metric(rid, key, v, step=4)
            client.set_terminated(rid, status)
    return uri


@pytest.fixture(scope="module")
def t3(tmp_path_factory):
    uri = build_table3_store(tmp_path_factory.mktemp("t3"))
    client = open_client(uri)
    return build_study_report(client, collect_study(client, "table3_tood"), HOST)


def test_table3_claims_cell_by_cell(t3):
    claims = t3.tables[1]
    assert claims.key == "table3_claims" and [r[0] for r in claims.rows] == \
        ["TOOD (anchor-free) > ATSS (anchor-free) (AP)", "TOOD (anchor-based) > ATSS (anchor-based) (AP)"]
    half = T_975_DF2 * 0.5 / math.sqrt(3)  # differences 2.0, 3.0, 2.5 over seeds 0-2 (seed 3 only in TOOD)
    # one-sided paired t: t = 2.5 / (0.5 / sqrt 3) = sqrt 75; with 2 degrees of freedom
    # P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2 = (1 - sqrt(75 / 77)) / 2 = 0.00654
    p = (1 - math.sqrt(75 / 77)) / 2
    assert f"{p:.2g}" == "0.0065"
    assert claims.rows[0][1:] == ["AP", "+3.3", "+2.5 ± 0.5", "3 (seed 3 in one row only)",
                                  f"[+{2.5 - half:.1f}, +{2.5 + half:.1f}]", "one-sided paired t, p=0.0065", "agrees"]
    # anchor-based: ATSS finished seed 0 only (seed 1 failed) -> one pair, 19.0 - 20.0, no interval: no
    # verdict, the command that trains the launch's seeds again (the store has no grid-file tag: the study)
    assert claims.rows[1][1:] == ["AP", "+3.1", "-1.0", "1 (seed 1 in one row only)", "-", "none (n < 2)",
                                  "needs >= 2 seeds: tood-ablate run table3_tood --seeds 0,1,2,3"]
    assert claims.notes[0] == ("The paper's claims: 1 agree, 0 disagree, 0 inconclusive, 1 without a verdict "
                               "(1 with fewer than 2 seeds).")
    # one claims table: Table 3 has paper numbers for AP only, so no other comparison follows the claims
    assert len(claims.rows) == 2 and [t.key for t in t3.tables] == ["table3", "table3_claims", "table3_all_metrics",
                                                                    "table3_compute"]


def test_column_split(t3):
    main, rest = t3.tables[0], t3.tables[2]
    assert main.header == ["Method", "n", "AP", "AP (paper)", "AP50", "AP50 (paper)", "AP75", "AP75 (paper)"]
    assert main.cell("ATSS (anchor-free)", "AP") == "21.2 ± 1.3 (3)"  # 20, 21, 22.5
    assert main.cell("ATSS (anchor-based)", "AP") == "20.0" and main.cell("ATSS (anchor-based)", "n") == "1 (1 failed)"
    # PCC_spearman is 0.25 on every trial: a constant column, named in a note instead
    assert rest.header == ["Row", "n", "APs", "epoch_time_s"]
    assert rest.cell("TOOD (anchor-based)", "epoch_time_s") == "10.500 ± 0.707 (2)"
    assert "Not shown, the same in every row and seed: PCC_spearman 0.250." in rest.notes


def test_compute_totals_with_failed_and_reused(t3):
    table = t3.tables[3]
    assert table.header[:8] == ["Row", "trials", "attempts", "failed attempts", "wall time (s)", "CPU h", "GPU h",
                                "reused"]
    # 2 CPUs and 0.5 GPU per trial: CPU h = wall * 2 / 3600, GPU h = wall * 0.5 / 3600
    assert table.cell("ATSS (anchor-free)", "attempts") == "4" and table.cell("ATSS (anchor-free)", "failed attempts") == "1"
    assert [table.cell("ATSS (anchor-free)", c) for c in ("wall time (s)", "CPU h", "GPU h")] == ["1,000", "0.556", "0.139"]
    assert [table.cell("ATSS (anchor-based)", c) for c in ("trials", "attempts", "failed attempts", "wall time (s)")] == \
        ["2", "4", "3", "380"]  # the failed trial's three attempts: 50 + 60 + 70 s
    # the reused seed counts zero (its copied attempt_wall_s of 999 s is not added) and is counted; its
    # source is listed once, in a note
    assert [table.cell("TOOD (anchor-free)", c) for c in ("trials", "attempts", "wall time (s)", "reused")] == \
        ["4", "3", "600", "1"]
    assert "Reused (row, seed <- the run that trained it): TOOD (anchor-free) seed 3 <- src-run-123." in table.notes
    assert table.cell("Total", "reused") == "1" and table.cell("ATSS (anchor-free)", "reused") == "0"
    assert [table.cell("Total", c) for c in ("trials", "attempts", "failed attempts", "wall time (s)", "CPU h", "GPU h")] == \
        ["11", "13", "4", "2,380", "1.322", "0.331"]
    assert table.notes[-1] == ("Machine (where this report ran; the trials recorded none, or several): Test CPU, 4 logical "
                               "cores, GPU none; torch t, ray r, mlflow m.")


def test_rows_csv_frame(t3):
    frame = rows_frame(t3.rows).set_index("row")
    assert frame.loc["ATSS (anchor-free)", "AP.mean"] == pytest.approx(21.1666667)
    assert frame.loc["ATSS (anchor-free)", "AP.std"] == pytest.approx(stats.tstd([20.0, 21.0, 22.5]))
    assert frame.loc["TOOD (anchor-free)", "AP.n"] == 4 and frame.loc["TOOD (anchor-free)", "AP.paper"] == 42.5
    assert frame.loc["ATSS (anchor-based)", "n_failed"] == 1 and frame.loc["ATSS (anchor-based)", "factor.detector"] == "atss_ab"


def test_study_experiment_ui_tags(tmp_path, monkeypatch):
    from orchestration.tracking import ensure_experiment
    from orchestration.mlflow_ui import KIND_TAG, PAPER_VIEW, TRAINING_KIND, VIEW_TAG_PREFIX, view_url

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    new = client.get_experiment(ensure_experiment(client, "t6")).tags
    assert new[KIND_TAG] == TRAINING_KIND
    view = json.loads(new[VIEW_TAG_PREFIX + PAPER_VIEW])
    assert json.loads(view["state"])["selectedColumns"] == ["metrics.`AP`", "metrics.`AP50`", "metrics.`AP75`",
                                                                "metrics.`PCC`"]
    # an experiment made before the tags existed gets them on its next launch
    old = client.create_experiment("tood-ablate/old", artifact_location=str(tmp_path / "old"))
    assert ensure_experiment(client, "old") == old and client.get_experiment(old).tags[KIND_TAG] == TRAINING_KIND
    assert view_url("http://127.0.0.1:5000/", "7") == ("http://127.0.0.1:5000/#/experiments/7/runs?"
                                                       "workflowType=machine_learning&viewStateShareKey=tood-paper-metrics")


def test_pairs_of_the_grid_files():
    from reports.grid_rows import parse_grid_rows
    from reports.pairs import pairs

    root = Path(__file__).resolve().parents[1] / "experiments"
    found = {}
    for path in sorted(root.glob("*.yaml")):
        grid = yaml.safe_load(path.read_text())
        if isinstance(grid, dict) and grid.get("table") in ("table1", "table2", "table3", "table4", "table6", "topm"):
            found[grid["table"]] = [(p.row.label, p.ref.label) for p in pairs(grid["table"], parse_grid_rows(grid))]
    assert found["table1"] == [(f"{d}, T-head", f"{d}, parallel head") for d in
                               ("FoveaBox", "ATSS anchor-free", "ATSS anchor-based", "FCOS")]
    assert found["table2"] == [(r, "ATSS") for r in ("IoU-based", "center sampling", "centerness", "ATSS + QFL",
                                                     "TAL", "TAL + TAP")]
    assert found["table3"] == [("TOOD (anchor-free)", "ATSS (anchor-free)"), ("TOOD (anchor-based)", "ATSS (anchor-based)")]
    assert found["table4"] == [(r, "(1.0, 6)") for r in ("(0.5, 2)", "(0.5, 4)", "(0.5, 6)", "(1.0, 8)", "(1.5, 8)")]
    assert found["table6"] == [(r, "parallel head + ATSS") for r in ("T-head + ATSS", "parallel head + TAL", "T-head + TAL")]
    assert found["topm"] == [(f"m={m}", "m=13") for m in (5, 9, 17, 21)]


def test_machine_note_prefers_the_host_the_trials_recorded():
    import json

    import pandas as pd

    from orchestration.host import Machine
    from reports.compute import machine_note, recorded_machine

    host = {"cpu": "Some CPU", "cores": 16, "gpu": "none", "torch": "2.13.0", "ray": "2.60.0", "mlflow": "3.17.2", "recorded": True}
    one = pd.DataFrame({"host": [json.dumps(host), json.dumps(host), ""]})
    m = recorded_machine(one)
    assert m == Machine(**host) and machine_note(m).startswith("Machine (recorded by the trials): Some CPU, 16 logical cores")
    two = pd.DataFrame({"host": [json.dumps(host), json.dumps({**host, "cores": 8})]})
    assert recorded_machine(two) is None and recorded_machine(pd.DataFrame({"run_id": ["a"]})) is None


@pytest.mark.parametrize("delta,verdict,p", [
    # differences 2.0, 3.0, 2.5: mean 2.5, se 0.5 / sqrt 3; t = (2.5 - delta) / se, 2 degrees of freedom,
    # P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2
    (1.0, AGREES, (1 - math.sqrt(27 / 29)) / 2),  # t = sqrt 27: p 0.0175 < 0.025, the gain is shown >= 1
    (3.0, INCONCLUSIVE, (1 + math.sqrt(3 / 5)) / 2),  # t = -sqrt 3: neither side at 0.025
    (4.0, DISAGREES, (1 + math.sqrt(27 / 29)) / 2),  # t = -sqrt 27: the gain is shown below 4
])
def test_margin_claim_from_the_grid(t3, delta, verdict, p):
    from orchestration.grid import ClaimSpec

    data = t3.data
    from reports.tables import summarize

    spec = ClaimSpec("margin", delta, "test")
    (first, _) = [c for c in compare(data.study, data.table, summarize(data), data.trials, claim=spec) if c.is_claim]
    assert first.claim == f"TOOD (anchor-free) > ATSS (anchor-free) by >= {delta:g} (AP)"
    assert first.test.test == f"minimum-effect t (delta={delta:g})" and first.verdict == verdict
    assert first.test.p_value == pytest.approx(p, rel=1e-9)
    # the same p as scipy's one-sided test on d - delta
    assert first.test.p_value == pytest.approx(stats.ttest_1samp([2.0 - delta, 3.0 - delta, 2.5 - delta], 0,
                                                                 alternative="greater").pvalue, rel=1e-9)


def test_compute_table_shows_evaluation_seconds_apart():
    from types import SimpleNamespace

    from reports.compute import EVAL_COLUMN, TrialCompute, compute_table

    def rec(run, row, wall, ev, reused=""):
        return TrialCompute(run, row, 0, "FINISHED", 1, 0, wall, 1.0, 0.0, reused, eval_s=ev)

    rows = [SimpleNamespace(label="a"), SimpleNamespace(label="b")]
    records = [rec("r1", "a", 100.0, 12.5), rec("r2", "a", 80.0, 7.5), rec("r3", "b", 50.0, 4.0),
               rec("r4", "b", 0.0, 0.0, reused="r3")]  # a reused trial counts nothing where it was copied
    table = compute_table("t_compute", "t", rows, records, HOST)
    col = table.header.index(EVAL_COLUMN)
    assert [line[col] for line in table.rows] == ["20", "4", "24"]  # 12.5 + 7.5; 4; all rows
    assert any(n.startswith(f"{EVAL_COLUMN}: the part of the wall time spent evaluating") for n in table.notes)
    # a store without eval_time_s keeps the old columns
    old = [rec("r1", "a", 100.0, 0.0)]
    assert EVAL_COLUMN not in compute_table("t_compute", "t", rows[:1], old, HOST).header


def test_claims_of_an_until_decided_launch_are_decided_at_its_looks(t3):
    """The same differences (2.0, 3.0, 2.5; margin 1: p = (1 - sqrt(27/29)) / 2 = 0.0175) under a launch
    whose seeds came by looks: four looks at alpha 0.05 test at 0.0125, so the claim the fixed test
    (0.025) calls agreeing is inconclusive; two looks test at 0.025 and agree; a first look at 4
    seeds has not come with 3."""
    from orchestration.grid import ClaimSpec
    from reports.claim_tests import SequentialDesign
    from reports.claims import comparisons_table
    from reports.tables import summarize

    data, spec = t3.data, ClaimSpec("margin", 1.0, "test")
    p = (1 - math.sqrt(27 / 29)) / 2

    def first(design):
        return [c for c in compare(data.study, data.table, summarize(data), data.trials, claim=spec, design=design)
                if c.is_claim][0]

    fixed, four, two, late = (first(d) for d in (None, SequentialDesign((3, 5, 8, 12), 0.05),
                                                   SequentialDesign((3, 5), 0.05), SequentialDesign((4, 8), 0.05)))
    assert fixed.verdict == AGREES and fixed.test.level == pytest.approx(0.025)
    assert four.verdict == INCONCLUSIVE and four.test.level == pytest.approx(0.0125) and four.test.p_value == pytest.approx(p)
    assert two.verdict == AGREES and two.test.level == pytest.approx(0.025)
    assert late.verdict == INCONCLUSIVE and late.test is None and late.reason == "before the first look (4 paired seeds)"
    table = comparisons_table("k", "c", [four, late])
    assert table.rows[0][-2:] == ["minimum-effect t (delta=1) at n=3 (one-sided 0.0125), p=0.018", INCONCLUSIVE]
    assert any("looks at 3,5,8,12 paired seeds" in n and "alpha / 4 = 0.0125" in n for n in table.notes)
    assert table.notes[0] == ("The paper's claims: 0 agree, 0 disagree, 1 inconclusive, 1 without a verdict "
                              "(1 before the first look).")


def test_headline_groups_claims_that_read_alike_and_shows_the_interval_of_the_verdict(t3):
    """Table 1's detectors share a line; Table 3's two claims (other references) do not; each claim
    shows the interval of the test that gave its verdict: 95% for fixed seeds, 97.5% (one-sided
    0.0125) at the looks of four rounds."""
    from reports.claim_tests import SequentialDesign
    from reports.headline import headline_table
    from reports.tables import summarize

    rows1 = [_summary(f"{d}, {h}", {"detector": d.lower(), "head": h.replace("-", "_").lower().split()[0]}, {"AP": ap})
             for d, h, ap in (("FCOS", "T-head", 40.5), ("FCOS", "parallel head", 38.6),
                              ("FoveaBox", "T-head", 38.0), ("FoveaBox", "parallel head", 37.3))]
    values = {"FCOS, T-head": [31.0, 32.0, 33.0], "FCOS, parallel head": [30.0, 30.8, 31.9],
              "FoveaBox, T-head": [20.0, 21.0, 22.0], "FoveaBox, parallel head": [21.0, 22.5, 23.0]}
    t1 = compare("t1", "table1", rows1, _trials({k: dict(enumerate(v)) for k, v in values.items()}))
    (line,) = headline_table(t1).rows
    assert line[:3] == ["t1", "FCOS / FoveaBox: T-head > parallel head (AP)", "+1.9 / +0.7"]
    for cell, (row, ref) in zip(line[3].split(" / "), (("FCOS, T-head", "FCOS, parallel head"),
                                                      ("FoveaBox, T-head", "FoveaBox, parallel head"))):
        ci = stats.ttest_rel(values[row], values[ref]).confidence_interval(0.95)
        mean = sum(values[row]) / 3 - sum(values[ref]) / 3
        assert cell == f"{mean:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}]"
    assert line[4:] == ["3", f"{AGREES} / {DISAGREES}"]

    data = t3.data
    four = compare(data.study, data.table, summarize(data), data.trials, design=SequentialDesign((3, 5, 8, 12), 0.05))
    table = headline_table(four)
    assert [r[1] for r in table.rows] == ["TOOD (anchor-free) > ATSS (anchor-free) (AP)",
                                          "TOOD (anchor-based) > ATSS (anchor-based) (AP)"]
    ci = stats.ttest_rel([22.0, 24.0, 25.0], [20.0, 21.0, 22.5]).confidence_interval(0.975)  # differences 2, 3, 2.5
    assert table.rows[0][3:] == [f"+2.5 [{ci.low:+.1f}, {ci.high:+.1f}]", "3", AGREES]
    assert table.rows[1][3:] == ["-1.0", "1", "no verdict"]  # one pair: no interval, no verdict
    assert table.notes[0] == ("2 claims: 1 agree, 0 disagree, 0 inconclusive, 1 without a verdict "
                              "(1 with fewer than 2 seeds).")
    assert "a = 0.0125: 97.5%" in table.notes[1]
