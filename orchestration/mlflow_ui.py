"""How a study's experiment opens in the MLflow 3.x UI (read from the UI's own bundle, 3.17).

* Kind: the experiment tag ``mlflow.experimentKind`` = ``custom_model_development`` marks a
  model-training experiment. MLflow 3.17's UI no longer reads it to choose the landing page:
  a global "workflow type" does (the GenAI / Model training switch of the sidebar, kept in
  the browser's local storage, default GenAI, so an experiment opens on the GenAI overview).
  A ``workflowType=machine_learning`` query parameter overrides it, so every address given
  out here carries it (RUNS_QUERY); the tag stays for UIs that honour it.
* Columns: the UI has no per-experiment default columns (a first visit shows Dataset, Source,
  Models). It has saved views: an experiment tag ``mlflow.sharedViewState.<key>`` holding
  ``{"name", "createdAt", "updatedAt", "state"}``, where ``state`` is the JSON of the view
  (``selectedColumns`` as ``metrics.`AP``` etc.), opened by ``viewStateShareKey=<key>`` on the
  runs page and listed in the UI's view picker. PAPER_VIEW shows AP, AP50, AP75 and PCC.
  Child runs stay folded under their parent until its row's [+] is clicked (the view state
  cannot carry expanded rows). The state may also carry ``searchFilter`` and ``groupBy``
  (``{"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": <tag>}]}``),
  ``columnOrder`` (column ids) and ``columnWidths`` (pixels; applied only to the columns that
  ``columnOrder`` lists). The runs table otherwise orders metric columns by name and cuts their
  headers at about 80 px. A view tag over 20,000 characters is refused by the UI.
* Summary: ``reports.summary_run`` keeps one run per study (tag ``tood.role`` = SUMMARY_ROLE) and
  two views beside PAPER_VIEW, rewritten at each refresh because their columns and filter
  depend on the study's rows and latest launch: SUMMARY_VIEW (the summary run alone, one column
  per row and metric) and ROWS_VIEW (the latest launch's trials grouped by ``tood.row``, with
  the UI's average per group).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from orchestration.schema import ROLE_TAG, ROW_TAG, SEED_TAG

KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
PAPER_VIEW = "tood-paper-metrics"
PAPER_COLUMNS = ("AP", "AP50", "AP75", "PCC")
RUNS_QUERY = "workflowType=machine_learning"
SUMMARY_ROLE = "summary"  # tood.role of a study's summary run (reports.summary_run)
SUMMARY_VIEW, ROWS_VIEW = "tood-study-summary", "tood-latest-by-row"
ROWS_COLUMNS = ("AP", "PCC", "top10_iou")
RUN_NAME_COLUMN, CREATED_COLUMN = "attributes.`Run Name`", "runDateAndNestInfo"  # the UI's ids of its first columns


def metric_column(key: str) -> str:
    """A metric's column id in a view's ``selectedColumns``."""
    return f"metrics.`{key}`"


def header_width(key: str) -> int:
    """Pixels a column needs to show the header ``key`` whole."""
    return 8 * len(key) + 24


def saved_view(name: str, created_ms: int, columns: Sequence[str], search_filter: str = "",
               group_by_tag: str | None = None, widths: dict[str, int] | None = None) -> str:
    """A saved-view tag value (the UI's JSON envelope); ``created_ms``: Unix ms; ``columns``:
    column ids (:func:`metric_column`, ``tags.`<tag>```); ``group_by_tag``: group the runs by
    this tag's value, each group showing the average of its runs; ``widths``: column id ->
    pixels, and then the columns stay in the order given (after run name and creation time)."""
    state: dict = {"selectedColumns": list(columns)}
    if widths:
        state["columnOrder"], state["columnWidths"] = [RUN_NAME_COLUMN, CREATED_COLUMN, *columns], dict(widths)
    if search_filter:
        state["searchFilter"] = search_filter
    if group_by_tag:
        state["groupBy"] = {"aggregateFunction": "average",
                            "groupByKeys": [{"mode": "tag", "groupByData": group_by_tag}]}
    return json.dumps({"name": name, "createdAt": created_ms, "updatedAt": created_ms, "state": json.dumps(state)})


def paper_view(created_ms: int) -> str:
    """The saved-view tag value of PAPER_VIEW; ``created_ms``: Unix ms."""
    return saved_view("Paper metrics (AP, AP50, AP75, PCC)", created_ms, [metric_column(m) for m in PAPER_COLUMNS])


def summary_view_tags(created_ms: int, summary_keys: Sequence[str], parent_id: str, launch: str) -> dict[str, str]:
    """Experiment tags of SUMMARY_VIEW (the summary run with columns ``summary_keys``, its metric
    keys in table order) and ROWS_VIEW (the child runs of ``parent_id``, the latest launch named
    ``launch``, grouped by row)."""
    summary = saved_view("Study summary (one column per row)", created_ms, [metric_column(k) for k in summary_keys],
                         search_filter=f"tags.`{ROLE_TAG}` = '{SUMMARY_ROLE}'",
                         widths={metric_column(k): header_width(k) for k in summary_keys})
    rows = saved_view(f"Latest launch by row ({launch})", created_ms,
                      [metric_column(m) for m in ROWS_COLUMNS] + [f"tags.`{SEED_TAG}`"],
                      search_filter=f"tags.`mlflow.parentRunId` = '{parent_id}'", group_by_tag=ROW_TAG,
                      widths={RUN_NAME_COLUMN: 360})
    return {VIEW_TAG_PREFIX + SUMMARY_VIEW: summary, VIEW_TAG_PREFIX + ROWS_VIEW: rows}


def experiment_ui_tags(created_ms: int) -> dict[str, str]:
    """Tags a study experiment gets at creation: its kind and the PAPER_VIEW saved view."""
    return {KIND_TAG: TRAINING_KIND, VIEW_TAG_PREFIX + PAPER_VIEW: paper_view(created_ms)}


def runs_url(server: str, experiment_id: str) -> str:
    """UI address of the experiment's runs table (``server``: http://host:port)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_QUERY}"


def view_url(server: str, experiment_id: str, view: str = PAPER_VIEW) -> str:
    """UI address of the experiment's runs in saved view ``view`` (default PAPER_VIEW)."""
    return f"{runs_url(server, experiment_id)}&viewStateShareKey={view}"


def run_url(server: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """UI address of one run's page (its metrics, description and artifacts); ``tab``: a path
    under it, e.g. ``artifacts/report.html`` (that artifact open in the viewer)."""
    path = f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")
    return f"{path}?{RUNS_QUERY}"
