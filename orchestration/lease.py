"""One training per trial key, whoever launches it: a lease on the key in the tracking store.

Launches that meet on one store (sqlite or an ``mlflow server``) plan their trials apart: each
reuses what was finished when it started and trains the rest. A trial that is about to train
therefore takes the lease of its key first (:func:`claim`); while another live process holds it,
the trial waits (logging whom it waits for, tag ``tood.waited_for``) and, once the holder's run
has finished, copies its result (``orchestration.reuse.copy_result``) instead of training.

**The lease is an MLflow experiment** named ``tood-ablate.lease/<key>/<generation>``. MLflow has no
atomic create-if-absent for runs or tags, but an experiment's name is unique in every store (a
unique constraint in the SQL stores, behind the server too), so ``create_experiment`` is one:
of several processes creating the same generation at once exactly one succeeds, whatever the
clocks say. The holder (launch, host, pid, run id, a random token) and a heartbeat (ms since the
epoch, every :data:`HEARTBEAT_S`) are experiment tags. A lease is free when its latest generation
was released or its holder is dead; the next holder creates the next generation. Released and
taken-over generations are deleted (soft: hidden in the UI, the name stays taken).

**A holder is dead** when its heartbeat is older than :data:`TTL_S` by the waiter's clock, or has
not changed for :data:`TTL_S` of the waiter's own observation (the second holds under any clock
skew between hosts). A killed launch therefore blocks nobody for longer than :data:`TTL_S`, and a
retry or a resume of the *same* run takes its own lease over at once. What remains: a holder
frozen (not killed) for longer than :data:`TTL_S` is taken over and its key may train twice.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestration import mlflow_store, reuse
from orchestration.payload import TrialPayload
from orchestration.provenance import code_fingerprint, staleness
from orchestration.schema import LEASE_EXPERIMENT_PREFIX, WAITED_TAG

HEARTBEAT_S = 10.0
TTL_S = 90.0  # > HEARTBEAT_S + a heartbeat's worst wait on a locked store (mlflow_store.RETRY_BUDGET_S)
POLL_MAX_S = 10.0  # a waiter polls at 1, 2, 4, 8, 10, 10, ... s
WAIT_ENV = "TOOD_LEASE_WAIT_S"
WAIT_S = 12 * 3600.0  # default longest wait of one attempt for another launch's training
HELD, RELEASED, TAKEN_OVER = "held", "released", "taken_over"
TAG = "tood.lease."  # tag prefix on a lease experiment: key, holder, run_id, host, pid, token, heartbeat, state, outcome
log = logging.getLogger(__name__)


class LeaseWaitTimeout(RuntimeError):
    """A trial waited longer than its limit for another launch's training of its key."""


@dataclass(frozen=True)
class Holder:
    """Who trains: the trial's MLflow run, its launch, host and process, and a token unique to
    this attempt (tells one's own lease from another's after a retried create)."""

    run_id: str
    launch: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def text(self) -> str:
        return f"launch {self.launch} on {self.host}, pid {self.pid}, run {self.run_id}"

    def tags(self, key: str) -> dict[str, str]:
        return {TAG + "key": key, TAG + "holder": self.text, TAG + "run_id": self.run_id, TAG + "host": self.host,
                TAG + "pid": str(self.pid), TAG + "token": self.token, TAG + "heartbeat": str(_now_ms()), TAG + "state": HELD}


@dataclass(frozen=True)
class LeaseState:
    """The latest generation of a key's lease as the store shows it."""

    experiment_id: str
    generation: int
    tags: dict[str, str]

    @property
    def state(self) -> str:
        return self.tags.get(TAG + "state", HELD)

    @property
    def run_id(self) -> str:
        return self.tags.get(TAG + "run_id", "")

    @property
    def holder(self) -> str:
        return self.tags.get(TAG + "holder", "unknown holder")

    @property
    def heartbeat_ms(self) -> int:
        return int(self.tags.get(TAG + "heartbeat", "0"))


class Watch:
    """A waiter's record of the heartbeats it saw: (experiment, heartbeat) -> first seen (monotonic s)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], float] = {}

    def dead(self, lease: LeaseState, ttl_s: float) -> bool:
        first = self.seen.setdefault((lease.experiment_id, lease.heartbeat_ms), time.monotonic())
        return _now_ms() - lease.heartbeat_ms > ttl_s * 1000 or time.monotonic() - first > ttl_s


def _now_ms() -> int:
    return int(time.time() * 1000)


def lease_name(key: str, generation: int) -> str:
    return f"{LEASE_EXPERIMENT_PREFIX}{key}/{generation}"


def latest(client: MlflowClient, key: str) -> LeaseState | None:
    """The newest generation of ``key``'s lease (deleted ones included), None if never leased."""
    found, token = [], None
    while True:
        page = mlflow_store.retry(client.search_experiments, view_type=ViewType.ALL, max_results=1000, page_token=token,
                              filter_string=f"name LIKE '{LEASE_EXPERIMENT_PREFIX}{key}/%'")
        found += [e for e in page if e.name.rsplit("/", 1)[-1].isdigit()]
        token = page.token
        if not token:
            break
    if not found:
        return None
    newest = max(found, key=lambda e: int(e.name.rsplit("/", 1)[-1]))
    return LeaseState(newest.experiment_id, int(newest.name.rsplit("/", 1)[-1]), dict(newest.tags))


