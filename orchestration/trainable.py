"""The Ray Tune trainable: one trial = one ``tood.engine.train`` run tracked in its own MLflow run.

``config["trial"]`` (an :class:`orchestration.payload.TrialPayload` built by
``orchestration.launch``) holds the resolved tood config, the MLflow run id the driver created
for the trial, the tracking URI and the launch's storage folder. One worker: training runs in the trial process; every epoch's
checkpoint goes to Tune with ``tune.report``, and a retried trial restores it with
``tune.get_checkpoint()``. Several workers: the trial drives a Ray Train ``TorchTrainer``
whose workers all call ``train()`` under a torch process group (DDP); rank 0 checkpoints
into the launch's storage folder (shared storage on a cluster), where a retry resumes.

A crash or a lost node is retried up to the launch's ``--max-failures``; an error no retry
can mend (:data:`PERMANENT`: a config or dataset error) fails the trial after its first
attempt (:class:`PermanentErrors`). A finished trial's last checkpoint keeps the model but not
the optimizer's state (:func:`slim_checkpoint`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from orchestration import mlflow_store, reuse, trial_run
from orchestration.host import host_tag
from orchestration.lease import claim
from orchestration.payload import TrialPayload
from orchestration.prefix import Sharing
from orchestration.provenance import code_fingerprint
from orchestration.schema import CPUS_TAG, GPUS_TAG, HOST_TAG
from tood.config import ConfigError, build_config
from tood.data.coco import DatasetError
from tood.engine import NonFiniteLossError

FAIL_ONCE_ENV = "TOOD_FAIL_ONCE_AT_EPOCH"  # fault injection (tests): fail once after this epoch's checkpoint
FAIL_ONCE_TRIAL_ENV = "TOOD_FAIL_ONCE_TRIAL"  # ... only in trials whose name contains this text
STATE_FILE = "trial_state.json"


# Errors a retry cannot mend: a broken dataset, a config (or a file made by another recipe,
# a checkpoint of another model) that does not fit, a loss that diverges (a retry resumes from
# the same checkpoint and RNG state, so it diverges again).
PERMANENT = (ConfigError, DatasetError, NonFiniteLossError)
PERMANENT_KEY = "tood_permanent_error"  # in the result a trial reports just before raising a permanent error


def permanent_cause(error: BaseException) -> BaseException | None:
    """The innermost :data:`PERMANENT` error behind ``error`` (itself, its cause or context
    chain, the cause of a Ray task error, a Ray Train worker's failure), or None. Innermost:
    Ray re-raises a task's error as a subclass of it whose text is a coloured traceback."""
    found, todo, seen = None, [error], set()
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        found = e if isinstance(e, PERMANENT) else found
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None), *getattr(e, "worker_failures", {}).values()]
    return found


class PermanentErrors(tune.Callback):
    """A trial that reports :data:`PERMANENT_KEY` gets no retry of the error it raises next;
    other errors keep the launch's ``--max-failures``. Tune decides on a retry from the trial's
    own ``max_failures``, so that is what this sets (back to the launch's value whenever the
    trial starts again, e.g. on resume after the data were fixed)."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        trial.max_failures = TrialPayload.of(trial.config["trial"]).max_failures

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(PERMANENT_KEY):
            trial.max_failures = 0


class InjectedFault(RuntimeError):
    """Raised once by fault injection; the trial is then retried from its checkpoint."""


def fault_plan(name: str) -> int | None:
    """Epoch after which trial ``name`` fails once, from the driver's environment (None: never)."""
    at, only = os.environ.get(FAIL_ONCE_ENV), os.environ.get(FAIL_ONCE_TRIAL_ENV, "")
    return int(at) if at and only in name else None


def _maybe_fail(trial: TrialPayload, epoch: int) -> None:
    """Fail once after epoch ``trial.fail_once_at_epoch``; a marker file in the launch's
    storage folder makes the retry go through."""
    if trial.fail_once_at_epoch != epoch:
        return
    marker = Path(trial.storage) / "faults" / trial.run_id
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(epoch))
    raise InjectedFault(f"injected fault after epoch {epoch} of {trial.name} ({FAIL_ONCE_ENV})")


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _mlflow_log(client: MlflowClient, run_id: str) -> Callable[[dict[str, float], int], None]:
    """Log an epoch's metrics unless an earlier attempt did: an attempt killed after logging
    epoch k but before Tune had its checkpoint retrains epoch k (exactly, from the same RNG
    state), and the run must hold it once."""
    done = trial_run.logged_steps(client, run_id)

    def log(metrics: dict[str, float], step: int) -> None:
        if step not in done:
            trial_run.log_metrics(client, run_id, metrics, step)

    return log


