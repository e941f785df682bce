"""Which rows the paper compares: the reference row of a layout and the (row, reference) pairs.

Found from the rows' factors (grid file ``factors:``), with the row label as the fallback,
so a grid with rows missing, reordered or relabelled still pairs what it has:

* table1: per detector (``detector`` factor, else the label without its head words), the
  T-head row minus the parallel-head row.
* table2: every row minus ATSS; table4: every (alpha, beta) minus (1.0, 6); table6: every row
  minus parallel head + ATSS; topm: every m minus m = 13.
* table3: per anchor type, TOOD (T-head + TAL) minus ATSS (parallel head, ATSS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

from reports.cells import Row, factor, find_row, head_kind, strip_head, top_m

R = TypeVar("R", bound=Row)
DETECTOR_ANCHOR = {"atss_af": "anchor-free", "atss_ab": "anchor-based"}
REFERENCE_NAMES = {"table2": "ATSS", "table4": "(1.0, 6)", "table6": "parallel head + ATSS", "topm": "m=13"}
# The reference of every layout's comparisons, in words (table1 and table3 pair per group).
REFERENCE_TEXT = {"table1": "the parallel head of the same detector", "table2": "ATSS",
                  "table3": "ATSS with the same anchors", "table4": "(1.0, 6)", "table6": "parallel head + ATSS",
                  "topm": "m=13"}
SHORT_NAMES = {"table1": "Table 1", "table2": "Table 2", "table3": "Table 3", "table4": "Table 4",
               "table6": "Table 6", "topm": "top-m"}


@dataclass(frozen=True)
class Pair(Generic[R]):
    """``row`` minus ``ref``; ``group`` names the pair where the layout has several references
    (the detector in table1, the anchor type in table3), '' otherwise."""

    row: R
    ref: R
    group: str = ""


def delta_note(table: str | None = None) -> str:
    """The one definition of Δ, for layout ``table`` (None: every layout's reference)."""
    text = ("Δ: row minus reference, in the metric's units; each claim is worded in that direction "
            "('row > reference' holds when Δ > 0, 'row < reference' when Δ < 0). The reference: ")
    if table in REFERENCE_TEXT:
        return text + REFERENCE_TEXT[table] + "."
    return text + "; ".join(f"{SHORT_NAMES[t]}: {ref}" for t, ref in REFERENCE_TEXT.items()) + "."


def detector_name(row: Row) -> str:
    """Table 1's detector of a row: the ``detector`` factor, else the label without head words."""
    return factor(row.factors, "detector") or strip_head(row.label)


def anchor_kind(row: Row) -> str:
    """'anchor-based' or 'anchor-free': the anchor_type factor, the detector, else the label."""
    value = factor(row.factors, "anchor_type") or DETECTOR_ANCHOR.get(factor(row.factors, "detector") or "", "")
    text = (value or row.label).lower().replace("_", "-")
    return "anchor-based" if "anchor-based" in text else "anchor-free"


def _assigner(row: Row) -> str:
    detector = factor(row.factors, "detector") or ""
    return (factor(row.factors, "assigner") or ("atss" if detector in DETECTOR_ANCHOR else "")).lower()


def is_tood(row: Row) -> bool:
    """T-head trained with TAL (the full model), by factors, else a label starting 'TOOD'."""
    if row.factors:
        return head_kind(row) == "T-head" and _assigner(row) == "tal"
    return row.label.lower().startswith("tood")


def is_atss_baseline(row: Row) -> bool:
    """Parallel head trained with ATSS, by factors, else a label starting 'ATSS'."""
    if row.factors:
        return head_kind(row) == "parallel" and _assigner(row) == "atss"
    return row.label.lower().startswith("atss")


def reference(table: str, rows: list[R]) -> R | None:
    """The single reference row of a table2 / table4 / table6 / topm layout (None otherwise)."""
    if table == "table2":
        return find_row(rows, "ATSS", head="parallel", assigner="atss")
    if table == "table4":
        return find_row(rows, "(1.0, 6)", alpha=1.0, beta=6.0)
    if table == "table6":
        return find_row(rows, "parallel head + ATSS", head="parallel", assigner="atss")
    if table == "topm":
        return next((r for r in rows if top_m(r) == 13), None)
    return None


def pairs(table: str, rows: list[R]) -> list[Pair[R]]:
    """Every (row, reference) comparison the paper makes in layout ``table``, in row order."""
    if table == "table1":
        groups: dict[str, dict[str, R]] = {}
        for row in rows:
            groups.setdefault(detector_name(row), {}).setdefault(head_kind(row), row)
        return [Pair(h["T-head"], h["parallel"], strip_head(h["parallel"].label)) for h in groups.values()
                if "T-head" in h and "parallel" in h]
    if table == "table3":
        base = {anchor_kind(r): r for r in reversed(rows) if is_atss_baseline(r)}
        return [Pair(r, base[anchor_kind(r)], anchor_kind(r)) for r in rows
                if is_tood(r) and anchor_kind(r) in base]
    ref = reference(table, rows)
    if ref is None:
        return []
    others = [r for r in rows if r is not ref]
    if table == "topm":
        others = sorted(others, key=lambda r: (math.isnan(top_m(r)), top_m(r)))
    return [Pair(r, ref) for r in others]
