"""Paired seed comparisons of a study and the verdict on each of the paper's claims.

Every pair of reports.pairs is compared on each of the layout's paper metrics that both rows
have a paper number for (the paper's direction is the sign of its difference); top-m's pairs
are compared on AP against the "flat" claim: within +-0.5 AP of m = 13 (reports.stats.BAND).
A comparison is a *claim* when it is one of the paper's statements (CLAIM_METRICS): T-head >
parallel per detector (Table 1, AP), the ordering of each assignment against ATSS (Table 2,
AP), TOOD > ATSS (Table 3, AP), top-m flat (AP), (1.0, 6) best (Table 4, AP), and in Table 6
PCC and top-10 IoU higher, #redundant and #error lower than parallel head + ATSS.

A launch whose seeds were chosen by looks at the claims (``tood-ablate run --until-decided``,
its parent tagged with the design: reports.claim_tests.SequentialDesign) has its claims decided
as the rounds decided them: at the first look that decides, at alpha / K (reports.claim_tests.decide);
a fixed test at 0.025 on the seeds it stopped at would spend the looks' error rate again.

Every claim is worded as Δ reads: row minus reference ("(0.5, 2) < (1.0, 6)" where the paper has
Δ -0.1). A comparison gets no verdict, and says why, when a row of it did not train
(AP < reports.tables.TRAINED_AP) or when it has fewer than two seeds (the reason names the
command that adds them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from orchestration.grid import ClaimSpec, claim_spec
from reports.cells import NO_VALUE, fmt_delta, metric_label, metric_value
from reports.claim_tests import SequentialDesign, decide
from reports.layouts import PAPER_COLUMNS
from reports.paired_tests import MARGIN, ClaimTest, claim_test
from reports.pairs import Pair, delta_note, pairs
from reports.stats import (AGREES, BAND, DISAGREES, GREATER, INCONCLUSIVE, LEVEL, NONE, PAIRED, WELCH, WITHIN,
                           Difference, difference, expectation, verdict)
from reports.tables import TRAINED_AP, RowSummary, Table, untrained

CLAIM_METRICS = {"table1": ("AP",), "table2": ("AP",), "table3": ("AP",), "topm": ("AP",), "table4": ("AP",),
                 "table6": ("PCC", "top10_iou", "n_redundant", "n_error")}
RELATION = {GREATER: ">", "less": "<"}
NEEDS_SEEDS = "needs >= 2 seeds"
NOT_TRAINED = "did not train long enough to compare"
BEFORE_FIRST_LOOK = "before the first look"


@dataclass(frozen=True)
class Comparison:
    """``row`` minus ``ref`` on ``metric``: the paper's difference, ours over seeds, the verdict.

    expect: the claim tested (reports.stats GREATER / LESS / WITHIN); claim: its text;
    is_claim: one of the paper's headline statements (counted in the claims table's tally);
    reason: why there is no verdict (NEEDS_SEEDS / NOT_TRAINED and what to do; '' when the
    interval decides the verdict). Without a verdict, ``verdict`` is INCONCLUSIVE.
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
    reason: str = ""
    shape: str = "direction"  # the claim's shape (orchestration.grid.CLAIM_SHAPES); other comparisons: direction
    delta: float = 0.0  # margin / equivalence bound, the metric's units
    test: ClaimTest | None = None  # the paired test (None: unpaired or no interval)
    design: SequentialDesign | None = None  # the looks that decided it (a claim of an --until-decided launch)


def seed_values(trials: pd.DataFrame, label: str, metric: str) -> dict[int, float]:
    """seed -> the metric of row ``label``'s FINISHED trials (NaN / absent values left out)."""
    if metric not in trials.columns or not len(trials):
        return {}
    own = trials[(trials["row"] == label) & (trials["status"] == "FINISHED")]
    return {int(s): float(v) for s, v in zip(own["seed"], own[metric]) if pd.notna(v)}


def claim_text(table: str, pair: Pair, metric: str, expect: str, shape: str = "direction", delta: float = 0.0) -> str:
    """The statement a comparison tests, in the paper's words where it has some; a margin claim
    adds its bound ('by >= 1 AP')."""
    row, ref, name = pair.row.label, pair.ref.label, metric_label(metric)
    if expect == WITHIN:
        return f"{row} within ±{delta:g} {name} of {ref}"
    by = f" by >= {delta:g}" if shape == "margin" else ""
    if table == "table1":
        return f"{pair.group}: T-head {RELATION[expect]} parallel head{by} ({name})"
    return f"{row} {RELATION[expect]} {ref}{by} ({name})"


ONE_SIDED = (1 - LEVEL) / 2  # each claim's one-sided level: its two-sided (1 - 2a) interval is the 95% CI


