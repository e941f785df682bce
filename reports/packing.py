"""How well a launch packed its trials onto the machine: wall time against the ideal.

From the launch record (``<storage>/<name>/tood_launch.json``) and its MLflow runs: the
launch's wall time (first trial start to last trial end), each trained trial's wall time
(``attempt_wall_s``, every attempt), the concurrent slots (the machine's CPUs over
``--cpus-per-trial``, or ``slots``) and the ideal = sum(trial times) / slots.
"""
from __future__ import annotations

import os

from mlflow.tracking import MlflowClient

from orchestration.record import load_launch
from orchestration.schema import REUSED_TAG
from orchestration.tracking import child_runs


def packing(name: str, storage: str | None, slots: int | None = None) -> dict:
    """Wall time, summed trial time, slots and wall / ideal of launch ``name``."""
    info = load_launch(name, storage)
    client = MlflowClient(info["tracking_uri"])
    trained, starts, ends = [], [], []
    for study in info.get("studies") or [{"parent_run_id": info["parent_run_id"]}]:
        for run in child_runs(client, study["parent_run_id"]):
            if REUSED_TAG in run.data.tags or run.info.status != "FINISHED":
                continue
            attempts = client.get_metric_history(run.info.run_id, "attempt_wall_s")
            trained.append(sum(m.value for m in attempts))
            starts.append(run.info.start_time / 1000)
            ends.append(run.info.end_time / 1000)
    cpus = info["options"]["cpus_per_trial"]
    if slots is None:
        slots = max(1, int(len(os.sched_getaffinity(0)) // cpus)) if cpus else 1
    wall = max(ends) - min(starts) if trained else 0.0
    ideal = sum(trained) / slots if trained else 0.0
    return {"launch": name, "trials_trained": len(trained), "slots": slots, "wall_s": round(wall, 1),
            "sum_trial_s": round(sum(trained), 1), "ideal_s": round(ideal, 1),
            "wall_over_ideal": round(wall / ideal, 3) if ideal else None, "trainings": info.get("trainings")}
