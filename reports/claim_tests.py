"""The test that decides each of the paper's claims, run in rounds of seeds with as few trainings as it can.

Each look runs the fixed-n test of a claim's shape (reports.paired_tests); reports.claim_planner
plans the rounds from the verdicts and projections here.

Sequential design. A claim is tested at planned looks, seed counts ``looks`` (LOOKS = 3, 5, 8, 12),
each look on the first n differences, and stops at the first look that decides (agrees or
disagrees); undecided at the last look it is inconclusive. Each look is tested at alpha / K
(K looks; ``look_levels``): a Bonferroni split of the error rate over the looks. We chose it over
group-sequential boundaries from a Lan-DeMets spending function (Pocock, O'Brien-Fleming) because:
(1) those boundaries come from the joint normal law of z statistics with known variance; ours are t
statistics with 2 to 11 degrees of freedom whose variance is re-estimated at every look, so their
nominal levels would hold only approximately, and worst at the first looks where t's tails are
heaviest. The union bound holds exactly for any dependence between the looks. (2) It holds
whatever happens between looks: a claim the planner stopped for futility is tested again at a
later look when its rows train seeds for another claim, and a round can be skipped. (3) The level
is the same at every look, so the seed projection is a plain fixed-n power calculation at it.
The price is power: Bonferroni ignores the correlation between looks (under no difference, alpha
0.05 over 3, 5, 8, 12 seeds spends about 0.036, against about 0.12 testing every look at 0.05),
and the last look runs at 0.0125. For differences of effect size 2 (mean / std) it agrees on
about 5.1 seeds on average instead of 12; for size 0.67 it trains 10.2 seeds and agrees in 49% of
experiments, where 12 seeds at 0.05 agree in 70% (tests/test_claim_tests.py simulates these).
For each claim the probability of a wrong "agrees" is at most alpha, and so is that of a wrong
"disagrees"; nothing is corrected across claims (each claim is a statement of its own).

Seed projection (``seeds_to_decide``): the smallest n at which a fixed-n test at the per-look level
decides (either verdict) with probability >= POWER when the differences are normal with the
observed mean and std (noncentral t; TOST by quadrature over the sample std).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from orchestration.schema import ALPHA_TAG, LOOKS_TAG
from reports.paired_tests import (
    ALPHA,
    MARGIN,
    ClaimTest,
    check_claim,
    claim_test,
    verdicts,
)
from reports.stats import INCONCLUSIVE, WITHIN

LOOKS = (3, 5, 8, 12)
POWER = 0.8


def check_looks(looks: Sequence[int]) -> tuple[int, ...]:
    """``looks`` as a tuple; ValueError unless they are increasing seed counts, the first >= 2."""
    ok = len(looks) > 0 and all(isinstance(n, (int, np.integer)) for n in looks) and looks[0] >= 2
    if not ok or any(b <= a for a, b in itertools.pairwise(looks)):
        raise ValueError(f"looks {list(looks)} (expected increasing seed counts, the first >= 2, e.g. {list(LOOKS)})")
    return tuple(int(n) for n in looks)


def look_levels(looks: Sequence[int], alpha: float = ALPHA) -> list[float]:
    """The one-sided level of each look: alpha / K for K looks (Bonferroni; see the module docstring)."""
    looks = check_looks(looks)
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha {alpha} (expected a one-sided level, 0 < alpha < 0.5)")
    return [alpha / len(looks)] * len(looks)


@dataclass(frozen=True)
class SequentialDesign:
    """The looks and the one-sided alpha per claim (over all its looks) of a launch that chose its
    seeds by them (``tood-ablate run --until-decided``): its claims are decided by :func:`decide`."""

    looks: tuple[int, ...] = LOOKS
    alpha: float = ALPHA

    def __post_init__(self):
        look_levels(self.looks, self.alpha)  # ValueError unless a design

    @property
    def level(self) -> float:
        return look_levels(self.looks, self.alpha)[0]

    def tags(self) -> dict[str, str]:
        """The parent-run tags that record the design (orchestration.schema)."""
        return {LOOKS_TAG: ",".join(map(str, self.looks)), ALPHA_TAG: repr(self.alpha)}

    @classmethod
    def from_tags(cls, tags: dict[str, str], where: str) -> SequentialDesign | None:
        """The design a parent run's tags record; None for a launch with fixed seeds. ValueError
        naming ``where`` and the tag when they are not a design."""
        if LOOKS_TAG not in tags:
            return None
        try:
            return cls(tuple(int(n) for n in tags[LOOKS_TAG].split(",")), float(tags.get(ALPHA_TAG, ALPHA)))
        except ValueError as e:
            raise ValueError(f"{where}: tags {LOOKS_TAG}={tags[LOOKS_TAG]!r}, {ALPHA_TAG}={tags.get(ALPHA_TAG)!r} "
                             f"(expected increasing seed counts and a one-sided alpha: {e})") from None


def sequential_verdicts(d: np.ndarray, shape: str, delta: float, looks: Sequence[int] = LOOKS,
                        alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Many sequential experiments at once: d (E, N), each row one experiment's differences in seed order.

    Each experiment is tested at every look n <= N (on d[:, :n], at look_levels(looks, alpha)) and
    stops at the first that decides. Returns verdict (E,) and look (E,): the index into ``looks``
    of the look that decided, or of the last look N reaches when none did. ValueError when N < looks[0].
    """
    levels, looks = look_levels(looks, alpha), check_looks(looks)
    d = np.atleast_2d(np.asarray(d, dtype=float))
    if d.shape[1] < looks[0]:
        raise ValueError(f"sequential_verdicts: {d.shape[1]} differences (the first look needs {looks[0]})")
    verdict = np.full(d.shape[0], INCONCLUSIVE, dtype=object)
    look = np.zeros(d.shape[0], dtype=int)
    open_ = np.ones(d.shape[0], dtype=bool)
    for k, (n, level) in enumerate(zip(looks, levels)):
        if n > d.shape[1]:
            break
        v = verdicts(d[:, :n], shape, delta, level)
        look[open_] = k
        decided = open_ & (v != INCONCLUSIVE)
        verdict[decided] = v[decided]
        open_ &= ~decided
    return verdict.astype(str), look


