"""MLflow layout of a grid launch (the schema in ``orchestration.schema`` and docs/contracts.md, read by ``reports``).

One experiment per study (``tood-ablate/<study>``), one parent run per launch and one
nested child run per trial. The driver creates all of them before any trial starts
(first-time sqlite initialisation races otherwise) and hands each trial its run id, so
a retried or resumed trial always continues its own run. Only ``MlflowClient`` is used
(no fluent global state), so trials in one process never share an active run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestration.masking import mask_secrets
from orchestration.mlflow_store import enable_wal, log_yaml, retry
from orchestration.mlflow_ui import KIND_TAG, experiment_ui_tags
from orchestration.schema import (ATTEMPTS_TAG, COMMIT_TAG, ERROR_TAG, EXPERIMENT_PREFIX, FACTOR_TAG, KEY_TAG, LAUNCH_TAG,
                                  PAPER_TAG, PROFILE_TAG, ROLE_TAG, ROW_INDEX_TAG, ROW_TAG, SEED_TAG, STUDY_TAG, TABLE_TAG)
from tood.config import flatten
from tood.eval.alignment import PCC_PROTOCOL

ACTIVE = ("RUNNING", "SCHEDULED")


def git_commit() -> str:
    """``git rev-parse HEAD`` of this checkout, 'unknown' outside a git work tree."""
    from orchestration.provenance import code_fingerprint

    return code_fingerprint().commit


def ensure_experiment(client: MlflowClient, study: str) -> str:
    """Id of experiment ``tood-ablate/<study>``; created with artifacts beside the store: under
    ``<folder of the .db>/mlartifacts`` for a sqlite store, inside the store's folder for a
    file store (MLflow's own layout), under the server's artifact root otherwise. It is tagged as
    a model-training experiment (the UI opens on its runs, not the GenAI overview) with a saved
    view of the paper's metric columns (orchestration.mlflow_ui); an older experiment without the
    kind tag gets the tags on its next launch."""
    name = EXPERIMENT_PREFIX + study
    exp = client.get_experiment_by_name(name)
    ui_tags = experiment_ui_tags(int(time.time() * 1000))
    if exp is not None:
        if KIND_TAG not in exp.tags:
            for key, value in ui_tags.items():
                retry(client.set_experiment_tag, exp.experiment_id, key, value)
        return exp.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:///"):
        db = Path(client.tracking_uri[len("sqlite:///"):].partition("?")[0]).resolve()
        location = (db.parent / "mlartifacts" / "tood-ablate" / study).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=ui_tags)
    except MlflowException:  # created meanwhile by another launch
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def trial_tags(spec: Any, parent_id: str, commit: str, launch: str) -> dict[str, str]:
    """Tags of a child run (``spec``: an :class:`orchestration.grid.TrialSpec`; ``launch``: the
    launch's name). Row, seed, study and launch are tags so that the UI can filter and group by them."""
    from orchestration.suite import trial_key

    return {
        KEY_TAG: trial_key(spec.config),
        "mlflow.parentRunId": parent_id, ROLE_TAG: "trial", STUDY_TAG: spec.study, TABLE_TAG: spec.table, LAUNCH_TAG: launch,
        ROW_TAG: spec.row_label, ROW_INDEX_TAG: str(spec.row_index), PROFILE_TAG: spec.profile,
        SEED_TAG: str(spec.seed), COMMIT_TAG: commit, ATTEMPTS_TAG: "0",
        **{f"{FACTOR_TAG}{k}": str(v) for k, v in spec.factors.items()},
        **{f"{PAPER_TAG}{k}": str(v) for k, v in spec.paper.items()},
    }


def create_launch_runs(client: MlflowClient, study: str, table: str, profile: str, grid_file: str, grid_yaml: dict,
                       specs: list, launch_name: str, parent_tags: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """The parent run (RUNNING, with ``parent_tags`` besides its own) and one SCHEDULED child per
    trial spec; returns their ids."""
    from orchestration.provenance import code_fingerprint

    exp_id = ensure_experiment(client, study)
    enable_wal(client.tracking_uri)
    commit, code = git_commit(), code_fingerprint().tags()
    parent = client.create_run(exp_id, run_name=launch_name, tags={
        ROLE_TAG: "parent", STUDY_TAG: study, TABLE_TAG: table, PROFILE_TAG: profile, LAUNCH_TAG: launch_name,
        "tood.grid_file": grid_file, "tood.seeds": ",".join(str(s) for s in grid_yaml["seeds"]),
        "tood.num_trials": str(len(specs)), COMMIT_TAG: commit, **code, **(parent_tags or {}),
    }).info.run_id
    log_yaml(client, parent, "grid.yaml", grid_yaml)
    child_ids = []
    for spec in specs:
        run_id = client.create_run(exp_id, run_name=spec.name, tags={**trial_tags(spec, parent, commit, launch_name), **code}).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in mask_secrets(flatten(spec.config)).items()]
        params.append(Param("eval.pcc_protocol", PCC_PROTOCOL))
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i : i + 100])
        client.update_run(run_id, status="SCHEDULED")
        child_ids.append(run_id)
    return parent, child_ids


def child_runs(client: MlflowClient, parent_id: str) -> list:
    """All child runs of a launch (every page)."""
    exp_id = client.get_run(parent_id).info.experiment_id
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def reopen_parent(client: MlflowClient, parent_id: str) -> None:
    """A resumed launch: the parent is RUNNING again until it reconciles."""
    retry(client.update_run, parent_id, status="RUNNING")


def reconcile(client: MlflowClient, parent_id: str, errors: dict[str, str]) -> dict[str, int]:
    """After ``Tuner.fit()``: no child stays RUNNING/SCHEDULED. A child Tune reports as errored
    -> FAILED (keeping the trial's own ``tood.error`` if it set one); others unfinished (an
    interrupted launch) -> KILLED. Parent: FAILED if a trial failed, KILLED if one was
    interrupted, else FINISHED. Returns the children's counts by status."""
    counts: dict[str, int] = {}
    for run in child_runs(client, parent_id):
        rid, status = run.info.run_id, run.info.status
        if status in ACTIVE:
            status = "FAILED" if rid in errors else "KILLED"
            if rid in errors and ERROR_TAG not in run.data.tags:
                retry(client.set_tag, rid, ERROR_TAG, errors[rid][:5000])
            retry(client.set_terminated, rid, status)
        counts[status] = counts.get(status, 0) + 1
    parent = "FAILED" if counts.get("FAILED") else "KILLED" if counts.get("KILLED") else "FINISHED"
    retry(client.set_terminated, parent_id, parent)
    return counts
