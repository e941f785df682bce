"""Grid files (experiments/*.yaml) -> validated trial specs.

A grid names a ``base:`` config (relative to the grid, absolute, or a file of the project's
experiments/: :func:`tood.config.load.resolve_base`), a ``table`` layout for the report, ``seeds`` and
``rows``; each row has a ``label``, ``factors`` (values of the fixed registry below,
each turned into config overrides), optional raw ``set:`` overrides (dotted keys) and
the paper's numbers under ``paper:``. Every trial's config is resolved through
``tood.config`` before anything starts, so a bad grid fails up front naming the file
and the key.

Precedence: factors apply in registry order (``detector`` and ``head`` first, so the
specific factors after them refine what they imply, e.g. ``head: parallel`` with
``centerness: false``), then the row's ``set:``, then ``--set`` overrides of the launch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from tood.config import Config, ConfigError, build_config, load_raw, to_dict
from tood.config.load import resolve_base

TABLES = ("table1", "table2", "table3", "topm", "table4", "table6", "smoke")
GRID_KEYS = ("study", "table", "base", "seeds", "rows", "claim")
ROW_KEYS = ("label", "factors", "set", "paper")
PAPER_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "PCC", "top10_iou", "n_correct", "n_redundant", "n_error")

Factor = tuple[str, Callable[[Any], "dict[str, Any] | None"]]  # (expected, value -> overrides or None)


def _choice(options: dict[str, dict[str, Any]]) -> Factor:
    return "one of: " + ", ".join(options), lambda v: options.get(v) if isinstance(v, str) else None


def _typed(keys: tuple[str, ...], kind: type) -> Factor:
    def convert(v: Any) -> dict[str, Any] | None:
        if isinstance(v, bool) != (kind is bool) or not isinstance(v, (int, float) if kind is float else kind):
            return None
        return {k: kind(v) for k in keys}

    return {bool: "true or false", int: "an integer", float: "a number"}[kind], convert


PARALLEL = {"model.head.type": "parallel", "model.head.stacked_convs": 4, "model.head.centerness": True}
T_HEAD = {"model.head.type": "t_head", "model.head.stacked_convs": 6, "model.head.centerness": False}
ASSIGNERS = ("tal", "atss", "max_iou", "center_sampling", "fovea")
# Registry order is the order in which factors apply (composite factors first).
FACTORS: dict[str, Factor] = {
    "detector": _choice({  # Table 1's detectors
        "atss_af": {"criterion.assigner": "atss", "model.head.anchor_type": "anchor_free"},
        "atss_ab": {"criterion.assigner": "atss", "model.head.anchor_type": "anchor_based"},
        "fcos": {"criterion.assigner": "center_sampling", "model.head.anchor_type": "anchor_free", "model.head.centerness": True},
        "foveabox": {"criterion.assigner": "fovea", "model.head.anchor_type": "anchor_free"},
    }),
    "head": _choice({"parallel": PARALLEL, "t_head": T_HEAD}),
    "anchor_type": _choice({a: {"model.head.anchor_type": a} for a in ("anchor_free", "anchor_based")}),
    "assigner": _choice({a: {"criterion.assigner": a} for a in ASSIGNERS}),
    "cls_target": _choice({t: {"criterion.cls_target": t} for t in ("hard", "soft")}),
    "box_weight": _choice({w: {"criterion.box_weight": w} for w in ("none", "centerness", "target", "max_score")}),
    "centerness": _typed(("model.head.centerness",), bool),
    "tap": _typed(("model.head.alignment_map", "model.head.offsets"), bool),
    "layer_attention": _typed(("model.head.layer_attention",), bool),
    "topk": _typed(("criterion.topk",), int),
    "alpha": _typed(("criterion.alpha",), float),
    "beta": _typed(("criterion.beta",), float),
}


@dataclass
class Grid:
    """A validated grid file; ``raw`` is the file's mapping."""

    path: Path
    study: str
    table: str
    base: Path
    seeds: list[int]
    rows: list[dict[str, Any]]
    raw: dict[str, Any]


@dataclass
class TrialSpec:
    """One (row, seed) of a grid with its resolved config (a plain dict of :class:`tood.config.Config`)."""

    study: str
    table: str
    row_label: str
    row_index: int
    factors: dict[str, Any]
    seed: int
    paper: dict[str, float]
    config: dict[str, Any]
    name: str  # e.g. head=t_head,assigner=tal,seed=1
    profile: str
    grid_file: str


