"""reports.claim_tests: the claim tests against scipy / statsmodels and hand-computed p-values, the
sequential design's error rates and seed counts by simulation, the seed projection against
statsmodels' power and simulation, and the planner on a hand-made grid.

Simulations draw paired normal differences, 20,000 experiments at once. A simulated rate r of a
true probability p has standard error sqrt(p (1 - p) / E); a rate is checked against p plus three
of those (the binomial 3-sigma bound: a correct design fails it about once in 700 runs of a test;
the generators are seeded, so each run is the same).
"""

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from reports.claim_planner import (
    CONTINUE,
    DECIDED,
    EXHAUSTED,
    PENDING,
    UNDECIDABLE,
    Claim,
    next_round,
)
from reports.claim_tests import (
    LOOKS,
    POWER,
    decide,
    favourable,
    look_levels,
    power,
    seeds_to_decide,
    sequential_verdicts,
)
from reports.paired_tests import ALPHA, MARGIN, claim_test, verdicts
from reports.stats import AGREES, DISAGREES, GREATER, INCONCLUSIVE, LESS, WITHIN

E = 20_000  # simulated experiments


def three_sigma(p: float, n: int = E) -> float:
    return 3 * math.sqrt(p * (1 - p) / n)


def test_direction_by_hand_and_scipy():
    # d = 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3); with 2 df, P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2
    t = 2 * math.sqrt(3)
    r = claim_test([1.0, 2.0, 3.0], GREATER, 0.0, 0.05)
    assert r.p_value == pytest.approx((1 - t / math.sqrt(t * t + 2)) / 2) == pytest.approx(0.037090, abs=1e-6)
    assert (r.n, r.mean, r.std, r.verdict, r.test) == (3, 2.0, 1.0, AGREES, "one-sided paired t")
    half = stats.t.ppf(0.95, 2) / math.sqrt(3)  # the (1 - 2 * 0.05) interval
    assert (r.lo, r.hi) == (pytest.approx(2 - half), pytest.approx(2 + half)) and r.lo > 0
    assert claim_test([1.0, 2.0, 3.0], GREATER, 0.0, 0.025).verdict == INCONCLUSIVE  # p 0.037 > 0.025
    d = np.random.default_rng(0).normal(-0.4, 1.0, 7)
    for shape, alt, other in ((GREATER, "greater", "less"), (LESS, "less", "greater")):
        r = claim_test(d, shape, 0.0, 0.05)
        assert r.p_value == pytest.approx(stats.ttest_1samp(d, 0.0, alternative=alt).pvalue)
        assert r.p_opposite == pytest.approx(stats.ttest_1samp(d, 0.0, alternative=other).pvalue)
    assert claim_test(d - 5, LESS).verdict == AGREES and claim_test(d - 5, GREATER).verdict == DISAGREES


def test_tost_matches_statsmodels():
    d = np.array([0.1, -0.2, 0.3, 0.05, -0.1])
    ref = np.array([40.0, 41.0, 42.5, 43.0, 44.0])
    for delta in (0.5, 0.2):
        p, lower, upper = ttost_paired(ref + d, ref, -delta, delta)
        r = claim_test(d, WITHIN, delta, 0.05)
        assert r.p_value == pytest.approx(p) == pytest.approx(max(lower[1], upper[1]))
        assert r.test == f"TOST (±{delta:g})"
    assert claim_test(d, WITHIN, 0.5, 0.05).verdict == AGREES  # p 0.0027
    assert claim_test(d, WITHIN, 0.2, 0.05).verdict == INCONCLUSIVE  # p 0.070: the 90% interval reaches 0.21
    far = np.array([1.1, 0.9, 1.3, 1.0, 1.2])  # mean 1.1: outside +-0.5, p of mean > 0.5 is tiny (x 2 sides)
    r = claim_test(far, WITHIN, 0.5, 0.05)
    assert r.verdict == DISAGREES
    assert r.p_opposite == pytest.approx(2 * stats.ttest_1samp(far - 0.5, 0.0, alternative="greater").pvalue)


