"""Compute accounting of a study: wall time and CPU / GPU hours per row and in total, failed and
retried attempts included, reused trials counted once (at their source) and marked.

A trial logs ``attempt_wall_s`` once per attempt (step = attempt number, failed attempts too)
and tags ``tood.cpus_per_trial`` / ``tood.gpus_per_trial`` (the resources it held). CPU hours =
wall seconds x CPUs / 3600, GPU hours likewise. A child run tagged ``tood.reused_from`` holds
copies of another run's metrics: it trained nothing here and counts zero. Stores older than
these tags give "not recorded" rather than a guess.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd
from mlflow.tracking import MlflowClient

from orchestration.host import Machine
from reports.cells import NO_VALUE
from reports.tables import RowSummary, Table

WALL_METRIC = "attempt_wall_s"


@dataclass(frozen=True)
class TrialCompute:
    """One child run. wall_s: seconds over all its attempts (NaN: not recorded, 0 when reused);
    cpus / gpus: held per attempt (NaN: not recorded)."""

    run_id: str
    row: str
    seed: int
    status: str
    attempts: int
    failed_attempts: int
    wall_s: float
    cpus: float
    gpus: float
    reused_from: str

    @property
    def cpu_h(self) -> float:
        return 0.0 if self.wall_s == 0 else self.wall_s * self.cpus / 3600

    @property
    def gpu_h(self) -> float:
        return 0.0 if self.wall_s == 0 else self.wall_s * self.gpus / 3600


def _float(text: object) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def trial_compute(client: MlflowClient, trials: pd.DataFrame) -> list[TrialCompute]:
    """One TrialCompute per trial (any status) of a StudyData.trials frame."""
    records = []
    for t in trials.itertuples():
        reused = str(getattr(t, "reused_from", "") or "")
        tagged = _float(getattr(t, "attempts", ""))
        if reused:
            records.append(TrialCompute(t.run_id, t.row, t.seed, t.status, 0, 0, 0.0, math.nan, math.nan, reused))
            continue
        per_attempt = {m.step: m.value for m in client.get_metric_history(t.run_id, WALL_METRIC)}
        attempts = max(0 if math.isnan(tagged) else int(tagged), len(per_attempt))
        wall = sum(per_attempt.values()) if per_attempt else math.nan
        failed = attempts - 1 if t.status in ("FINISHED", "RUNNING") and attempts else attempts
        records.append(TrialCompute(t.run_id, t.row, t.seed, t.status, attempts, failed, wall,
                                    _float(getattr(t, "cpus_per_trial", "")), _float(getattr(t, "gpus_per_trial", "")),
                                    ""))
    return records


def _sum(values: list[float]) -> float:
    """Sum of the recorded values; NaN when none is recorded."""
    known = [v for v in values if not math.isnan(v)]
    return sum(known) if known else math.nan


def _cells(records: list[TrialCompute]) -> list[str]:
    def fmt(value: float, digits: int) -> str:
        return "not recorded" if math.isnan(value) else f"{value:,.{digits}f}"

    trained = [r for r in records if not r.reused_from]
    reused = [f"seed {r.seed} reused from {r.reused_from}" for r in records if r.reused_from]
    incomplete = any(math.isnan(r.wall_s) or math.isnan(r.cpu_h) for r in trained)
    return [str(len(records)), str(sum(r.attempts for r in trained)), str(sum(r.failed_attempts for r in trained)),
            fmt(_sum([r.wall_s for r in trained]), 0), fmt(_sum([r.cpu_h for r in trained]), 3),
            fmt(_sum([r.gpu_h for r in trained]), 3), "; ".join(reused) or NO_VALUE,
            "yes" if incomplete and trained else ""]


COMPUTE_HEADER = ["Row", "trials", "attempts", "failed attempts", "wall time (s)", "CPU h", "GPU h", "reused",
                  "partly unrecorded"]


def recorded_machine(trials: pd.DataFrame) -> Machine | None:
    """The machine the trials recorded (tag ``tood.host``, JSON of :class:`Machine`'s fields, written
    by each trial where it ran); None when no trial recorded one or they disagree."""
    hosts = {h for h in (trials["host"] if "host" in trials else []) if h}
    if len(hosts) != 1:
        return None
    try:
        return Machine(**json.loads(hosts.pop()))
    except (TypeError, ValueError):
        return None


def machine_note(m: Machine) -> str:
    where = "recorded by the trials" if m.recorded else "where this report ran; the trials recorded none, or several"
    return (f"Machine ({where}): {m.cpu}, {m.cores} logical cores, "
            f"GPU {m.gpu}; torch {m.torch}, ray {m.ray}, mlflow {m.mlflow}.")


def compute_table(key: str, caption: str, rows: list[RowSummary], records: list[TrialCompute], m: Machine) -> Table:
    """Per grid row and in total: trials, attempts, failed attempts, wall time, CPU h, GPU h."""
    body = [[r.label] + _cells([c for c in records if c.row == r.label]) for r in rows]
    body.append(["Total"] + _cells(records))
    notes = ["wall time: the sum over every attempt of every trial (failed and retried attempts included); "
             "CPU h / GPU h: wall time x the CPUs / GPUs the trial held, in hours. A reused trial (tag "
             "tood.reused_from) counts zero here: its source run counted it where it trained.",
             "partly unrecorded: some trial of the row has no attempt_wall_s metric or no "
             "tood.cpus_per_trial / tood.gpus_per_trial tag (a store older than them); the sums cover "
             "the recorded trials only.", machine_note(m)]
    return Table(key, caption, COMPUTE_HEADER, body, notes)


def summary_compute_table(per_study: dict[str, list[TrialCompute]], m: Machine) -> Table:
    """One line per study and the total over all of them (each training counted once)."""
    body = [[study] + _cells(records) for study, records in per_study.items()]
    body.append(["Total"] + _cells([r for records in per_study.values() for r in records]))
    return Table("summary_compute", "Compute of all studies", ["Study"] + COMPUTE_HEADER[1:], body,
                 ["Per study as in each study's compute table; reused trials count zero where they were "
                  "copied, so a training shared by several studies is counted once.", machine_note(m)])