def _restored_epoch() -> int:
    """The epoch of the checkpoint Tune restores this trial from (0: none)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        return int(json.loads((Path(d) / STATE_FILE).read_text())["epoch"])


def _train_in_process(trial: TrialPayload, client: MlflowClient, work: Path, sharing: Sharing | None = None,
                      start: Path | None = None) -> tuple[dict[str, float], Path | None]:
    """Train in this process with Tune checkpoints; returns (final metrics, checkpoint). ``start``:
    a shared prefix's checkpoint ahead of the trial's own, to branch from (``sharing.acquire``)."""
    from tood.engine import train

    cfg = build_config(trial.config, f"trial {trial.name}")
    resume = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            shutil.copy(Path(d) / "last.pt", work / "last.pt")
            epoch = json.loads((Path(d) / STATE_FILE).read_text())["epoch"]
        mlflow_store.retry(client.set_tag, trial.run_id, "tood.resumed_from_epoch", str(epoch))
        resume = True
    if start is not None:
        resume = start

    def on_epoch_end(end) -> None:
        if sharing is not None:  # publish the prefix before Tune has the epoch: a retry from it finds it
            sharing.after_epoch(end.epoch, end.checkpoint)
        with tempfile.TemporaryDirectory() as d:
            if end.epoch == cfg.train.epochs:
                slim_checkpoint(end.checkpoint, Path(d) / "last.pt")
            else:
                shutil.copy(end.checkpoint, Path(d) / "last.pt")
            (Path(d) / STATE_FILE).write_text(json.dumps({"epoch": end.epoch, "run_id": trial.run_id}))
            tune.report(_floats(end.metrics), checkpoint=tune.Checkpoint.from_directory(d))
        _maybe_fail(trial, end.epoch)

    result = train(cfg, work, resume=resume, log=_mlflow_log(client, trial.run_id), on_epoch_end=on_epoch_end,
                   extra_state={"mlflow_run_id": trial.run_id}, progress=False)
    return _floats(result.metrics), result.checkpoint


def slim_checkpoint(path: Path, out: Path) -> None:
    """``path`` written to ``out`` without the optimizer's per-parameter state (momentum, Adam
    moments: up to twice the model's size). Only for a trial's last epoch: nothing trains
    after it, so a retry that restores it just returns its metrics, and what stays in the
    storage is the model that ``tood-ablate diagnose`` evaluates."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["optimizer"] = {**state["optimizer"], "state": {}}
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, out)