@dataclass(frozen=True)
class Decision:
    """A claim's state at a look: ``look`` indexes ``looks`` (the look that decided, else the look
    asked for); final: decided, or undecided at the last look (more seeds change nothing); test: at ``look``."""

    look: int
    final: bool
    test: ClaimTest


def decide(d: Sequence[float], shape: str, delta: float, look_index: int | None, looks: Sequence[int] = LOOKS,
           alpha: float = ALPHA) -> Decision:
    """The sequential verdict at look ``look_index`` (None: the last look that len(d) reaches) on the
    differences ``d`` in seed order: the first of looks 0..look_index that decides, else inconclusive."""
    looks, levels = check_looks(looks), look_levels(looks, alpha)
    d = np.asarray(d, dtype=float)
    if look_index is None:
        look_index = sum(n <= d.size for n in looks) - 1
    if not 0 <= look_index < len(looks) or d.size < looks[look_index]:
        raise ValueError(f"decide: look {look_index} of {list(looks)} with {d.size} differences "
                         f"(expected a look whose seed count the differences reach)")
    _, look = sequential_verdicts(d[None, :looks[look_index]], shape, delta, looks, alpha)
    k = int(look[0])
    test = claim_test(d[:looks[k]], shape, delta, levels[k])
    return Decision(k, test.verdict != INCONCLUSIVE or k == len(looks) - 1, test)


def power(mean: float, sd: float, n: int | Sequence[int], shape: str, delta: float = 0.0,
          level: float = ALPHA) -> np.ndarray:
    """P(the fixed-n test at ``level`` decides: agrees or disagrees) for differences N(mean, sd²).

    n: a seed count >= 2 or an array of them (the result has its shape). GREATER / LESS / MARGIN:
    noncentral t (scipy.stats.nct), both tails. WITHIN: TOST agrees by Gauss-Legendre quadrature
    over the chi-square law of the sample variance, plus the two noncentral-t tails of disagrees.
    sd == 0: 1 or 0, the verdict of n equal differences.
    """
    check_claim(shape, delta, level)
    n = np.asarray(n)
    if (n < 2).any():
        raise ValueError(f"power: seed counts {n.tolist()} (expected >= 2)")
    if sd == 0:
        out = [verdicts(np.full(int(k), float(mean)), shape, delta, level) != INCONCLUSIVE for k in n.ravel()]
        return np.asarray(out, dtype=float).reshape(n.shape)
    df, root = n - 1, np.sqrt(n)
    if shape != WITHIN:
        c = stats.t.ppf(1 - level, df)
        nc = (mean - (delta if shape == MARGIN else 0.0)) * root / sd
        return stats.nct.sf(c, df, nc) + stats.nct.cdf(-c, df, nc)
    c = stats.t.ppf(1 - level / 2, df)
    outside = stats.nct.sf(c, df, (mean - delta) * root / sd) + stats.nct.cdf(-c, df, (mean + delta) * root / sd)
    return _tost_power(mean, sd, n, delta, level) + outside