def paired_test(row: dict[int, float], ref: dict[int, float], diff: Difference, expect: str, shape: str,
                delta: float, design: SequentialDesign | None = None) -> ClaimTest | None:
    """The claim's test on the paired differences (row minus reference over ``diff.seeds``):
    direction -> one-sided paired t, margin -> minimum-effect t (in the paper's direction),
    equivalence -> TOST; None unless paired with n >= 2. With a ``design``: the test at the first
    of its looks that decides (None before the first look)."""
    if diff.kind != PAIRED or len(diff.seeds) < 2:
        return None
    d = [row[s] - ref[s] for s in diff.seeds]
    if expect == WITHIN:
        tested = d, WITHIN, delta
    elif shape == "margin":  # the gain in the paper's direction is at least delta
        tested = d if expect == GREATER else [-x for x in d], MARGIN, delta
    else:
        tested = d, expect, 0.0
    if design is None:
        return claim_test(*tested, ONE_SIDED)
    if len(d) < design.looks[0]:
        return None
    return decide(*tested, None, design.looks, design.alpha).test


def no_verdict(pair: Pair, diff: Difference, rerun: str = "", design: SequentialDesign | None = None) -> str:
    """Why ``pair`` gets no verdict ('' when it gets one): a row below TRAINED_AP, no interval
    (fewer than two seeds; ``rerun``: the command that adds seeds), or with a ``design`` fewer
    paired seeds than its first look."""
    low = [r.label for r in (pair.row, pair.ref) if untrained(r)]
    if low:
        return f"{NOT_TRAINED} (AP < {TRAINED_AP:g}: {', '.join(low)})"
    if diff.kind == NONE:
        return f"{NEEDS_SEEDS}: {rerun}" if rerun else NEEDS_SEEDS
    if design is not None and (diff.kind != PAIRED or len(diff.seeds) < design.looks[0]):
        return f"{BEFORE_FIRST_LOOK} ({design.looks[0]} paired seeds)"
    return ""


def compare(study: str, table: str, rows: list[RowSummary], trials: pd.DataFrame, rerun: str = "",
            claim: ClaimSpec | None = None, design: SequentialDesign | None = None) -> list[Comparison]:
    """Every comparison of layout ``table`` (see the module docstring), in pair order. ``rerun``:
    the command that trains more seeds of this study, for the comparisons that have fewer than two.
    ``claim``: the shape of the study's claims (the grid's ``claim:``; default: the study's, see
    orchestration.grid.DEFAULT_CLAIMS); the paper's other columns are compared as directions.
    ``design``: the looks the launch chose its seeds by; its claims are decided at them (the other
    comparisons, which chose no seeds, by the fixed test)."""
    spec = claim or claim_spec(None, table, study)
    out = []
    for pair in pairs(table, rows):
        for metric in PAPER_COLUMNS.get(table, ()):
            is_claim = metric in CLAIM_METRICS.get(table, ())
            shape, delta = (spec.shape, spec.delta) if is_claim else ("direction", 0.0)
            paper_delta = metric_value(pair.row.paper, metric) - metric_value(pair.ref.paper, metric)
            expect = WITHIN if shape == "equivalence" else expectation(paper_delta)
            if expect is None:
                continue
            row, ref = seed_values(trials, pair.row.label, metric), seed_values(trials, pair.ref.label, metric)
            diff = difference(row, ref)
            claim_design = design if is_claim else None  # the looks chose seeds for the claims only
            reason = no_verdict(pair, diff, rerun, claim_design)
            test = paired_test(row, ref, diff, expect, shape, delta, claim_design)
            judged = test.verdict if test is not None else verdict(diff, expect, delta or BAND)
            out.append(Comparison(study, table, pair.row.label, pair.ref.label, pair.group, metric, paper_delta,
                                  expect, claim_text(table, pair, metric, expect, shape, delta), is_claim, diff,
                                  INCONCLUSIVE if reason else judged, reason, shape, delta, test, claim_design))
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


def fmt_verdict(c: Comparison) -> str:
    """The verdict, or why there is none."""
    return c.reason or c.verdict


def fmt_paper(c: Comparison) -> str:
    """The paper's Δ; for the top-m claim the band its text gives (every m 42.0-42.5 AP)."""
    if c.expect == WITHIN and math.isnan(c.paper_delta):
        return f"within ±{c.delta:g}"
    return fmt_delta(c.paper_delta, c.metric)


def fmt_test(c: Comparison) -> str:
    """The test and its p-value: 'one-sided paired t, p=0.003'; unpaired: 'Welch t (unpaired)'."""
    if c.test is not None and c.design is not None:
        return f"{c.test.test} at n={c.test.n} (one-sided {c.test.level:.3g}), p={c.test.p_value:.2g}"
    if c.test is not None:
        return f"{c.test.test}, p={c.test.p_value:.2g}"
    return {PAIRED: "paired t", WELCH: "Welch t (unpaired)"}.get(c.diff.kind, "none (n < 2)")


