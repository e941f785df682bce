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

from orchestration.grid import ClaimSpec, claim_spec
from orchestration.provenance import CodeFingerprint, staleness
from orchestration.schema import (ATTEMPTS_TAG, CODE_COMMIT_TAG, CODE_HASH_TAG, COMMIT_TAG, CPUS_TAG, ERROR_TAG,
                                  EXPERIMENT_PREFIX, FACTOR_TAG, GPUS_TAG, HOST_TAG, KEY_TAG, PAPER_TAG, REUSED_TAG,
                                  ROW_INDEX_TAG, ROW_TAG, SEED_TAG, TABLE_TAG, experiment_name)
from tood.config import ConfigError

FINAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "PCC", "top10_iou",
                 "n_correct", "n_redundant", "n_error")
EPOCH_METRICS = ("loss_total", "loss_cls", "loss_box", "lr", "epoch_AP")
# Trial columns that are not metrics (nor factor.* / paper.* columns).
BASE_COLUMNS = ("run_id", "run_name", "status", "row", "row_index", "seed", "error", "git_commit",
                "start_time", "attempts", "reused_from", "trial_key", "cpus_per_trial", "gpus_per_trial", "host",
                "code_commit", "code_hash", "stale")
# Tags read into the columns of the same name ('' when absent: stores older than the tag).
TAG_COLUMNS = {"attempts": ATTEMPTS_TAG, "reused_from": REUSED_TAG, "trial_key": KEY_TAG, "cpus_per_trial": CPUS_TAG,
               "gpus_per_trial": GPUS_TAG, "host": HOST_TAG, "code_commit": CODE_COMMIT_TAG, "code_hash": CODE_HASH_TAG}


class NoRunsError(LookupError):
    """Nothing to report: no store, experiment, parent run or trial (CLI exit code 2)."""


@dataclass(frozen=True)
class GridRow:
    """One row of a grid in grid-file order; ``paper`` maps metric name -> the paper's value."""

    index: int
    label: str
    factors: dict[str, str]
    paper: dict[str, float]


@dataclass
class StudyData:
    """One launch of a study: the parent run, the grid's rows and one trial per frame row.

    ``trials`` columns: BASE_COLUMNS, ``factor.<name>``, ``paper.<metric>`` and one column per
    logged metric (its last value: the final metrics are logged once at the last step).
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


def _number(value: object, where: str) -> float:
    """``value`` as float ('30,261' -> 30261.0); a ValueError naming ``where`` otherwise."""
    try:
        return float(str(value).replace(",", ""))
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a number") from None


def _trial_record(run: Run) -> dict:
    tags, info = run.data.tags, run.info
    record = {
        "run_id": info.run_id, "run_name": info.run_name, "status": info.status,
        "row": tags.get(ROW_TAG, info.run_name),
        "row_index": int(tags.get(ROW_INDEX_TAG, -1)),
        "seed": int(tags[SEED_TAG]) if SEED_TAG in tags else -1,
        "error": tags.get(ERROR_TAG, ""), "git_commit": tags.get(COMMIT_TAG, ""),
        "start_time": info.start_time,
        **{column: tags.get(tag, "") for column, tag in TAG_COLUMNS.items()},
    }
    for key, value in tags.items():
        if key.startswith(FACTOR_TAG):
            record["factor." + key[len(FACTOR_TAG):]] = value
        elif key.startswith(PAPER_TAG):
            record["paper." + key[len(PAPER_TAG):]] = _number(value, f"run {info.run_id}: tag {key}")
    record.update(run.data.metrics)
    return record


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


def trials_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per trial run, ordered by (row_index, seed); columns as in StudyData."""
    frame = pd.DataFrame([_trial_record(r) for r in runs])
    if frame.empty:
        return pd.DataFrame(columns=list(BASE_COLUMNS))
    return frame.sort_values(["row_index", "seed"], kind="stable").reset_index(drop=True)


def metric_columns(trials: pd.DataFrame) -> list[str]:
    """The metric columns of a trials frame: FINAL_METRICS first, then the others by name."""
    other = {c for c in trials.columns if c not in BASE_COLUMNS
             and not c.startswith(("factor.", "paper."))}
    return [m for m in FINAL_METRICS if m in other] + sorted(other - set(FINAL_METRICS))


def parse_grid_rows(grid: object) -> list[GridRow]:
    """Rows of a resolved grid: ``{rows: [{label, factors, paper}, ...]}`` or a bare list.

    ``row``/``name`` are accepted for ``label``; without ``factors`` every other key of the
    row is a factor. Repeated labels (one entry per seed) keep their first position.
    """
    items = grid.get("rows") if isinstance(grid, dict) else grid
    if not isinstance(items, list):
        return []
    rows: dict[str, GridRow] = {}
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        label = next((str(item[k]) for k in ("label", "row", "name") if k in item), None)
        if label is None or label in rows:
            continue
        factors = item.get("factors")
        if not isinstance(factors, dict):
            factors = {k: v for k, v in item.items()
                       if k not in ("label", "row", "name", "paper", "seed", "seeds", "index")}
        paper = item.get("paper") if isinstance(item.get("paper"), dict) else {}
        paper = {str(k): _number(v, f"grid.yaml: rows[{position}].paper.{k}") for k, v in paper.items()}
        rows[label] = GridRow(len(rows), label, {str(k): str(v) for k, v in factors.items()}, paper)
    return list(rows.values())