def _tost_power(mean: float, sd: float, n: np.ndarray, delta: float, level: float) -> np.ndarray:
    """P(the (1 - 2 level) interval lies inside [-delta, delta]) for N(mean, sd²) differences, n (...).

    Given the sample std s the mean must lie in (-delta + c s, delta - c s), c = t_{1-level, n-1} / sqrt(n):
    a normal probability; integrate it over s (s² ~ sd² chi²_{n-1} / (n-1)) on the quantile scale u of
    the chi-square, up to the u where c s reaches delta, with 64-point Gauss-Legendre.
    """
    n = np.asarray(n, dtype=float)[..., None]  # (..., 1)
    df = n - 1
    c = stats.t.ppf(1 - level, df) / np.sqrt(n)
    u_max = stats.chi2.cdf(df * (delta / (c * sd)) ** 2, df)  # (..., 1)
    x, w = np.polynomial.legendre.leggauss(64)
    u = (x + 1) / 2 * u_max  # (..., 64)
    half = c * sd * np.sqrt(stats.chi2.ppf(u, df) / df)
    se = sd / np.sqrt(n)
    inside = stats.norm.cdf((delta - half - mean) / se) - stats.norm.cdf((-delta + half - mean) / se)
    return (np.clip(inside, 0, None) * w).sum(-1) * u_max[..., 0] / 2


def seeds_to_decide(d: Sequence[float], shape: str, delta: float, alpha_per_look: float, max_seeds: int,
                    quantile: float = 0.5) -> int | None:
    """The smallest n in 2..max_seeds at which the claim's test at ``alpha_per_look`` decides with
    probability >= POWER for normal differences with the mean and std (ddof=1) of ``d`` (>= 2 values);
    None when no n up to max_seeds reaches it. ``quantile`` 0.5: the observed mean and std; above it,
    their favourable ends (``favourable``)."""
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        raise ValueError(f"seeds_to_decide: {d.size} differences (expected >= 2 to estimate their std)")
    mean, sd = favourable(d, shape, delta, quantile)
    ns = np.arange(2, max_seeds + 1)
    hit = np.flatnonzero(power(mean, sd, ns, shape, delta, alpha_per_look) >= POWER)
    return int(ns[hit[0]]) if hit.size else None


def favourable(d: np.ndarray, shape: str, delta: float, quantile: float) -> tuple[float, float]:
    """The (mean, std) of ``d`` (n,) at the end of their one-sided ``quantile`` intervals that decides most easily.

    The mean moves t_{quantile, n-1} standard errors away from the nearest boundary between verdicts
    (0; delta; for WITHIN the nearer band edge, towards 0 inside the band, never past it). A direction
    or margin test decides on (mean - null) / std, which that shift already bounds; TOST also needs the
    interval to fit inside the band, so for WITHIN the std drops to its lower bound too,
    std * sqrt((n-1) / chi2_{quantile, n-1}). quantile 0.5: the estimates as they are.
    """
    n, mean, sd = d.size, float(d.mean()), float(d.std(ddof=1))
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile {quantile} (expected 0.5 <= quantile < 1)")
    if quantile == 0.5:
        return mean, sd
    shift = float(stats.t.ppf(quantile, n - 1)) * sd / math.sqrt(n)
    if shape != WITHIN:
        return mean + math.copysign(shift, mean - (delta if shape == MARGIN else 0.0)), sd
    size = abs(mean)
    size = max(size - shift, 0.0) if size < delta else size + shift
    return math.copysign(size, mean), sd * math.sqrt((n - 1) / float(stats.chi2.ppf(quantile, n - 1)))
