"""MLflow layout of a grid launch (the schema in ``orchestration.schema`` and docs/contracts.md, read by ``reports``).

One experiment per study (``tood-ablate/<study>``), one parent run per launch and one
nested child run per trial. The driver creates all of them before any trial starts
(first-time sqlite initialisation races otherwise) and hands each trial its run id, so
a retried or resumed trial always continues its own run. Only ``MlflowClient`` is used
(no fluent global state), so trials in one process never share an active run.
"""
from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestration.mlflow_ui import KIND_TAG, experiment_ui_tags
from orchestration.schema import (ATTEMPTS_TAG, CODE_COMMIT_TAG, CODE_TAGS, COMMIT_TAG, ERROR_TAG, EXPERIMENT_PREFIX,
                                  FACTOR_TAG, KEY_TAG, LAUNCH_TAG, PAPER_TAG, PROFILE_TAG, REUSED_TAG, ROLE_TAG,
                                  ROW_INDEX_TAG, ROW_TAG, SEED_TAG, STUDY_TAG, TABLE_TAG)
from tood.config import flatten
from tood.eval.alignment import PCC_PROTOCOL

ACTIVE = ("RUNNING", "SCHEDULED")
T = TypeVar("T")


def git_commit() -> str:
    """``git rev-parse HEAD`` of this checkout, 'unknown' outside a git work tree."""
    from orchestration.provenance import code_fingerprint

    return code_fingerprint().commit


TRANSIENT = ("locked", "Connection refused", "Max retries exceeded", "Connection reset", "Connection aborted",
             "RemoteDisconnected", "Read timed out", "503 Service Unavailable", "502 Bad Gateway")
RETRY_BUDGET_S = 60.0  # how long a trial waits for a locked store or a restarting server


def retry(fn: Callable[..., T], *args: Any, budget_s: float | None = None, **kwargs: Any) -> T:
    """Call an MLflow client method, retrying with bounded backoff (0.1 s doubling to 5 s, at
    most ``budget_s``, default ``RETRY_BUDGET_S``) while a sqlite store is locked by another
    trial or the tracking server cannot be reached; other errors, and the last one, propagate.
    Only idempotent calls go through here (a metric batch keeps its timestamps)."""
    deadline = time.monotonic() + (RETRY_BUDGET_S if budget_s is None else budget_s)
    delay = 0.1
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # sqlalchemy's OperationalError / requests' ConnectionError arrive wrapped or bare
            if not any(t in str(e) for t in TRANSIENT) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


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


def _log_yaml(client: MlflowClient, run_id: str, name: str, data: Any) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(yaml.safe_dump(data, sort_keys=False) if name.endswith(".yaml") else json.dumps(data, indent=2))
        retry(client.log_artifact, run_id, str(path))


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


SECRET_PARTS = ("token", "password", "passwd", "secret", "credential", "credentials", "apikey")
SECRET_KEY_PREFIXES = ("api", "access", "private", "secret", "auth", "signing", "encryption", "ssh")
MASK = "***"


def is_secret_name(name: str) -> bool:
    """A param name that looks like a credential, judged by its parts (split at . _ -): a part
    token/password/secret/..., or ``key`` alone or after api/access/private/... So
    ``auth_token`` and ``db.api_key`` are secrets; ``topk``, ``atss_topk``, ``trial_key`` are not."""
    parts = [p for p in re.split(r"[._\-]+", name.lower()) if p]
    if any(p in SECRET_PARTS for p in parts) or parts == ["key"]:
        return True
    return any(a in SECRET_KEY_PREFIXES and b == "key" for a, b in zip(parts, parts[1:]))