NOTES = [
    delta_note(),
    "Ours: mean ± sample std (ddof=1) of the per-seed differences over the n seeds both rows finished "
    "(paired); 95% CI: Student's t interval over those differences (scipy.stats.t, n - 1 degrees of "
    "freedom). With fewer than two shared seeds but two or more in each row: Welch's unpaired t interval "
    "(n: seeds of the row / of the reference). n < 2: no interval.",
    "Verdict, by the claim's shape (the grid's claim:), each test one-sided at 0.025 so that it agrees "
    "exactly when the 95% CI excludes the null on the claim's side: a direction (the sign of the paper's Δ) "
    "by a one-sided paired t, agreeing when the CI excludes 0 on the paper's side and disagreeing when it "
    "excludes 0 on the other; a margin ('by >= δ') by a minimum-effect t on Δ - δ, disagreeing when Δ < δ "
    "is shown; an equivalence ('within ±δ') by TOST, agreeing when the CI lies inside [-δ, +δ] and "
    "disagreeing when Δ is shown outside the band (each side at 0.0125). Otherwise inconclusive "
    "(or there is no CI). p: the test's p-value (TOST: the larger of its two).",
]
# A study's claims table gives no verdict without a CI, so its verdict note drops "(or there is no CI)".
VERDICT_NOTE = NOTES[2].replace(" (or there is no CI)", "")
NO_VERDICT_NOTE = (
    f"No verdict: '{NEEDS_SEEDS}' when a comparison has no interval (fewer than two seeds; the cell gives "
    f"the command that trains them; finished trials are reused), '{NOT_TRAINED}' when a row's AP is below "
    f"{TRAINED_AP:g} (a detector that learned anything lands far above it).")


def tally(claims: list[Comparison]) -> str:
    """'2 agree, 0 disagree, 1 inconclusive, 2 without a verdict (1 with fewer than 2 seeds, 1 not trained).'"""
    judged = [c for c in claims if not c.reason]
    text = ", ".join(f"{sum(c.verdict == v for c in judged)} {w}" for v, w in
                     ((AGREES, "agree"), (DISAGREES, "disagree"), (INCONCLUSIVE, "inconclusive")))
    why = {NEEDS_SEEDS: "with fewer than 2 seeds", NOT_TRAINED: "not trained", BEFORE_FIRST_LOOK: BEFORE_FIRST_LOOK}
    counts = {w: sum(c.reason.startswith(r) for c in claims) for r, w in why.items()}
    if len(judged) < len(claims):
        text += f", {len(claims) - len(judged)} without a verdict ("
        text += ", ".join(f"{n} {w}" for w, n in counts.items() if n) + ")"
    return text + "."


def comparisons_table(key: str, caption: str, comparisons: list[Comparison], with_study: bool = False,
                      claims_only: bool = False, table: str | None = None, coco: bool = False) -> Table:
    """One line per claim, then (unless ``claims_only``) per other comparison of the same pairs:
    Δ paper, Δ ours, n, 95% CI, test, verdict. ``table``: the layout (None: several, the summary);
    ``coco``: label the paper's Δ as COCO numbers (our data is not COCO)."""
    claims = [c for c in comparisons if c.is_claim]
    chosen = claims + ([] if claims_only else [c for c in comparisons if not c.is_claim])
    header = (["Study"] if with_study else []) + ["Claim", "Metric", "Δ paper (COCO)" if coco else "Δ paper",
                                                  "Δ ours", "n", "95% CI", "Test", "Verdict"]
    body = [([c.study] if with_study else [])
            + [c.claim, metric_label(c.metric), fmt_paper(c), fmt_ours(c.diff, c.metric), fmt_n(c.diff),
               NO_VALUE if c.reason.startswith(NOT_TRAINED) else fmt_interval(c.diff, c.metric), fmt_test(c),
               fmt_verdict(c)]
            for c in chosen]
    if not chosen:
        return Table(key, caption, header, body, ["No comparison: the grid lacks the paired rows (or their paper "
                                                  "numbers)."])
    notes = [f"The paper's claims: {tally(claims)}", delta_note(table)]
    if len(chosen) > len(claims):
        notes.insert(1, f"Rows {len(claims) + 1}-{len(chosen)}: the same pairs on the paper's other columns "
                        "(the paper states no claim on them; not in the tally).")
    if coco:
        notes.append("Δ paper (COCO): the paper's Δ, on COCO; ours is on other data, so compare signs, not sizes.")
    designs = sorted({c.design for c in chosen if c.design is not None}, key=repr)
    return Table(key, caption, header, body,
                 notes + [NOTES[1], VERDICT_NOTE] + [design_note(d) for d in designs] + [NO_VERDICT_NOTE])


def design_note(design: SequentialDesign) -> str:
    """How the claims of an --until-decided launch were decided."""
    looks = ",".join(map(str, design.looks))
    return (f"Claims whose test reads 'at n=': their launch chose its seeds by looks at the claims (--until-decided, "
            f"looks at {looks} paired seeds, alpha {design.alpha:g} one-sided per claim over all its looks). Their "
            f"verdict is the test at the first look that decides, on the first n paired seeds, at alpha / "
            f"{len(design.looks)} = {design.level:.3g} one-sided (a Bonferroni split, reports/claim_tests.py; the "
            "verdicts of `tood-ablate claims`), not the fixed test above; the 95% CI column is over all paired seeds "
            f"and only describes them. Fewer paired seeds than the first look: '{BEFORE_FIRST_LOOK}'.")
