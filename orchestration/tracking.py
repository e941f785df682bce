"""MLflow layout of a grid launch (the schema the reports package reads).

One experiment per study (``tood-ablate/<study>``), one parent run per launch and one
nested child run per trial. The driver creates all of them before any trial starts
(first-time sqlite initialisation races otherwise) and hands each trial its run id,
so a retried or resumed trial always continues its own run.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tood.config import flatten

EXPERIMENT_PREFIX = "tood-ablate/"
ACTIVE = ("RUNNING", "SCHEDULED")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or an embedded sqlite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlruns.db').resolve()}"


def default_artifact_root() -> str:
    return Path("mlartifacts").resolve().as_uri()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(client: MlflowClient, study: str, tracking_uri: str) -> str:
    name = EXPERIMENT_PREFIX + study
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = default_artifact_root() if tracking_uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location)


def create_launch_runs(client: MlflowClient, tracking_uri: str, grid, trials: list, launch_name: str, profile: str) -> tuple[str, list[str]]:
    """Create the parent run and one SCHEDULED child run per trial; returns their ids."""
    exp_id = ensure_experiment(client, grid.study, tracking_uri)
    commit = git_commit()
    parent = client.create_run(
        exp_id,
        run_name=launch_name,
        tags={
            "tood.role": "parent", "tood.study": grid.study, "tood.table": grid.table, "tood.profile": profile,
            "tood.grid_file": str(grid.path), "tood.seeds": ",".join(str(s) for s in sorted({t.seed for t in trials})),
            "tood.num_trials": str(len(trials)), "tood.git_commit": commit,
        },
    ).info.run_id
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "grid.yaml").write_text(yaml.safe_dump(grid.raw, sort_keys=False))
        client.log_artifact(parent, str(Path(d) / "grid.yaml"))
    child_ids = []
    for t in trials:
        tags = {
            "mlflow.parentRunId": parent, "tood.role": "trial", "tood.study": t.study, "tood.table": t.table,
            "tood.row": t.row_label, "tood.row_index": str(t.row_index), "tood.profile": profile, "tood.seed": str(t.seed),
            "tood.git_commit": commit, "tood.trial_name": t.name,
            **{f"tood.factor.{k}": str(v) for k, v in t.factors.items()},
            **{f"tood.paper.{k}": str(v) for k, v in t.paper.items()},
        }
        run_id = client.create_run(exp_id, run_name=t.name, tags=tags).info.run_id
        params = {k: str(v)[:500] for k, v in flatten(t.config).items()}
        items = list(params.items())
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        client.update_run(run_id, status="SCHEDULED")
        child_ids.append(run_id)
    return parent, child_ids


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items() if v == v])


def log_final(client: MlflowClient, run_id: str, config: dict[str, Any], metrics: dict[str, float]) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (Path(d) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        client.log_artifact(run_id, str(Path(d) / "config.yaml"))
        client.log_artifact(run_id, str(Path(d) / "metrics.json"))


def reconcile(client: MlflowClient, parent_id: str, errors: dict[str, str], finished: bool = True) -> dict[str, int]:
    """After a launch: no child stays RUNNING/SCHEDULED. Children with an error -> FAILED
    (error kept as a tag); others never finished -> KILLED. Parent FINISHED, or FAILED if
    any trial failed. Returns counts by status."""
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=10000)
    counts: dict[str, int] = {}
    for run in runs:
        status = run.info.status
        if status in ACTIVE and finished:
            rid = run.info.run_id
            if rid in errors:
                client.set_tag(rid, "tood.error", errors[rid][:5000])
                status = "FAILED"
            else:
                status = "KILLED"
            client.set_terminated(rid, status)
        counts[status] = counts.get(status, 0) + 1
    if finished:
        client.set_terminated(parent_id, "FAILED" if counts.get("FAILED") else "FINISHED")
    return counts
