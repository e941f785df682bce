"""A study's grid rows, each with its factors and the paper's numbers: read from the launched
grid (``grid.yaml``), else recovered from the trials' tags, and the shape of the grid's claims.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from orchestration.grid import ClaimSpec, claim_spec
from tood.config import ConfigError


@dataclass(frozen=True)
class GridRow:
    """One row of a grid in grid-file order; ``paper`` maps metric name -> the paper's value."""

    index: int
    label: str
    factors: dict[str, str]
    paper: dict[str, float]


def parse_number(value: object, where: str) -> float:
    """``value`` as float ('30,261' -> 30261.0); a ValueError naming ``where`` otherwise."""
    try:
        return float(str(value).replace(",", ""))
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a number") from None


def parse_grid_rows(grid: object) -> list[GridRow]:
    """Rows of a resolved grid: ``{rows: [{label, factors, paper}, ...]}`` or a bare list.

    ``row``/``name`` are accepted for ``label``; without ``factors`` every other key of the
    row is a factor. Repeated labels (one entry per seed) keep their first position.
    """
    items = grid.get("rows") if isinstance(grid, dict) else grid
    if not isinstance(items, list):
        return []
    rows: dict[str, GridRow] = {}
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        label = next((str(item[k]) for k in ("label", "row", "name") if k in item), None)
        if label is None or label in rows:
            continue
        factors = item.get("factors")
        if not isinstance(factors, dict):
            factors = {k: v for k, v in item.items()
                       if k not in ("label", "row", "name", "paper", "seed", "seeds", "index")}
        paper = item.get("paper") if isinstance(item.get("paper"), dict) else {}
        paper = {str(k): parse_number(v, f"grid.yaml: rows[{position}].paper.{k}") for k, v in paper.items()}
        rows[label] = GridRow(len(rows), label, {str(k): str(v) for k, v in factors.items()}, paper)
    return list(rows.values())


def grid_claim(grid: object, table: str, where: str) -> ClaimSpec:
    """The claim shape of a launched grid (its ``claim:``), else the study's default; a grid
    whose claim block cannot be read falls back to the default rather than hide the report."""
    raw = grid.get("claim") if isinstance(grid, dict) else None
    try:
        return claim_spec(raw, table, where)
    except ConfigError:
        return claim_spec(None, table, where)


def rows_from_trials(trials: pd.DataFrame) -> list[GridRow]:
    """Grid rows recovered from the trials' tood.row / tood.row_index / factor / paper tags."""
    rows = []
    for label, group in trials.groupby("row", sort=False):
        first = group.iloc[0]
        factors = {c[len("factor."):]: str(first[c]) for c in trials.columns
                   if c.startswith("factor.") and pd.notna(first[c])}
        rows.append(GridRow(int(group["row_index"].min()), str(label), factors, {}))
    return sorted(rows, key=lambda r: r.index)


def with_tag_paper(row: GridRow, trials: pd.DataFrame) -> GridRow:
    """``row`` with the paper numbers of its trials' tood.paper.* tags (these win over the grid)."""
    own = trials[trials["row"] == row.label]
    paper = dict(row.paper)
    for column in (c for c in trials.columns if c.startswith("paper.")):
        values = own[column].dropna()
        if len(values):
            paper[column[len("paper."):]] = float(values.iloc[0])
    return GridRow(row.index, row.label, row.factors, paper)
