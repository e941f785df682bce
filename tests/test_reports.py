"""reports/: a small MLflow sqlite store with known numbers -> tables checked cell by cell."""

import os

# Nothing here may contact the network: local sqlite store, synchronous logging, no telemetry.
os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from reports import plots  # noqa: E402
from reports.collect import collect_study, metric_histories, open_client  # noqa: E402
from reports.formats import latex_escape, to_latex, to_markdown  # noqa: E402
from reports.grid_rows import parse_grid_rows  # noqa: E402
from reports.render import main, render_report  # noqa: E402
from reports.document import build_study_report, summary_tables  # noqa: E402
from reports.layouts import all_metrics, build_table  # noqa: E402
from reports.tables import RowSummary, Table, summarize  # noqa: E402

T6 = ("AP", "PCC", "top10_iou", "n_correct", "n_redundant", "n_error")
# Table 6 of the paper, per row (label, head, assigner, paper numbers).
T6_ROWS = [
    ("parallel head + ATSS", "parallel", "atss", (39.2, 0.408, 0.637, 30261, 25428, 92677)),
    ("T-head + ATSS", "t_head", "atss", (41.1, 0.440, 0.644, 30601, 21838, 79189)),
    ("parallel head + TAL", "parallel", "tal", (40.3, 0.415, 0.643, 30506, 15927, 72320)),
    ("T-head + TAL", "t_head", "tal", (42.5, 0.452, 0.661, 30734, 15242, 69013)),
]
# Our per-seed numbers (None: the trial failed). T-head + TAL has no trial at all: "missing".
T6_OURS = {
    "parallel head + ATSS": [(20.0, 0.30, 0.50, 1000, 500, 3000), (21.0, 0.32, 0.52, 1100, 520, 3000),
                             (22.0, 0.34, 0.54, 1200, 540, 3000)],
    "T-head + ATSS": [(23.0, 0.35, 0.53, 1150, 400, 2500), (24.0, 0.37, 0.55, 1250, 420, 2600), None],
    "parallel head + TAL": [(20.5, 0.33, 0.51, 1150, 450, 2900)],
}
T2_ROWS = [("IoU-based", "max_iou", (36.5, 55.5, 38.7)), ("ATSS", "atss", (39.2, 57.4, 42.2)),
           ("TAL", "tal", (40.3, 58.5, 43.8)), ("center sampling", "center_sampling", (37.3, 56.2, 39.3)),
           ("centerness", "atss_centerness", (37.4, 56.1, 40.3))]
# "FAILED" / "RUNNING" / "KILLED" (the launch was interrupted): one trial that ended so; tuples: AP, AP50, AP75 per seed.
T2_OURS = {"IoU-based": [(15.0, 30.0, 19.0), (16.0, 31.0, 19.0)], "ATSS": [(18.0, 33.0, 17.0), (18.2, 33.0, 17.4)],
           "TAL": "FAILED", "center sampling": "RUNNING", "centerness": "KILLED"}


@dataclass
class Store:
    uri: str
    root: Path
    parents: dict  # name -> parent run id


def _trial(client, exp, parent, study, table, index, label, factors, paper, seed, metrics, status, t0):
    tags = {"mlflow.parentRunId": parent, "tood.role": "trial", "tood.study": study, "tood.table": table,
            "tood.row": label, "tood.row_index": str(index), "tood.profile": "proxy", "tood.seed": str(seed),
            "tood.git_commit": "abc1234", **{f"tood.factor.{k}": v for k, v in factors.items()},
            **{f"tood.paper.{k}": str(v) for k, v in paper.items()}}
    if status == "FAILED":
        tags["tood.error"] = f"RuntimeError: out of memory in {label} seed {seed}"
    run = client.create_run(exp, start_time=t0 + 10 * index + seed, tags=tags,
                            run_name=",".join(f"{k}={v}" for k, v in factors.items()) + f",seed={seed}")
    rid = run.info.run_id
    for key, value in {"data.root": "data/proxy", "train.epochs": "4", "data.synthetic.n_train": "600",
                       "model.head.type": factors.get("model.head.type", "t_head")}.items():
        client.log_param(rid, key, value)
    if metrics is not None:
        for epoch in range(4):  # loss 1/(epoch+1) + seed/10, epoch_AP = AP * (epoch+1)/4
            client.log_metric(rid, "loss_total", 1.0 / (epoch + 1) + seed / 10, step=epoch)
            client.log_metric(rid, "epoch_AP", metrics["AP"] * (epoch + 1) / 4, step=epoch)
        for key, value in metrics.items():
            client.log_metric(rid, key, value, step=3)
    if status != "RUNNING":
        client.set_terminated(rid, status)


