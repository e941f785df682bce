"""What the MLflow store records of shared training prefixes (``orchestration.prefix``): the run
that published a prefix checkpoint, the runs that branched from one (with the epochs copied in
and the training time they saved), and the lookup of published prefixes a launch can start from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from mlflow.tracking import MlflowClient

from orchestration.mlflow_store import retry
from orchestration.schema import EXPERIMENT_PREFIX
from orchestration.trial_run import log_metrics, logged_steps

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
