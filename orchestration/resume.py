"""Continue and inspect a launch: ``tood-ablate resume`` and ``tood-ablate status``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestration.launch import LaunchOptions
from orchestration.payload import TrialPayload
from orchestration.record import (TRIALS_FILE, LaunchResult, finish_launch, fit_launch, launch_parents, launch_studies,
                                  load_launch)
from orchestration.tuner import ray_runtime, restore_tuner, set_log_level


def resume_launch(name: str, storage_path: str | None = None, address: str | None = None, quiet: bool | None = None) -> LaunchResult:
    """Finish an interrupted launch: unfinished and errored trials continue from their last
    checkpoint in their own MLflow runs; finished trials are not re-run."""
    from mlflow.tracking import MlflowClient

    from orchestration import ray_address, uris
    from orchestration.tracking import reopen_parent

    info = load_launch(name, storage_path)
    info["tracking_uri"] = uris.check_tracking_uri(info["tracking_uri"], f"launch '{name}': tracking URI")
    opts = LaunchOptions(**info["options"])
    ray_env = ray_address.check_ray_address(address or opts.address)
    if quiet is not None:
        opts.quiet = info["options"]["quiet"] = quiet
    path = Path(info["path"])
    set_log_level(opts.quiet)
    client = MlflowClient(info["tracking_uri"])
    for parent in launch_parents(info):
        reopen_parent(client, parent)
    trials = [TrialPayload.of(t) for t in json.loads((path / TRIALS_FILE).read_text())]
    if not opts.rerun:
        reused = reuse_finished_elsewhere(client, trials, fresh_only=opts.rerun_stale)
        if reused and not opts.quiet:
            print(f"tood-ablate: {name}: {reused} trial(s) not started yet were finished meanwhile by another launch "
                  "of the store; their results are reused (--rerun at launch trains them again)", file=sys.stderr)
    if not trials:
        return finish_launch(client, info, {})
    with ray_runtime(address or opts.address, opts.quiet, ray_env):
        return fit_launch(lambda: restore_tuner(path, trials, opts, name), client, info)


def reuse_finished_elsewhere(client, trials: list[TrialPayload], fresh_only: bool = False) -> int:
    """Fill the runs of each trial of an interrupted launch that has not started (no attempt)
    from a run of the same key that another launch of the store finished since, as a new
    launch would (``fresh_only``: not one trained by other code, as with ``--rerun-stale``); the
    trial then reports that result and trains nothing. A trial that started keeps its own run
    and continues from its checkpoint: its history is its own. Returns the number of trials filled."""
    from orchestration.mlflow_store import retry
    from orchestration.reuse import copy_result, finished_by_key
    from orchestration.schema import ATTEMPTS_TAG

    unstarted = {}
    for t in trials:
        run = retry(client.get_run, t.run_id)
        if run.info.status != "FINISHED" and run.data.tags.get(ATTEMPTS_TAG, "0") == "0":
            unstarted[t.key] = t
    from orchestration.provenance import stale_keys

    filled = 0
    finished = finished_by_key(client, set(unstarted))
    for key in stale_keys(finished) if fresh_only else ():
        finished.pop(key)
    for key, source in finished.items():
        for rid in unstarted[key].run_ids:
            copy_result(client, source.info.run_id, rid)
        filled += 1
    return filled


def launch_status(name: str, storage_path: str | None = None) -> tuple[dict, list[dict]]:
    """The launch record and one dict per trial run: status, name, attempts, epoch, AP, error,
    reused_from, stale (why the result may not be what the launch's code gives: a result reused
    across a code change, :func:`orchestration.provenance.staleness`; '' when none)."""
    from mlflow.tracking import MlflowClient

    from orchestration import uris
    from orchestration.provenance import CodeFingerprint, staleness
    from orchestration.schema import ATTEMPTS_TAG, ERROR_TAG, REUSED_TAG
    from orchestration.tracking import child_runs
    from orchestration.trial_run import logged_steps

    info = load_launch(name, storage_path)
    info["tracking_uri"] = uris.check_tracking_uri(info["tracking_uri"], f"launch '{name}': tracking URI")
    client = MlflowClient(info["tracking_uri"])
    parents = {p: client.get_run(p) for p in launch_parents(info)}
    statuses = [run.info.status for run in parents.values()]
    info["parent_status"] = statuses[0] if len(set(statuses)) == 1 else ", ".join(statuses)
    rows = []
    for study in launch_studies(info):
        launch_code = CodeFingerprint.from_tags(parents[study["parent_run_id"]].data.tags)
        for run in sorted(child_runs(client, study["parent_run_id"]), key=lambda r: r.info.run_name):
            metrics, tags = run.data.metrics, run.data.tags
            rows.append({"status": run.info.status, "study": study["study"], "name": run.info.run_name,
                         "attempts": tags.get(ATTEMPTS_TAG, "0"), "epoch": max(logged_steps(client, run.info.run_id), default=None),
                         "AP": metrics.get("AP", metrics.get("epoch_AP")), "error": tags.get(ERROR_TAG, ""),
                         "reused_from": tags.get(REUSED_TAG, ""), "stale": staleness(tags, launch_code) or ""})
    return info, rows
