"""Paired seed comparisons of a study and the verdict on each of the paper's claims.

Every pair of reports.pairs is compared on each of the layout's paper metrics that both rows
have a paper number for (the paper's direction is the sign of its difference); top-m's pairs
are compared on AP against the "flat" claim: within +-0.5 AP of m = 13 (reports.stats.BAND).
A comparison is a *claim* when it is one of the paper's statements (CLAIM_METRICS): T-head >
parallel per detector (Table 1, AP), the ordering of each assignment against ATSS (Table 2,
AP), TOOD > ATSS (Table 3, AP), top-m flat (AP), (1.0, 6) best (Table 4, AP), and in Table 6
PCC and top-10 IoU higher, #redundant and #error lower than parallel head + ATSS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from reports.cells import NO_VALUE, fmt_delta, metric_label, metric_value
from reports.pairs import Pair, pairs
from reports.stats import (AGREES, BAND, DISAGREES, GREATER, INCONCLUSIVE, NONE, PAIRED, VERDICTS, WELCH, WITHIN,
                           Difference, difference, expectation, verdict)
from reports.tables import PAPER_COLUMNS, RowSummary, Table

CLAIM_METRICS = {"table1": ("AP",), "table2": ("AP",), "table3": ("AP",), "topm": ("AP",), "table4": ("AP",),
                 "table6": ("PCC", "top10_iou", "n_redundant", "n_error")}
RELATION = {GREATER: ">", "less": "<"}


@dataclass(frozen=True)
class Comparison:
    """``row`` minus ``ref`` on ``metric``: the paper's difference, ours over seeds, the verdict.

    expect: the claim tested (reports.stats GREATER / LESS / WITHIN); claim: its text;
    is_claim: one of the paper's headline statements (shown in the claims table).
    """

    study: str
    table: str
    row: str
    ref: str
    group: str
    metric: str
    paper_delta: float
    expect: str
    claim: str
    is_claim: bool
    diff: Difference
    verdict: str


def seed_values(trials: pd.DataFrame, label: str, metric: str) -> dict[int, float]:
    """seed -> the metric of row ``label``'s FINISHED trials (NaN / absent values left out)."""
    if metric not in trials.columns or not len(trials):
        return {}
    own = trials[(trials["row"] == label) & (trials["status"] == "FINISHED")]
    return {int(s): float(v) for s, v in zip(own["seed"], own[metric]) if pd.notna(v)}


def claim_text(table: str, pair: Pair, metric: str, expect: str) -> str:
    """The statement a comparison tests, in the paper's words where it has some."""
    row, ref, name = pair.row.label, pair.ref.label, metric_label(metric)
    if expect == WITHIN:
        return f"{row} within ±{BAND:g} {name} of {ref}"
    if table == "table1":
        return f"{pair.group}: T-head {RELATION[expect]} parallel head ({name})"
    if table == "table4" and expect == "less":
        return f"{ref} above {row} ({name})"
    return f"{row} {RELATION[expect]} {ref} ({name})"


def compare(study: str, table: str, rows: list[RowSummary], trials: pd.DataFrame) -> list[Comparison]:
    """Every comparison of layout ``table`` (see the module docstring), in pair order."""
    metrics = PAPER_COLUMNS.get(table, ())
    out = []
    for pair in pairs(table, rows):
        for metric in metrics:
            paper_delta = metric_value(pair.row.paper, metric) - metric_value(pair.ref.paper, metric)
            expect = WITHIN if table == "topm" else expectation(paper_delta)
            if expect is None:
                continue
            diff = difference(seed_values(trials, pair.row.label, metric), seed_values(trials, pair.ref.label, metric))
            out.append(Comparison(study, table, pair.row.label, pair.ref.label, pair.group, metric, paper_delta,
                                  expect, claim_text(table, pair, metric, expect),
                                  metric in CLAIM_METRICS.get(table, ()), diff, verdict(diff, expect)))
    return out