def build_store(root: Path) -> Store:
    """Studies table6_alignment (grid.yaml artifact, a missing row, a failed seed, an older launch),
    table2_assignment (no grid.yaml; a failed row, a running row and an interrupted row), smoke (generic layout) and
    empty (no runs)."""
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    parents = {}
    exp6 = client.create_experiment("tood-ablate/table6_alignment", artifact_location=str(root / "art6"))
    ptags = {"tood.role": "parent", "tood.study": "table6_alignment", "tood.profile": "proxy",
             "tood.grid_file": "experiments/table6_alignment.yaml", "tood.table": "table6"}
    old = client.create_run(exp6, run_name="t6-old", start_time=1000,
                            tags={**ptags, "tood.seeds": "0", "tood.num_trials": "1"}).info.run_id
    _trial(client, exp6, old, "table6_alignment", "table6", 0, "parallel head + ATSS",
           {"model.head.type": "parallel", "criterion.assigner": "atss"}, {}, 0,
           dict(zip(T6, (99.0, 0.9, 0.9, 1, 1, 1))), "FINISHED", 1001)
    client.set_terminated(old, "FINISHED")
    parent = client.create_run(exp6, run_name="t6-new", start_time=2000,
                               tags={**ptags, "tood.seeds": "0,1,2", "tood.num_trials": "12"}).info.run_id
    grid = {"study": "table6_alignment", "table": "table6", "seeds": [0, 1, 2], "rows": [
        {"label": label, "factors": {"model.head.type": head, "criterion.assigner": assigner},
         "paper": dict(zip(T6, paper))} for label, head, assigner, paper in T6_ROWS]}
    (root / "grid").mkdir()
    (root / "grid" / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    client.log_artifact(parent, str(root / "grid" / "grid.yaml"))
    for index, (label, head, assigner, paper) in enumerate(T6_ROWS):
        for seed, values in enumerate(T6_OURS.get(label, [])):
            _trial(client, exp6, parent, "table6_alignment", "table6", index, label,
                   {"model.head.type": head, "criterion.assigner": assigner}, dict(zip(T6, paper)), seed,
                   None if values is None else dict(zip(T6, values)), "FAILED" if values is None else "FINISHED",
                   2001)
    parents["table6"], parents["table6_old"] = parent, old

    exp2 = client.create_experiment("tood-ablate/table2_assignment", artifact_location=str(root / "art2"))
    parent2 = client.create_run(exp2, run_name="t2", start_time=3000, tags={
        "tood.role": "parent", "tood.study": "table2_assignment", "tood.profile": "proxy",
        "tood.seeds": "0,1", "tood.num_trials": "8", "tood.table": "table2"}).info.run_id
    for index, (label, assigner, paper) in enumerate(T2_ROWS):
        ours = T2_OURS[label]
        runs = [(0, None, ours)] if isinstance(ours, str) else [(s, v, "FINISHED") for s, v in enumerate(ours)]
        for seed, values, status in runs:
            _trial(client, exp2, parent2, "table2_assignment", "table2", index, label,
                   {"criterion.assigner": assigner}, dict(zip(("AP", "AP50", "AP75"), paper)), seed,
                   None if values is None else dict(zip(("AP", "AP50", "AP75"), values)), status, 3001)
    parents["table2"] = parent2
    # smoke: grid.yaml as a bare list of rows, no paper numbers; the second row has no trial yet.
    exps = client.create_experiment("tood-ablate/smoke", artifact_location=str(root / "art_smoke"))
    parents["smoke"] = client.create_run(exps, run_name="smoke", start_time=4000, tags={
        "tood.role": "parent", "tood.study": "smoke", "tood.table": "smoke", "tood.seeds": "0"}).info.run_id
    (root / "grid" / "grid.yaml").write_text(yaml.safe_dump([{"label": "tiny t_head", "head": "t_head"},
                                                             {"label": "tiny parallel", "head": "parallel"}]))
    client.log_artifact(parents["smoke"], str(root / "grid" / "grid.yaml"))
    _trial(client, exps, parents["smoke"], "smoke", "smoke", 0, "tiny t_head", {"head": "t_head"}, {}, 0,
           {"AP": 5.0, "AP50": 10.0, "PCC": 0.1234}, "FINISHED", 4001)
    client.create_experiment("tood-ablate/empty", artifact_location=str(root / "art_empty"))
    return Store(uri, root, parents)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return build_store(tmp_path_factory.mktemp("mlflow"))


def test_collect_trials_frame(store):
    data = collect_study(open_client(store.uri), "table6_alignment")
    assert data.parent_id == store.parents["table6"] and data.table == "table6"
    assert data.grid_source == "grid.yaml artifact"
    assert [r.label for r in data.grid_rows] == [r[0] for r in T6_ROWS]
    assert data.grid_rows[3].paper["n_error"] == 69013  # only the grid knows the missing row's numbers
    t = data.trials
    assert len(t) == 7 and sorted(t["status"]) == ["FAILED"] + ["FINISHED"] * 6
    assert list(t["row_index"]) == [0, 0, 0, 1, 1, 1, 2] and list(t["seed"]) == [0, 1, 2, 0, 1, 2, 0]
    first = t.iloc[0]
    assert (first["row"], first["seed"], first["AP"], first["paper.PCC"]) == ("parallel head + ATSS", 0, 20.0, 0.408)
    assert first["factor.model.head.type"] == "parallel" and first["factor.criterion.assigner"] == "atss"
    assert t.loc[t["status"] == "FAILED", "error"].item().startswith("RuntimeError: out of memory")
    assert data.common_params["data.root"] == "data/proxy" and "model.head.type" not in data.common_params


def test_collect_by_parent_id_and_latest(store):
    client = open_client(store.uri)
    old = collect_study(client, None, store.parents["table6_old"])
    assert old.study == "table6_alignment" and len(old.trials) == 1 and old.trials["AP"].item() == 99.0
    assert old.grid_source.startswith("trial tags")  # the old launch has no grid.yaml
    assert collect_study(client, "table6_alignment", "latest").parent_id == store.parents["table6"]


def test_table6_cells(store):
    data = collect_study(open_client(store.uri), "table6_alignment")
    t = build_table(data.table, summarize(data), data.study)
    ref, th, ptal, missing = (r[0] for r in T6_ROWS)
    assert t.rows[0][0] == ref and [r[0] for r in t.rows] == [r[0] for r in T6_ROWS]
    # mean ± sample std: AP (20, 21, 22) -> 21.0 ± 1.0; (23, 24) -> 23.5 ± 0.707
    assert [t.cell(ref, c) for c in ("n", "AP", "PCC top-50", "IoU top-10", "#correct", "#redundant", "#error")] == \
        ["3", "21.0 ± 1.0 (3)", "0.320 ± 0.020 (3)", "0.520 ± 0.020 (3)", "1,100 ± 100 (3)", "520 ± 20 (3)",
         "3,000 ± 0 (3)"]
    assert [t.cell(th, c) for c in ("n", "AP", "PCC top-50", "#correct", "#error")] == \
        ["2 (1 failed)", "23.5 ± 0.7 (2)", "0.360 ± 0.014 (2)", "1,200 ± 71 (2)", "2,550 ± 71 (2)"]
    paper_columns = ("AP (paper)", "PCC top-50 (paper)", "#correct (paper)")
    assert [t.cell(th, c) for c in paper_columns] == ["41.1", "0.440", "30,601"]
    # one seed: the value alone; AP 20.5 < 21.0 while the paper has 40.3 > 39.2 -> marked; IoU too, PCC agrees
    assert t.cell(ptal, "AP") == "20.5 †" and t.cell(ptal, "IoU top-10") == "0.510 †"
    assert t.cell(ptal, "PCC top-50") == "0.330" and t.cell(ptal, "#error") == "2,900"
    assert [t.cell(ptal, "ΔAP"), t.cell(ptal, "ΔAP (paper)")] == ["-0.5", "+1.1"]
    assert [t.cell(th, "ΔAP"), t.cell(th, "ΔAP (paper)")] == ["+2.5", "+1.9"]
    assert [t.cell(ref, "ΔAP"), t.cell(ref, "ΔAP (paper)")] == ["ref", "ref"]
    # the row with no trial at all stays, with the paper's numbers from grid.yaml
    assert [t.cell(missing, c) for c in ("n", "AP", "AP (paper)", "#error", "#error (paper)")] == \
        ["0", "missing", "42.5", "missing", "69,013"]
    assert t.cell(missing, "ΔAP") == "missing"
    assert t.cell(missing, "ΔAP (paper)") == "+3.3"
    assert sum("†" in c for r in t.rows for c in r) == 2 and any(n.startswith("†") for n in t.notes)
    assert f"{th}, seed 2: RuntimeError: out of memory in {th} seed 2" in t.notes
    assert f"{missing}: missing (no finished trial)." in t.notes


def test_table2_cells_without_grid_artifact(store):
    data = collect_study(open_client(store.uri), "table2_assignment")
    t = build_table(data.table, summarize(data), data.study, data.parent_name)
    assert [r[0] for r in t.rows] == ["IoU-based", "ATSS", "TAL", "center sampling", "centerness"]
    assert [t.cell("IoU-based", c) for c in ("AP", "AP50", "AP75", "AP75 (paper)")] == \
        ["15.5 ± 0.7 (2)", "30.5 ± 0.7 (2)", "19.0 ± 0.0 (2) †", "38.7"]
    assert [t.cell("ATSS", c) for c in ("AP", "AP50", "AP75")] == ["18.1 ± 0.1 (2)", "33.0 ± 0.0 (2)", "17.2 ± 0.3 (2)"]
    assert [t.cell("IoU-based", "ΔAP"), t.cell("IoU-based", "ΔAP (paper)")] == ["-2.6", "-2.7"]
    assert [t.cell("TAL", c) for c in ("n", "AP", "AP (paper)", "ΔAP", "ΔAP (paper)")] == \
        ["0 (1 failed)", "failed", "40.3", "failed", "+1.1"]
    assert [t.cell("center sampling", c) for c in ("n", "AP50", "ΔAP")] == ["0 (1 running)", "running", "running"]
    # interrupted is not failed: no error to list, and the note says how to finish it
    assert [t.cell("centerness", c) for c in ("n", "AP", "ΔAP")] == ["0 (1 interrupted)", "interrupted", "interrupted"]
    assert any(n.startswith("centerness: interrupted") and "`tood-ablate resume t2`" in n for n in t.notes)
    assert not any(n.startswith("centerness, seed") for n in t.notes)


def test_generic_layout_for_smoke(store):
    data = collect_study(open_client(store.uri), "smoke")
    t = build_table(data.table, summarize(data), data.study)
    # AP / AP50 / AP75 (no paper numbers recorded, so no others, no paper columns); one seed: the value
    assert t.header == ["Row", "n", "AP", "AP50", "AP75"]
    assert t.rows == [["tiny t_head", "1", "5.0", "10.0", "-"], ["tiny parallel", "0", "missing", "missing", "missing"]]
    # everything else in the all-metrics table: PCC, and the last epoch's loss_total (1/4) and epoch_AP (5.0)
    rest = all_metrics(summarize(data), data.table, data.study)
    assert rest.header == ["Row", "n", "PCC top-50", "epoch_AP", "loss_total"]
    assert rest.rows[0] == ["tiny t_head", "1", "0.123", "5.0", "0.250"]


def _summary(label, factors, paper, seeds):
    """RowSummary from per-seed AP/AP50/AP75 tuples, statistics done by the statistics module."""
    cols = list(zip(*seeds)) if seeds else [[], [], []]
    mean = {m: statistics.fmean(v) for m, v in zip(("AP", "AP50", "AP75"), cols) if v}
    std = {m: statistics.stdev(v) if len(v) > 1 else float("nan") for m, v in zip(("AP", "AP50", "AP75"), cols) if v}
    return RowSummary(0, label, factors, dict(zip(("AP", "AP50", "AP75"), paper)), len(seeds), 0, 0, mean, std, [])


def test_table1_pivot():
    rows = [_summary("FCOS, parallel head", {"detector": "FCOS", "model.head.type": "parallel"}, (38.6, 57.2, 41.7),
                     [(30.0, 50.0, 32.0), (31.0, 52.0, 32.0)]),
            _summary("FCOS, T-head", {"detector": "FCOS", "model.head.type": "t_head"}, (40.5, 58.5, 43.8),
                     [(29.0, 53.0, 33.0)]),
            _summary("ATSS anchor-free, T-head", {"model.head.type": "t_head"}, (41.1, 58.4, 44.5), [])]
    t = build_table("table1", rows)
    assert [r[0] for r in t.rows] == ["FCOS", "ATSS anchor-free"]
    assert [t.cell("FCOS", c) for c in ("n (parallel)", "parallel AP", "parallel AP50", "parallel AP50 (paper)",
                                        "T-head AP", "T-head AP50", "T-head AP75", "T-head AP (paper)")] == \
        ["2", "30.5 ± 0.7 (2)", "51.0 ± 1.4 (2)", "57.2", "29.0 †", "53.0", "33.0", "40.5"]
    assert [t.cell("FCOS", "ΔAP"), t.cell("FCOS", "ΔAP (paper)")] == ["-1.5", "+1.9"]
    assert [t.cell("ATSS anchor-free", c) for c in ("parallel AP", "n (T-head)", "T-head AP", "T-head AP (paper)",
                                                    "ΔAP")] == ["-", "0", "missing", "41.1", "-"]


def test_table4_and_topm_layouts():
    rows4 = [_summary(f"({a}, {b})", {"criterion.alpha": str(a), "criterion.beta": str(b)}, p, s) for a, b, p, s in [
        (0.5, 2, (42.4, 60.0, 46.1), [(31.0, 50.0, 33.0), (32.0, 50.0, 33.0)]),
        (1.0, 6, (42.5, 59.8, 46.4), [(31.0, 49.0, 34.0), (31.4, 49.0, 34.0)])]]
    t4 = build_table("table4", rows4)
    # AP: ours +0.3 vs the paper's -0.1 -> marked; AP50 (+1.0 vs +0.2) agrees
    assert t4.cell("(0.5, 2)", "AP") == "31.5 ± 0.7 (2) †" and t4.cell("(0.5, 2)", "AP50") == "50.0 ± 0.0 (2)"
    assert [t4.cell("(0.5, 2)", "ΔAP"), t4.cell("(0.5, 2)", "ΔAP (paper)")] == ["+0.3", "-0.1"]
    rows_m = [_summary(f"m={m}", {"criterion.topk": str(m)}, p, s) for m, p, s in [
        (13, (42.5,), [(30.0,), (31.0,), (32.0,)]), (5, (42.0,), [(31.0,)]), (9, (), [])]]
    tm = build_table("topm", rows_m)
    assert tm.header == ["top-m", "m=5", "m=9", "m=13"]
    # m=5 ties m=13 where the paper has it 0.5 lower: a tie does not reproduce the ordering
    assert tm.rows[1] == ["AP", "31.0 †", "missing", "31.0 ± 1.0 (3)"]
    assert tm.rows[2] == ["AP (paper)", "42.0", "-", "42.5"]
    assert tm.rows[3] == ["ΔAP", "+0.0", "missing", "ref"]
    assert tm.rows[4] == ["ΔAP (paper)", "-0.5", "-", "ref"]


def test_parse_grid_rows_variants():
    rows = parse_grid_rows({"rows": [{"label": "a", "factors": {"x": 1}, "paper": {"AP": "30,261"}},
                                     {"name": "b", "head": "t_head", "seed": 3}, {"label": "a", "factors": {}}]})
    assert [(r.index, r.label, r.factors, r.paper) for r in rows] == \
        [(0, "a", {"x": "1"}, {"AP": 30261.0}), (1, "b", {"head": "t_head"}, {})]
    assert parse_grid_rows([{"row": "c"}])[0].label == "c" and parse_grid_rows({"base": "x"}) == []
    with pytest.raises(ValueError, match=r"grid.yaml: rows\[1\].paper.AP: 'n/a' is not a number"):
        parse_grid_rows({"rows": [{"label": "a"}, {"label": "b", "paper": {"AP": "n/a"}}]})


def _unescaped(char: str, text: str) -> list[str]:
    r"""Occurrences of ``char`` not written as ``\char``."""
    return re.findall(r"(?<!\\)" + re.escape(char), text)


def _latex_well_formed(tex: str, columns: int) -> None:
    r"""Structure of one ``to_latex`` table in plain Python: balanced braces, every \begin closed by
    its \end, paired $, no unescaped _ # % outside \label and comments, a column spec of
    ``columns`` letters and exactly ``columns - 1`` unescaped & on each tabular row, none elsewhere."""
    lines = [ln for ln in tex.splitlines() if not ln.startswith("%")]  # the comment line to_latex writes
    lines = [ln[:-1] if ln.endswith("{%") else ln for ln in lines]  # \resizebox{...}{%: % ends the line
    body = "\n".join(lines)
    depth = 0
    for ch in re.sub(r"\\[{}]", "", body):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a } closes nothing"
    assert depth == 0, "unbalanced braces"
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"\\end{{{env}}} does not close the open environment"
    assert not stack, f"\\begin{{{stack[-1] if stack else ''}}} never closed"
    assert len(_unescaped("$", body)) % 2 == 0, "unpaired $"
    text = re.sub(r"\\label\{[^}]*\}", "", body)  # a label may hold _
    for char in "_#%":
        assert not _unescaped(char, text), f"unescaped {char!r} in {tex!r}"
    spec = re.search(r"\\begin\{tabular\}\{(\w+)\}", body)
    assert spec and len(spec.group(1)) == columns
    top, bottom = lines.index(r"\toprule"), lines.index(r"\bottomrule")
    rows = [ln for ln in lines[top + 1 : bottom] if ln != r"\midrule"]
    assert rows and all(len(_unescaped("&", r)) == columns - 1 and r.endswith(r"\\") for r in rows), rows
    assert not _unescaped("&", "\n".join(lines[:top] + lines[bottom:])), "unescaped & outside the tabular rows"


