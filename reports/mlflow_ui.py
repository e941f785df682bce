"""How a study's experiment opens in the MLflow 3.x UI (read from the UI's own bundle, 3.17).

* Kind: the experiment tag ``mlflow.experimentKind``. Without it the UI infers a kind, and an
  experiment without traces may open on the GenAI "Overview" page; ``custom_model_development``
  is the model-training kind (runs table first).
* Columns: the UI has no per-experiment default columns (a first visit shows Source, Models,
  Dataset). It has saved views: an experiment tag ``mlflow.sharedViewState.<key>`` holding
  ``{"name", "createdAt", "updatedAt", "state"}``, where ``state`` is the JSON of the view
  (``selectedColumns`` as ``metrics.`AP``` etc.), opened by ``#/experiments/<id>?viewStateShareKey=<key>``
  and listed in the UI's view picker. PAPER_VIEW shows AP, AP50, AP75 and PCC.
"""

from __future__ import annotations

import json

KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
PAPER_VIEW = "tood-paper-metrics"
PAPER_COLUMNS = ("AP", "AP50", "AP75", "PCC")
DEFAULT_COLUMNS = ("attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`")


def paper_view(created_ms: int) -> str:
    """The saved-view tag value (a JSON envelope) of PAPER_VIEW; ``created_ms``: Unix ms."""
    state = {"selectedColumns": [*DEFAULT_COLUMNS, *(f"metrics.`{m}`" for m in PAPER_COLUMNS)]}
    return json.dumps({"name": "Paper metrics (AP, AP50, AP75, PCC)", "createdAt": created_ms,
                       "updatedAt": created_ms, "state": json.dumps(state)})


def experiment_ui_tags(created_ms: int) -> dict[str, str]:
    """Tags a study experiment gets at creation: its kind and the PAPER_VIEW saved view."""
    return {KIND_TAG: TRAINING_KIND, VIEW_TAG_PREFIX + PAPER_VIEW: paper_view(created_ms)}


def view_url(server: str, experiment_id: str) -> str:
    """UI address of the experiment's runs in PAPER_VIEW (``server``: http://host:port)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}?viewStateShareKey={PAPER_VIEW}"
