"""reports/summary_run.py: one summary run per study experiment, refreshed in place, its metrics
the rows' means; runs laid out by the launcher (orchestration.tracking) in a sqlite store."""

import os

os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from orchestration.grid import expand_grid, load_grid, resolved_grid  # noqa: E402
from orchestration.mlflow_ui import ROWS_VIEW, SUMMARY_VIEW, VIEW_TAG_PREFIX  # noqa: E402
from orchestration.tracking import create_launch_runs, reconcile  # noqa: E402
from orchestration.trial_run import finish_trial, log_metrics, start_attempt  # noqa: E402
from reports.render import main, render_report  # noqa: E402
from reports.summary_run import row_name, summary_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments/smoke.yaml"
ROWS = ("parallel head + ATSS", "T-head + TAL")
NAMES = ("parallel head plus ATSS", "T-head plus TAL")
# per launch, per row, per seed: (AP, PCC, top10_iou); exact in binary so means compare with ==
FIRST = {ROWS[0]: [(31.25, 0.25, 0.5), (33.5, 0.375, 0.625)], ROWS[1]: [(35.75, 0.5, 0.75), (36.125, 0.625, 0.875)]}
SECOND = {ROWS[0]: [(40.0, 0.125, 0.25), (42.0, 0.25, 0.5)], ROWS[1]: [(44.0, 0.75, 0.5), None]}  # a failed seed


def launch(client: MlflowClient, name: str, values: dict, study_grid: Path = SMOKE) -> str:
    """One launch of the smoke grid on seeds 0, 1 as orchestration.launch lays it out, each trial
    finished with final ``values`` (None: failed) after two epochs; returns the parent run id."""
    grid, specs = load_grid(study_grid), expand_grid(study_grid, seeds=[0, 1])
    parent, ids = create_launch_runs(client, grid.study, grid.table, "smoke", str(study_grid),
                                     resolved_grid(grid, [0, 1], {}), specs, name)
    errors = {}
    for spec, rid in zip(specs, ids):
        start_attempt(client, rid)
        result = values[spec.row_label][spec.seed]
        if result is None:
            errors[rid] = "RuntimeError: boom"
            continue
        for epoch in (1, 2):  # per-epoch curves: the report's training_curves plot
            log_metrics(client, rid, {"loss_total": 2.0 / epoch, "epoch_AP": result[0] * epoch / 2}, step=epoch)
        finish_trial(client, rid, spec.config, dict(zip(("AP", "PCC", "top10_iou"), result)), step=2)
    reconcile(client, parent, errors)
    return parent


def expected(values: dict) -> dict[str, float]:
    """The summary's metrics worked out by hand from ``values``: per row the mean over finished seeds."""
    out = {}
    for row, name in zip(ROWS, NAMES):
        done = [v for v in values[row] if v is not None]
        for i, metric in enumerate(("AP", "PCC", "top10_iou")):
            out[f"{metric}.mean/{name}"] = sum(v[i] for v in done) / len(done)
        out[f"n/{name}"] = float(len(done))
    return out


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An empty sqlite store with MLflow's tables made (that takes seconds: made once, copied per test)."""
    path = tmp_path_factory.mktemp("empty") / "mlruns.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, empty_db):
    shutil.copy(empty_db, tmp_path / "mlruns.db")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    return MlflowClient(tracking_uri=uri), uri


def test_row_names():
    assert [row_name(s) for s in ("T-head + TAL", "(0.5, 2)", "m=13", "ATSS anchor-based, T-head", "a/b", "..")] == [
        "T-head plus TAL", "0.5 2", "m 13", "ATSS anchor-based T-head", "a b", ""]


