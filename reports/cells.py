"""Cell text and row lookup shared by the table layouts and the plots.

Factor names follow the grid file (tags ``tood.factor.<name>``); a layout asks for the last
part of the name, so ``alpha`` finds ``alpha`` or ``criterion.alpha`` and ``head`` also
finds ``model.head.type``.
"""

from __future__ import annotations

import math
import re
from typing import Protocol

NO_VALUE = "-"
METRIC_LABELS = {"PCC": "PCC top-50", "top10_iou": "IoU top-10", "n_correct": "#correct",
                 "n_redundant": "#redundant", "n_error": "#error"}
COUNT_METRICS = ("n_correct", "n_redundant", "n_error")
T_HEAD = re.compile(r"(?i)\bt[-_ ]?head\b")
PARALLEL = re.compile(r"(?i)\bparallel(\s+head)?\b")


class Row(Protocol):
    label: str
    factors: dict[str, str]


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def paper_header(name: str, coco: bool = False) -> str:
    """The header of a paper column: 'AP (paper)'; 'AP (paper, COCO)' where our data is not COCO,
    so that the paper's numbers are not read as numbers on our data."""
    return f"{name} (paper, COCO)" if coco else f"{name} (paper)"


def decimals(metric: str) -> int:
    """Digits after the point: 1 for AP (0-100, as the paper), 0 for counts, 3 otherwise."""
    if metric in COUNT_METRICS:
        return 0
    return 1 if metric.startswith("AP") or metric == "epoch_AP" else 3


def metric_value(values: dict[str, float], metric: str) -> float:
    """``values[metric]`` as float, NaN when absent."""
    value = values.get(metric)
    return math.nan if value is None else float(value)


def fmt_value(value: float, metric: str) -> str:
    """'40.3', '0.408', '30,261'; NO_VALUE for NaN."""
    return NO_VALUE if math.isnan(value) else f"{value:,.{decimals(metric)}f}"


def fmt_constant(value: float, metric: str) -> str:
    """A value the table leaves out because every row has it: '769' for a whole number, else as
    fmt_value, with 3 significant digits where that would print a non-zero value as 0."""
    if float(value).is_integer():
        return f"{int(value):,}"
    text = fmt_value(value, metric)
    return f"{value:.3g}" if float(text.replace(",", "")) == 0 else text


def fmt_delta(value: float, metric: str) -> str:
    """Signed difference, '+1.9' / '-0.4'; NO_VALUE for NaN."""
    return NO_VALUE if math.isnan(value) else f"{value:+,.{decimals(metric)}f}"


def factor(factors: dict[str, str], *names: str) -> str | None:
    """Value of the first factor whose dotted name ends in one of ``names`` (or ``<name>.type``)."""
    for name in names:
        for key, value in factors.items():
            if any(key == n or key.endswith("." + n) for n in (name, name + ".type")):
                return value
    return None


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]", "", text.lower())


def _same(value: str, want: object) -> bool:
    if isinstance(want, float):
        try:
            return float(value) == want
        except ValueError:
            return False
    return _norm(value) == _norm(str(want))


def find_row(rows: list[Row], label: str, **factors: object) -> Row | None:
    """The row labelled ``label`` (ignoring case, spaces, '-' and '_'), else the first row whose
    factors all equal ``factors`` (floats compare numerically; ``head`` by head_kind), else None."""
    for row in rows:
        if _norm(row.label) == _norm(label):
            return row
    for row in rows:
        if all(_same(head_kind(row), want) if name == "head"
               else (v := factor(row.factors, name)) is not None and _same(v, want)
               for name, want in factors.items()):
            return row
    return None


def head_kind(row: Row) -> str:
    """'T-head' or 'parallel', from the head factor or else the row label."""
    return "T-head" if T_HEAD.search(factor(row.factors, "head") or row.label) else "parallel"


def numbers_in(label: str) -> list[float]:
    """The numbers written in a row label: '(0.5, 2)' -> [0.5, 2.0]."""
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", label)]


def top_m(row: Row) -> float:
    """TAL's top-m of a row: the topk / top_m / m factor, else the first number of the label, else NaN."""
    value = factor(row.factors, "topk", "top_m", "m")
    return float(value) if value is not None else (numbers_in(row.label) or [math.nan])[0]


def strip_head(label: str) -> str:
    """The row label without its head words: 'FCOS, T-head' -> 'FCOS'."""
    stripped = PARALLEL.sub("", T_HEAD.sub("", label))
    return stripped.strip(" ,+/()-_") or label
