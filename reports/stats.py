"""Seed statistics of a comparison: one row minus its reference row, and a verdict on a claim.

The difference is taken per seed over the seeds both rows finished (a paired design: the
seed fixes the initialisation and the data order, so pairing removes that variance). Its
95% interval is Student's t over those n paired differences (``scipy.stats.t``, n - 1
degrees of freedom). With fewer than two shared seeds but at least two seeds in each row
the rows are compared unpaired with Welch's t interval (Welch-Satterthwaite degrees of
freedom). With less than that there is no interval (kind ``none``) and the verdict is
inconclusive. Differences that are all equal have std 0 and a zero-width interval.

Units are the metric's own (AP in points 0-100, PCC unitless, counts in detections).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95
BAND = 0.5  # "flat" claims (top-m): the difference stays within +-BAND of the reference
PAIRED, WELCH, NONE = "paired", "welch", "none"
AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"
VERDICTS = (AGREES, DISAGREES, INCONCLUSIVE)
GREATER, LESS, WITHIN = "greater", "less", "within"


@dataclass(frozen=True)
class Difference:
    """Row minus reference for one metric.

    kind: PAIRED (over ``seeds``), WELCH (unpaired: fewer than two shared seeds) or NONE (no
    interval). mean: mean difference (paired) or difference of the means (Welch, none).
    std: sample std (ddof=1) of the paired differences, 0.0 when they are all equal, NaN
    unless paired with n >= 2. n_row / n_ref: seeds with a value in each row; seeds: the
    paired seeds; dropped: seeds that only one of the two rows has. lo, hi: the 95% interval
    (NaN for NONE).
    """

    kind: str
    mean: float
    std: float
    n_row: int
    n_ref: int
    seeds: tuple[int, ...]
    dropped: tuple[int, ...]
    lo: float
    hi: float


def _t_interval(mean: float, se: float, df: float) -> tuple[float, float]:
    """``mean`` +- t_{0.975, df} * se; a zero-width interval when se == 0 (scipy gives NaN)."""
    if se == 0:
        return mean, mean
    lo, hi = stats.t.interval(LEVEL, df, loc=mean, scale=se)
    return float(lo), float(hi)


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean of ``values`` and its 95% Student-t interval (NaN bounds with fewer than 2 values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    lo, hi = _t_interval(mean, statistics.stdev(values) / math.sqrt(len(values)), len(values) - 1)
    return mean, lo, hi


def difference(row: dict[int, float], ref: dict[int, float]) -> Difference:
    """``row`` minus ``ref``; both map seed -> the metric's value (NaN values are ignored)."""
    row = {s: v for s, v in row.items() if not math.isnan(v)}
    ref = {s: v for s, v in ref.items() if not math.isnan(v)}
    shared = tuple(sorted(row.keys() & ref.keys()))
    dropped = tuple(sorted(row.keys() ^ ref.keys()))
    nan = math.nan
    if len(shared) >= 2:
        diffs = [row[s] - ref[s] for s in shared]
        mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
        lo, hi = _t_interval(mean, std / math.sqrt(len(diffs)), len(diffs) - 1)
        return Difference(PAIRED, mean, std, len(row), len(ref), shared, dropped, lo, hi)
    if len(row) >= 2 and len(ref) >= 2:
        a, b = list(row.values()), list(ref.values())
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        mean = statistics.fmean(a) - statistics.fmean(b)
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se else 1.0
        lo, hi = _t_interval(mean, se, df)
        return Difference(WELCH, mean, nan, len(row), len(ref), shared, dropped, lo, hi)
    if shared:
        mean = statistics.fmean(row[s] - ref[s] for s in shared)
    elif row and ref:
        mean = statistics.fmean(row.values()) - statistics.fmean(ref.values())
    else:
        mean = nan
    return Difference(NONE, mean, nan, len(row), len(ref), shared, dropped, nan, nan)


def expectation(paper_delta: float) -> str | None:
    """The paper's direction of row minus reference: GREATER, LESS, or None (no number, or 0)."""
    if math.isnan(paper_delta) or paper_delta == 0:
        return None
    return GREATER if paper_delta > 0 else LESS


def verdict(diff: Difference, expect: str, band: float = BAND) -> str:
    """AGREES / DISAGREES / INCONCLUSIVE for the claim ``expect`` on the interval of ``diff``.

    GREATER: agrees when the interval lies above 0, disagrees when it lies below 0 (it
    excludes 0 on the wrong side), inconclusive when it holds 0 (a zero-width interval at 0
    too). LESS: mirrored. WITHIN: agrees when the interval lies inside [-band, band],
    disagrees when it lies wholly outside that band, inconclusive when it straddles an edge.
    No interval (kind NONE): inconclusive.
    """
    lo, hi = diff.lo, diff.hi
    if diff.kind == NONE or math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    if expect == WITHIN:
        if -band <= lo and hi <= band:
            return AGREES
        return DISAGREES if hi < -band or lo > band else INCONCLUSIVE
    if expect not in (GREATER, LESS):
        raise ValueError(f"verdict: expect {expect!r} (expected one of: {GREATER}, {LESS}, {WITHIN})")
    if lo > 0:
        return AGREES if expect == GREATER else DISAGREES
    if hi < 0:
        return AGREES if expect == LESS else DISAGREES
    return INCONCLUSIVE
