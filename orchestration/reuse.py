"""Reusing a finished result instead of training again: the run that trained a trial key, found
over every ``tood-ablate/`` experiment of the store, and its metrics copied into another
launch's child run (tagged with where they came from and the code that produced them).
"""
from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient

from orchestration.mlflow_store import retry
from orchestration.schema import CODE_COMMIT_TAG, CODE_TAGS, COMMIT_TAG, EXPERIMENT_PREFIX, HOST_TAG, KEY_TAG, REUSED_TAG


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
    tag it ``tood.reused_from`` = the source (and ``tood.host``: where the source trained), and
    finish it. A target already FINISHED is left alone (resume calls this again). Returns whether
    it copied."""
    if retry(client.get_run, target_id).info.status == "FINISHED":
        return False
    source = retry(client.get_run, source_id)
    history = [m for key in source.data.metrics for m in retry(client.get_metric_history, source_id, key)]
    for i in range(0, len(history), 1000):
        retry(client.log_batch, target_id, metrics=history[i : i + 1000])
    for tag, value in {REUSED_TAG: source_id, "tood.reused_from_experiment": source.info.experiment_id,
                       "tood.reused_from_name": source.info.run_name, **_code_tags_of(source.data.tags),
                       **({HOST_TAG: source.data.tags[HOST_TAG]} if HOST_TAG in source.data.tags else {})}.items():
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
