"""The test of one claim on a fixed number of paired differences: its shapes, p-values, interval and verdict.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from reports.stats import AGREES, DISAGREES, GREATER, INCONCLUSIVE, LESS, WITHIN

MARGIN = "margin"
SHAPES = (GREATER, LESS, MARGIN, WITHIN)
ALPHA = 0.05  # one-sided, per claim, over all its looks


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