def mask_secrets(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the value of every secret-looking name (:func:`is_secret_name`) masked."""
    return {k: MASK if is_secret_name(k) else v for k, v in params.items()}


def mask_nested(data: Any, prefix: str = "") -> Any:
    """A copy of a nested mapping (a config) with every secret-looking dotted name masked, so
    the config.yaml artifact says no more than the params do."""
    if not isinstance(data, dict):
        return data
    out = {}
    for k, v in data.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        out[k] = MASK if is_secret_name(name) and not isinstance(v, dict) else mask_nested(v, name)
    return out


def enable_wal(tracking_uri: str) -> None:
    """Put a sqlite store in WAL mode (persistent in the file): readers no longer block the
    writer, so concurrent trials wait less on "database is locked" (MLflow itself sets a
    20 s busy timeout; :func:`retry` covers what is left)."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    with contextlib.closing(sqlite3.connect(tracking_uri[len("sqlite:///"):], timeout=30)) as db:
        db.execute("PRAGMA journal_mode=WAL")


STORE_LOCK_SUFFIX = ".lock"  # beside a sqlite store: the file that serialises its creation


def prepare_store(tracking_uri: str) -> None:
    """Create (migrate) a sqlite store and put it in WAL mode under an exclusive ``flock`` of
    ``<store>.lock``: two launches creating one fresh store at once otherwise race in MLflow's
    schema migration (``alembic ... CommandError: Online migration expected to match one row``).
    Other stores are left to MLflow (a server migrates its own database once, at its start).
    Call it before the first ``MlflowClient(tracking_uri)`` of a process: the client opens (and
    creates) the store when it is constructed."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    import fcntl

    db = Path(tracking_uri[len("sqlite:///"):].partition("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would
    with open(str(db) + STORE_LOCK_SUFFIX, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            retry(MlflowClient(tracking_uri).search_experiments, max_results=1)
            enable_wal(tracking_uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def create_launch_runs(client: MlflowClient, study: str, table: str, profile: str, grid_file: str, grid_yaml: dict,
                       specs: list, launch_name: str) -> tuple[str, list[str]]:
    """The parent run (RUNNING) and one SCHEDULED child per trial spec; returns their ids."""
    from orchestration.provenance import code_fingerprint

    exp_id = ensure_experiment(client, study)
    enable_wal(client.tracking_uri)
    commit, code = git_commit(), code_fingerprint().tags()
    parent = client.create_run(exp_id, run_name=launch_name, tags={
        ROLE_TAG: "parent", STUDY_TAG: study, TABLE_TAG: table, PROFILE_TAG: profile, LAUNCH_TAG: launch_name,
        "tood.grid_file": grid_file, "tood.seeds": ",".join(str(s) for s in grid_yaml["seeds"]),
        "tood.num_trials": str(len(specs)), COMMIT_TAG: commit, **code,
    }).info.run_id
    _log_yaml(client, parent, "grid.yaml", grid_yaml)
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


@dataclass
class Attempt:
    number: int  # 1 for the first start of the trial
    finished: bool  # the run already FINISHED (a resumed launch must not re-run it)
    final_metrics: dict[str, float]


def start_attempt(client: MlflowClient, run_id: str) -> Attempt:
    """Mark a child run RUNNING and count the attempt, unless it already FINISHED."""
    run = retry(client.get_run, run_id)
    if run.info.status == "FINISHED":
        return Attempt(int(run.data.tags.get(ATTEMPTS_TAG, "1")), True, dict(run.data.metrics))
    number = int(run.data.tags.get(ATTEMPTS_TAG, "0")) + 1
    retry(client.set_tag, run_id, ATTEMPTS_TAG, str(number))
    retry(client.update_run, run_id, status="RUNNING")
    return Attempt(number, False, {})


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Metrics at ``step`` (the epoch); NaN values (e.g. APl without large objects) are skipped."""
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if float(v) == float(v)]
    if batch:
        retry(client.log_batch, run_id, metrics=batch)


def logged_steps(client: MlflowClient, run_id: str, key: str = "loss_total") -> set[int]:
    """Steps (epochs) at which ``key`` is logged; an epoch's metrics go in one batch, so one
    key stands for all of them."""
    return {m.step for m in retry(client.get_metric_history, run_id, key)}


def finish_trial(client: MlflowClient, run_id: str, config: dict, metrics: dict[str, float], step: int,
                 checkpoint: Path | None = None) -> None:
    """Artifacts config.yaml, metrics.json (+ the checkpoint), final metrics not yet logged
    (a trial resumed from its last checkpoint logged them before), status FINISHED."""
    logged = retry(client.get_run, run_id).data
    log_metrics(client, run_id, {k: v for k, v in metrics.items() if k not in logged.metrics and k != "epoch"}, step)
    _log_yaml(client, run_id, "config.yaml", mask_nested(config))
    _log_yaml(client, run_id, "metrics.json", metrics)
    if checkpoint is not None:
        retry(client.log_artifact, run_id, str(checkpoint), "checkpoint")
    if ERROR_TAG in logged.tags:  # an earlier attempt failed; this one did not
        retry(client.delete_tag, run_id, ERROR_TAG)
    retry(client.set_terminated, run_id, "FINISHED")


def record_error(client: MlflowClient, run_id: str, error: BaseException, final: bool) -> None:
    """Tag the error; FAILED only on the last allowed attempt (a retry continues the run)."""
    retry(client.set_tag, run_id, ERROR_TAG, f"{type(error).__name__}: {error}"[:5000])
    if final:
        retry(client.set_terminated, run_id, "FAILED")


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


