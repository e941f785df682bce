"""The study's answer on one row of the MLflow UI: one summary run per study.

A run in the study's experiment, tagged ``tood.role=summary`` (orchestration.mlflow_ui.SUMMARY_ROLE),
found and updated in place: one per experiment, not one per launch. A launch's parent run
only sees its own launch, so the answer put there would be spread over one row per launch,
the older rows keeping numbers that a later launch superseded; the summary run always carries
what ``tood-ablate report <study>`` reports: the study's latest launch, in which every row of
the grid has its trials (a launch runs the whole grid, reusing trials finished before).

It carries, per grid row (``<row>``: the row label reduced to the characters MLflow allows in a
metric name, :func:`row_name`), the metrics ``AP.mean/<row>``, ``PCC.mean/<row>``,
``top10_iou.mean/<row>`` (means over the row's finished seeds; NaN where the row has no value)
and ``n/<row>`` (finished seeds), logged at step = the refresh count so that their history
shows each refresh; as artifacts ``report.html`` (the study's report, which MLflow's artifact
viewer renders), ``claims.csv`` (the claims table), ``rows.csv`` and the plots (PNG); as its
description (tag ``mlflow.note.content``) the paper table and the claims in Markdown. The
experiment's saved views SUMMARY_VIEW and ROWS_VIEW are rewritten to match
(orchestration.mlflow_ui.summary_view_tags).
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from orchestration.mlflow_store import retry
from orchestration.mlflow_ui import ROWS_VIEW, SUMMARY_ROLE, SUMMARY_VIEW, run_url, summary_view_tags, view_url
from orchestration.schema import ROLE_TAG, STUDY_TAG, TABLE_TAG
from reports.document import StudyReport
from reports.formats import to_markdown
from reports.tables import RowSummary, Table, study_title

SUMMARY_METRICS = ("AP", "PCC", "top10_iou")
STEP_TAG = "tood.summary_refreshes"  # refreshes so far: the step of the next refresh's metrics
OF_PARENT_TAG, OF_LAUNCH_TAG = "tood.summary_of_parent", "tood.summary_of_launch"
NOTE_TAG, NOTE_MAX = "mlflow.note.content", 8000  # the run's description; MLflow's limit on a tag value
UI_PORT = 5000  # `mlflow ui`'s default: the address printed for a store without a server


def row_name(label: str) -> str:
    """``label`` as the part of a metric name after the '/': '+' spelled 'plus', every other
    character outside MLflow's set (letters, digits, _ - . space) a space, spaces collapsed.
    'T-head + TAL' -> 'T-head plus TAL', '(0.5, 2)' -> '0.5 2', 'm=13' -> 'm 13'."""
    text = re.sub(r"[^A-Za-z0-9_\-. ]", " ", label.replace("+", " plus "))
    text = re.sub(r" +", " ", text).strip()
    return "" if set(text) <= {"."} else text  # '.' / '..' would resolve to another path


def row_names(rows: list[RowSummary]) -> list[str]:
    """:func:`row_name` of each row, made unique (and never empty) with the row's index: 'row 3'."""
    names = [row_name(r.label) for r in rows]
    return [name if name and names.count(name) == 1 else f"{name} row {r.index}".strip()
            for name, r in zip(names, rows)]


def summary_metrics(rows: list[RowSummary]) -> dict[str, float]:
    """Metric name -> value, in table order: per row ``<m>.mean/<row>`` for m in SUMMARY_METRICS
    (NaN without a finished value), then per row ``n/<row>`` (finished seeds)."""
    names = row_names(rows)
    out = {f"{m}.mean/{name}": float(r.mean.get(m, math.nan)) if r.count.get(m, 0) else math.nan
           for m in SUMMARY_METRICS for r, name in zip(rows, names)}
    out.update({f"n/{name}": float(r.n) for r, name in zip(rows, names)})
    return out