def test_latex_checks_catch_unescaped_and_unbalanced_text():
    table = Table(key="k_1", caption="a_b: 5% & #1 {x}", header=["name_x", "AP %", "#n"],
                  rows=[["r&d", "1_0", "50%"], ["{a}", "#2", "x"]], notes=["50% of a_b & c #3"])
    tex = to_latex(table)
    _latex_well_formed(tex, columns=3)
    broken = [tex.replace(r"\_", "_", 1), tex.replace(r"\%", "%", 1), tex.replace(r"\#", "#", 1),
              tex.replace(r"r\&d", "r&d"), tex.replace(r"\&", "&", 1),  # the caption's &
              tex.replace(r"\{a\}", "{a"), tex.replace(r"\end{tabular}", r"\end{table}"),
              tex.replace(r"\begin{tabular}{lrr}", r"\begin{tabular}{lr}")]
    for bad in broken:
        assert bad != tex
        with pytest.raises(AssertionError):
            _latex_well_formed(bad, columns=3)


def _report_tables(store):
    data = collect_study(open_client(store.uri), "table6_alignment")
    report = build_study_report(open_client(store.uri), data)
    return data, report.tables + summary_tables([report])


def test_latex_and_markdown_well_formed(store):
    assert latex_escape("a_b 5% & #1 {x} ± Δ †") == r"a\_b 5\% \& \#1 \{x\} $\pm$ $\Delta$ $^\dagger$"
    data, tables = _report_tables(store)
    table = build_table(data.table, summarize(data), data.study)
    tex = to_latex(table)
    _latex_well_formed(tex, len(table.header))
    assert all(k in tex for k in (r"\toprule", r"\midrule", r"\bottomrule", r"21.0 $\pm$ 1.0 (3)", r"20.5 $^\dagger$", r"\#correct"))
    assert len(re.findall(r"(?<!\\)&", tex.split(r"\midrule")[1].splitlines()[1])) == len(table.header) - 1
    md = to_markdown(table).splitlines()
    assert {line.count("|") for line in md if line.startswith("|")} == {len(table.header) + 1}
    # every table of the report (paper table, claims, all metrics, compute, summary)
    assert [t.key for t in tables] == ["table6", "table6_claims", "table6_all_metrics", "table6_compute",
                                       "summary_claims", "summary_compute", "summary_headline"]
    for t in tables:
        _latex_well_formed(to_latex(t), len(t.header))


