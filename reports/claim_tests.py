"""The test that decides each of the paper's claims, run in rounds of seeds with as few trainings as it can.

``d`` is a claim's paired differences, row minus reference per seed in the metric's units (AP
points, PCC, counts), in the order the seeds trained (seed 0, 1, 2, ...). Every test is
one-sided at a level ``a`` (0 < a < 0.5), with a verdict in reports.stats' words:

- GREATER "A > B" / LESS "A < B": one-sided paired t test of mean(d) > 0 (< 0). Disagrees when
  the one-sided test the other way rejects at the same level.
- MARGIN "A beats B by at least delta": minimum-effect test, H0 mean(d) <= delta against
  H1 mean(d) > delta (one-sided t on d - delta). Disagrees when mean(d) < delta is shown (the gain
  is smaller than delta). delta < 0 reads "A is not worse than B by more than |delta|"
  (non-inferiority). Where lower is better (#error), make B the row and A the reference.
- WITHIN "A within ±delta of B": TOST, two one-sided tests at level a (p: the larger of the two).
  Disagrees when the difference is shown outside the band: mean(d) > delta or mean(d) < -delta
  at a / 2 each, so that the two sides together stay at level a however small delta is.
The interval reported is the two-sided (1 - 2a) t interval. Agrees exactly when it excludes the
null on the claim's side (WITHIN: lies inside [-delta, delta]); disagrees (not WITHIN) exactly
when it excludes it on the other side. Differences that are all equal (std 0) decide by their
mean alone: p = 0 when the mean is strictly on the tested side, 1 otherwise.

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
observed mean and std (noncentral t; TOST by quadrature over the sample std). The planner
(``next_round``) reports it, and stops training a claim (futility) only when even the favourable
end of the mean's one-sided 90% interval (for WITHIN, the std's too; ``favourable``) cannot decide
it by the last look: the plug-in estimates of 3 seeds are too noisy to stop on (stopping on them
halved the "agrees" at effect size 1: 0.42 against 0.82). Stopping for futility never raises the
error rates above, it only gives up power: under no difference the planner trains about 7 seeds
instead of 11.6; at effect size 1 it trains 8.0 instead of 8.7 and loses about 1% of the "agrees".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from reports.stats import AGREES, DISAGREES, GREATER, INCONCLUSIVE, LESS, WITHIN

MARGIN = "margin"
SHAPES = (GREATER, LESS, MARGIN, WITHIN)
ALPHA = 0.05  # one-sided, per claim, over all its looks
LOOKS = (3, 5, 8, 12)
POWER = 0.8
HORIZON = 100  # how far the projection looks for a claim that max_seeds cannot decide
FUTILITY_QUANTILE = 0.9  # a claim stops when even this end of its effect's interval cannot decide it


@dataclass(frozen=True)
class ClaimTest:
    """One claim tested on ``n`` paired differences at ``level``.

    test: the test's name ('one-sided paired t', 'minimum-effect t (delta=1)', 'TOST (±0.5)');
    mean, std: of the differences (std ddof=1); p_value: the claim's test (TOST: the larger
    one-sided p); p_opposite: the test of the opposite statement (see the module docstring);
    lo, hi: the two-sided (1 - 2 level) t interval of mean(d). With n < 2: NaN, inconclusive.
    """

    shape: str
    delta: float
    test: str
    n: int
    mean: float
    std: float
    p_value: float
    p_opposite: float
    level: float
    lo: float
    hi: float
    verdict: str


def check_claim(shape: str, delta: float, level: float) -> None:
    """ValueError naming the field when a claim's shape, delta or level is not one this module tests."""
    if shape not in SHAPES:
        raise ValueError(f"claim shape {shape!r} (expected one of: {', '.join(SHAPES)})")
    if not math.isfinite(delta):
        raise ValueError(f"claim delta {delta} (expected a finite number in the metric's units)")
    if shape in (GREATER, LESS) and delta != 0:
        raise ValueError(f"claim delta {delta} for shape {shape!r} (expected 0; a gain of at least delta is "
                         f"shape {MARGIN!r})")
    if shape == WITHIN and delta <= 0:
        raise ValueError(f"claim delta {delta} for shape {WITHIN!r} (expected the band's half-width, > 0)")
    if not 0 < level < 0.5:
        raise ValueError(f"level {level} (expected a one-sided level, 0 < level < 0.5)")


def claim_test_name(shape: str, delta: float) -> str:
    """The name of the test that decides a claim of this shape."""
    if shape == MARGIN:
        return f"minimum-effect t (delta={delta:g})"
    return f"TOST (±{delta:g})" if shape == WITHIN else "one-sided paired t"


def _moments(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """d (..., n) -> mean (...), standard error (...), degrees of freedom n - 1."""
    n = d.shape[-1]
    return d.mean(-1), d.std(-1, ddof=1) / math.sqrt(n), n - 1


def _p_above(mean: np.ndarray, se: np.ndarray, null: float, df: int) -> np.ndarray:
    """p of H0 mu <= null against H1 mu > null; with se == 0: 0 when mean > null, else 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean - null) / se
    return np.where(np.isnan(t), 1.0, stats.t.sf(t, df))


def _p_values(d: np.ndarray, shape: str, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """d (..., n) -> (p of the claim's test, p of the opposite statement), each (...)."""
    mean, se, df = _moments(d)
    above = lambda null: _p_above(mean, se, null, df)
    below = lambda null: _p_above(-mean, se, -null, df)
    if shape == GREATER:
        return above(0.0), below(0.0)
    if shape == LESS:
        return below(0.0), above(0.0)
    if shape == MARGIN:
        return above(delta), below(delta)
    return np.maximum(above(-delta), below(delta)), np.minimum(1.0, 2 * np.minimum(above(delta), below(-delta)))


def verdicts(d: np.ndarray, shape: str, delta: float, level: float) -> np.ndarray:
    """The verdict of each of many experiments: d (..., n), n >= 2 -> (...) array of verdict words."""
    check_claim(shape, delta, level)
    d = np.asarray(d, dtype=float)
    if d.shape[-1] < 2:
        raise ValueError(f"verdicts: {d.shape[-1]} differences per experiment (expected >= 2)")
    return _verdict(*_p_values(d, shape, delta), level)


def _verdict(p: np.ndarray, p_opposite: np.ndarray, level: float) -> np.ndarray:
    return np.where(p <= level, AGREES, np.where(p_opposite <= level, DISAGREES, INCONCLUSIVE))


def claim_test(d: Sequence[float], shape: str, delta: float = 0.0, level: float = ALPHA) -> ClaimTest:
    """The claim's test on one experiment's paired differences ``d`` (n,) at one-sided ``level``."""
    check_claim(shape, delta, level)
    d = np.asarray(d, dtype=float)
    n, nan = d.size, math.nan
    if n < 2:
        mean = float(d.mean()) if n else nan
        return ClaimTest(shape, delta, claim_test_name(shape, delta), n, mean, nan, nan, nan, level, nan, nan,
                         INCONCLUSIVE)
    mean, se, df = _moments(d)
    p, p_opposite = _p_values(d, shape, delta)
    half = float(stats.t.ppf(1 - level, df) * se)
    return ClaimTest(shape, delta, claim_test_name(shape, delta), n, float(mean), float(d.std(ddof=1)), float(p),
                     float(p_opposite), level, float(mean) - half, float(mean) + half,
                     str(_verdict(p, p_opposite, level)))


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


# ----- the planner: which claims are decided, which rows train the next round's seeds -----

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
