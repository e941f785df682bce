"""The trial payload: everything one trial's process needs, built by the driver (``orchestration.launch``).

It travels as a plain dict (:meth:`TrialPayload.as_dict`): Ray Tune's param space and the launch's
``tood_trials.json`` hold JSON-safe values, and ``resume`` reads the file back. Every reader turns
the dict into a :class:`TrialPayload` at its edge (:meth:`TrialPayload.of`), so a field has one
name and one type everywhere: the trainable, the tuner's callbacks, the lease, the prefix sharing
and the progress table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tood.config import ConfigError


@dataclass
class TrialPayload:
    """One trial of a launch: the grid's (row, seed) and how and where it runs."""

    key: str  # orchestration.suite.trial_key: one training per key
    run_id: str  # the MLflow child run it trains into
    name: str  # e.g. head=t_head,assigner=tal,seed=1 (a suite prefixes the study: table6_alignment/...)
    config: dict[str, Any]  # the resolved tood config (a plain dict of tood.config.Config)
    study: str = ""
    table: str = ""
    row_label: str = ""
    row_index: int = 0
    factors: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    paper: dict[str, float] = field(default_factory=dict)
    profile: str = ""
    grid_file: str = ""
    cost: float = 1.0  # orchestration.suite.estimated_cost (relative units; the ETA's weights)
    alias_run_ids: list[str] = field(default_factory=list)  # other studies' runs of the same key
    tracking_uri: str = ""
    storage: str = ""  # the launch folder <storage>/<name>
    workers: int = 1  # > 1: data parallel (a TorchTrainer)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    log_checkpoints: bool = False
    fail_once_at_epoch: int | None = None  # fault injection (orchestration.trainable.fault_plan)
    reuse: str = "any"  # any | fresh | none: what a finished run of the key may stand in for (orchestration.lease)
    prefix: dict[str, Any] | None = None  # {key, epochs, dir, found}: a shared prefix (orchestration.prefix)

    @classmethod
    def of(cls, data: dict[str, Any] | TrialPayload) -> TrialPayload:
        """The payload of a dict written by :meth:`as_dict` (fields added later take their defaults)."""
        if isinstance(data, TrialPayload):
            return data
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"trial payload: unknown field(s) {', '.join(unknown)} (expected some of: {', '.join(sorted(known))})")
        missing = [n for n in ("key", "run_id", "name", "config") if n not in data]
        if missing:
            raise ConfigError(f"trial payload: missing field(s) {', '.join(missing)}")
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def epochs(self) -> int:
        return int(self.config.get("train", {}).get("epochs") or 1)

    @property
    def run_ids(self) -> tuple[str, ...]:
        """The run it trains into and the other studies' runs that read its result."""
        return (self.run_id, *self.alias_run_ids)
