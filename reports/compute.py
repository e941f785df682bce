"""Compute accounting of a study: wall time and CPU / GPU hours per row and in total, failed and
retried attempts included, reused trials counted once (at their source) and counted per row.

A trial logs ``attempt_wall_s`` once per attempt (step = attempt number, failed attempts too)
and tags ``tood.cpus_per_trial`` / ``tood.gpus_per_trial`` (the resources it held). CPU hours =
wall seconds x CPUs / 3600, GPU hours likewise. A child run tagged ``tood.reused_from`` holds
copies of another run's metrics: it trained nothing here and counts zero, except in a launch
whose trials were all reused: there each trial counts the compute of the source run that trained
it (looked up by run id), since that is what the launch's results cost. Stores older than these
tags, or a source run that is not in the store, give "not recorded" rather than a guess.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestration.host import Machine
from orchestration.prefix_tags import PREFIX_EPOCHS_TAG, PREFIX_SAVED_METRIC
from orchestration.schema import ATTEMPTS_TAG, CPUS_TAG, GPUS_TAG
from reports.tables import RowSummary, Table

WALL_METRIC = "attempt_wall_s"


@dataclass(frozen=True)
class TrialCompute:
    """One child run. wall_s: seconds over all its attempts (NaN: not recorded, 0 when reused);
    cpus / gpus: held per attempt (NaN: not recorded). counted_from: the source run whose compute
    this reused trial carries ('' otherwise: a trained trial carries its own, a reused one none)."""

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
    counted_from: str = ""
    prefix_saved_s: float = 0.0  # training time of the epochs it copied from a shared prefix
    eval_s: float = 0.0  # evaluation seconds within wall_s (metric eval_time_s, every evaluated epoch)

    @property
    def carries_compute(self) -> bool:
        return not self.reused_from or bool(self.counted_from)

    @property
    def trained_by(self) -> str:
        """The run that did the training this record counts."""
        return self.counted_from or self.run_id

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


def _measured(client: MlflowClient, run_id: str, status: str, attempts_tag: object, cpus: object,
              gpus: object) -> tuple[int, int, float, float, float]:
    """(attempts, failed attempts, wall s, CPUs, GPUs) of the run that trained."""
    tagged = _float(attempts_tag)
    per_attempt = {m.step: m.value for m in client.get_metric_history(run_id, WALL_METRIC)}
    attempts = max(0 if math.isnan(tagged) else int(tagged), len(per_attempt))
    wall = sum(per_attempt.values()) if per_attempt else math.nan
    failed = attempts - 1 if status in ("FINISHED", "RUNNING") and attempts else attempts
    return attempts, failed, wall, _float(cpus), _float(gpus)


def _source(client: MlflowClient, run_id: str) -> tuple[int, int, float, float, float]:
    """What the source run ``run_id`` of a reused trial measured; all NaN when it is not in the store."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return 0, 0, math.nan, math.nan, math.nan
    tags = run.data.tags
    return _measured(client, run_id, run.info.status, tags.get(ATTEMPTS_TAG), tags.get(CPUS_TAG), tags.get(GPUS_TAG))


def trial_compute(client: MlflowClient, trials: pd.DataFrame, count_sources: bool = False) -> list[TrialCompute]:
    """One TrialCompute per trial (any status) of a StudyData.trials frame; where every trial was
    reused (or with ``count_sources``), each reused one carries its source run's compute."""
    reused_ids = [str(r or "") for r in trials.get("reused_from", [])]
    all_reused = count_sources or (bool(reused_ids) and all(reused_ids))
    records = []
    for t in trials.itertuples():
        reused = str(getattr(t, "reused_from", "") or "")
        if reused and all_reused:
            records.append(TrialCompute(t.run_id, t.row, t.seed, t.status, *_source(client, reused), reused, reused,
                                        _prefix_saved(client, reused), _trained_eval_s(client, reused)))
        elif reused:
            records.append(TrialCompute(t.run_id, t.row, t.seed, t.status, 0, 0, 0.0, math.nan, math.nan, reused))
        else:
            records.append(TrialCompute(t.run_id, t.row, t.seed, t.status, *_measured(
                client, t.run_id, t.status, getattr(t, "attempts", ""), getattr(t, "cpus_per_trial", ""),
                getattr(t, "gpus_per_trial", "")), "", prefix_saved_s=_prefix_saved(client, t.run_id),
                eval_s=_trained_eval_s(client, t.run_id)))
    return records


def _trained_eval_s(client: MlflowClient, run_id: str) -> float:
    """eval_time_s over the epochs a run trained: the epochs a branched run copied from a shared
    prefix (up to its tag tood.prefix_epochs) count where they trained, once."""
    try:
        copied = int(client.get_run(run_id).data.tags.get(PREFIX_EPOCHS_TAG, 0))
        return sum(m.value for m in client.get_metric_history(run_id, EVAL_METRIC) if m.step > copied)
    except MlflowException:
        return 0.0


def _with_eval(header: list[str], body: list[list[str]], groups: list[list[TrialCompute]], notes: list[str]) -> tuple:
    """``header`` and ``body`` with the evaluation seconds per line (each training once), apart from
    the training in the wall time; unchanged when no trial recorded eval_time_s (older stores)."""
    if not any(r.eval_s for records in groups for r in records):
        return header, body, notes
    spent = [sum(r.eval_s for r in {r.trained_by: r for r in g if r.carries_compute}.values()) for g in groups]
    return ([*header, EVAL_COLUMN], [[*line, f"{s:,.0f}"] for line, s in zip(body, spent)],
            [*notes, f"{EVAL_COLUMN}: the part of the wall time spent evaluating (metric eval_time_s of every "
                     "evaluated epoch: inference and COCO AP); the rest is training."])


