"""A trial's child run over its life: each start counted as an attempt, its per-epoch metrics,
and its end, FINISHED with its artifacts or tagged with the error that stopped it.

The run already exists (created by the driver, ``orchestration.tracking``); every write here
is idempotent under :func:`orchestration.mlflow_store.retry`, so a retried or resumed trial
continues the same run without duplicating what it logged.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestration.masking import mask_nested
from orchestration.mlflow_store import log_yaml, retry
from orchestration.schema import ATTEMPTS_TAG, ERROR_TAG


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
    log_yaml(client, run_id, "config.yaml", mask_nested(config))
    log_yaml(client, run_id, "metrics.json", metrics)
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