def finished_by_key(client: MlflowClient, keys: set[str]) -> dict[str, Any]:
    """The FINISHED trial run that trained each of ``keys`` (not a reused copy), over every
    ``tood-ablate/`` experiment of the store; the newest when several did."""
    exps = [e.experiment_id for e in retry(client.search_experiments, filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")]
    found: dict[str, Any] = {}
    token = None
    while exps:
        page = retry(client.search_runs, exps, "attributes.status = 'FINISHED' and tags.`tood.role` = 'trial'",
                     max_results=1000, page_token=token, order_by=["attributes.start_time DESC"])
        for run in page:
            key = run.data.tags.get(KEY_TAG)
            if key in keys and key not in found and REUSED_TAG not in run.data.tags:
                found[key] = run
        token = page.token
        if not token:
            break
    return found


def copy_result(client: MlflowClient, source_id: str, target_id: str) -> bool:
    """Fill child run ``target_id`` with the result of ``source_id`` (every metric's history),
    tag it ``tood.reused_from`` = the source, and finish it. A target already FINISHED is
    left alone (resume calls this again). Returns whether it copied."""
    if retry(client.get_run, target_id).info.status == "FINISHED":
        return False
    source = retry(client.get_run, source_id)
    history = [m for key in source.data.metrics for m in retry(client.get_metric_history, source_id, key)]
    for i in range(0, len(history), 1000):
        retry(client.log_batch, target_id, metrics=history[i : i + 1000])
    for tag, value in {REUSED_TAG: source_id, "tood.reused_from_experiment": source.info.experiment_id,
                       "tood.reused_from_name": source.info.run_name, **_code_tags_of(source.data.tags)}.items():
        retry(client.set_tag, target_id, tag, value)
    target_tags = retry(client.get_run, target_id).data.tags
    for tag in (set(CODE_TAGS) - set(_code_tags_of(source.data.tags))) & set(target_tags):  # the launch's, not the result's
        retry(client.delete_tag, target_id, tag)
    retry(client.set_terminated, target_id, "FINISHED")
    return True


def _code_tags_of(tags: dict[str, str]) -> dict[str, str]:
    """The code tags (orchestration.provenance) a reused result carries: its source's; for a source
    from before code hashes were recorded, only the commit it was trained by."""
    recorded = {t: tags[t] for t in CODE_TAGS if t in tags}
    if CODE_COMMIT_TAG not in recorded and COMMIT_TAG in tags:
        recorded[CODE_COMMIT_TAG] = tags[COMMIT_TAG]
    return recorded


# ------------------------------------------------------------------ shared prefixes (orchestration.prefix)

PREFIX_FROM_TAG, PREFIX_EPOCHS_TAG = "tood.prefix_from", "tood.prefix_epochs"  # a run that branched from a shared prefix
PREFIX_KEY_TAG, PREFIX_CHECKPOINT_TAG = "tood.prefix_key", "tood.prefix_checkpoint"  # the run that published one
PREFIX_SAVED_METRIC = "prefix_saved_s"  # per attempt (step): training seconds of the epochs copied in


def copy_prefix(client: MlflowClient, run_id: str, history: list[dict[str, float]], source_id: str, epochs: int,
                attempt: int) -> None:
    """Log the first ``epochs`` epoch metrics of a prefix checkpoint's ``history`` into run
    ``run_id`` at their own steps (those it has not logged: a retry copies nothing twice), tag
    it with the run that trained them and the branch epoch, and log what those epochs cost
    (epoch_time_s + eval_time_s) as :data:`PREFIX_SAVED_METRIC`."""
    done = logged_steps(client, run_id)
    copied = [h for h in history[:epochs] if int(h["epoch"]) not in done]
    for h in copied:
        log_metrics(client, run_id, {k: float(v) for k, v in h.items() if k != "epoch"}, int(h["epoch"]))
    if source_id == run_id:  # its own partial checkpoint (a retry): nothing came from elsewhere
        return
    retry(client.set_tag, run_id, PREFIX_FROM_TAG, source_id)
    retry(client.set_tag, run_id, PREFIX_EPOCHS_TAG, str(epochs))
    if copied:
        saved = sum(h.get("epoch_time_s", 0.0) + h.get("eval_time_s", 0.0) for h in copied)
        log_metrics(client, run_id, {PREFIX_SAVED_METRIC: saved}, step=attempt)


def tag_prefix(client: MlflowClient, run_id: str, key: str, checkpoint: Path) -> None:
    """Mark run ``run_id`` as the one that published prefix ``key`` at ``checkpoint``."""
    retry(client.set_tag, run_id, PREFIX_KEY_TAG, key)
    retry(client.set_tag, run_id, PREFIX_CHECKPOINT_TAG, str(checkpoint))


def published_prefixes(client: MlflowClient, keys: set[str], accept: Callable[[dict[str, str]], bool] | None = None
                       ) -> dict[str, str]:
    """Prefix key -> checkpoint path, for each of ``keys`` that a run of the store's ``tood-ablate/``
    experiments published and whose file is still there (the newest when several did); with
    ``accept``, only runs whose tags it accepts."""
    if not keys:
        return {}
    exps = [e.experiment_id for e in retry(client.search_experiments, filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")]
    found: dict[str, str] = {}
    token = None
    while exps:
        page = retry(client.search_runs, exps, f"tags.`{PREFIX_KEY_TAG}` LIKE '%'", max_results=1000, page_token=token,
                     order_by=["attributes.start_time DESC"])
        for run in page:
            key, path = run.data.tags.get(PREFIX_KEY_TAG), run.data.tags.get(PREFIX_CHECKPOINT_TAG, "")
            if key in keys and key not in found and path and Path(path).is_file() and (accept is None or accept(run.data.tags)):
                found[key] = path
        token = page.token
        if not token:
            break
    return found
