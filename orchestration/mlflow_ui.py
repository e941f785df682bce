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
  cannot carry expanded rows).
"""

from __future__ import annotations

import json

KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
PAPER_VIEW = "tood-paper-metrics"
PAPER_COLUMNS = ("AP", "AP50", "AP75", "PCC")
RUNS_QUERY = "workflowType=machine_learning"


def paper_view(created_ms: int) -> str:
    """The saved-view tag value (a JSON envelope) of PAPER_VIEW; ``created_ms``: Unix ms."""
    state = {"selectedColumns": [f"metrics.`{m}`" for m in PAPER_COLUMNS]}
    return json.dumps({"name": "Paper metrics (AP, AP50, AP75, PCC)", "createdAt": created_ms,
                       "updatedAt": created_ms, "state": json.dumps(state)})


def experiment_ui_tags(created_ms: int) -> dict[str, str]:
    """Tags a study experiment gets at creation: its kind and the PAPER_VIEW saved view."""
    return {KIND_TAG: TRAINING_KIND, VIEW_TAG_PREFIX + PAPER_VIEW: paper_view(created_ms)}


def runs_url(server: str, experiment_id: str) -> str:
    """UI address of the experiment's runs table (``server``: http://host:port)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{RUNS_QUERY}"


def view_url(server: str, experiment_id: str) -> str:
    """UI address of the experiment's runs in PAPER_VIEW."""
    return f"{runs_url(server, experiment_id)}&viewStateShareKey={PAPER_VIEW}"
