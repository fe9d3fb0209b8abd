"""The verdict rule (reconlib.stats): each part's test against scipy's own, Holm by hand, the finding's verdict on
synthetic rows whose answer is known, and the rule's error rates against the t distribution's."""
import math

import pytest
from scipy import stats as sp

from reconlib import stats

CLEAR = [5.1, 4.8, 5.3, 4.9, 5.2]
NULL = [0.3, -0.5, 0.1, -0.2, 0.4]


def test_each_part_is_scipys_one_sided_paired_t_test_with_a_two_sided_95_interval():
    x = [1.2, 0.4, 2.1, -0.3, 0.9]
    t = stats.t_test(x)
    assert t.n == 5 and t.mean == pytest.approx(sum(x) / 5)
    assert t.p == pytest.approx(sp.ttest_1samp(x, 0, alternative="greater").pvalue)
    assert t.p_opposite == pytest.approx(sp.ttest_1samp(x, 0, alternative="less").pvalue)
    assert t.ci == pytest.approx(tuple(sp.ttest_1samp(x, 0).confidence_interval(0.95)))


def test_one_seed_is_never_significant_and_equal_effects_are_certain():
    assert math.isnan(stats.t_test([3.0]).p) and not stats.t_test([3.0]).significant
    assert stats.verdicts([stats.t_test([3.0])])[0] == stats.NOISE
    assert stats.t_test([2.0, 2.0, 2.0]).p == 0.0 and stats.t_test([-2.0, -2.0]).p_opposite == 0.0


def test_identical_runs_read_as_no_change_in_either_direction():
    # Gemma 3's CR units all stop at their last epoch in the book's setting: early stop and fixed are the same runs
    from reconlib import findings
    zero = findings.Part("same runs", [0.0, 0.0, 0.0], -1)
    assert findings.fmt_change(zero) == "+0 [+0, +0]" and zero.test.p == 0.5 and not zero.test.significant


def test_holm_steps_down_as_by_hand():
    # sorted 0.01 ≤ 0.05/3 → rejected; 0.03 > 0.05/2 → stop, so 0.04 is not rejected either
    assert stats.holm([0.01, 0.04, 0.03]) == [True, False, False]
    assert stats.holm([0.01, 0.02, 0.04]) == [True, True, True]  # 0.01 ≤ .0167, 0.02 ≤ .025, 0.04 ≤ .05
    assert stats.holm([0.03, 0.5]) == [False, False]              # 0.03 > 0.05/2


@pytest.mark.parametrize("parts, verdict, words", [
    ([NULL], stats.NOISE, [stats.NOISE]),
    ([CLEAR], stats.HOLDS, [stats.HOLDS]),
    ([[-x for x in CLEAR]], stats.FAILS, [stats.FAILS]),
    ([CLEAR, CLEAR], stats.HOLDS, [stats.HOLDS] * 2),
    ([CLEAR, NULL], stats.NOISE, [stats.HOLDS, stats.NOISE]),                         # one part unproven
    ([CLEAR, [-x for x in CLEAR]], stats.FAILS, [stats.HOLDS, stats.FAILS]),          # one part against
    # against at p = 0.036 alone: significant, but not after Holm across 3 parts (0.036 > 0.05/3)
    ([CLEAR, CLEAR, [-0.9, -0.3, -1.4, 0.1, -0.6]], stats.NOISE, [stats.HOLDS, stats.HOLDS, stats.NOISE]),
    ([[], []], stats.NONE, [stats.NONE] * 2),                                          # no runs: no verdict
    ([CLEAR, []], stats.NOISE, [stats.HOLDS, stats.NONE]),                            # a part unmeasured cannot hold
])
def test_the_rule_on_synthetic_findings(parts, verdict, words):
    tests = [stats.t_test(p) for p in parts]
    assert stats.verdicts(tests) == (verdict, words)


def test_the_against_part_of_the_holm_case_is_significant_alone():
    t = stats.t_test([-0.9, -0.3, -1.4, 0.1, -0.6])
    assert 0.05 / 3 < t.p_opposite < 0.05


@pytest.mark.parametrize("n", [3, 5, 10])
def test_the_rules_false_positive_rate_and_power_are_the_t_tests(n):
    null = stats.simulate(n, parts=1, effect=0.0)
    assert null[stats.HOLDS] == pytest.approx(0.05, abs=0.003) and null[stats.FAILS] == pytest.approx(0.05, abs=0.003)
    # power of a one-sided t-test at effect 1 sd: the noncentral t's tail beyond the critical value
    power = sp.nct.sf(sp.t.ppf(0.95, n - 1), n - 1, math.sqrt(n))
    assert stats.simulate(n, parts=1, effect=1.0)[stats.HOLDS] == pytest.approx(power, abs=0.005)
    # more seeds never lower the power (the old rule's did)
    assert power > sp.nct.sf(sp.t.ppf(0.95, n - 2), n - 2, math.sqrt(n - 1))


def test_holm_keeps_a_null_finding_of_five_parts_from_failing_more_than_alpha():
    assert stats.simulate(5, parts=5, effect=0.0)[stats.FAILS] <= 0.05 + 0.003