def _err(path: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {msg}")


CLAIM_SHAPES = ("direction", "margin", "equivalence")
CLAIM_KEYS = ("shape", "delta", "why")


@dataclass(frozen=True)
class ClaimSpec:
    """The shape of a study's claims (the grid's ``claim:``): ``direction`` (row > or < reference,
    the paper's sign), ``margin`` (beats the reference by at least ``delta``, in the paper's
    direction) or ``equivalence`` (within +-``delta`` of it); ``delta`` in the metric's units;
    ``why``: the sentence that justifies ``delta`` on the data at hand."""

    shape: str = "direction"
    delta: float = 0.0
    why: str = ""


# Studies whose grid names no claim: top-m's "flat" claim is an equivalence with the paper's
# own spread (every m within 42.0-42.5 AP); every other study's claims are directions.
DEFAULT_CLAIMS = {"topm": ClaimSpec("equivalence", 0.5, "the paper's top-m rows lie within 0.5 AP of each other")}


def claim_spec(raw: Any, table: str, where: str) -> ClaimSpec:
    """The validated ``claim:`` mapping of a grid (``raw``; None: the study's default)."""
    if raw is None:
        return DEFAULT_CLAIMS.get(table, ClaimSpec())
    if not isinstance(raw, dict) or set(raw) - set(CLAIM_KEYS):
        raise ConfigError(f"{where}: claim: got {raw!r} (expected a mapping with keys {', '.join(CLAIM_KEYS)})")
    shape, delta, why = raw.get("shape", "direction"), raw.get("delta", 0.0), raw.get("why", "")
    if shape not in CLAIM_SHAPES:
        raise ConfigError(f"{where}: claim.shape: unknown value {shape!r} (expected one of: {', '.join(CLAIM_SHAPES)})")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or delta < 0 or (shape == "equivalence" and delta == 0):
        raise ConfigError(f"{where}: claim.delta: got {delta!r} (expected a number >= 0 in the metric's units; "
                          "> 0 for an equivalence)")
    if shape != "direction" and not (isinstance(why, str) and why.strip()):
        raise ConfigError(f"{where}: claim.why: missing (expected a sentence on why delta = {delta} for this data)")
    return ClaimSpec(shape, float(delta), str(why))


def parse_seeds(text: str | None, flag: str = "--seeds") -> list[int] | None:
    """``--seeds 0,1,2`` -> [0, 1, 2]; None without the flag; a ConfigError naming ``flag`` otherwise."""
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag}: got {text!r} (expected comma-separated integers, e.g. 0,1)") from None


def check_seeds(seeds: Any, where: str) -> list[int]:
    """A non-empty list of distinct non-negative integers, else a ConfigError naming ``where``."""
    ok = isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: got {seeds!r} (expected a non-empty list of distinct non-negative integers)")
    return list(seeds)


