"""Grid files (experiments/*.yaml) -> validated trial specs.

A grid names a ``base:`` config, a ``table`` layout for the report, ``seeds`` and
``rows``; each row has a ``label``, ``factors`` (from the fixed registry below, each
a value -> config overrides), optional raw ``set:`` overrides and the paper's numbers.
Every trial's config is resolved through ``tood.config`` before anything starts, so a
bad grid fails up front with the file and the key.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from tood.config import ConfigError, build_config, load_raw, to_dict

TABLES = ("table1", "table2", "topm", "table4", "table6", "smoke")
GRID_KEYS = ("study", "table", "base", "seeds", "rows", "description")
ROW_KEYS = ("label", "factors", "set", "paper")
PAPER_METRICS = ("AP", "AP50", "AP75", "PCC", "top10_iou", "n_correct", "n_redundant", "n_error")


def _choice(options: dict[str, dict[str, Any]]) -> tuple[str, Callable[[Any], dict[str, Any] | None]]:
    return "one of: " + ", ".join(options), lambda v: options.get(v) if isinstance(v, str) else None


def _typed(key: str | tuple[str, ...], kind: type) -> tuple[str, Callable[[Any], dict[str, Any] | None]]:
    keys = (key,) if isinstance(key, str) else key

    def convert(v: Any) -> dict[str, Any] | None:
        if isinstance(v, bool) != (kind is bool) or not isinstance(v, (int, float) if kind is float else kind):
            return None
        return {k: kind(v) for k in keys}

    return {bool: "true or false", int: "an integer", float: "a number"}[kind], convert


PARALLEL = {"model.head.type": "parallel", "model.head.stacked_convs": 4, "model.head.centerness": True}
T_HEAD = {"model.head.type": "t_head", "model.head.stacked_convs": 6, "model.head.centerness": False}
FACTORS: dict[str, tuple[str, Callable[[Any], dict[str, Any] | None]]] = {
    "head": _choice({"parallel": PARALLEL, "t_head": T_HEAD}),
    "assigner": _choice({a: {"criterion.assigner": a} for a in ("tal", "atss", "max_iou", "center_sampling")}),
    "anchor_type": _choice({a: {"model.head.anchor_type": a} for a in ("anchor_free", "anchor_based")}),
    "detector": _choice(
        {
            "atss_af": {"criterion.assigner": "atss", "model.head.anchor_type": "anchor_free"},
            "atss_ab": {"criterion.assigner": "atss", "model.head.anchor_type": "anchor_based"},
            "fcos": {"criterion.assigner": "center_sampling", "model.head.anchor_type": "anchor_free"},
        }
    ),
    "cls_target": _choice({t: {"criterion.cls_target": t} for t in ("hard", "soft")}),
    "centerness": _typed("model.head.centerness", bool),
    "tap": _typed(("model.head.alignment_map", "model.head.offsets"), bool),
    "layer_attention": _typed("model.head.layer_attention", bool),
    "topk": _typed("criterion.topk", int),
    "alpha": _typed("criterion.alpha", float),
    "beta": _typed("criterion.beta", float),
}


@dataclass
class TrialSpec:
    study: str
    table: str
    row_label: str
    row_index: int
    factors: dict[str, Any]
    seed: int
    paper: dict[str, float]
    config: dict[str, Any]  # the resolved tood Config as a plain dict
    name: str
    profile: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Grid:
    path: Path
    study: str
    table: str
    seeds: list[int]
    rows: list[dict[str, Any]]
    raw: dict[str, Any]


def _err(path: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {msg}")


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read grid file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with {', '.join(GRID_KEYS)}")
    for key in raw:
        if key not in GRID_KEYS:
            raise _err(path, key, f"unknown key (expected one of: {', '.join(GRID_KEYS)})")
    for key in ("study", "table", "base", "rows"):
        if key not in raw:
            raise _err(path, key, "missing")
    if raw["table"] not in TABLES:
        raise _err(path, "table", f"unknown value {raw['table']!r} (expected one of: {', '.join(TABLES)})")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _err(path, "seeds", f"got {seeds!r} (expected a non-empty list of integers)")
    rows = raw["rows"]
    if not isinstance(rows, list) or not rows:
        raise _err(path, "rows", "empty grid (expected a non-empty list of rows)")
    labels = set()
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise _err(path, where, f"got {row!r} (expected a mapping with {', '.join(ROW_KEYS)})")
        for key in row:
            if key not in ROW_KEYS:
                raise _err(path, f"{where}.{key}", f"unknown key (expected one of: {', '.join(ROW_KEYS)})")
        label = row.get("label")
        if not isinstance(label, str) or not label:
            raise _err(path, f"{where}.label", "missing (expected a non-empty string)")
        if label in labels:
            raise _err(path, f"{where}.label", f"duplicate label {label!r}")
        labels.add(label)
        for name, value in (row.get("factors") or {}).items():
            if name not in FACTORS:
                raise _err(path, f"{where}.factors.{name}", f"unknown factor (expected one of: {', '.join(FACTORS)})")
            expected, convert = FACTORS[name]
            if convert(value) is None:
                raise _err(path, f"{where}.factors.{name}", f"unknown value {value!r} (expected {expected})")
        for name, value in (row.get("paper") or {}).items():
            if name not in PAPER_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _err(path, f"{where}.paper.{name}", f"got {value!r} (expected a number for one of: {', '.join(PAPER_METRICS)})")
    return Grid(path=path, study=str(raw["study"]), table=raw["table"], seeds=seeds, rows=rows, raw=raw)


def trial_name(factors: dict[str, Any], seed: int, label: str) -> str:
    parts = [f"{k}={v}" for k, v in factors.items()] or [label.replace(" ", "_")]
    return ",".join(parts + [f"seed={seed}"])


def expand_grid(path: str | Path, profile: str = "proxy", seeds: list[int] | None = None, overrides: dict[str, Any] | None = None) -> tuple[Grid, list[TrialSpec]]:
    """Validate a grid file and resolve every (row, seed) into a :class:`TrialSpec`."""
    grid = load_grid(path)
    base = load_raw(grid.path.parent / grid.raw["base"])
    trials = []
    for i, row in enumerate(grid.rows):
        factors = dict(row.get("factors") or {})
        sets: dict[str, Any] = {}
        for name, value in factors.items():
            sets.update(FACTORS[name][1](value))
        sets.update(row.get("set") or {})
        sets.update(overrides or {})
        for seed in seeds if seeds is not None else grid.seeds:
            where = f"{grid.path}: rows[{i}] ({row['label']})"
            cfg = build_config(copy.deepcopy(base), where, profile=profile, overrides={**sets, "train.seed": seed})
            cfg.data.root = str(Path(cfg.data.root).resolve())  # trials run in their own directories
            trials.append(
                TrialSpec(
                    study=grid.study, table=grid.table, row_label=row["label"], row_index=i, factors=factors, seed=seed,
                    paper=dict(row.get("paper") or {}), config=to_dict(cfg), name=trial_name(factors, seed, row["label"]), profile=profile,
                )
            )
    return grid, trials
