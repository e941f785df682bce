"""reports/: a report that opens on the answer and tables that carry their provenance, on small
MLflow stores of known numbers: a 0-AP launch (no verdicts), a one-seed proxy_long launch (the
command that adds seeds, constant columns, the LaTeX caption), an all-reused launch (the source
runs' compute) and a COCO launch (no COCO label on the paper's numbers)."""

import os

os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from orchestration.host import Machine  # noqa: E402
from reports.claims import NEEDS_SEEDS, NOT_TRAINED  # noqa: E402
from reports.collect import collect_study, open_client  # noqa: E402
from reports.compute import TrialCompute, summary_compute_table  # noqa: E402
from reports.document import build_study_report, summary_tables  # noqa: E402
from reports.export import machines_table, per_seed_frame  # noqa: E402
from reports.formats import to_latex, to_markdown  # noqa: E402
from reports.pairs import delta_note  # noqa: E402
from reports.render import render_report  # noqa: E402
from tests.test_reports import build_store  # noqa: E402

HOST = Machine("Test CPU", 4, "none", "t", "r", "m")
PROXY_PARAMS = {"data.root": "data/proxy160", "data.synthetic.n_train": "800", "data.synthetic.n_val": "200",
                "data.synthetic.image_size": "160", "train.epochs": "32"}
COCO_PARAMS = {"data.root": "/data/coco2017", "data.synthetic": "None", "train.epochs": "12"}
T6_PAPER = {"parallel head + ATSS": {"AP": 39.2, "PCC": 0.408, "top10_iou": 0.637, "n_correct": 30261,
                                     "n_redundant": 25428, "n_error": 92677},
            "T-head + ATSS": {"AP": 41.1, "PCC": 0.440, "top10_iou": 0.644, "n_correct": 30601,
                              "n_redundant": 21838, "n_error": 79189}}
T6_FACTORS = {"parallel head + ATSS": {"head": "parallel", "assigner": "atss"},
              "T-head + ATSS": {"head": "t_head", "assigner": "atss"}}
T4 = [("(0.5, 2)", 0.5, 2, (42.4, 60.0, 46.1), 60.0), ("(1.0, 6)", 1.0, 6, (42.5, 59.8, 46.4), 61.0),
      ("(1.5, 8)", 1.5, 8, (41.5, 59.4, 44.7), 59.0)]
# Table 3's trainings of the first launch: label -> factors, paper AP, {seed: (AP, attempt walls)}; 2 CPUs,
# 0.5 GPU per trial. The second launch reuses all of them.
T3 = {"ATSS (anchor-free)": ({"detector": "atss_af", "head": "parallel"}, 39.2,
                             {0: (60.0, [100.0]), 1: (61.0, [50.0, 150.0])}),
      "TOOD (anchor-free)": ({"head": "t_head", "assigner": "tal", "anchor_type": "anchor_free"}, 42.5,
                             {0: (63.0, [300.0]), 1: (64.5, [200.0])})}


@dataclass
class Stores:
    uri: str
    coco_uri: str
    sources: dict  # (label, seed) -> the run id that trained it (table3's first launch)


def _parent(client, exp, study, table, name, start, **tags):
    return client.create_run(exp, run_name=name, start_time=start, tags={
        "tood.role": "parent", "tood.study": study, "tood.table": table, **tags}).info.run_id


def _run(client, exp, parent, table, index, label, seed, factors, paper, metrics, params, start, tags=None):
    """One finished trial: its tags, params and final metrics (logged at step 4)."""
    rid = client.create_run(exp, run_name=f"{label},seed={seed}", start_time=start + 10 * index + seed, tags={
        "mlflow.parentRunId": parent, "tood.role": "trial", "tood.table": table, "tood.row": label,
        "tood.row_index": str(index), "tood.seed": str(seed), "tood.git_commit": "abc1234",
        **{f"tood.factor.{k}": str(v) for k, v in factors.items()},
        **{f"tood.paper.{k}": str(v) for k, v in paper.items()}, **(tags or {})}).info.run_id
    for key, value in params.items():
        client.log_param(rid, key, value)
    for key, value in metrics.items():
        client.log_metric(rid, key, value, step=4)
    client.set_terminated(rid, "FINISHED")
    return rid