class Lease:
    """A held lease: beats every ``heartbeat_s`` in a thread until :meth:`close`."""

    def __init__(self, client: MlflowClient, key: str, experiment_id: str, holder: Holder, heartbeat_s: float = HEARTBEAT_S):
        self.client, self.key, self.experiment_id, self.holder = client, key, experiment_id, holder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True, name=f"lease-{key}")
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                mlflow_store.retry(self.client.set_experiment_tag, self.experiment_id, TAG + "heartbeat", str(_now_ms()))
            except Exception as e:  # noqa: BLE001 -- a missed beat is not the trial's failure; TTL_S allows for several
                log.warning("lease of %s: heartbeat failed: %s", self.key, e)

    def close(self, outcome: str) -> None:
        """Stop beating. ``retry`` (an error Tune retries): keep the lease, which the retry of this run
        takes over at once (others only after TTL_S). Otherwise (finished, failed, reused): release."""
        self._stop.set()
        self._thread.join()
        if outcome != "retry":
            _end(self.client, self.experiment_id, RELEASED, outcome)


def _end(client: MlflowClient, experiment_id: str, state: str, outcome: str = "") -> None:
    """Mark a generation ended and hide it. One that another process ended already (it took the
    lease over from this frozen holder) stays as that process left it."""
    try:
        mlflow_store.retry(client.set_experiment_tag, experiment_id, TAG + "state", state)
        if outcome:
            mlflow_store.retry(client.set_experiment_tag, experiment_id, TAG + "outcome", outcome)
        mlflow_store.retry(client.delete_experiment, experiment_id)
    except MlflowException as e:
        log.warning("lease experiment %s: already ended by another process (%s)", experiment_id, e)


def try_acquire(client: MlflowClient, key: str, holder: Holder, watch: Watch, ttl_s: float = TTL_S,
                heartbeat_s: float = HEARTBEAT_S) -> Lease | LeaseState:
    """The lease of ``key`` if it is free (never taken, released, its holder dead, or held by an
    earlier attempt of ``holder``'s own run), else the live holder's state."""
    for _ in range(20):  # each lost round means another process took a newer generation
        current = latest(client, key)
        live = current is not None and current.state == HELD
        if live and current.run_id != holder.run_id and not watch.dead(current, ttl_s):
            return current
        name = lease_name(key, 0 if current is None else current.generation + 1)
        try:
            experiment_id = mlflow_store.retry(client.create_experiment, name, tags=holder.tags(key))
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            mine = mlflow_store.retry(client.get_experiment_by_name, name)  # a retried create may have succeeded
            if mine is None or mine.tags.get(TAG + "token") != holder.token:
                continue
            experiment_id = mine.experiment_id
        if live:
            _end(client, current.experiment_id, TAKEN_OVER)
            log.warning("lease of %s: taken over from %s (heartbeat stopped)", key, current.holder)
        return Lease(client, key, experiment_id, holder, heartbeat_s)
    raise RuntimeError(f"lease of trial key {key}: no generation won in 20 rounds (store {client.tracking_uri})")


def reusable_source(client: MlflowClient, key: str, policy: str) -> str | None:
    """The id of a finished run of ``key`` that ``policy`` allows a trial to reuse: ``any``, ``fresh``
    (trained by this process's code: :func:`orchestration.provenance.staleness`) or ``none``."""
    if policy == "none":
        return None
    run = reuse.finished_by_key(client, {key}).get(key)
    if run is None or (policy == "fresh" and staleness(run.data.tags, code_fingerprint())):
        return None
    return run.info.run_id


def claim(client: MlflowClient, trial: TrialPayload, ttl_s: float = TTL_S, heartbeat_s: float = HEARTBEAT_S,
          wait_s: float | None = None) -> Lease | None:
    """Take the lease of ``trial.key`` before it trains (it reads key, run_id, alias_run_ids,
    storage and reuse). Returns the held lease,
    or None when a finished run of the key was copied into the trial's runs instead (one that
    finished meanwhile, or the one the trial waited for). Raises :class:`LeaseWaitTimeout` after
    ``wait_s`` (default ``$TOOD_LEASE_WAIT_S``, else :data:`WAIT_S`) of waiting."""
    key, run_id, policy = trial.key, trial.run_id, trial.reuse
    holder, watch = Holder(run_id, Path(trial.storage).name), Watch()
    limit = float(os.environ.get(WAIT_ENV, WAIT_S)) if wait_s is None else wait_s
    t0, delay, waiting_for = time.monotonic(), 1.0, None
    while True:
        got = try_acquire(client, key, holder, watch, ttl_s, heartbeat_s)
        if isinstance(got, Lease):
            source = reusable_source(client, key, policy)  # finished before the lease was free?
            if source is None:
                return got
            got.close("reused")
        else:
            if waiting_for != got.holder:
                waiting_for = got.holder
                log.warning("trial key %s: waiting for %s, which trains it", key, waiting_for)
                mlflow_store.retry(client.set_tag, run_id, WAITED_TAG, waiting_for)
            source = _finished_holder(client, got, policy)
            if source is None:
                if time.monotonic() - t0 > limit:
                    raise LeaseWaitTimeout(f"trial key {key}: waited {limit:.0f} s for {got.holder} ({WAIT_ENV}); "
                                           "resume this launch once it finished: its result is then reused")
                time.sleep(delay)
                delay = min(2 * delay, POLL_MAX_S)
                continue
        if waiting_for:
            mlflow_store.retry(client.set_tag, run_id, WAITED_TAG, f"{waiting_for} ({time.monotonic() - t0:.0f} s)")
        for rid in trial.run_ids:
            reuse.copy_result(client, source, rid)
        return None


def _finished_holder(client: MlflowClient, lease: LeaseState, policy: str) -> str | None:
    """The holder's run id once it finished with a result ``policy`` accepts (it releases just after)."""
    if policy == "none" or not lease.run_id:
        return None
    run = mlflow_store.retry(client.get_run, lease.run_id)
    if run.info.status != "FINISHED" or (policy == "fresh" and staleness(run.data.tags, code_fingerprint())):
        return None
    return lease.run_id