def _prefix_saved(client: MlflowClient, run_id: str) -> float:
    """Seconds of training a run skipped by branching from a shared prefix (0 when it did not)."""
    try:
        return sum(m.value for m in client.get_metric_history(run_id, PREFIX_SAVED_METRIC))
    except MlflowException:
        return 0.0


def _with_saved(header: list[str], body: list[list[str]], groups: list[list[TrialCompute]], notes: list[str]) -> tuple:
    """``header`` and ``body`` with a column of the seconds shared prefixes saved per line (each
    training once), and a note saying what it counts; unchanged when no trial branched."""
    if not any(r.prefix_saved_s for records in groups for r in records):
        return header, body, notes
    saved = [sum(r.prefix_saved_s for r in {r.trained_by: r for r in g if r.carries_compute}.values()) for g in groups]
    return ([*header, SAVED_COLUMN], [[*line, f"{s:,.0f}"] for line, s in zip(body, saved)],
            [*notes, f"{SAVED_COLUMN}: training time of the epochs that trials copied from a shared prefix (TAL's "
                     "ATSS warm-up, trained once for every row that starts with it) instead of training them; the "
                     "prefix itself is in the wall time of the one run that trained it (tags tood.prefix_from, "
                     "tood.prefix_epochs)."])


def _sum(values: list[float]) -> float:
    """Sum of the recorded values; NaN when none of them is recorded, 0 when there are none (a row
    whose trials were all reused, or that has no trial)."""
    known = [v for v in values if not math.isnan(v)]
    return sum(known) if known or not values else math.nan


def _cells(records: list[TrialCompute]) -> list[str]:
    def fmt(value: float, digits: int) -> str:
        return "not recorded" if math.isnan(value) else f"{value:,.{digits}f}"

    # each training once: two records of the same source (studies that reused one run) count it once
    trained = list({r.trained_by: r for r in records if r.carries_compute}.values())
    incomplete = any(math.isnan(r.wall_s) or math.isnan(r.cpu_h) for r in trained)
    return [str(len(records)), str(sum(r.attempts for r in trained)), str(sum(r.failed_attempts for r in trained)),
            fmt(_sum([r.wall_s for r in trained]), 0), fmt(_sum([r.cpu_h for r in trained]), 3),
            fmt(_sum([r.gpu_h for r in trained]), 3), str(sum(bool(r.reused_from) for r in records)),
            "yes" if incomplete and trained else ""]


SAVED_COLUMN = "saved by shared prefixes (s)"
EVAL_COLUMN, EVAL_METRIC = "of which evaluation (s)", "eval_time_s"
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


def _reuse_notes(records: list[TrialCompute]) -> list[str]:
    """How the reused trials of one study count, and the runs that trained them (each listed once)."""
    reused = [r for r in records if r.reused_from]
    if not reused:
        return []
    if all(r.counted_from for r in records):
        missing = sum(math.isnan(r.wall_s) for r in reused)
        notes = [f"Every trial of this launch was reused from an earlier launch of this store (tag "
                 f"tood.reused_from): the launch trained nothing, so these numbers are the compute of the "
                 f"{len({r.counted_from for r in reused})} source runs that trained them, looked up by run id "
                 f"(their attempt_wall_s, tood.cpus_per_trial and tood.gpus_per_trial)"
                 + (f"; {missing} source runs are not in the store (not recorded)." if missing else ".")]
    else:
        notes = ["A reused trial (tag tood.reused_from) counts zero here: its source run counted it where it "
                 "trained."]
    sources = {}
    for r in reused:
        sources.setdefault(r.reused_from, []).append(f"{r.row} seed {r.seed}")
    return notes + ["Reused (row, seed <- the run that trained it): "
                    + "; ".join(f"{', '.join(where)} <- {source}" for source, where in sources.items()) + "."]


def compute_table(key: str, caption: str, rows: list[RowSummary], records: list[TrialCompute], m: Machine) -> Table:
    """Per grid row and in total: trials, attempts, failed attempts, wall time, CPU h, GPU h, reused."""
    groups = [[c for c in records if c.row == r.label] for r in rows] + [records]
    body = [[r.label] + _cells(g) for r, g in zip(rows, groups)]
    body.append(["Total"] + _cells(records))
    notes = ["wall time: the sum over every attempt of every trial (failed and retried attempts included); "
             "CPU h / GPU h: wall time x the CPUs / GPUs the trial held, in hours; reused: trials copied from a "
             "run of an earlier launch (same trial key)."]
    notes += _reuse_notes(records)
    notes += ["partly unrecorded: some trial of the row has no attempt_wall_s metric or no "
              "tood.cpus_per_trial / tood.gpus_per_trial tag (a store older than them); the sums cover "
              "the recorded trials only.", machine_note(m)]
    header, body, notes = _with_eval(COMPUTE_HEADER, body, groups, notes)
    return Table(key, caption, *_with_saved(header, body, groups, notes))


def summary_compute_table(per_study: dict[str, list[TrialCompute]], m: Machine) -> Table:
    """One line per study and the total over all of them (each training counted once)."""
    groups = [*per_study.values(), [r for records in per_study.values() for r in records]]
    body = [[label] + _cells(records) for label, records in zip([*per_study, "Total"], groups)]
    notes = ["Per study as in each study's compute table (its notes list the source runs of the reused "
             "trials); the total counts each training once, however many studies reused it.", machine_note(m)]
    return Table("summary_compute", "Compute of all studies", *_with_saved(["Study"] + COMPUTE_HEADER[1:], body, groups, notes))