def build_stores(root: Path) -> Stores:
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    # table6: a 1-epoch launch that learned nothing: AP 0.0 on every seed of both rows
    exp = client.create_experiment("tood-ablate/table6_alignment", artifact_location=str(root / "a6"))
    parent = _parent(client, exp, "table6_alignment", "table6", "t6-zero", 1000, **{
        "tood.profile": "proxy", "tood.seeds": "0,1,2", "tood.grid_file": "experiments/table6_alignment.yaml"})
    for index, label in enumerate(T6_PAPER):
        for seed in range(3):
            _run(client, exp, parent, "table6", index, label, seed, T6_FACTORS[label], T6_PAPER[label],
                 {"AP": 0.0, "PCC": 0.0, "top10_iou": 0.0, "n_correct": 0, "n_redundant": 0, "n_error": 40 + seed},
                 {**PROXY_PARAMS, "train.epochs": "1"}, 1001)
    # table4: one seed per row under --profile proxy_long, launched from another checkout
    exp = client.create_experiment("tood-ablate/table4_alpha_beta", artifact_location=str(root / "a4"))
    parent = _parent(client, exp, "table4_alpha_beta", "table4", "t4-one-seed", 2000, **{
        "tood.profile": "proxy_long", "tood.seeds": "0",
        "tood.grid_file": "/elsewhere/checkout/experiments/table4_alpha_beta.yaml"})
    for index, (label, alpha, beta, paper, ap) in enumerate(T4):
        _run(client, exp, parent, "table4", index, label, 0, {"alpha": alpha, "beta": beta},
             dict(zip(("AP", "AP50", "AP75"), paper)),
             {"AP": ap, "AP50": ap + 20, "AP75": ap + 5, "lr": 2e-5, "n_instances": 769.0,
              "loss_cls": 0.04 + index / 100},
             PROXY_PARAMS, 2001)
    # table3: launch t3-train trains every trial; launch t3-again (the latest) reuses all of them
    exp = client.create_experiment("tood-ablate/table3_tood", artifact_location=str(root / "a3"))
    tags = {"tood.profile": "proxy", "tood.seeds": "0,1"}
    parent = _parent(client, exp, "table3_tood", "table3", "t3-train", 3000, **tags)
    sources = {}
    for index, (label, (factors, ap, seeds)) in enumerate(T3.items()):
        for seed, (value, walls) in seeds.items():
            rid = _run(client, exp, parent, "table3", index, label, seed, factors, {"AP": ap}, {"AP": value},
                       PROXY_PARAMS, 3001, {"tood.attempts": str(len(walls)), "tood.cpus_per_trial": "2",
                                            "tood.gpus_per_trial": "0.5"})
            for attempt, wall in enumerate(walls, start=1):
                client.log_metric(rid, "attempt_wall_s", wall, step=attempt)
            sources[(label, seed)] = rid
    parent = _parent(client, exp, "table3_tood", "table3", "t3-again", 4000, **tags)
    for index, (label, (factors, ap, seeds)) in enumerate(T3.items()):
        for seed, (value, _) in seeds.items():
            _run(client, exp, parent, "table3", index, label, seed, factors, {"AP": ap}, {"AP": value},
                 PROXY_PARAMS, 4001, {"tood.reused_from": sources[(label, seed)]})
    # a COCO launch (its own store): the paper's numbers need no COCO label
    coco_uri = f"sqlite:///{root / 'coco.db'}"
    coco = MlflowClient(tracking_uri=coco_uri)
    exp = coco.create_experiment("tood-ablate/table4_alpha_beta", artifact_location=str(root / "ac"))
    parent = _parent(coco, exp, "table4_alpha_beta", "table4", "t4-coco", 1000,
                     **{"tood.profile": "coco", "tood.seeds": "0"})
    for index, (label, alpha, beta, paper, ap) in enumerate(T4):
        _run(coco, exp, parent, "table4", index, label, 0, {"alpha": alpha, "beta": beta},
             dict(zip(("AP", "AP50", "AP75"), paper)), {"AP": ap - 20}, COCO_PARAMS, 1001)
    return Stores(uri, coco_uri, sources)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Stores:
    return build_stores(tmp_path_factory.mktemp("provenance"))


