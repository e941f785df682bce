"""Read a study's runs from MLflow into pandas (schema: ``orchestration.schema``, docs/contracts.md).

A study is the experiment ``tood-ablate/<study>``. One launch of its grid is a parent run
(tag ``tood.role=parent``, artifact ``grid.yaml``); its nested child runs are the trials,
one per grid row and seed. Only the MlflowClient API is used, so a sqlite store
(``sqlite:////abs/path/mlruns.db``) and a tracking server read the same way.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestration.grid import ClaimSpec
from orchestration.schema import EXPERIMENT_PREFIX, HOST_TAG, TABLE_TAG, experiment_name
from reports.claim_tests import SequentialDesign
from reports.grid_rows import (
    GridRow,
    grid_claim,
    parse_grid_rows,
    rows_from_trials,
    with_tag_paper,
)
from reports.trials import stale_column, trials_frame


class NoRunsError(LookupError):
    """Nothing to report: no store, experiment, parent run or trial (CLI exit code 2)."""


@dataclass
class StudyData:
    """One launch of a study: the parent run, the grid's rows and one trial per frame row.

    ``trials`` columns: reports.trials.BASE_COLUMNS, ``factor.<name>``, ``paper.<metric>`` and one
    column per logged metric (its last value: the final metrics are logged once at the last step).
    """

    study: str
    table: str
    tracking_uri: str
    experiment_name: str
    experiment_id: str
    parent_id: str
    parent_name: str
    parent_tags: dict[str, str]
    grid_rows: list[GridRow]
    grid_source: str
    trials: pd.DataFrame
    common_params: dict[str, str]
    claim: ClaimSpec = ClaimSpec()  # the shape of the study's claims (the grid's claim:)
    design: SequentialDesign | None = None  # the looks of an --until-decided launch (None: seeds fixed in advance)


def open_client(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``; a sqlite file that does not exist is an error, not created."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise NoRunsError(f"tracking store {path} does not exist (tracking URI {tracking_uri})")
    return MlflowClient(tracking_uri=tracking_uri)


def list_studies(client: MlflowClient) -> list[str]:
    """Names of all studies (experiments named tood-ablate/<study>), sorted."""
    experiments = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")
    return sorted(e.name[len(EXPERIMENT_PREFIX):] for e in experiments)


def find_parent(client: MlflowClient, study: str | None, parent: str = "latest") -> Run:
    """The parent run ``parent`` (a run id) or the latest parent run of ``study``."""
    uri = client.tracking_uri
    if parent != "latest":
        try:
            run = client.get_run(parent)
        except MlflowException as exc:
            raise NoRunsError(f"no run with id {parent!r} at tracking URI {uri}") from exc
        name = client.get_experiment(run.info.experiment_id).name
        if study is not None and name != experiment_name(study):
            raise NoRunsError(f"run {parent} belongs to experiment {name!r}, "
                              f"not {experiment_name(study)!r} (tracking URI {uri})")
        return run
    if study is None:
        raise ValueError("find_parent: give a study name or a parent run id")
    experiment = client.get_experiment_by_name(experiment_name(study))
    if experiment is None:
        raise NoRunsError(f"no runs for study {study!r}: experiment "
                          f"{experiment_name(study)!r} does not exist at tracking URI {uri}")
    runs = client.search_runs([experiment.experiment_id], "tags.`tood.role` = 'parent'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise NoRunsError(f"no runs for study {study!r}: experiment {experiment_name(study)!r} "
                          f"has no parent run (tag tood.role=parent) at tracking URI {uri}")
    return runs[0]


def trial_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> list[Run]:
    """All child runs of ``parent_id`` (every page of the search)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'",
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


PUBLISHED_ARTIFACTS = "mlartifacts"  # beside a published sqlite store: its parents' grid.yaml (reports.publish)


def published_artifact(client: MlflowClient, parent_id: str, name: str) -> Path | None:
    """Where ``tood-ablate publish`` keeps a parent's artifact beside a sqlite store:
    ``<store folder>/mlartifacts/<experiment>/<run id>/artifacts/<name>``, the layout of MLflow's
    own artifact store, so a published folder reads the same on any clone. None for a server."""
    if not client.tracking_uri.startswith("sqlite:///"):
        return None
    experiment = client.get_experiment(client.get_run(parent_id).info.experiment_id).name
    store = Path(client.tracking_uri[len("sqlite:///"):])
    return store.parent / PUBLISHED_ARTIFACTS / experiment / parent_id / "artifacts" / name