def load_grid_yaml(client: MlflowClient, parent_id: str) -> object:
    """The parent's grid.yaml artifact (the grid as launched), None when it is absent."""
    if "grid.yaml" not in {a.path for a in client.list_artifacts(parent_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent_id, "grid.yaml", tmp)
        return yaml.safe_load(Path(path).read_text())


def load_grid_artifact(client: MlflowClient, parent_id: str) -> list[GridRow]:
    """Rows of the parent's grid.yaml artifact; [] when it is absent or has no row list."""
    return parse_grid_rows(load_grid_yaml(client, parent_id))


def grid_claim(grid: object, table: str, where: str) -> ClaimSpec:
    """The claim shape of a launched grid (its ``claim:``), else the study's default; a grid
    whose claim block cannot be read falls back to the default rather than hide the report."""
    raw = grid.get("claim") if isinstance(grid, dict) else None
    try:
        return claim_spec(raw, table, where)
    except ConfigError:
        return claim_spec(None, table, where)


def rows_from_trials(trials: pd.DataFrame) -> list[GridRow]:
    """Grid rows recovered from the trials' tood.row / tood.row_index / factor / paper tags."""
    rows = []
    for label, group in trials.groupby("row", sort=False):
        first = group.iloc[0]
        factors = {c[len("factor."):]: str(first[c]) for c in trials.columns
                   if c.startswith("factor.") and pd.notna(first[c])}
        rows.append(GridRow(int(group["row_index"].min()), str(label), factors, {}))
    return sorted(rows, key=lambda r: r.index)


def _with_tag_paper(row: GridRow, trials: pd.DataFrame) -> GridRow:
    """``row`` with the paper numbers of its trials' tood.paper.* tags (these win over the grid)."""
    own = trials[trials["row"] == row.label]
    paper = dict(row.paper)
    for column in (c for c in trials.columns if c.startswith("paper.")):
        values = own[column].dropna()
        if len(values):
            paper[column[len("paper."):]] = float(values.iloc[0])
    return GridRow(row.index, row.label, row.factors, paper)


def _common_params(runs: list[Run]) -> dict[str, str]:
    """Params that every trial shares (the config the grid did not vary)."""
    if not runs:
        return {}
    common = dict(runs[0].data.params)
    for run in runs[1:]:
        common = {k: v for k, v in common.items() if run.data.params.get(k) == v}
    return common


def collect_study(client: MlflowClient, study: str | None, parent: str = "latest") -> StudyData:
    """Everything the report needs from one launch of a study (``parent``: run id or 'latest')."""
    parent_run = find_parent(client, study, parent)
    experiment = client.get_experiment(parent_run.info.experiment_id)
    study = study or experiment.name.removeprefix(EXPERIMENT_PREFIX)
    runs = trial_runs(client, experiment.experiment_id, parent_run.info.run_id)
    trials = trials_frame(runs)
    trials["stale"] = stale_column(runs, trials, parent_run.data.tags)
    grid = load_grid_yaml(client, parent_run.info.run_id)
    grid_rows, source = parse_grid_rows(grid), "grid.yaml artifact"
    if not grid_rows:
        grid_rows, source = rows_from_trials(trials), "trial tags (no grid.yaml artifact)"
    if not grid_rows:
        raise NoRunsError(f"no runs for study {study!r}: parent run {parent_run.info.run_id} of "
                          f"experiment {experiment.name!r} has no trials and no grid.yaml "
                          f"(tracking URI {client.tracking_uri})")
    tags = parent_run.data.tags
    table = tags.get(TABLE_TAG) or next((r.data.tags[TABLE_TAG] for r in runs if TABLE_TAG in r.data.tags), "smoke")
    return StudyData(
        study=study, table=table, tracking_uri=client.tracking_uri,
        experiment_name=experiment.name, experiment_id=experiment.experiment_id,
        parent_id=parent_run.info.run_id, parent_name=parent_run.info.run_name, parent_tags=tags,
        grid_rows=[_with_tag_paper(r, trials) for r in grid_rows], grid_source=source,
        trials=trials, common_params=_common_params(runs), claim=grid_claim(grid, table, f"run {parent_run.info.run_id}: grid.yaml"))


def stale_column(runs: list[Run], trials: pd.DataFrame, parent_tags: dict[str, str]) -> list[str]:
    """Per row of ``trials``: why its result may not be what the launch's code gives (a result reused
    across a code change: :func:`orchestration.provenance.staleness` against the parent's code), ''
    when nothing is known against it."""
    launch = CodeFingerprint.from_tags(parent_tags)
    why = {r.info.run_id: staleness(r.data.tags, launch) or "" for r in runs}
    return [why.get(run_id, "") for run_id in trials["run_id"]]


def stale_notes(trials: pd.DataFrame) -> list[str]:
    """The report's note naming the results reused across a code change (column ``stale``); [] if none."""
    if "stale" not in trials:
        return []
    stale = trials[trials["stale"].astype(bool)]
    if stale.empty:
        return []
    which = "; ".join(f"{t.row} seed {t.seed}: {t.stale}" for t in stale.itertuples())
    return [f"Reused across a code change ({len(stale)} of {len(trials)} trials; their numbers come from other code "
            f"than this launch's, `tood-ablate run <grid> --rerun-stale` retrains them): {which}."]


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