def _report(uri: str, study: str):
    client = open_client(uri)
    return build_study_report(client, collect_study(client, study), HOST)


def test_zero_ap_launch_gives_no_verdict_and_says_why(stores):
    report = _report(stores.uri, "table6_alignment")
    main, claims = report.tables[0], report.tables[1]
    # 0.0 against 0.0: no ordering mark, even where the paper has the rows apart
    assert main.cell("T-head + ATSS", "AP") == "0.0 ± 0.0 (3)" and not any("†" in c for r in main.rows for c in r)
    assert "parallel head + ATSS: AP 0.0 is below 1: did not train long enough to compare (no †, no verdict)." \
        in main.notes
    assert len(claims.rows) == 6  # the six Table 6 columns with a paper difference, claims first
    for row in claims.rows:
        assert row[-1] == f"{NOT_TRAINED} (AP < 1: T-head + ATSS, parallel head + ATSS)", row
        assert row[claims.header.index("95% CI")] == "-"  # not '[+0.0, +0.0]'
    assert [c.verdict for c in report.comparisons] == ["inconclusive"] * 6  # nothing counts as agreeing
    assert claims.notes[0] == ("The paper's claims: 0 agree, 0 disagree, 0 inconclusive, 4 without a verdict "
                               "(4 not trained).")
    assert sum(c.verdict == "agrees" for c in report.comparisons) == 0


def test_fewer_than_two_seeds_names_the_command(stores, tmp_path):
    report = _report(stores.uri, "table4_alpha_beta")
    claims = report.tables[1]
    command = "tood-ablate run experiments/table4_alpha_beta.yaml --profile proxy_long --seeds 0,1,2"
    # the claim rows: AP only, worded row minus reference like Δ
    ap_rows = [r for r in claims.rows if r[1] == "AP"]
    assert [(r[0], r[2], r[3], r[-1]) for r in ap_rows] == [
        ("(0.5, 2) < (1.0, 6) (AP)", "-0.1", "-1.0", f"{NEEDS_SEEDS}: {command}"),
        ("(1.5, 8) < (1.0, 6) (AP)", "-1.0", "-2.0", f"{NEEDS_SEEDS}: {command}")]
    assert "inconclusive" not in {r[-1] for r in claims.rows}
    assert claims.notes[0].endswith("2 without a verdict (2 with fewer than 2 seeds).")
    # the grid file falls back to the study name; the launch's seeds 0,1 are topped up to three
    table2 = _report(build_store(tmp_path).uri, "table2_assignment").tables[1]
    assert table2.cell("TAL > ATSS (AP)", "Verdict") == \
        f"{NEEDS_SEEDS}: tood-ablate run table2_assignment --profile proxy --seeds 0,1,2"


def test_delta_and_claims_read_the_same_way_in_every_table(stores):
    report = _report(stores.uri, "table4_alpha_beta")
    main, claims = report.tables[0], report.tables[1]
    note = delta_note("table4")
    assert note in main.notes and note in claims.notes and "The reference: (1.0, 6)." in note
    for c in report.comparisons:  # '<' exactly where the paper's row minus reference is negative
        assert (" < " in c.claim) == (c.paper_delta < 0) and c.claim.startswith(c.row)
    assert main.cell("(0.5, 2)", "ΔAP (paper, COCO)") == "-0.1"
    summary = summary_tables([report], HOST)[0]
    assert delta_note() in summary.notes and "Table 1: the parallel head of the same detector" in delta_note()