def fmt_interval(diff: Difference, metric: str) -> str:
    """'[+0.3, +2.1]'; NO_VALUE without an interval."""
    if diff.kind == NONE:
        return NO_VALUE
    return f"[{fmt_delta(diff.lo, metric)}, {fmt_delta(diff.hi, metric)}]"


def fmt_ours(diff: Difference, metric: str) -> str:
    """Mean difference with the std of the paired differences: '+1.2 ± 0.4'; Welch: the
    difference of the means; one seed: the single difference."""
    if math.isnan(diff.mean):
        return NO_VALUE
    if diff.kind == PAIRED:
        return f"{fmt_delta(diff.mean, metric)} ± {fmt_delta(diff.std, metric).lstrip('+')}"
    return fmt_delta(diff.mean, metric)


def fmt_n(diff: Difference) -> str:
    """'3' paired (', seed 4 unpaired' when a row lacks a seed), '3 / 2' for Welch."""
    if diff.kind == WELCH:
        return f"{diff.n_row} / {diff.n_ref}"
    text = str(len(diff.seeds))
    if diff.dropped:
        text += f" (seed{'s' * (len(diff.dropped) > 1)} {', '.join(map(str, diff.dropped))} in one row only)"
    return text


def fmt_paper(c: Comparison) -> str:
    """The paper's Δ; for the top-m claim the band its text gives (every m 42.0-42.5 AP)."""
    if c.expect == WITHIN and math.isnan(c.paper_delta):
        return f"within ±{BAND:g}"
    return fmt_delta(c.paper_delta, c.metric)


def fmt_test(diff: Difference) -> str:
    return {PAIRED: "paired t", WELCH: "Welch t (unpaired)"}.get(diff.kind, "none (n < 2)")


NOTES = [
    "Δ: the row minus its reference (Table 1: T-head minus the parallel head of the same detector; "
    "Table 3: TOOD minus ATSS with the same anchors), in the metric's units.",
    "Ours: mean ± sample std (ddof=1) of the per-seed differences over the n seeds both rows finished "
    "(paired); 95% CI: Student's t interval over those differences (scipy.stats.t, n - 1 degrees of "
    "freedom). With fewer than two shared seeds but two or more in each row: Welch's unpaired t interval "
    "(n: seeds of the row / of the reference). n < 2: no interval.",
    "Verdict for a direction claim (the sign of the paper's Δ): agrees when the CI excludes 0 on the "
    "paper's side, disagrees when it excludes 0 on the other side, inconclusive when it holds 0 "
    "(or there is no CI). Top-m 'within ±0.5': agrees when the CI lies inside [-0.5, +0.5], disagrees "
    "when it lies wholly outside, inconclusive when it straddles an edge.",
]


def comparisons_table(key: str, caption: str, comparisons: list[Comparison], with_study: bool = False,
                      claims_only: bool = False) -> Table:
    """One line per comparison (or per claim): Δ paper, Δ ours, n, 95% CI, test, verdict."""
    chosen = [c for c in comparisons if c.is_claim or not claims_only]
    header = (["Study"] if with_study else []) + ["Claim" if claims_only else "Comparison", "Metric",
                                                  "Δ paper", "Δ ours", "n", "95% CI", "Test", "Verdict"]
    body = [([c.study] if with_study else [])
            + [c.claim, metric_label(c.metric), fmt_paper(c), fmt_ours(c.diff, c.metric),
               fmt_n(c.diff), fmt_interval(c.diff, c.metric), fmt_test(c.diff), c.verdict]
            for c in chosen]
    counts = {v: sum(c.verdict == v for c in chosen) for v in VERDICTS}
    notes = [f"{counts[AGREES]} agree, {counts[DISAGREES]} disagree, {counts[INCONCLUSIVE]} inconclusive."]
    if not chosen:
        notes = ["No comparison: the grid lacks the paired rows (or their paper numbers)."]
    return Table(key, caption, header, body, notes + NOTES)
