"""The planner: which claims are decided, and which rows train the next round's seeds.

The planner (``next_round``) tests each claim at the last look its paired seeds reach (the
sequential design of reports.claim_tests), reports the seed projection (``seeds_to_decide``), and
stops training a claim (futility) only when even the favourable end of the mean's one-sided 90%
interval (for WITHIN, the std's too; ``favourable``) cannot decide it by the last look: the
plug-in estimates of 3 seeds are too noisy to stop on (stopping on them halved the "agrees" at
effect size 1: 0.42 against 0.82). Stopping for futility never raises the sequential design's
error rates, it only gives up power: under no difference the planner trains about 7 seeds
instead of 11.6; at effect size 1 it trains 8.0 instead of 8.7 and loses about 1% of the "agrees".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reports.claim_tests import (
    LOOKS,
    Decision,
    check_looks,
    decide,
    look_levels,
    seeds_to_decide,
)
from reports.paired_tests import ALPHA, check_claim
from reports.stats import INCONCLUSIVE

HORIZON = 100  # how far the projection looks for a claim that max_seeds cannot decide
FUTILITY_QUANTILE = 0.9  # a claim stops when even this end of its effect's interval cannot decide it
PENDING, DECIDED, CONTINUE, UNDECIDABLE, EXHAUSTED = "pending", "decided", "continue", "undecidable", "exhausted"


@dataclass(frozen=True)
class Claim:
    """``row`` minus ``ref`` (two rows of a grid) has ``shape`` (SHAPES) with ``delta`` (metric units)."""

    row: str
    ref: str
    shape: str
    delta: float = 0.0


@dataclass(frozen=True)
class ClaimStatus:
    """Where a claim stands. state: PENDING (fewer paired seeds than the first look), DECIDED,
    CONTINUE (undecided, decidable by the last look: trains the next round), UNDECIDABLE (undecided,
    and not decidable by the last look even at the favourable end, FUTILITY_QUANTILE, of its effect's
    interval: stops), EXHAUSTED (undecided at the last look).
    n: paired seeds so far; decision: at the last look n reaches (None while pending); projected:
    seeds_to_decide up to HORIZON at the per-look level (None while pending or decided, or beyond
    HORIZON); target: the paired seeds it has after the next round (n when it trains no more)."""

    claim: Claim
    state: str
    n: int
    decision: Decision | None
    projected: int | None
    target: int


@dataclass(frozen=True)
class Plan:
    """The next round. looks, levels: the design (looks up to max_seeds, their per-look levels);
    claims: one status per claim, in order; seeds: row -> the seeds it trains next (rows with none
    left out). done: no row trains more."""

    looks: tuple[int, ...]
    levels: tuple[float, ...]
    claims: tuple[ClaimStatus, ...]
    seeds: dict[str, tuple[int, ...]]

    @property
    def done(self) -> bool:
        return not self.seeds


def _values(rows_seeds: Mapping[str, Mapping[int, float]], row: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in rows_seeds.get(row, {}).items() if not math.isnan(v)}


def claim_status(claim: Claim, rows_seeds: Mapping[str, Mapping[int, float]], looks: Sequence[int],
                 alpha: float = ALPHA) -> ClaimStatus:
    """The claim's status over the seeds both its rows finished (in increasing seed order)."""
    looks, levels = check_looks(looks), look_levels(looks, alpha)
    check_claim(claim.shape, claim.delta, levels[0])
    row, ref = _values(rows_seeds, claim.row), _values(rows_seeds, claim.ref)
    shared = sorted(row.keys() & ref.keys())
    n = len(shared)
    if n < looks[0]:
        return ClaimStatus(claim, PENDING, n, None, None, looks[0])
    d = np.array([row[s] - ref[s] for s in shared])
    decision = decide(d, claim.shape, claim.delta, None, looks, alpha)
    if decision.test.verdict != INCONCLUSIVE:
        return ClaimStatus(claim, DECIDED, n, decision, None, n)
    projected = seeds_to_decide(d, claim.shape, claim.delta, levels[0], HORIZON)
    if decision.final:
        return ClaimStatus(claim, EXHAUSTED, n, decision, projected, n)
    if seeds_to_decide(d, claim.shape, claim.delta, levels[0], looks[-1], FUTILITY_QUANTILE) is None:
        return ClaimStatus(claim, UNDECIDABLE, n, decision, projected, n)
    return ClaimStatus(claim, CONTINUE, n, decision, projected, looks[decision.look + 1])


def next_round(claims: Sequence[Claim], rows_seeds: Mapping[str, Mapping[int, float]],
               looks: Sequence[int] = LOOKS, max_seeds: int | None = None, alpha: float = ALPHA) -> Plan:
    """Which claims are decided, and which rows train which seeds next.

    rows_seeds: row -> {seed: the claims' metric} over its finished trials (NaN and absent rows: no
    value). The design is ``looks`` up to ``max_seeds`` (None: all of them). A claim that is PENDING or
    CONTINUE asks for the smallest seeds its pair has not both finished, up to its target; each of its
    two rows trains those it lacks, so the pair stays paired. A row trains the union over its claims:
    a decided claim's rows train only for another claim that still asks.
    """
    looks = check_looks(looks)
    design = tuple(n for n in looks if max_seeds is None or n <= max_seeds)
    if not design:
        raise ValueError(f"max_seeds {max_seeds} (expected >= the first look, {looks[0]})")
    statuses = tuple(claim_status(c, rows_seeds, design, alpha) for c in claims)
    wanted: dict[str, set[int]] = {}
    for status in statuses:
        rows = [_values(rows_seeds, status.claim.row), _values(rows_seeds, status.claim.ref)]
        shared = rows[0].keys() & rows[1].keys()
        fresh = [s for s in range(status.target + len(shared)) if s not in shared][:status.target - status.n]
        for name, have in zip((status.claim.row, status.claim.ref), rows):
            wanted.setdefault(name, set()).update(s for s in fresh if s not in have)
    seeds = {row: tuple(sorted(s)) for row, s in wanted.items() if s}
    return Plan(design, tuple(look_levels(design, alpha)), statuses, seeds)