def test_latex_caption_names_data_schedule_and_profile(stores):
    report = _report(stores.uri, "table4_alpha_beta")
    for table in report.tables + summary_tables([report], HOST):
        caption = re.search(r"^\\caption\[\{(.*)\}\]\{(.*)\}$", to_latex(table), re.M)
        assert caption, to_latex(table)
        short, long = caption.groups()
        assert long == (f"{short}. Data: synthetic proxy (data/proxy160: n\\_train 800, n\\_val 200, "
                        r"image\_size 160); profile proxy\_long; 32 epochs; seeds 0; commit abc1234.")
        assert "table4\\_alpha\\_beta" not in long  # the title, never the study's id
    assert report.tables[1].caption == \
        "Table 4: alpha and beta of the task-alignment metric: the paper's claims, our verdicts"
    md = to_markdown(report.tables[0]).splitlines()
    assert md[2] == ("*Data: synthetic proxy (data/proxy160: n_train 800, n_val 200, image_size 160); "
                     "profile proxy_long; 32 epochs; seeds 0; commit abc1234.*")


def test_paper_columns_say_coco_when_the_data_is_not(stores):
    proxy = _report(stores.uri, "table4_alpha_beta")
    assert proxy.tables[0].header[2:4] == ["AP", "AP (paper, COCO)"] and "Δ paper (COCO)" in proxy.tables[1].header
    assert proxy.tables[0].cell("(1.0, 6)", "AP (paper, COCO)") == "42.5"  # the number itself is unchanged
    coco = _report(stores.coco_uri, "table4_alpha_beta")
    assert coco.tables[0].header[2:4] == ["AP", "AP (paper)"] and "Δ paper" in coco.tables[1].header
    assert coco.tables[0].provenance.startswith("Data: COCO (/data/coco2017); profile coco; 12 epochs;")


def test_constant_columns_leave_the_all_metrics_table(stores):
    rest = _report(stores.uri, "table4_alpha_beta").tables[2]
    assert rest.key == "table4_all_metrics"
    assert rest.header == ["Row", "n", "loss_cls"]  # lr and n_instances are the same in every row
    assert [rest.cell(r, "loss_cls") for r in ("(0.5, 2)", "(1.0, 6)", "(1.5, 8)")] == ["0.040", "0.050", "0.060"]
    assert "Not shown, the same in every row and seed: lr 2e-05, n_instances 769." in rest.notes


def test_all_reused_launch_counts_its_source_runs(stores):
    report = _report(stores.uri, "table3_tood")
    assert report.data.parent_name == "t3-again" and all(report.data.trials["reused_from"])
    compute = report.tables[3]
    # the sources: ATSS 100 + (50 + 150) s in 1 + 2 attempts, TOOD 300 + 200 s; 2 CPUs and 0.5 GPU each
    columns = ("trials", "attempts", "failed attempts", "wall time (s)", "CPU h", "GPU h", "reused",
               "partly unrecorded")
    assert [compute.cell("ATSS (anchor-free)", c) for c in columns] == \
        ["2", "3", "1", "300", f"{300 * 2 / 3600:.3f}", f"{300 * 0.5 / 3600:.3f}", "2", ""]
    assert [compute.cell("Total", c) for c in ("trials", "attempts", "wall time (s)", "CPU h", "reused")] == \
        ["4", "5", "800", f"{800 * 2 / 3600:.3f}", "4"]
    assert any(n.startswith("Every trial of this launch was reused") and "the 4 source runs" in n
               for n in compute.notes)
    listing = next(n for n in compute.notes if n.startswith("Reused (row, seed <- the run that trained it): "))
    for (label, seed), rid in stores.sources.items():
        assert listing.count(rid) == 1 and f"{label} seed {seed} <- {rid}" in listing
    assert all(rid not in cell for r in compute.rows for cell in r for rid in stores.sources.values())
    summary = summary_tables([report], HOST)[1]
    assert [summary.cell("table3_tood", c) for c in ("wall time (s)", "reused")] == ["800", "4"]


