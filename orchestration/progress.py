"""Live progress of a grid launch: one line per trial (pending / running / done / stopped /
failed, epoch, latest AP, retries), as a rich table on a terminal or as change lines in a log.

The mode comes from ``$TOOD_ABLATE_PROGRESS`` (``auto`` | ``live`` | ``lines`` | ``off``),
set by the driver for each launch or resume: the callback itself is pickled into the
Tune experiment state and must not carry a terminal with it.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from orchestration.payload import TrialPayload

MODE_ENV = "TOOD_ABLATE_PROGRESS"
STATES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "pending", "TERMINATED": "done", "ERROR": "failed"}


def finished(trial: Any) -> bool:
    """Whether the trial's trainable returned. Tune marks every trial TERMINATED when a launch
    is interrupted, the pending ones and those half-way through included; only a trainable
    that returned leaves ``done`` in its last result."""
    return trial.status == "TERMINATED" and bool((trial.last_result or {}).get("done"))


def _state(trial: Any) -> str:
    if trial.status == "TERMINATED" and not finished(trial):
        return "stopped"  # by an interrupt: `tood-ablate resume` continues it
    return STATES.get(trial.status, trial.status.lower())


@dataclass(frozen=True)
class TrialLine:
    name: str
    state: str  # pending | running | done | stopped | failed
    epoch: int | None
    ap: float | None  # final AP, else the latest epoch_AP
    retries: int
    epochs: int | None = None  # of the trial's schedule


def trial_line(trial: Any) -> TrialLine:
    """Summary of a ``ray.tune.experiment.Trial``."""
    result = trial.last_result or {}
    ap = result.get("AP", result.get("epoch_AP"))
    epoch = result.get("epoch")
    spec = TrialPayload.of(trial.config["trial"])
    return TrialLine(
        name=spec.name, state=_state(trial),
        epoch=int(epoch) if epoch is not None else None, ap=None if ap is None or math.isnan(ap) else float(ap),
        retries=int(getattr(trial, "num_failures", 0)), epochs=spec.epochs,
    )


def describe(line: TrialLine) -> list[str]:
    """Cells: name, state (with retries), epoch (of epochs), AP."""
    state = line.state + (f" (retry {line.retries})" if line.retries and line.state == "running" else "")
    epoch = "-" if line.epoch is None else f"{line.epoch}" + (f"/{line.epochs}" if line.epochs else "")
    return [line.name, state, epoch, "-" if line.ap is None else f"{line.ap:.1f}"]


def counts(lines: list[TrialLine]) -> str:
    """'3 done, 1 running, 2 pending' (states present only)."""
    order = ("done", "running", "pending", "stopped", "failed")
    return ", ".join(f"{sum(l.state == s for l in lines)} {s}" for s in order if any(l.state == s for l in lines))


def dispatch_gap(started: dict[str, float], ended: dict[str, float], slots: int) -> float:
    """Mean seconds a slot stays idle between one trial's end and the next trial's start (Tune
    processing the result, the actor of the next trial starting): the k-th start after the first
    ``slots`` ones took the slot the k-th end freed, as Tune starts waiting trials in order.
    0.0 before a trial has started on a freed slot."""
    starts, ends = sorted(started.values())[slots:], sorted(ended.values())
    gaps = [s - e for s, e in zip(starts, ends) if s >= e]
    return sum(gaps) / len(gaps) if gaps else 0.0


def eta_seconds(trials: list, slots: int = 1, started: dict[str, float] | None = None,
                ended: dict[str, float] | None = None, now: float | None = None) -> float | None:
    """Seconds until the last of ``trials`` ends, None before one finished. Each trial takes its
    estimated cost (the payload's ``cost``) times the seconds per cost unit measured on the finished
    ones (their wall time from ``started`` to ``ended``, monotonic seconds by trial id, else
    Tune's ``time_total_s``). A running trial needs that less the time it has run (without a
    start time: its share of epochs left); the waiting ones (pending, or stopped by an
    interrupt) then take, in order, whichever of the ``slots`` concurrent slots frees first, as
    Tune starts them, each after the measured :func:`dispatch_gap` (seconds on a short trial of
    the smoke profile, where leaving it out made the ETA ~45% short). Unlike cost / slots, this
    keeps a lone long trial at the tail whole."""
    started, ended = started or {}, ended or {}
    now = time.monotonic() if now is None else now
    done, running, waiting = [], [], []
    for t in trials:
        spec, result, tid = TrialPayload.of(t.config["trial"]), t.last_result or {}, getattr(t, "trial_id", None)
        cost = spec.cost
        if finished(t):
            seconds = ended[tid] - started[tid] if tid in started and tid in ended else result.get("time_total_s")
            if "already_finished" not in result and seconds:
                done.append((float(seconds), cost))
            continue
        if t.status == "ERROR":
            continue
        left = cost * (1 - min(float(result.get("epoch", 0)), spec.epochs) / spec.epochs)
        if t.status == "RUNNING":
            running.append((cost, now - started[tid]) if tid in started else (left, 0.0))
        else:
            waiting.append(left)
    if not done:
        return None
    rate = sum(s for s, _ in done) / max(sum(c for _, c in done), 1e-9)  # seconds per cost unit
    free = [max(0.0, rate * cost - ran) for cost, ran in running]  # seconds until each slot is free
    free += [0.0] * max(0, slots - len(free))
    gap = dispatch_gap(started, ended, slots)
    for cost in waiting:
        i = free.index(min(free))
        free[i] += gap + rate * cost
    return max(free, default=0.0)


def suite_line(trials: list, slots: int = 1, started: dict[str, float] | None = None,
               ended: dict[str, float] | None = None, now: float | None = None) -> str:
    """'suite: 12/69 trials done, 2 running, ETA 41 min' (ETA: :func:`eta_seconds` over
    ``slots``, the most trials seen running at once)."""
    running = sum(t.status == "RUNNING" for t in trials)
    eta = eta_seconds(trials, max(running, slots, 1), started, ended, now)
    return (f"suite: {sum(finished(t) for t in trials)}/{len(trials)} trials done, {running} running, "
            + ("ETA -" if eta is None else f"ETA {eta:.0f} s" if eta < 120 else f"ETA {eta / 60:.0f} min"))


class ProgressTable(Callback):
    """Tune callback rendering the trials' progress (see module docstring)."""

    def __init__(self, title: str):
        self.title = title
        self._live = None
        self._seen: dict[str, TrialLine] = {}
        self._mode = "off"
        self._suite = ""
        self._slots = 1
        self._started: dict[str, float] = {}  # trial id -> monotonic seconds at its first start
        self._ended: dict[str, float] = {}

    def __getstate__(self) -> dict:
        return {"title": self.title}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["title"])

    def setup(self, **info: Any) -> None:
        mode = os.environ.get(MODE_ENV, "auto")
        if mode == "auto":
            mode = "live" if sys.stderr.isatty() else "lines"
        self._mode = mode
        if mode == "live":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(stderr=True), refresh_per_second=2, transient=False)
            self._live.start()

    def _table(self, lines: list[TrialLine]):
        from rich.table import Table

        table = Table(title=f"{self.title}: {counts(lines)}; {self._suite}", title_justify="left")
        for column in ("trial", "state", "epoch", "AP"):
            table.add_column(column, justify="right" if column in ("epoch", "AP") else "left")
        style = {"done": "green", "failed": "red", "running": "yellow", "pending": "dim", "stopped": "dim"}
        for line in lines:
            table.add_row(*describe(line), style=style.get(line.state))
        return table

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.setdefault(trial.trial_id, time.monotonic())  # a retry's time counts with the trial

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended[trial.trial_id] = time.monotonic()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._render(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._render(trials)
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _render(self, trials: list) -> None:
        if self._mode not in ("live", "lines"):
            return
        lines = [trial_line(t) for t in trials]
        changed = [l for l in lines if self._seen.get(l.name) != l]
        if not changed:
            return
        self._slots = max(self._slots, sum(t.status == "RUNNING" for t in trials))
        self._suite = suite_line(trials, self._slots, self._started, self._ended)
        self._seen.update({l.name: l for l in changed})
        if self._live is not None:
            self._live.update(self._table(lines))
            return
        for line in changed:
            name, state, epoch, ap = describe(line)
            print(f"[{counts(lines)}] {name}: {state}, epoch {epoch}, AP {ap}", file=sys.stderr, flush=True)
        if any(l.state in ("done", "stopped", "failed") for l in changed):
            print(self._suite, file=sys.stderr, flush=True)
