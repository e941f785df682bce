"""The Ray Tune trainable: one trial = one ``tood.engine.train`` run tracked in MLflow.

Each epoch's checkpoint goes to Tune with ``tune.report``; a retried trial restores
it with ``tune.get_checkpoint`` and continues in the same MLflow run (its id is part
of the trial's config, created by the driver).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray import tune

from orchestration.tracking import log_final, log_metrics
from tood.config import build_config

FAIL_ONCE_ENV = "TOOD_FAIL_ONCE_AT_EPOCH"  # fault injection for tests: fail once after this epoch


class InjectedFault(RuntimeError):
    pass


def _maybe_inject_fault(epoch: int, marker_dir: Path) -> None:
    at = os.environ.get(FAIL_ONCE_ENV)
    marker = marker_dir / "injected_fault"
    if at and int(at) == epoch and not marker.exists():
        marker.write_text(str(epoch))
        raise InjectedFault(f"injected fault after epoch {epoch} ({FAIL_ONCE_ENV})")


def run_trial(config: dict[str, Any]) -> None:
    trial = config["trial"]
    cfg = build_config(trial["config"], f"trial {trial['name']}")
    client = MlflowClient(trial["tracking_uri"])
    run_id = trial["run_id"]
    work = Path(tempfile.mkdtemp(prefix="tood-trial-"))
    marker_dir = Path(trial["storage"]) / "faults" / run_id
    marker_dir.mkdir(parents=True, exist_ok=True)
    resume: bool | Path = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            shutil.copy(Path(d) / "last.pt", work / "last.pt")
        resume = work / "last.pt"
        client.set_tag(run_id, "tood.resumed_from_epoch", "checkpoint")
    client.update_run(run_id, status="RUNNING")

    def on_epoch_end(end) -> None:
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(end.checkpoint, Path(d) / "last.pt")
            report = {k: float(v) for k, v in end.metrics.items()}
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))
        _maybe_inject_fault(end.epoch, marker_dir)

    try:
        from tood.engine import train

        result = train(cfg, work, resume=resume, log=lambda m, step: log_metrics(client, run_id, m, step), on_epoch_end=on_epoch_end, progress=False)
        final = {k: float(v) for k, v in result.metrics.items()}
        log_final(client, run_id, trial["config"], final)
        client.set_terminated(run_id, "FINISHED")
    except Exception as e:
        client.set_tag(run_id, "tood.error", f"{type(e).__name__}: {e}"[:5000])
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