def test_minimum_effect_matches_scipy():
    d = np.array([2.1, 1.8, 2.4, 1.9, 2.2])
    for delta, expected in ((1.0, AGREES), (2.0, INCONCLUSIVE), (3.0, DISAGREES), (-1.0, AGREES)):
        r = claim_test(d, MARGIN, delta, 0.05)
        assert r.p_value == pytest.approx(stats.ttest_1samp(d - delta, 0.0, alternative="greater").pvalue)
        assert r.p_opposite == pytest.approx(stats.ttest_1samp(d - delta, 0.0, alternative="less").pvalue)
        assert r.verdict == expected and r.test == f"minimum-effect t (delta={delta:g})"
        assert (r.lo > delta) == (expected == AGREES) and (r.hi < delta) == (expected == DISAGREES)


def test_equal_differences_and_too_few():
    assert claim_test([0.3] * 4, GREATER).p_value == 0.0 and claim_test([0.3] * 4, GREATER).verdict == AGREES
    assert claim_test([0.0] * 3, GREATER).verdict == INCONCLUSIVE  # identical rows: no direction
    assert claim_test([0.1] * 3, WITHIN, 0.5).verdict == AGREES
    assert claim_test([0.9] * 3, WITHIN, 0.5).verdict == DISAGREES
    one = claim_test([1.5], GREATER)
    assert one.verdict == INCONCLUSIVE and one.mean == 1.5 and math.isnan(one.p_value)