def summary_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """The experiment's summary runs, oldest first (one, unless two refreshes raced)."""
    runs = retry(client.search_runs, [experiment_id], f"tags.`{ROLE_TAG}` = '{SUMMARY_ROLE}'", max_results=100)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def summary_run(client: MlflowClient, report: StudyReport) -> Run:
    """The study's summary run, created when there is none. Two refreshes that both created one
    keep the oldest (each deletes the others), so the experiment ends with one."""
    data = report.data
    runs = summary_runs(client, data.experiment_id)
    if not runs:
        retry(client.create_run, data.experiment_id, run_name=f"summary: {study_title(data.table, data.study)}",
              tags={ROLE_TAG: SUMMARY_ROLE, STUDY_TAG: data.study, TABLE_TAG: data.table, STEP_TAG: "0"})
        runs = summary_runs(client, data.experiment_id)
    for extra in runs[1:]:
        retry(client.delete_run, extra.info.run_id)
    return runs[0]


def _note(report: StudyReport, claims: Table | None) -> str:
    """The run's description: the paper table and the claims (Markdown), cut to MLflow's limit."""
    tail = "\n\nThe full report: artifact `report.html`; the claims as CSV: `claims.csv`."
    note = to_markdown(report.main) + ("\n" + to_markdown(claims) if claims is not None else "")
    if len(note) + len(tail) > NOTE_MAX:
        note = to_markdown(report.main)[: NOTE_MAX - len(tail)]
    return note + tail


def refresh_summary(client: MlflowClient, report: StudyReport, files: Sequence[Path]) -> str:
    """Bring the study's summary run up to ``report`` (the study's latest launch); ``files``: what
    render_study wrote to attach beside claims.csv (report.html, rows.csv, the plots). Returns
    the run id. Metrics of rows no longer in the table get NaN, so no column keeps a number the
    latest launch does not have."""
    data = report.data
    run = summary_run(client, report)
    rid, step = run.info.run_id, int(run.data.tags.get(STEP_TAG, "0"))
    metrics = summary_metrics(report.rows)
    stale = {k: math.nan for k in run.data.metrics
             if k.startswith(tuple(f"{m}.mean/" for m in SUMMARY_METRICS) + ("n/",)) and k not in metrics}
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, v in {**metrics, **stale}.items()]
    for i in range(0, len(batch), 1000):
        retry(client.log_batch, rid, metrics=batch[i: i + 1000])
    claims = next((t for t in report.tables if t.key.endswith("_claims")), None)
    with tempfile.TemporaryDirectory() as tmp:
        attach = list(files)
        if claims is not None:
            attach.append(Path(tmp) / "claims.csv")
            pd.DataFrame(claims.rows, columns=claims.header).to_csv(attach[-1], index=False)
        for path in attach:
            retry(client.log_artifact, rid, str(path))
    for key, value in {STEP_TAG: str(step + 1), OF_PARENT_TAG: data.parent_id, OF_LAUNCH_TAG: data.parent_name or "",
                       NOTE_TAG: _note(report, claims)}.items():
        retry(client.set_tag, rid, key, value)
    for key, value in summary_view_tags(now, list(metrics), data.parent_id, data.parent_name or data.parent_id).items():
        retry(client.set_experiment_tag, data.experiment_id, key, value)
    retry(client.set_terminated, rid, "FINISHED")
    return rid


def ui_server(tracking_uri: str) -> str:
    """The UI's address: the tracking server, else ``mlflow ui`` on its default port."""
    return tracking_uri if tracking_uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{UI_PORT}"


def summary_address(tracking_uri: str, experiment_id: str) -> str:
    """The UI address that shows the study's answer: its runs in SUMMARY_VIEW (the summary run
    alone, one column per row and metric)."""
    return view_url(ui_server(tracking_uri), experiment_id, SUMMARY_VIEW)


def summary_lines(tracking_uri: str, experiment_id: str, study: str, run_id: str) -> list[str]:
    """What `tood-ablate report` prints for a refreshed summary: the address to open (and, for a
    store without a server, the command that serves it), the run's page and the by-row view."""
    server = ui_server(tracking_uri)
    lines = [f"{study}: open {summary_address(tracking_uri, experiment_id)}"]
    if server != tracking_uri:
        lines.append(f"  (serve the store first: mlflow ui --backend-store-uri {tracking_uri})")
    lines += [f"  summary run: {run_url(server, experiment_id, run_id)}",
              f"  latest launch's trials grouped by row: {view_url(server, experiment_id, ROWS_VIEW)}"]
    return lines
