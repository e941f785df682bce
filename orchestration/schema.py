"""The MLflow schema of a launch, shared by the writer (``orchestration``) and the reader
(``reports``): experiment names, tag names and the default store. See docs/contracts.md.

One experiment per study (``tood-ablate/<study>``), one parent run per launch of the study
and one nested child run per trial (tag ``tood.role`` = parent / trial).
"""
from __future__ import annotations

import os
from pathlib import Path

EXPERIMENT_PREFIX = "tood-ablate/"

ROLE_TAG, STUDY_TAG, TABLE_TAG, PROFILE_TAG = "tood.role", "tood.study", "tood.table", "tood.profile"
ROW_TAG, ROW_INDEX_TAG, SEED_TAG, COMMIT_TAG = "tood.row", "tood.row_index", "tood.seed", "tood.git_commit"
ERROR_TAG, ATTEMPTS_TAG = "tood.error", "tood.attempts"
LAUNCH_TAG = "tood.launch"  # the launch's name, on its parent and child runs: the UI filters a launch's trials by it
KEY_TAG, REUSED_TAG = "tood.trial_key", "tood.reused_from"  # see orchestration.suite
FACTOR_TAG, PAPER_TAG = "tood.factor.", "tood.paper."  # prefixes: one tag per grid factor / paper value
HOST_TAG = "tood.host"  # JSON of orchestration.host.Machine, where the trial ran
CPUS_TAG, GPUS_TAG = "tood.cpus_per_trial", "tood.gpus_per_trial"
# The code that produced a run's numbers (orchestration.provenance): on a parent the launch's,
# on a trained child the training process's, on a reused child its source's.
CODE_COMMIT_TAG, DIRTY_TAG = "tood.code_commit", "tood.git_dirty"
CODE_HASH_TAG, CODE_FILES_TAG = "tood.code_hash", "tood.code_files"  # hash of tood/'s training sources; JSON per file
CODE_TAGS = (CODE_COMMIT_TAG, DIRTY_TAG, CODE_HASH_TAG, CODE_FILES_TAG)
# An --until-decided launch's sequential design, on its parent runs: the looks (comma-separated seed
# counts) and the one-sided alpha per claim over them; reports test its claims at them (reports.claim_tests).
LOOKS_TAG, ALPHA_TAG = "tood.looks", "tood.alpha"
WAITED_TAG = "tood.waited_for"  # a trial that waited for another launch's training of its key (orchestration.lease)
LEASE_EXPERIMENT_PREFIX = "tood-ablate.lease/"  # outside EXPERIMENT_PREFIX: no study, never read by reports


def experiment_name(study: str) -> str:
    return EXPERIMENT_PREFIX + study


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else an embedded sqlite store ``<cwd>/mlruns.db`` (absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlruns.db').resolve()}"