def test_one_summary_per_experiment_refreshed_in_place(store, tmp_path, capsys):
    client, uri = store
    first = launch(client, "smoke-1", FIRST)
    exp_id = client.get_run(first).info.experiment_id
    assert main(["smoke", "--tracking-uri", uri, "--out", str(tmp_path / "out1"), "--format", "md"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "out1/smoke/report.html")  # stdout stays the path
    (run,) = summary_runs(client, exp_id)
    assert f"viewStateShareKey={SUMMARY_VIEW}" in err and f"/experiments/{exp_id}/runs/{run.info.run_id}" in err
    assert run.data.metrics == expected(FIRST) and expected(FIRST)["AP.mean/parallel head plus ATSS"] == 32.375
    assert run.info.status == "FINISHED" and run.data.tags["tood.summary_of_parent"] == first
    assert run.data.tags["tood.summary_of_launch"] == "smoke-1" and "mlflow.parentRunId" not in run.data.tags
    assert "| parallel head + ATSS |" in run.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "claims.csv", "rows.csv", "training_curves.png"} <= artifacts
    html = Path(client.download_artifacts(run.info.run_id, "report.html", str(tmp_path))).read_text()
    assert "TOOD ablation report: smoke" in html and "32.4" in html  # the study's report, AP mean of row 0
    claims = pd.read_csv(client.download_artifacts(run.info.run_id, "claims.csv", str(tmp_path)))
    assert list(claims.columns)[:2] == ["Claim", "Metric"]

    # the experiment's views: the summary run alone with its columns in table order; the latest launch by row
    tags = client.get_experiment(exp_id).tags
    state = json.loads(json.loads(tags[VIEW_TAG_PREFIX + SUMMARY_VIEW])["state"])
    assert state["selectedColumns"][:2] == [f"metrics.`AP.mean/{n}`" for n in NAMES]
    assert state["searchFilter"] == "tags.`tood.role` = 'summary'"
    rows = json.loads(json.loads(tags[VIEW_TAG_PREFIX + ROWS_VIEW])["state"])
    assert rows["searchFilter"] == f"tags.`mlflow.parentRunId` = '{first}'"
    assert rows["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "tood.row"}]

    # a second launch, then the report again: the same run, the new launch's numbers, one more step
    second = launch(client, "smoke-2", SECOND)
    paths = render_report("smoke", uri, tmp_path / "out2", ("md",))
    (again,) = summary_runs(client, exp_id)
    assert paths.summaries == [run.info.run_id] == [again.info.run_id]
    assert again.data.metrics == expected(SECOND) and again.data.metrics["n/T-head plus TAL"] == 1.0
    assert again.data.tags["tood.summary_of_parent"] == second
    assert [m.value for m in client.get_metric_history(run.info.run_id, "AP.mean/T-head plus TAL")] == [35.9375, 44.0]
    assert json.loads(json.loads(client.get_experiment(exp_id).tags[VIEW_TAG_PREFIX + ROWS_VIEW])["state"])[
        "searchFilter"] == f"tags.`mlflow.parentRunId` = '{second}'"

    # the report of an older launch leaves the summary on the latest
    older = render_report("smoke", uri, tmp_path / "out3", ("md",), parent=first)
    assert older.summaries == [] and older.logged_to == [first]
    assert summary_runs(client, exp_id)[0].data.metrics == expected(SECOND)


def test_every_study_gets_its_own_summary(store, tmp_path):
    client, uri = store
    other = tmp_path / "smoke_b.yaml"
    grid = SMOKE.read_text().replace("study: smoke", "study: smoke_b")
    other.write_text(grid.replace("base: base.yaml", f"base: {ROOT}/experiments/base.yaml"))
    launch(client, "a", FIRST)
    launch(client, "b", SECOND, other)
    paths = render_report(None, uri, tmp_path / "out", ("md",))  # --all
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    summary = {name: summary_runs(client, experiments[f"tood-ablate/{name}"]) for name in ("smoke", "smoke_b")}
    assert [len(runs) for runs in summary.values()] == [1, 1]
    assert sorted(paths.summaries) == sorted(runs[0].info.run_id for runs in summary.values())
    assert summary["smoke"][0].data.metrics == expected(FIRST)
    assert summary["smoke_b"][0].data.metrics == expected(SECOND)
    assert math.isclose(summary["smoke_b"][0].data.metrics["PCC.mean/parallel head plus ATSS"], 0.1875)


def test_launch_tags(store):
    client, _ = store
    parent = launch(client, "smoke-tags", FIRST)
    exp_id = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert client.get_run(parent).data.tags["tood.launch"] == "smoke-tags"
    assert {(r.data.tags["tood.launch"], r.data.tags["tood.study"], r.data.tags["tood.row"], r.data.tags["tood.seed"])
            for r in children} == {("smoke-tags", "smoke", row, seed) for row in ROWS for seed in ("0", "1")}


def test_render_launch_reports_every_study_of_the_launch(store, tmp_path, capsys):
    """What `tood-ablate run`/`resume` call once the launch is over: every study of its record
    rendered into <storage>/<name>/report and its summary refreshed; a study that cannot be
    reported is a warning naming the command to retry, the others go on."""
    from orchestration.record import LAUNCH_FILE
    from reports.render import render_launch

    client, uri = store
    parent = launch(client, "suite-1", FIRST)
    path = tmp_path / "ray" / "suite-1"
    path.mkdir(parents=True)
    studies = [{"study": "smoke", "parent_run_id": parent}, {"study": "smoke", "parent_run_id": "0" * 32}]
    (path / LAUNCH_FILE).write_text(json.dumps({"name": "suite-1", "path": str(path), "study": "smoke",
                                                "parent_run_id": parent, "studies": studies}))
    lines = render_launch("suite-1", tmp_path / "ray", uri)
    (summary,) = summary_runs(client, client.get_run(parent).info.experiment_id)
    assert (path / "report/smoke/report.html").is_file() and summary.data.metrics == expected(FIRST)
    assert lines[0].startswith("smoke: open http://127.0.0.1:5000/#/experiments/") and summary.info.run_id in lines[2]
    assert f"tood-ablate report smoke --parent {'0' * 32} --tracking-uri {uri}" in capsys.readouterr().err