def _check_mapping(path: Path, key: str, value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _err(path, key, f"got {value!r} (expected a mapping of {what})")
    return value


def _check_row(path: Path, i: int, row: Any, labels: set[str]) -> None:
    where = f"rows[{i}]"
    if not isinstance(row, dict):
        raise _err(path, where, f"got {row!r} (expected a mapping with keys {', '.join(ROW_KEYS)})")
    for key in row:
        if key not in ROW_KEYS:
            raise _err(path, f"{where}.{key}", f"unknown key (expected one of: {', '.join(ROW_KEYS)})")
    label = row.get("label")
    if not isinstance(label, str) or not label.strip():
        raise _err(path, f"{where}.label", f"got {label!r} (expected a non-empty string)")
    if label in labels:
        raise _err(path, f"{where}.label", f"duplicate label {label!r} (expected each row's label to be unique)")
    labels.add(label)
    for name, value in _check_mapping(path, f"{where}.factors", row.get("factors"), "factor names to values").items():
        if name not in FACTORS:
            raise _err(path, f"{where}.factors.{name}", f"unknown factor (expected one of: {', '.join(FACTORS)})")
        expected, convert = FACTORS[name]
        if convert(value) is None:
            raise _err(path, f"{where}.factors.{name}", f"unknown value {value!r} (expected {expected})")
    _check_mapping(path, f"{where}.set", row.get("set"), "dotted config keys to values")
    for name, value in _check_mapping(path, f"{where}.paper", row.get("paper"), "metric names to numbers").items():
        if name not in PAPER_METRICS:
            raise _err(path, f"{where}.paper.{name}", f"unknown metric (expected one of: {', '.join(PAPER_METRICS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _err(path, f"{where}.paper.{name}", f"got {value!r} (expected a number)")


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file's structure (configs are checked by :func:`expand`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read grid file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with keys {', '.join(GRID_KEYS)}")
    for key in raw:
        if key not in GRID_KEYS:
            raise _err(path, str(key), f"unknown key (expected one of: {', '.join(GRID_KEYS)})")
    for key in ("study", "table", "base", "rows"):
        if key not in raw:
            raise _err(path, key, "missing")
    if not isinstance(raw["study"], str) or not raw["study"].strip() or "/" in raw["study"]:
        raise _err(path, "study", f"got {raw['study']!r} (expected a non-empty name without '/')")
    if raw["table"] not in TABLES:
        raise _err(path, "table", f"unknown value {raw['table']!r} (expected one of: {', '.join(TABLES)})")
    if not isinstance(raw["base"], str):
        raise _err(path, "base", f"got {raw['base']!r} (expected a config file: relative to the grid file, absolute, "
                                 "or the name of a file in the project's experiments/)")
    base = resolve_base(raw["base"], path)
    seeds = check_seeds(raw.get("seeds", [0]), f"{path}: seeds")
    rows = raw["rows"]
    if not isinstance(rows, list) or not rows:
        raise _err(path, "rows", f"empty grid: got {rows!r} (expected a non-empty list of rows)")
    labels: set[str] = set()
    for i, row in enumerate(rows):
        _check_row(path, i, row, labels)
    claim_spec(raw.get("claim"), raw["table"], str(path))
    return Grid(path, raw["study"], raw["table"], base, seeds, rows, raw)


def factor_overrides(factors: dict[str, Any]) -> dict[str, Any]:
    """Config overrides of a row's factors, applied in registry order."""
    out: dict[str, Any] = {}
    for name in FACTORS:
        if name in factors:
            out.update(FACTORS[name][1](factors[name]))
    return out


def _names(grid: Grid) -> list[str]:
    """Trial name stem per row: its factors (``head=t_head,assigner=tal``); rows whose factors
    coincide with another row's (or are empty) are told apart by their label."""
    stems = [",".join(f"{k}={v}" for k, v in (row.get("factors") or {}).items()) for row in grid.rows]
    return [s if s and stems.count(s) == 1 else ",".join(filter(None, [f"row={row['label']}", s])) for s, row in zip(stems, grid.rows)]


def _resolve(base: dict, profile: str, layers: list[tuple[str, dict[str, Any]]]) -> Config:
    """Apply override layers in order; the first layer that breaks the config is named in the error."""
    merged: dict[str, Any] = {}
    cfg = build_config(base, layers[0][0], profile=profile)
    for where, overrides in layers[1:]:
        if overrides:
            merged.update(overrides)
            cfg = build_config(base, where, profile=profile, overrides=merged)
    return cfg


def expand(grid: Grid, profile: str = "proxy", seeds: list[int] | None = None, overrides: dict[str, Any] | None = None) -> list[TrialSpec]:
    """Resolve every (row, seed) of ``grid`` into a :class:`TrialSpec` (row-major, seeds inner)."""
    seeds = check_seeds(seeds, "--seeds") if seeds is not None else grid.seeds
    base = load_raw(grid.base)
    trials = []
    for i, (row, stem) in enumerate(zip(grid.rows, _names(grid))):
        factors = dict(row.get("factors") or {})
        layers = [
            (f"{grid.path}: base {grid.raw['base']} (profile {profile})", {}),
            (f"{grid.path}: rows[{i}].factors", factor_overrides(factors)),
            (f"{grid.path}: rows[{i}].set", dict(row.get("set") or {})),
            ("--set", dict(overrides or {})),
        ]
        cfg = _resolve(base, profile, layers)
        for seed in seeds:
            cfg.train.seed = seed
            cfg.data.root = str(Path(cfg.data.root).resolve())  # trials run in their own directories
            if cfg.model.backbone.pretrained:
                cfg.model.backbone.pretrained = str(Path(cfg.model.backbone.pretrained).resolve())
            trials.append(TrialSpec(
                study=grid.study, table=grid.table, row_label=row["label"], row_index=i, factors=factors, seed=seed,
                paper=dict(row.get("paper") or {}), config=copy.deepcopy(to_dict(cfg)), name=f"{stem},seed={seed}",
                profile=profile, grid_file=str(grid.path),
            ))
    return trials


def expand_grid(path: str | Path, profile: str = "proxy", seeds: list[int] | None = None, overrides: dict[str, Any] | None = None) -> list[TrialSpec]:
    """Validate a grid file and resolve all its trials (see module docstring for precedence)."""
    return expand(load_grid(path), profile, seeds, overrides)


def resolved_grid(grid: Grid, seeds: list[int], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The grid as launched (the parent run's grid.yaml): the seeds used, ``--set`` folded into
    every row's ``set:``, ``base`` absolute. Running it again reproduces the launch."""
    raw = copy.deepcopy(grid.raw)
    raw["base"] = str(grid.base.resolve())
    raw["seeds"] = list(seeds)
    if overrides:
        for row in raw["rows"]:
            row["set"] = {**(row.get("set") or {}), **overrides}
    return raw
