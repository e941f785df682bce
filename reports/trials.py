"""The trials frame of a launch: one row per trial run, its tags as columns and its metrics' last
values, and the ``stale`` column naming results reused across a code change.
"""

from __future__ import annotations

import pandas as pd
from mlflow.entities import Run

from orchestration.provenance import CodeFingerprint, staleness
from orchestration.schema import (
    ATTEMPTS_TAG,
    CODE_COMMIT_TAG,
    CODE_HASH_TAG,
    COMMIT_TAG,
    CPUS_TAG,
    ERROR_TAG,
    FACTOR_TAG,
    GPUS_TAG,
    HOST_TAG,
    KEY_TAG,
    PAPER_TAG,
    REUSED_TAG,
    ROW_INDEX_TAG,
    ROW_TAG,
    SEED_TAG,
)
from reports.grid_rows import parse_number

FINAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "PCC", "top10_iou",
                 "n_correct", "n_redundant", "n_error")
EPOCH_METRICS = ("loss_total", "loss_cls", "loss_box", "lr", "epoch_AP")
# Trial columns that are not metrics (nor factor.* / paper.* columns).
BASE_COLUMNS = ("run_id", "run_name", "status", "row", "row_index", "seed", "error", "git_commit",
                "start_time", "attempts", "reused_from", "trial_key", "cpus_per_trial", "gpus_per_trial", "host",
                "code_commit", "code_hash", "stale")
# Tags read into the columns of the same name ('' when absent: stores older than the tag).
TAG_COLUMNS = {"attempts": ATTEMPTS_TAG, "reused_from": REUSED_TAG, "trial_key": KEY_TAG, "cpus_per_trial": CPUS_TAG,
               "gpus_per_trial": GPUS_TAG, "host": HOST_TAG, "code_commit": CODE_COMMIT_TAG, "code_hash": CODE_HASH_TAG}


def _trial_record(run: Run) -> dict:
    tags, info = run.data.tags, run.info
    record = {
        "run_id": info.run_id, "run_name": info.run_name, "status": info.status,
        "row": tags.get(ROW_TAG, info.run_name),
        "row_index": int(tags.get(ROW_INDEX_TAG, -1)),
        "seed": int(tags[SEED_TAG]) if SEED_TAG in tags else -1,
        "error": tags.get(ERROR_TAG, ""), "git_commit": tags.get(COMMIT_TAG, ""),
        "start_time": info.start_time,
        **{column: tags.get(tag, "") for column, tag in TAG_COLUMNS.items()},
    }
    for key, value in tags.items():
        if key.startswith(FACTOR_TAG):
            record["factor." + key[len(FACTOR_TAG):]] = value
        elif key.startswith(PAPER_TAG):
            record["paper." + key[len(PAPER_TAG):]] = parse_number(value, f"run {info.run_id}: tag {key}")
    record.update(run.data.metrics)
    return record


def trials_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per trial run, ordered by (row_index, seed); columns as in reports.collect.StudyData."""
    frame = pd.DataFrame([_trial_record(r) for r in runs])
    if frame.empty:
        return pd.DataFrame(columns=list(BASE_COLUMNS))
    return frame.sort_values(["row_index", "seed"], kind="stable").reset_index(drop=True)


def metric_columns(trials: pd.DataFrame) -> list[str]:
    """The metric columns of a trials frame: FINAL_METRICS first, then the others by name."""
    other = {c for c in trials.columns if c not in BASE_COLUMNS
             and not c.startswith(("factor.", "paper."))}
    return [m for m in FINAL_METRICS if m in other] + sorted(other - set(FINAL_METRICS))


def stale_column(runs: list[Run], trials: pd.DataFrame, parent_tags: dict[str, str]) -> list[str]:
    """Per row of ``trials``: why its result may not be what the launch's code gives (a result reused
    across a code change: :func:`orchestration.provenance.staleness` against the parent's code), ''
    when nothing is known against it."""
    launch = CodeFingerprint.from_tags(parent_tags)
    why = {r.info.run_id: staleness(r.data.tags, launch) or "" for r in runs}
    return [why.get(run_id, "") for run_id in trials["run_id"]]


def stale_notes(trials: pd.DataFrame) -> list[str]:
    """The report's note naming the results reused across a code change (column ``stale``); [] if none."""
    if "stale" not in trials:
        return []
    stale = trials[trials["stale"].astype(bool)]
    if stale.empty:
        return []
    which = "; ".join(f"{t.row} seed {t.seed}: {t.stale}" for t in stale.itertuples())
    return [f"Reused across a code change ({len(stale)} of {len(trials)} trials; their numbers come from other code "
            f"than this launch's, `tood-ablate run <grid> --rerun-stale` retrains them): {which}."]
