"""The verdict rule: from per-seed paired effects to "holds", "does not hold" or "not separable from seed noise".

A part of a finding is one paired comparison (same seed, so the same calibration windows, with and without
the step), its per-seed effects signed so that the paper's claim is > 0. Each part gets a one-sided paired
t-test at ALPHA in the paper's direction. A finding

- **holds** on a model when every part is significant in the paper's direction (an intersection of tests: it
  needs no correction, since all must reject);
- **does not hold** when some part is significant in the opposite direction after a Holm correction across the
  finding's parts (any single one of several parts rejecting is a union, which needs the correction);
- is otherwise **not separable from seed noise** (always so with fewer than two seeds);
- is **not measured yet** while none of its parts has a run: zero seeds are no evidence, not a null result.

`simulate` measures the rule itself: how often it says "holds" or "does not hold" when there is no effect,
and how often it finds an effect of a given size, at a given number of seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
HOLDS, FAILS, NOISE, NONE = "holds", "does not hold", "not separable from seed noise", "not measured yet"


@dataclass(frozen=True)
class Test:
    """One part's paired test. mean and ci are of the effect in the paper's direction (> 0: as the paper)."""
    n: int
    mean: float
    ci: tuple[float, float]   # 95%, two-sided, t-based
    p: float                  # one-sided, in the paper's direction
    p_opposite: float         # one-sided, against it

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def t_test(effects) -> Test:
    """One-sided paired t-test of mean(effects) > 0, and the same against; nan p with fewer than 2 seeds."""
    e = np.asarray([float(x) for x in effects])
    n = len(e)
    mean = float(e.mean()) if n else math.nan
    if n < 2:
        return Test(n, mean, (math.nan, math.nan), math.nan, math.nan)
    se = float(e.std(ddof=1)) / math.sqrt(n)
    if se == 0:  # every seed gave the same effect: certain, in its sign
        p = 0.0 if mean > 0 else 1.0 if mean < 0 else 0.5
        return Test(n, mean, (mean, mean), p, 1.0 - p if mean else 0.5)
    t = mean / se
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return Test(n, mean, (mean - half, mean + half), float(stats.t.sf(t, n - 1)), float(stats.t.cdf(t, n - 1)))


def holm(p_values: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down: which of the hypotheses are rejected, family-wise error ≤ alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if not p_values[i] <= alpha / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


def verdicts(tests: list[Test]) -> tuple[str, list[str]]:
    """(the finding's verdict, each part's word) for the parts' tests, by the rule above."""
    against = holm([t.p_opposite if t.n >= 2 else 1.0 for t in tests])
    words = [HOLDS if t.significant else FAILS if a else NOISE if t.n else NONE for t, a in zip(tests, against)]
    if all(t.n == 0 for t in tests):  # no part measured (or none at all): nothing to say yet
        return NONE, words
    if tests and all(t.significant for t in tests):
        return HOLDS, words
    return (FAILS if any(against) else NOISE), words


def simulate(n: int, parts: int = 1, effect: float = 0.0, draws: int = 200_000, seed: int = 0) -> dict:
    """The rule on normal noise: each part's per-seed effects ~ N(effect, 1) (effect in sd units), `draws`
    findings of `parts` parts at n seeds → the share of each verdict. At effect 0 "holds" is the false-positive
    rate; at effect > 0 it is the power."""
    rng = np.random.default_rng(seed)
    e = rng.normal(effect, 1.0, size=(draws, parts, n))
    t = e.mean(-1) / (e.std(-1, ddof=1) / math.sqrt(n))
    p, p_opposite = stats.t.sf(t, n - 1), stats.t.cdf(t, n - 1)
    holds = (p < ALPHA).all(-1)
    # Holm rejects at least one hypothesis exactly when the smallest p is ≤ alpha / parts
    fails = ~holds & (p_opposite.min(-1) <= ALPHA / parts)
    return {HOLDS: float(holds.mean()), FAILS: float(fails.mean()), NOISE: float(1 - holds.mean() - fails.mean())}
