"""The Ray side of a launch: the runtime, the trainable with its resources, the Tuner."""
from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

from orchestration.payload import TrialPayload

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 Tune then prints nothing; progress.py draws the table


def set_log_level(quiet: bool) -> int:
    """Ray, Tune and MLflow say only warnings (errors when quiet)."""
    level = logging.ERROR if quiet else logging.WARNING
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(level)
    # An interrupted launch has trials that never started; Tune warns once per trial that it
    # found no metrics for them (one line each, 49 for a suite stopped early). The launcher's
    # own summary already counts every trial by status and says how to resume.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # ... and Tune's own resume hint (Tuner.restore) is not this tool's: the launcher prints
    # `tood-ablate resume <name>` instead.
    tune_log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoTuneRestoreHint) for f in tune_log.filters):
        tune_log.addFilter(_NoTuneRestoreHint())
    # A trial's config or dataset error is its own message, not Ray's coloured traceback.
    controller_log = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _PermanentErrorInOneLine) for f in controller_log.filters):
        controller_log.addFilter(_PermanentErrorInOneLine())
    return level


class _NoTuneRestoreHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Experiment has been interrupted")


class _PermanentErrorInOneLine(logging.Filter):
    """Tune's "Trial task failed" record of an error a retry cannot mend
    (:func:`orchestration.trainable.permanent_cause`) becomes one line with its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            from orchestration.trainable import permanent_cause

            cause = permanent_cause(error)
            if cause is not None:
                record.msg = f"{record.getMessage()}: {type(cause).__name__}: {cause} (not retried: a retry cannot mend it)"
                record.args, record.exc_info, record.exc_text = (), None, None
        return True


@contextlib.contextmanager
def ray_runtime(address: str | None, quiet: bool, env: dict[str, str] | None = None) -> Iterator[None]:
    """Join the cluster at ``address`` with ``env`` set for the driver (what
    :func:`orchestration.ray_address.check_ray_address` found it needs, e.g. ``RAY_AUTH_MODE=token``),
    or start a local runtime sized to this machine (``$TOOD_RAY_OBJECT_STORE_MB``, default 256,
    of object store) and stop it afterwards. A runtime the caller already started is used as it is."""
    import ray

    if ray.is_initialized():
        yield
        return
    level = set_log_level(quiet)
    if address:
        _driver_env(env or {})
        ray.init(address=address, log_to_driver=False, logging_level=level)
    else:  # "local": never attach to another Ray instance running on this machine
        store_mb = int(os.environ.get("TOOD_RAY_OBJECT_STORE_MB", "256"))
        _loopback_only()
        ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                 object_store_memory=store_mb * 1024**2, log_to_driver=False, logging_level=level,
                 _node_ip_address=LOOPBACK)
    set_log_level(quiet)  # ray.init reconfigures its loggers
    try:
        yield
    finally:
        ray.shutdown()


LOOPBACK = "127.0.0.1"


def _driver_env(env: dict[str, str]) -> None:
    """Set ``env`` for this process; Ray caches its settings (RAY_AUTH_MODE among them) per
    process, so they are read again."""
    if not env:
        return
    os.environ.update(env)
    from ray._raylet import Config

    Config.initialize("")


def _loopback_only() -> None:
    """A local runtime serves this machine only: Ray then takes 127.0.0.1 as the node's address
    (its one-machine mode), so GCS, raylet, object manager and workers advertise and bind
    loopback instead of the outward-facing address. The environment carries the setting to the
    processes Ray starts; the constant is read when ``ray`` is imported, so it is set here too."""
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def trial_name(trial: Any) -> str:
    return TrialPayload.of(trial.config["trial"]).name


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def trainable(workers: int, cpus: float, gpus: float):
    """``run_trial`` with its per-trial resources. A data-parallel trial only drives a
    TorchTrainer whose workers reserve the CPUs/GPUs, so it holds no CPU itself (Tune
    needs some resource: a little memory)."""
    from ray import tune

    from orchestration.trainable import run_trial

    if workers > 1:
        return tune.with_resources(run_trial, {"cpu": 0, "memory": 64 * 1024**2})
    return tune.with_resources(run_trial, {"cpu": cpus, "gpu": gpus})


def max_concurrent(requested: int, workers: int, cpus: float, gpus: float) -> int | None:
    """``requested`` if > 0; unlimited (None) for one-worker trials, whose resources bound them;
    for data-parallel trials as many as the cluster's CPUs/GPUs hold at once."""
    if requested > 0:
        return requested
    if workers <= 1:
        return None
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 0) / (workers * cpus)] if cpus > 0 else []
    if gpus > 0:
        fits.append(total.get("GPU", 0) / (workers * gpus))
    return max(1, math.floor(min(fits))) if fits else None


def make_tuner(trials: list[TrialPayload], path: Path, opts: Any, title: str):
    """A Tuner over ``trials`` (one grid_search entry each) storing into ``path``."""
    from ray import tune

    from orchestration.progress import ProgressTable
    from orchestration.trainable import PermanentErrors

    workers = max(1, opts.workers_per_trial)
    return tune.Tuner(
        trainable(workers, opts.cpus_per_trial, opts.gpus_per_trial),
        param_space={"trial": tune.grid_search([t.as_dict() for t in trials])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent(opts.max_concurrent, workers, opts.cpus_per_trial, opts.gpus_per_trial),
            reuse_actors=False, trial_name_creator=trial_name, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=path.name, storage_path=str(path.parent), verbose=0, log_to_file=True,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # what a retry or a resume continues from
            callbacks=[ProgressTable(title), PermanentErrors()],
        ),
    )


def restore_tuner(path: Path, trials: list[TrialPayload], opts: Any, title: str):
    """The Tuner of an interrupted launch: errored and unfinished trials continue from their
    checkpoints; if Tune saved no state before the interruption, the same trials start again."""
    from ray import tune

    if tune.Tuner.can_restore(str(path)):
        workers = max(1, opts.workers_per_trial)
        return tune.Tuner.restore(str(path), trainable=trainable(workers, opts.cpus_per_trial, opts.gpus_per_trial),
                                  resume_errored=True)
    return make_tuner(trials, path, opts, title)
