"""The headline table: every claim of the paper in one short table, the claims that read alike on one line.

Claims of a study that differ only in their subject (the row compared; for Table 1 the detector)
share a line: "FoveaBox / ATSS anchor-free / ...: T-head > parallel head (AP)", with one cell per
claim in each column, joined by " / ". Each claim shows the difference its verdict was decided on
and that test's interval (the two-sided 1 - 2a t interval at its one-sided level a, so a verdict
agrees exactly when the interval excludes the null on the claim's side), the seeds it used and the
verdict. ``tood-ablate publish --readme README.md`` puts it between the README's markers.
"""
from __future__ import annotations

import math
from collections import defaultdict

from reports.cells import NO_VALUE, fmt_delta
from reports.claims import Comparison, fmt_paper, fmt_verdict, tally
from reports.stats import LESS, PAIRED
from reports.tables import Table

HEADLINE = "summary_headline"
NO_VERDICT = "no verdict"


def subject(c: Comparison) -> str:
    """What a claim says something about: the detector in Table 1, else the row."""
    return c.group if c.table == "table1" and c.group else c.row


def verdict_interval(c: Comparison) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n) of row minus reference that the verdict read: its test's (the seeds it
    used, at its level); without a test, the 95% interval over the shared seeds (NaN without one)."""
    if c.test is None:
        n = len(c.diff.seeds) if c.diff.kind == PAIRED else min(c.diff.n_row, c.diff.n_ref)
        return c.diff.mean, c.diff.lo, c.diff.hi, n
    t = c.test
    if c.shape == "margin" and c.expect == LESS:  # tested on reference minus row
        return -t.mean, -t.hi, -t.lo, t.n
    return t.mean, t.lo, t.hi, t.n


def _joined(cells: list[str]) -> str:
    """Cells joined by ' / '; one cell when they are all the same."""
    return cells[0] if len(set(cells)) == 1 else " / ".join(cells)


def _ours(c: Comparison) -> str:
    mean, lo, hi, _n = verdict_interval(c)
    if math.isnan(mean):
        return NO_VALUE
    if math.isnan(lo):
        return fmt_delta(mean, c.metric)
    return f"{fmt_delta(mean, c.metric)} [{fmt_delta(lo, c.metric)}, {fmt_delta(hi, c.metric)}]"


def headline_table(comparisons: list[Comparison]) -> Table:
    """One line per group of claims that read alike (see the module docstring), in claim order."""
    groups: dict[tuple[str, str], list[Comparison]] = defaultdict(list)
    for c in comparisons:
        if c.is_claim:
            groups[(c.study, c.claim.replace(subject(c), "{}", 1))].append(c)
    body = []
    for (study, template), alike in groups.items():
        body.append([study, template.replace("{}", " / ".join(subject(c) for c in alike), 1),
                     _joined([fmt_paper(c) for c in alike]), " / ".join(_ours(c) for c in alike),
                     _joined([str(verdict_interval(c)[3]) for c in alike]),
                     _joined([NO_VERDICT if c.reason else fmt_verdict(c) for c in alike])])
    claims = [c for c in comparisons if c.is_claim]
    levels = sorted({c.test.level for c in claims if c.test is not None})
    notes = [f"{len(claims)} claims: {tally(claims)}",
             "Ours: row minus reference, the mean over the n paired seeds the verdict was decided on, and the "
             "two-sided t interval of that test at 1 - 2a for its one-sided level a "
             f"({', '.join(f'a = {a:.3g}: {100 * (1 - 2 * a):.4g}%' for a in levels) or 'no test'}), so a verdict "
             "agrees exactly when its interval excludes the null on the claim's side. Every claim with its test and "
             "p-value: summary_claims."]
    return Table(HEADLINE, "The paper's claims and the verdicts, in short",
                 ["Study", "Claim", "Δ paper", "Δ ours [interval]", "n", "Verdict"], body, notes)