def test_summary_counts_a_shared_training_once():
    def rec(run, row, reused="", counted="", wall=100.0):
        return TrialCompute(run, row, 0, "FINISHED", 1, 0, wall if (counted or not reused) else 0.0, 1.0, 0.0,
                            reused, counted)

    trained = [rec("src", "a"), rec("other", "b", wall=50.0)]
    copied = [rec("copy", "a", reused="src", counted="src")]  # another study, all reused: carries src's compute
    table = summary_compute_table({"s1": trained, "s2": copied}, HOST)
    assert [table.cell(s, "wall time (s)") for s in ("s1", "s2", "Total")] == ["150", "100", "150"]
    assert table.cell("Total", "reused") == "1"


def test_headline_table_opens_the_html_section(tmp_path):
    store = build_store(tmp_path / "store")
    html = render_report("table6_alignment", store.uri, tmp_path / "out").html.read_text()
    section = html[html.index('<section id="study-table6_alignment">'):]
    figures = re.findall(r'<figure class="tood-table" id="([^"]+)"', section)
    assert figures == ["table6", "table6_claims", "table6_all_metrics", "table6_compute"]
    assert section.index("<h2>Table 6: alignment of the two tasks</h2>") < section.index('id="table6"') \
        < section.index('<dl class="meta">')
    assert "comparisons" not in " ".join(figures)
    assert '<span class="provenance">Data: synthetic proxy (data/proxy: n_train 600); profile proxy; 4 epochs; ' \
           'seeds 0,1,2; commit abc1234.</span>' in section
    assert '<td class="no-verdict">needs &gt;= 2 seeds: tood-ablate run experiments/table6_alignment.yaml ' \
           '--profile proxy --seeds 0,1,2</td>' in section


def test_a_reused_result_reports_the_machine_that_trained_it(tmp_path):
    """A reused child run written before reuse copied ``tood.host`` has none: the report reads the
    source run's; a run that trained itself keeps its own; a source gone from the store gives ''."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.create_experiment("tood-ablate/table3_tood", artifact_location=str(tmp_path / "a"))
    xeon, epyc = ('{"cpu": "Xeon", "cores": 2, "gpu": "none"}', '{"cpu": "EPYC", "cores": 2, "gpu": "none"}')
    first = _parent(client, exp, "table3_tood", "table3", "train", 1000)
    src = [_run(client, exp, first, "table3", 0, "ATSS (anchor-free)", s, {}, {"AP": 40.0}, {"AP": 30.0 + s}, {}, 1001,
                {"tood.host": xeon}) for s in (0, 1)]
    later = _parent(client, exp, "table3_tood", "table3", "again", 2000)
    _run(client, exp, later, "table3", 0, "ATSS (anchor-free)", 0, {}, {"AP": 40.0}, {"AP": 30.0}, {}, 2001,
         {"tood.reused_from": src[0]})  # no host: read from the source
    _run(client, exp, later, "table3", 0, "ATSS (anchor-free)", 1, {}, {"AP": 40.0}, {"AP": 31.0}, {}, 2001,
         {"tood.host": epyc})  # trained here
    _run(client, exp, later, "table3", 0, "ATSS (anchor-free)", 2, {}, {"AP": 40.0}, {"AP": 32.0}, {}, 2001,
         {"tood.reused_from": "f" * 32})  # a source no longer in the store
    trials = collect_study(open_client(f"sqlite:///{tmp_path / 'mlruns.db'}"), "table3_tood").trials
    assert list(trials["host"]) == [xeon, epyc, ""]
    data = SimpleNamespace(trials=trials, study="table3_tood")
    assert list(per_seed_frame(data)["cpu"]) == ["Xeon", "EPYC", ""]
    assert machines_table([data]).rows == [["table3_tood", "ATSS (anchor-free)", "Xeon", "0"],
                                           ["table3_tood", "ATSS (anchor-free)", "EPYC", "1"],
                                           ["table3_tood", "ATSS (anchor-free)", "not recorded", "2"]]