def test_latex_report_compiles(store, tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    _, tables = _report_tables(store)
    body = "".join(to_latex(t) for t in tables)
    doc = "\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n" + body + "\\end{document}\n"
    (tmp_path / "t.tex").write_text(doc)
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and (tmp_path / "t.pdf").stat().st_size > 1000, proc.stdout[-2000:]


def test_plots_show_the_numbers(store):
    client = open_client(store.uri)
    data = collect_study(client, "table6_alignment")
    hist = metric_histories(client, data.trials[data.trials["status"] == "FINISHED"])
    assert len(hist) == 6 * 4 * 2  # 6 finished trials x 4 epochs x 2 metrics
    fig = plots.training_curves(hist)
    loss_ax = fig.axes[0]
    ref_line = next(l for l in loss_ax.get_lines() if l.get_label() == "parallel head + ATSS")
    # mean over seeds 0, 1, 2 of 1/(e+1) + seed/10 = 1/(e+1) + 0.1
    np.testing.assert_allclose(ref_line.get_ydata(), [1.1, 0.6, 1 / 3 + 0.1, 0.35])
    rows4 = [_summary(f"({a}, {b})", {"alpha": str(a), "beta": str(b)}, (), s) for a, b, s in
             [(0.5, 2, [(30.0, 0, 0), (32.0, 0, 0)]), (1.0, 6, [(33.0, 0, 0)]), (1.0, 2, [])]]
    grid = plots.alpha_beta_heatmap(rows4).axes[0].get_images()[0].get_array()
    assert grid[0, 0] == 31.0 and grid[1, 1] == 33.0 and grid.mask[0, 1] and grid.mask[1, 0]
    rows_m = [_summary(f"m={m}", {"criterion.topk": str(m)}, p, s)
              for m, p, s in [(13, (42.5,), [(30.0,), (31.0,), (32.0,)]), (5, (42.0,), [(31.5,)]), (9, (), [])]]
    ours = plots.topm_plot(rows_m).axes[0].get_lines()[0]  # errorbar's data line: finished rows, by m
    assert list(ours.get_xdata()) == [5.0, 13.0] and list(ours.get_ydata()) == [31.5, 31.0]


def test_report_logged_to_parent_run(store, tmp_path):
    paths = render_report("table6_alignment", store.uri, tmp_path / "out")
    assert paths.logged_to == [store.parents["table6"]]
    client = open_client(store.uri)
    logged = {a.path for a in client.list_artifacts(store.parents["table6"], "report")}
    assert {"report/report.html", "report/table6.md", "report/table6.tex", "report/table6.html",
            "report/table6_claims.md", "report/table6_claims.tex", "report/table6_all_metrics.html",
            "report/table6_compute.md", "report/rows.csv", "report/pcc_vs_ap.png",
            "report/training_curves.png"} <= logged
    html = paths.html.read_text()
    assert "21.0 ± 1.0 (3)" in html and 'class="gap">missing' in html and "data:image/png;base64," in html
    # the paper table opens the report, the claims follow it
    assert html.index('id="table6"') < html.index('id="table6_claims"') < html.index("claims, our verdicts")
    assert "6 finished, 1 failed, 0 running, of 12 planned" in html and "profile proxy" in html


def test_no_runs_is_a_clear_error(store, tmp_path, capsys):
    assert main(["empty", "--tracking-uri", store.uri, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tood-ablate/empty" in err and store.uri in err and "Traceback" not in err
    missing_db = f"sqlite:///{tmp_path / 'nothing.db'}"
    assert main(["table2_assignment", "--tracking-uri", missing_db]) == 2
    assert missing_db in capsys.readouterr().err and not (tmp_path / "nothing.db").exists()
    assert main(["nope", "--tracking-uri", store.uri]) == 2
    assert "experiment 'tood-ablate/nope' does not exist" in capsys.readouterr().err


def test_cli_all_studies(store, tmp_path, capsys):
    assert main(["--all", "--tracking-uri", store.uri, "--out", str(tmp_path), "--format", "md"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "report.html")
    html = Path(printed).read_text()
    assert "table2_assignment" in html and "table6_alignment" in html and "empty: skipped" in html
    kinds = ("", "_all_metrics", "_claims", "_compute")
    # one claims table per study (smoke's layout compares nothing: its claims table says so)
    assert sorted(p.name for p in tmp_path.glob("*/*.md")) == sorted(
        f"{k}{s}.md" for k in ("smoke", "table2", "table6") for s in kinds)
    assert sorted(p.name for p in tmp_path.glob("*.md")) == ["summary_claims.md", "summary_compute.md",
                                                             "summary_headline.md"]
    # the summary of all studies comes first
    assert html.index("All studies: the paper") < html.index('id="study-smoke"')
    with pytest.raises(SystemExit):
        main(["table2_assignment", "--all"])


def test_per_seed_export_lists_every_trial_with_its_provenance(store, tmp_path):
    import pandas as pd

    from reports.export import main as export_main

    out = tmp_path / "per_seed.csv"
    assert export_main(["table6_alignment", "table2_assignment", "--tracking-uri", store.uri, "--out", str(out),
                        "--header", "command: tood-ablate run ..."]) == 0
    lines = out.read_text().splitlines()
    header = [l for l in lines if l.startswith("# ")]
    assert header[0] == f"# study table6_alignment: launch t6-new (parent run {store.parents['table6']}), git commit abc1234"
    assert header[-1] == "# command: tood-ablate run ..."
    frame = pd.read_csv(out, comment="#")
    t6 = frame[frame.study == "table6_alignment"]
    # the newest launch only (not t6-old's 99.0); every (row, seed) of it, failed seeds included
    expected = [(label, seed) for label, *_ in T6_ROWS for seed, _ in enumerate(T6_OURS.get(label, []))]
    assert list(zip(t6.row, t6.seed)) == expected and 99.0 not in set(t6.AP)
    first = T6_OURS["parallel head + ATSS"][0]
    row = t6.iloc[0]
    assert (row.AP, row.PCC, row.n_redundant) == (first[0], first[1], first[4]) and row.status == "FINISHED"
    assert t6[t6.status == "FAILED"].AP.isna().all()
    assert set(frame[frame.study == "table2_assignment"].row) == {label for label, *_ in T2_ROWS}
