"""Shared prefixes at run time: trials whose first epochs are the same (one prefix key,
``orchestration.suite.prefix_key``) train them once; the others branch from its checkpoint.

The driver (:func:`plan_sharing`) puts ``prefix`` = {key, epochs, dir, found} on the payload of every
trial of a shared prefix. A trial of the launch then (:meth:`Sharing.acquire`, before training):

* branches from the published checkpoint when it exists: its weights, optimizer, scaler, RNG
  state, epoch counter and history (the epoch metrics are copied into the trial's MLflow run at
  their own steps, tagged ``tood.prefix_from`` / ``tood.prefix_epochs``);
* else takes the lease and trains the prefix itself (from the latest partial checkpoint when a
  producer before it died), publishing it at the branch epoch;
* else waits: another trial holds a live lease. A producer that fails releases its lease; one
  that is killed stops renewing it, and it is free after :data:`LEASE_TTL_S`.

Every trial of a group is the same to this logic: which one produces is whoever takes the lease
first (the schedule starts the designated producer first); a retried producer that finds a
live lease of another trial waits for it and branches. No epoch of a prefix is trained twice
when its producer fails, and a trial waits only while the lease is renewed (at most
:data:`LEASE_TTL_S` after its holder died): it never waits for a trial that is not training.
Data-parallel trials share no prefix (the driver gives them none).

Files in ``dir`` (``<launch storage>/prefixes``: shared storage on a cluster, as for data-parallel
trials): ``<key>.pt`` the published prefix (kept, so that later launches of the store reuse it
through the ``tood.prefix_checkpoint`` tag of the run that published it), ``<key>.partial.pt`` the
producer's latest epoch inside the prefix, ``<key>.lease`` (run id and heartbeat time) and
``<key>.lock`` (flock serialising the lease).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration import prefix_tags, trial_run
from orchestration.payload import TrialPayload
from tood.cache import exclusive

LEASE_TTL_S = 60.0  # a lease not renewed for this long is free (its holder died)
LEASE_BEAT_S = 5.0  # how often the holder renews it
POLL_S = 2.0  # how often a waiting trial looks again


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f"{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _epoch_of(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


@dataclass
class Sharing:
    """One trial's side of a shared prefix (see the module docstring)."""

    key: str
    epochs: int  # the branch epoch
    dir: Path
    found: Path | None  # published by an earlier launch
    run_id: str
    client: Any  # MlflowClient
    producing: bool = False
    _beat: threading.Event | None = None

    @classmethod
    def of(cls, trial: TrialPayload, client: Any) -> Sharing | None:
        spec = trial.prefix
        if not spec:
            return None
        return cls(spec["key"], int(spec["epochs"]), Path(spec["dir"]), Path(spec["found"]) if spec.get("found") else None,
                   trial.run_id, client)

    @property
    def published(self) -> Path:
        return self.found if self.found is not None and self.found.exists() else self.dir / f"{self.key}.pt"

    @property
    def partial(self) -> Path:
        return self.dir / f"{self.key}.partial.pt"

    def acquire(self, attempt: int, own_epoch: int) -> Path | None:
        """Block until the trial can train; returns the checkpoint to resume from when it is
        ahead of the trial's own (``own_epoch``), after copying its epoch metrics into the run."""
        if own_epoch >= self.epochs:
            return None  # the trial's own checkpoint is past the prefix
        t0, waited = time.monotonic(), False
        while True:
            if self.published.exists():
                start = self.published
                break
            if self._take():
                self.producing = True
                start = self.partial if self.partial.exists() and _epoch_of(self.partial) > own_epoch else None
                break
            waited = True
            time.sleep(POLL_S)
        if waited:
            trial_run.log_metrics(self.client, self.run_id, {"prefix_wait_s": time.monotonic() - t0}, step=attempt)
        if start is not None:
            self._branch(start, attempt)
        return start

    def _branch(self, checkpoint: Path, attempt: int) -> None:
        import torch

        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        source = (state.get("extra") or {}).get("mlflow_run_id", "")
        prefix_tags.copy_prefix(self.client, self.run_id, state["history"], source, int(state["epoch"]), attempt)

    # ---------------------------------------------------------------- the producer's side

    def after_epoch(self, epoch: int, checkpoint: Path) -> None:
        """The producer's epoch end, before Tune has the epoch: keep the partial checkpoint, or
        publish the prefix (and tag the run) at the branch epoch."""
        if not self.producing or epoch > self.epochs:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if epoch < self.epochs:
            _atomic_copy(checkpoint, self.partial)
            return
        target = self.dir / f"{self.key}.pt"
        _atomic_copy(checkpoint, target)
        prefix_tags.tag_prefix(self.client, self.run_id, self.key, target)
        self.partial.unlink(missing_ok=True)
        self.release()

    def _lease(self) -> Path:
        return self.dir / f"{self.key}.lease"

    def _take(self) -> bool:
        """Take the lease if it is free, stale or already this run's; start renewing it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with exclusive(self.dir / f"{self.key}.lock"):
            holder = self._holder()
            if holder and holder["run_id"] != self.run_id and time.time() - holder["beat"] < LEASE_TTL_S:
                return False
            self._write_lease()
        self._beat = threading.Event()
        threading.Thread(target=self._renew, args=(self._beat,), daemon=True).start()
        return True

    def _holder(self) -> dict | None:
        try:
            return json.loads(self._lease().read_text())
        except (OSError, ValueError):
            return None

    def _write_lease(self) -> None:
        tmp = self._lease().with_name(f"{self._lease().name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"run_id": self.run_id, "beat": time.time()}))
        os.replace(tmp, self._lease())

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(LEASE_BEAT_S):
            with exclusive(self.dir / f"{self.key}.lock"):
                holder = self._holder()
                if holder is None or holder["run_id"] != self.run_id:
                    return  # taken over after this process stalled: the other one publishes too
                self._write_lease()

    def release(self) -> None:
        """Stop renewing and free the lease (a producer that ends or fails)."""
        if self._beat is None:
            return
        self._beat.set()
        self._beat = None
        self.producing = False
        with exclusive(self.dir / f"{self.key}.lock"):
            holder = self._holder()
            if holder and holder["run_id"] == self.run_id:
                self._lease().unlink(missing_ok=True)


def plan_sharing(client: Any, trials: list, specs_per_study: list[list[Any]], share: bool, rerun: bool,
                 rerun_stale: bool = False) -> dict:
    """The shared prefixes of ``trials`` (to train, schedule order): ``share_prefixes`` with the
    checkpoints that earlier launches of the store published (not with ``rerun``; with
    ``rerun_stale`` only those published by this checkout's code); {} without ``share``.
    ``client``: None when the store does not exist yet."""
    from orchestration.provenance import code_fingerprint, staleness
    from orchestration.suite import share_prefixes

    wanted = {t.prefix for t in trials if t.prefix}
    fresh = (lambda tags: not staleness(tags, code_fingerprint())) if rerun_stale else None
    found = {} if rerun or client is None or not share else prefix_tags.published_prefixes(client, wanted, fresh)
    return share_prefixes(trials, specs_per_study, found, share)


def trial_prefix(trial: Any, groups: dict, storage: Path) -> dict[str, Any] | None:
    """The payload's ``prefix`` of a :class:`orchestration.suite.UniqueTrial` (None: shares nothing)."""
    group = groups.get(trial.prefix)
    if group is None:
        return None
    return {"key": group.key, "epochs": group.epochs, "dir": str(storage / "prefixes"), "found": group.found}


def prefix_counts(groups: dict) -> dict[str, int]:
    """The launch record's counts of shared prefixes (``tood_launch.json`` trainings)."""
    return {"shared_prefixes": len(groups), "branches": sum(g.branches for g in groups.values()),
            "saved_trial_epochs": sum(g.saved_epochs for g in groups.values())}