def _worker_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: ``train()`` under the process group TorchTrainer set up; rank 0 logs,
    checkpoints into the shared work dir and writes the final metrics there."""
    import ray.train
    import ray.train.torch

    from tood.engine import train

    trial, work = TrialPayload.of(config["trial"]), Path(config["work_dir"])
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, int(trial.cpus_per_worker)))
    if torch.cuda.is_available():
        torch.cuda.set_device(ray.train.torch.get_device())  # train() uses the current device
    cfg = build_config(trial.config, f"trial {trial.name}")
    log = _mlflow_log(MlflowClient(trial.tracking_uri), trial.run_id) if rank == 0 else None

    def on_epoch_end(end) -> None:  # called on rank 0 only
        (work / STATE_FILE).write_text(json.dumps({"epoch": end.epoch, "run_id": trial.run_id}))
        _maybe_fail(trial, end.epoch)

    result = train(cfg, work, resume=True, log=log, on_epoch_end=on_epoch_end,
                   extra_state={"mlflow_run_id": trial.run_id}, progress=False)
    if rank == 0:
        (work / "final_metrics.json").write_text(json.dumps(_floats(result.metrics)))


def _train_data_parallel(trial: TrialPayload, client: MlflowClient, work: Path, attempt: int) -> tuple[dict[str, float], Path | None]:
    """Drive a TorchTrainer of ``trial.workers`` workers (gloo on CPU, nccl on GPU)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    (work / "final_metrics.json").unlink(missing_ok=True)
    if (work / STATE_FILE).exists():
        epoch = json.loads((work / STATE_FILE).read_text())["epoch"]
        mlflow_store.retry(client.set_tag, trial.run_id, "tood.resumed_from_epoch", str(epoch))
    use_gpu = trial.gpus_per_worker > 0
    resources = {"CPU": trial.cpus_per_worker, **({"GPU": trial.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"trial": trial.as_dict(), "work_dir": str(work)},
        scaling_config=ScalingConfig(num_workers=trial.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # Retries belong to Tune (one failure budget per trial); a retry resumes from work/last.pt.
        run_config=RunConfig(name=f"{trial.run_id}-attempt{attempt}", storage_path=str(Path(trial.storage) / "train"),
                             failure_config=FailureConfig(max_failures=0)),
    )
    trainer.fit()
    checkpoint = work / "last.pt"
    return json.loads((work / "final_metrics.json").read_text()), checkpoint if checkpoint.exists() else None


def _log_attempt(client: MlflowClient, trial: TrialPayload, number: int, t0: float) -> None:
    """Wall time of this attempt (failed ones too: the compute report counts them) and the
    resources it held, for the report's compute accounting."""
    trial_run.log_metrics(client, trial.run_id, {"attempt_wall_s": time.monotonic() - t0}, step=number)
    for tag, per_worker in ((CPUS_TAG, trial.cpus_per_worker), (GPUS_TAG, trial.gpus_per_worker)):
        mlflow_store.retry(client.set_tag, trial.run_id, tag, str(per_worker * trial.workers))
    mlflow_store.retry(client.set_tag, trial.run_id, HOST_TAG, host_tag())


def _fill_aliases(client: MlflowClient, trial: TrialPayload) -> None:
    """Other studies' child runs of the same key read this trial's result (see orchestration.suite)."""
    for alias in trial.alias_run_ids:
        reuse.copy_result(client, trial.run_id, alias)


def _record_code(client: MlflowClient, run_id: str) -> None:
    """The code this process trains with (orchestration.provenance), on the run it trains: on a
    cluster a worker's checkout may differ from the driver's, whose code the run got at creation."""
    tags = [RunTag(k, v) for k, v in code_fingerprint().tags().items()]
    mlflow_store.retry(client.log_batch, run_id, tags=tags)


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable of one grid trial (see module docstring)."""
    trial = TrialPayload.of(config["trial"])
    run_id = trial.run_id
    client = MlflowClient(trial.tracking_uri)
    attempt = trial_run.start_attempt(client, run_id)
    if attempt.finished:  # finished before the launch was interrupted: report, do not re-run
        _fill_aliases(client, trial)
        tune.report({**attempt.final_metrics, "already_finished": 1.0})
        return
    lease = claim(client, trial)  # one training per key across launches of the store (orchestration.lease)
    if lease is None:  # another launch trained the key meanwhile: its result was copied into this trial's runs
        tune.report({**mlflow_store.retry(client.get_run, run_id).data.metrics, "already_finished": 1.0})
        return
    _record_code(client, run_id)
    outcome = "retry"  # what the lease is closed with: an attempt killed or retried keeps it
    t0 = time.monotonic()
    torch.set_num_threads(max(1, int(trial.cpus_per_worker)))
    parallel = trial.workers > 1
    # Data parallel: rank 0 checkpoints where every retry (on any node) finds it: shared storage.
    work = Path(trial.storage) / "work" / run_id if parallel else Path(tempfile.mkdtemp(prefix="tood-trial-"))
    work.mkdir(parents=True, exist_ok=True)
    sharing = None if parallel else Sharing.of(trial, client)  # a prefix shared with other trials (orchestration.prefix)
    try:
        if parallel:
            metrics, checkpoint = _train_data_parallel(trial, client, work, attempt.number)
            tune.report(metrics)  # the workers report nothing per epoch: rank 0 alone sees the epoch end
        else:
            start = sharing.acquire(attempt.number, _restored_epoch()) if sharing else None  # may wait for it
            t0 = time.monotonic()  # the wait for a shared prefix is not training time (prefix_wait_s)
            metrics, checkpoint = _train_in_process(trial, client, work, sharing, start)
        _log_attempt(client, trial, attempt.number, t0)
        trial_run.finish_trial(client, run_id, trial.config, metrics, step=trial.epochs,
                              checkpoint=checkpoint if trial.log_checkpoints else None)
        _fill_aliases(client, trial)
        outcome = "finished"
        if parallel and checkpoint is not None:
            slim_checkpoint(checkpoint, checkpoint)
    except Exception as e:
        _log_attempt(client, trial, attempt.number, t0)
        cause, budget = permanent_cause(e), trial.max_failures
        final = cause is not None or 0 <= budget < attempt.number
        outcome = "failed" if final else "retry"
        trial_run.record_error(client, run_id, cause or e, final=final)
        if cause is not None:
            tune.report({PERMANENT_KEY: 1.0})  # PermanentErrors then denies the retry of the error raised below
        raise
    finally:
        lease.close(outcome)
        if sharing is not None:
            sharing.release()
        if not parallel:
            shutil.rmtree(work, ignore_errors=True)
