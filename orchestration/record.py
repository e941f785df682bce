"""A launch's record and its end: the files in ``<storage>/<name>/`` that ``resume``, ``status`` and the
reports read (``tood_launch.json``: MLflow URI, parent runs, options; ``tood_trials.json``: the trial
payloads), running its Tuner, and reconciling its MLflow runs when the Tuner returns or fails.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestration.folders import storage_root
from orchestration.payload import TrialPayload
from tood.config import ConfigError

LAUNCH_FILE, TRIALS_FILE = "tood_launch.json", "tood_trials.json"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes in Ray's error texts


@dataclass
class LaunchResult:
    name: str
    path: Path  # <storage>/<name>
    study: str
    parent_run_id: str
    tracking_uri: str
    counts: dict[str, int]  # child runs by MLflow status

    @property
    def ok(self) -> bool:
        return set(self.counts) == {"FINISHED"}


def load_launch(name: str, storage_path: str | None = None) -> dict:
    path = storage_root(storage_path) / name
    if not (path / LAUNCH_FILE).is_file():
        raise ConfigError(f"{path / LAUNCH_FILE}: no launch named '{name}' (expected one of the folders of {path.parent})")
    return json.loads((path / LAUNCH_FILE).read_text())


def fit_launch(build: Callable[[], Any], client, info: dict) -> LaunchResult:
    """Run the Tuner, then reconcile the MLflow runs (also when Tune itself fails)."""
    from orchestration.progress import MODE_ENV
    from orchestration.tracking import reconcile

    before = os.environ.get(MODE_ENV)
    os.environ[MODE_ENV] = "off" if info["options"]["quiet"] else before or "auto"
    try:
        results = build().fit()
    except Exception:
        for parent in launch_parents(info):
            reconcile(client, parent, {})
        raise
    finally:
        os.environ.pop(MODE_ENV) if before is None else os.environ.__setitem__(MODE_ENV, before)
    errors = {}
    for r in results:
        if r.error is not None:
            for rid in TrialPayload.of(r.config["trial"]).run_ids:
                errors[rid] = ANSI.sub("", f"{type(r.error).__name__}: {r.error}")
    return finish_launch(client, info, errors)


def launch_studies(info: dict) -> list[dict]:
    """The studies of a launch record (``study``, ``parent_run_id``, ...); a record written
    before suite launches has one, at its top level."""
    return info.get("studies") or [{"study": info["study"], "parent_run_id": info["parent_run_id"]}]


def launch_parents(info: dict) -> list[str]:
    return [s["parent_run_id"] for s in launch_studies(info)]


def finish_launch(client, info: dict, errors: dict[str, str]) -> LaunchResult:
    """Reconcile every study's runs; the counts are summed over the studies. First, the child
    runs that read another study's trial get its result if it finished (a trial process
    normally copies it; this covers a driver killed in between)."""
    from orchestration.mlflow_store import retry
    from orchestration.reuse import copy_result
    from orchestration.tracking import reconcile

    trials_file = Path(info["path"]) / TRIALS_FILE
    for trial in map(TrialPayload.of, json.loads(trials_file.read_text()) if trials_file.exists() else []):
        if trial.alias_run_ids and retry(client.get_run, trial.run_id).info.status == "FINISHED":
            for alias in trial.alias_run_ids:
                copy_result(client, trial.run_id, alias)
    counts: dict[str, int] = {}
    for parent in launch_parents(info):
        for status, n in reconcile(client, parent, errors).items():
            counts[status] = counts.get(status, 0) + n
    result = LaunchResult(info["name"], Path(info["path"]), info["study"], info["parent_run_id"], info["tracking_uri"], counts)
    if not info["options"]["quiet"]:
        print(f"tood-ablate: {info['name']}: trials by status {counts}", file=sys.stderr)
        if counts.get("KILLED"):
            print(f"tood-ablate: interrupted; continue with: tood-ablate resume {info['name']}"
                  f" --storage-path {Path(info['path']).parent}", file=sys.stderr)
    return result