@pytest.mark.parametrize("shape, delta, message", [
    ("greter", 0.0, "claim shape 'greter' (expected one of: greater, less, margin, within)"),
    (GREATER, 0.5, "expected 0; a gain of at least delta is shape 'margin'"),
    (WITHIN, 0.0, "expected the band's half-width, > 0"),
])
def test_bad_claims_are_named(shape, delta, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        claim_test([1.0, 2.0], shape, delta)


def test_look_levels_split_alpha():
    assert look_levels(LOOKS, 0.05) == [0.0125] * 4 and sum(look_levels((2, 4, 6), 0.05)) == pytest.approx(0.05)
    for bad in ((), (1, 3), (3, 3, 5), (5, 3)):
        with pytest.raises(ValueError, match="expected increasing seed counts"):
            look_levels(bad)


def test_decide_stops_at_the_first_deciding_look():
    # 3 seeds: t = 3 on 2 df, p = (1 - 3 / sqrt(11)) / 2 = 0.048 > 0.0125; 5 seeds: p 0.0025 -> agrees at look 1
    d = [2.0, 0.5, 2.0, 2.0, 2.1, -9.0, -9.0, -9.0]
    first = decide(d, GREATER, 0.0, 0, LOOKS)
    assert (first.look, first.final, first.test.verdict, first.test.n) == (0, False, INCONCLUSIVE, 3)
    later = decide(d, GREATER, 0.0, None, LOOKS)  # all 8 seeds are inconclusive; the design stopped at 5
    assert (later.look, later.final, later.test.verdict, later.test.n) == (1, True, AGREES, 5)
    assert later.test.level == 0.0125
    with pytest.raises(ValueError, match="decide: look 3"):
        decide(d, GREATER, 0.0, 3, LOOKS)


def uncorrected(d: np.ndarray, shape: str, delta: float) -> np.ndarray:
    """The same looks, each at the full ALPHA: the design without the split."""
    verdict = np.full(d.shape[0], INCONCLUSIVE, dtype=object)
    for n in LOOKS:
        v = verdicts(d[:, :n], shape, delta, ALPHA)
        verdict = np.where(verdict == INCONCLUSIVE, v, verdict)
    return verdict


@pytest.mark.parametrize("shape, delta, mean", [(GREATER, 0.0, 0.0), (MARGIN, 1.0, 1.0), (WITHIN, 0.5, 0.5)])
def test_sequential_error_rate_stays_at_alpha(shape, delta, mean):
    # the truth on the null's edge: no difference / a gain of exactly delta / a difference on the band's edge
    d = np.random.default_rng(1).normal(mean, 1.0 if shape != WITHIN else 0.3, (E, LOOKS[-1]))
    verdict, _ = sequential_verdicts(d, shape, delta, LOOKS, ALPHA)
    bound = ALPHA + three_sigma(ALPHA)  # 0.0546
    assert (verdict == AGREES).mean() <= bound
    if shape == GREATER:  # no difference: "disagrees" is wrong too, and the uncorrected looks overshoot
        assert (verdict == DISAGREES).mean() <= bound
        assert (uncorrected(d, shape, delta) == AGREES).mean() > bound  # about 0.12


def test_sequential_needs_fewer_seeds_than_fixed():
    d = np.random.default_rng(2).normal(1.0, 1.5, (E, LOOKS[-1]))
    verdict, look = sequential_verdicts(d, GREATER, 0.0, LOOKS, ALPHA)
    seeds = np.asarray(LOOKS)[look]
    fixed = verdicts(d, GREATER, 0.0, ALPHA)  # every experiment trains LOOKS[-1] = 12 seeds
    assert seeds.mean() < 11.0  # about 10.2
    assert (verdict == DISAGREES).mean() < 0.005
    # what the split costs: fewer experiments agree than with 12 seeds at the full alpha (0.49 vs 0.70)
    assert 0.4 < (verdict == AGREES).mean() < (fixed == AGREES).mean()
    big = np.random.default_rng(3).normal(2.0, 1.0, (E, LOOKS[-1]))  # a Table-3-sized gap: stops early
    verdict, look = sequential_verdicts(big, GREATER, 0.0, LOOKS, ALPHA)
    assert (verdict == AGREES).mean() > 0.99 and np.asarray(LOOKS)[look].mean() < 5.5  # about 5.1


def test_power_and_projection_match_statsmodels():
    tp = TTestPower()
    for n in range(2, 16):  # both tails: agrees (larger) plus disagrees (smaller)
        both = tp.power(effect_size=1.0, nobs=n, alpha=0.05, alternative="larger") + \
            tp.power(effect_size=1.0, nobs=n, alpha=0.05, alternative="smaller")
        assert power(1.5, 1.5, n, GREATER, 0.0, 0.05) == pytest.approx(both, abs=1e-9)
    assert math.ceil(tp.solve_power(effect_size=1.0, alpha=0.05, power=POWER, alternative="larger")) == 8
    z = np.random.default_rng(4).normal(size=8)
    d = (z - z.mean()) / z.std(ddof=1) + 1.0  # mean 1, sd 1 exactly: effect size 1
    assert seeds_to_decide(d, GREATER, 0.0, 0.05, 20) == 8
    assert seeds_to_decide(d, GREATER, 0.0, 0.05, 7) is None
    assert seeds_to_decide(d + 0.5, MARGIN, 0.5, 0.05, 20) == 8  # the margin test is the shifted one
    for level in (0.0125, 0.05):  # brute force: the first n whose statsmodels power reaches 0.8
        brute = next(n for n in range(2, 100) if tp.power(effect_size=1.0, nobs=n, alpha=level, alternative="larger")
                     + tp.power(effect_size=1.0, nobs=n, alpha=level, alternative="smaller") >= POWER)
        assert seeds_to_decide(d, LESS, 0.0, level, 100) == brute
    assert seeds_to_decide([0.1, -1.0, 1.2], GREATER, 0.0, 0.0125, 100) is None  # effect size 0.09
    # quantile 0.9: the mean moved t_{0.9, 7} standard errors away from 0 (8 values, sd 1)
    best = 1.0 + stats.t.ppf(0.9, 7) / math.sqrt(8)
    brute = next(n for n in range(2, 100) if tp.power(effect_size=best, nobs=n, alpha=0.05, alternative="larger")
                 + tp.power(effect_size=best, nobs=n, alpha=0.05, alternative="smaller") >= POWER)
    assert seeds_to_decide(d, GREATER, 0.0, 0.05, 20, 0.9) == brute < 8
    assert seeds_to_decide(-d, LESS, 0.0, 0.05, 20, 0.9) == brute


@pytest.mark.parametrize("mean, n", [(0.1, 5), (0.1, 12), (0.3, 8), (0.9, 4)])
def test_tost_power_matches_simulation(mean, n):
    d = np.random.default_rng(5).normal(mean, 0.5, (E, n))
    simulated = (verdicts(d, WITHIN, 0.5, 0.0125) != INCONCLUSIVE).mean()
    p = float(power(mean, 0.5, n, WITHIN, 0.5, 0.0125))
    assert abs(simulated - p) <= three_sigma(p) + 1e-3


def run_planner(row: np.ndarray, ref: np.ndarray, claim: Claim):
    """Train the seeds each round asks for (values from the arrays) until the planner asks for none."""
    rows_seeds = {claim.row: {}, claim.ref: {}}
    while not (plan := next_round([claim], rows_seeds, LOOKS, 12, ALPHA)).done:
        for name, seeds in plan.seeds.items():
            rows_seeds[name].update({s: float((row if name == claim.row else ref)[s]) for s in seeds})
    return plan.claims[0]


def test_planner_follows_the_sequential_design():
    rng = np.random.default_rng(6)
    d = rng.normal(1.0, 1.5, (40, 12))
    ref = rng.normal(60.0, 2.0, (40, 12))
    verdict, look = sequential_verdicts(d, GREATER, 0.0, LOOKS, ALPHA)
    for i in range(40):
        status = run_planner(ref[i] + d[i], ref[i], Claim("T-head", "parallel", GREATER))
        assert status.n <= LOOKS[look[i]]
        if status.state != UNDECIDABLE:  # stopped by the projection: fewer seeds, no verdict
            assert status.decision.test.verdict == verdict[i] and status.n == LOOKS[look[i]]


def test_next_round_by_hand():
    wiggle = np.array([1.0, -1.0] * 4)  # 8 seeds, mean 0, sd sqrt(8 / 7)
    rows = {"A": {0: 55.0, 1: 55.5, 2: 54.5}, "B": {0: 50.0, 1: 50.0, 2: 50.0, 9: 47.0},
            "C": {0: 52.0, 1: 53.0, 2: 51.0},  # C - B = 2, 3, 1: p 0.037 > 0.0125, projected 6 seeds
            "D": {0: 51.0, 1: 52.0, 2: 50.0, 3: math.nan},  # D - B = 1, 2, 0: effect size 1 needs 13 seeds
            "G": dict(enumerate(60.4 + wiggle)), "H": dict(enumerate(60.05 + wiggle)),
            "R": {s: 60.0 for s in range(8)}}
    claims = [Claim("A", "B", GREATER), Claim("C", "B", GREATER), Claim("D", "B", GREATER),
              Claim("G", "R", GREATER), Claim("H", "R", GREATER), Claim("F", "A", GREATER)]
    plan = next_round(claims, rows, LOOKS, 12, ALPHA)
    states = [(s.state, s.n, s.projected, s.target) for s in plan.claims]
    # D: 13 seeds at its observed effect, but the favourable end of its 90% interval (effect size
    # 1 + t_{0.9, 2} / sqrt(3) = 2.09) decides by 12: it goes on. G - R (effect size 0.374 over 8 seeds;
    # 0.374 + t_{0.9, 7} / sqrt(8) = 0.87 at best, below the 1.0 that 13 seeds need) and H - R
    # (0.05) stop; G's projection at its observed effect is 71 seeds (statsmodels' TTestPower agrees),
    # H's none within 100.
    assert states == [(DECIDED, 3, None, 3), (CONTINUE, 3, 6, 5), (CONTINUE, 3, 13, 5), (UNDECIDABLE, 8, 71, 8),
                      (UNDECIDABLE, 8, None, 8), (PENDING, 0, None, 3)]
    assert plan.claims[0].decision.test.verdict == AGREES  # A - B = 5, 5.5, 4.5
    # B trains for C's and D's claims although A > B is decided; seed 9 of B is no pair's, so 3 and 4
    # come next; D's seed 3 is NaN (failed): D trains it again. A, G, H, R train nothing.
    assert plan.seeds == {"B": (3, 4), "C": (3, 4), "D": (3, 4), "F": (0, 1, 2)} and not plan.done
    assert plan.levels == (0.0125,) * 4
    shorter = next_round(claims, rows, LOOKS, 8, ALPHA)  # the design stops at 8 seeds: 3 looks at 0.05 / 3
    assert shorter.looks == (3, 5, 8) and shorter.levels == pytest.approx((0.05 / 3,) * 3)
    assert [s.state for s in shorter.claims][3:5] == [EXHAUSTED, EXHAUSTED]
    end = {"A": {s: 50.0 + s % 2 for s in range(12)}, "B": {s: 50.0 + (s // 2) % 2 for s in range(12)}}
    last = next_round([Claim("A", "B", GREATER)], end, LOOKS, 12, ALPHA)
    assert last.claims[0].state == EXHAUSTED and last.claims[0].decision.final and last.done


def test_futility_stop_keeps_the_verdicts():
    # the planner gives up on claims the design could not decide anyway: under no difference it
    # trains far fewer seeds; under a true effect (size 1) it loses few of the design's "agrees"
    rng = np.random.default_rng(8)
    for mean in (0.0, 1.5):
        d, ref = rng.normal(mean, 1.5, (200, 12)), rng.normal(60.0, 2.0, (200, 12))
        verdict, look = sequential_verdicts(d, GREATER, 0.0, LOOKS, ALPHA)
        status = [run_planner(ref[i] + d[i], ref[i], Claim("T-head", "parallel", GREATER)) for i in range(200)]
        agrees = np.array([s.state == DECIDED and s.decision.test.verdict == AGREES for s in status])
        seeds, sequential = np.mean([s.n for s in status]), np.asarray(LOOKS)[look].mean()
        assert not (agrees & (verdict != AGREES)).any()  # the planner's verdicts are the design's
        if mean == 0:
            assert seeds < 8.0 and sequential > 11.0  # about 7.1 vs 11.7
        else:
            assert seeds < sequential - 0.3  # about 8.0 vs 8.7
            assert (verdict == AGREES).mean() - agrees.mean() <= 0.05  # 0.78 vs 0.77
    # an equivalence that holds (|difference| 0 against a +-0.5 band, sd 0.3): its noisy 3-seed std must
    # not stop it; the favourable std bound keeps it going (without it 15% stopped)
    d, ref = rng.normal(0.0, 0.3, (100, 12)), rng.normal(60.0, 2.0, (100, 12))
    verdict, _ = sequential_verdicts(d, WITHIN, 0.5, LOOKS, ALPHA)
    status = [run_planner(ref[i] + d[i], ref[i], Claim("m=9", "m=13", WITHIN, 0.5)) for i in range(100)]
    assert (verdict == AGREES).mean() == 1.0 and sum(s.state == UNDECIDABLE for s in status) <= 3  # 1


def test_favourable_ends_by_hand():
    d = np.array([0.1, -0.1, 0.3])  # mean 0.1, sd 0.2, se 0.2 / sqrt(3)
    shift = stats.t.ppf(0.9, 2) * 0.2 / math.sqrt(3)  # 0.218
    assert favourable(d, GREATER, 0.0, 0.5) == pytest.approx((0.1, 0.2))
    assert favourable(d, GREATER, 0.0, 0.9) == pytest.approx((0.1 + shift, 0.2))
    assert favourable(d, MARGIN, 0.5, 0.9) == pytest.approx((0.1 - shift, 0.2))  # below delta: further below
    low_sd = 0.2 * math.sqrt(2 / stats.chi2.ppf(0.9, 2))  # 0.093
    assert favourable(d, WITHIN, 0.5, 0.9) == pytest.approx((0.0, low_sd))  # towards 0, not past it
    assert favourable(d + 0.5, WITHIN, 0.5, 0.9) == pytest.approx((0.6 + shift, low_sd))  # outside: further out