def grid_yaml_text(client: MlflowClient, parent_id: str) -> str | None:
    """The parent's grid.yaml artifact as launched: from the store's artifact location, else the
    copy a published folder keeps beside its store; None when neither has it."""
    if "grid.yaml" in {a.path for a in client.list_artifacts(parent_id)}:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(client.download_artifacts(parent_id, "grid.yaml", tmp)).read_text()
    copy = published_artifact(client, parent_id, "grid.yaml")
    return copy.read_text() if copy is not None and copy.is_file() else None


def load_grid_yaml(client: MlflowClient, parent_id: str) -> object:
    """The parent's grid.yaml (``grid_yaml_text``) parsed; None when it is absent."""
    text = grid_yaml_text(client, parent_id)
    return None if text is None else yaml.safe_load(text)


def load_grid_artifact(client: MlflowClient, parent_id: str) -> list[GridRow]:
    """Rows of the parent's grid.yaml artifact; [] when it is absent or has no row list."""
    return parse_grid_rows(load_grid_yaml(client, parent_id))


def _common_params(runs: list[Run]) -> dict[str, str]:
    """Params that every trial shares (the config the grid did not vary)."""
    if not runs:
        return {}
    common = dict(runs[0].data.params)
    for run in runs[1:]:
        common = {k: v for k, v in common.items() if run.data.params.get(k) == v}
    return common


def trained_hosts(client: MlflowClient, trials: pd.DataFrame) -> list[str]:
    """Each trial's ``tood.host``: where its result was trained. A reused result written before the
    tag was copied along carries none; it is read from the run it was reused from."""
    sources: dict[str, str] = {}
    hosts = []
    for host, source in zip(trials["host"], trials["reused_from"]):
        if not host and source:
            if source not in sources:
                try:
                    sources[source] = client.get_run(source).data.tags.get(HOST_TAG, "")
                except MlflowException:  # the source run was deleted
                    sources[source] = ""
            host = sources[source]
        hosts.append(host)
    return hosts


def collect_study(client: MlflowClient, study: str | None, parent: str = "latest") -> StudyData:
    """Everything the report needs from one launch of a study (``parent``: run id or 'latest')."""
    parent_run = find_parent(client, study, parent)
    experiment = client.get_experiment(parent_run.info.experiment_id)
    study = study or experiment.name.removeprefix(EXPERIMENT_PREFIX)
    runs = trial_runs(client, experiment.experiment_id, parent_run.info.run_id)
    trials = trials_frame(runs)
    trials["stale"] = stale_column(runs, trials, parent_run.data.tags)
    trials["host"] = trained_hosts(client, trials)
    grid = load_grid_yaml(client, parent_run.info.run_id)
    grid_rows, source = parse_grid_rows(grid), "grid.yaml artifact"
    if not grid_rows:
        grid_rows, source = rows_from_trials(trials), "trial tags (no grid.yaml artifact)"
    if not grid_rows:
        raise NoRunsError(f"no runs for study {study!r}: parent run {parent_run.info.run_id} of "
                          f"experiment {experiment.name!r} has no trials and no grid.yaml "
                          f"(tracking URI {client.tracking_uri})")
    tags = parent_run.data.tags
    try:
        design = SequentialDesign.from_tags(tags, f"parent run {parent_run.info.run_id} ({experiment.name})")
    except ValueError as e:
        raise NoRunsError(f"{e}; tracking URI {client.tracking_uri}") from None
    table = tags.get(TABLE_TAG) or next((r.data.tags[TABLE_TAG] for r in runs if TABLE_TAG in r.data.tags), "smoke")
    return StudyData(
        study=study, table=table, tracking_uri=client.tracking_uri,
        experiment_name=experiment.name, experiment_id=experiment.experiment_id,
        parent_id=parent_run.info.run_id, parent_name=parent_run.info.run_name, parent_tags=tags,
        grid_rows=[with_tag_paper(r, trials) for r in grid_rows], grid_source=source,
        trials=trials, common_params=_common_params(runs), claim=grid_claim(grid, table, f"run {parent_run.info.run_id}: grid.yaml"),
        design=design)


def metric_histories(client: MlflowClient, trials: pd.DataFrame,
                     metrics: tuple[str, ...] = ("loss_total", "epoch_AP")) -> pd.DataFrame:
    """Per-step values of ``metrics`` for every trial, long format.

    Columns: run_id, row, row_index, seed, metric, step (epoch), value.
    """
    records = [
        {"run_id": t.run_id, "row": t.row, "row_index": t.row_index, "seed": t.seed,
         "metric": key, "step": m.step, "value": m.value}
        for t in trials.itertuples() for key in metrics
        for m in client.get_metric_history(t.run_id, key)
    ]
    return pd.DataFrame(records, columns=["run_id", "row", "row_index", "seed", "metric", "step", "value"])
