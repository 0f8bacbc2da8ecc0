"""Verdict statistics against known answers: hand-computed binomial sums, Newcombe's published
intervals, simulated coverage and power, and the verdict rule on constructed outcomes."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from scipy import stats as sps

from deqrobust import stats

RNG_SEED = 20221128


def outcomes(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example 0/1 outcomes of A and B with the given paired counts (shuffled)."""
    a = np.repeat([1, 1, 0, 0], [both, a_only, b_only, neither])
    b = np.repeat([1, 0, 1, 0], [both, a_only, b_only, neither])
    order = np.random.default_rng(both + 7 * a_only).permutation(a.size)
    return a[order], b[order]


# ---------------------------------------------------------------- McNemar
@pytest.mark.parametrize(
    "b, c, alternative, expected",
    [
        (8, 2, "greater", (comb(10, 8) + comb(10, 9) + comb(10, 10)) / 2**10),  # 56 / 1024
        (8, 2, "less", 1 - (comb(10, 9) + comb(10, 10)) / 2**10),  # P(X <= 8) = 1013 / 1024
        (5, 0, "greater", 1 / 2**5),
        (1, 6, "less", (1 + 7) / 2**7),
        (0, 0, "greater", 1.0),
    ],
)
def test_mcnemar_p_value_is_the_binomial_tail_of_the_discordant_pairs(b, c, alternative, expected):
    a_out, b_out = outcomes(40, b, c, 30)
    result = stats.mcnemar(a_out, b_out, alternative)
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert result.statistic == b and result.n == 70 + b + c
    assert result.estimate == pytest.approx((b - c) / (70 + b + c))


def test_paired_counts_and_errors():
    a, b = outcomes(5, 3, 2, 1)
    assert stats.paired_counts(a, b) == (5, 3, 2, 1)
    with pytest.raises(ValueError, match="0/1"):
        stats.paired_counts([0, 2], [0, 1])
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_counts([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="one of"):
        stats.mcnemar(a, b, "two-sided")


# Newcombe (1998), Stat. Med. 17:2635, Table II, method 10: (both, A only, B only, neither) -> 95 % limits.
@pytest.mark.parametrize(
    "cells, limits",
    [
        ((36, 12, 2, 0), (0.0569, 0.3404)),
        ((18, 12, 2, 18), (0.0562, 0.3290)),
        ((53, 0, 0, 1), (-0.0729, 0.0729)),
        ((0, 30, 0, 0), (0.8395, 1.0)),
    ],
)
def test_paired_interval_matches_newcombes_worked_examples(cells, limits):
    assert stats.paired_difference_ci(*cells) == pytest.approx(limits, abs=5e-5)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    probs = np.array([0.45, 0.15, 0.07, 0.33])  # true difference 0.08
    draws = np.random.default_rng(RNG_SEED).multinomial(100, probs, size=2000)
    lower, upper = stats.paired_difference_ci(*draws.T)
    coverage = np.mean((lower <= 0.08) & (0.08 <= upper))
    assert 0.93 <= coverage <= 0.97


# ---------------------------------------------------------------- power and MDE
def test_power_when_every_discordant_pair_favours_a_is_the_chance_of_five_or_more():
    # 0.5^4 > 0.05 >= 0.5^5: the exact test needs at least 5 discordant pairs, all for A.
    assert stats.mcnemar_power(200, 0.0, 0.03) == pytest.approx(sps.binom.sf(4, 200, 0.03), rel=1e-9)
    assert stats.mcnemar_power(200, 0.2, 0.0) <= stats.ALPHA  # size under no effect


def test_power_matches_simulated_rejection_rate():
    n, probs = 200, np.array([0.5, 0.12, 0.04, 0.34])  # discordance 0.16, difference 0.08
    draws = np.random.default_rng(RNG_SEED).multinomial(n, probs, size=4000)
    b, c = draws[:, 1], draws[:, 2]
    p = sps.binom.sf(b - 1, b + c, 0.5)  # exact one-sided McNemar, vectorised
    assert np.mean(p <= stats.ALPHA) == pytest.approx(stats.mcnemar_power(n, 0.16, 0.08), abs=0.025)


def test_mde_is_where_power_reaches_the_target():
    mde = stats.paired_mde(300, 0.1)
    assert stats.mcnemar_power(300, 0.1, mde) == pytest.approx(stats.POWER, abs=1e-4)
    assert stats.mcnemar_power(300, 0.1, 0.95 * mde) < stats.POWER
    assert stats.paired_mde(3000, 0.1) < mde  # more examples, smaller MDE
    assert stats.paired_mde(4, 1.0) == float("inf")  # 0.5^4 > 0.05: nothing is detectable


# ---------------------------------------------------------------- Holm
def test_holm_on_a_known_set():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([0.1, 1.5])


def test_holm_can_turn_a_significant_comparison_into_a_non_significant_one():
    clear = stats.mcnemar(*outcomes(100, 14, 4, 82))  # p about 0.015
    null = [stats.mcnemar(*outcomes(100, 5, 5, 90)) for _ in range(3)]
    assert stats.decide(clear, 0.02).kind == stats.HELD
    adjusted = stats.holm_adjust([clear, *null])
    assert adjusted[0].p_adjusted == pytest.approx(min(1.0, 4 * clear.p_value))
    assert adjusted[0].family == 4 and "Holm over 4" in adjusted[0].summary()
    assert stats.decide(adjusted[0], 0.02).kind != stats.HELD


# ---------------------------------------------------------------- Mann-Whitney
def test_mann_whitney_on_separated_samples():
    x, y = np.arange(11, 16.0), np.arange(1, 6.0)
    result = stats.mann_whitney(x, y)
    assert result.statistic == 25 and result.estimate == 1.0
    assert result.p_value == pytest.approx(1 / comb(10, 5))  # exact: 1 of 252 rank arrangements
    assert stats.mann_whitney(x, y, "less").p_value == pytest.approx(1.0)
    lo, hi = result.ci
    assert 0.5 < lo < 1.0 and hi == 1.0


def test_probability_of_superiority_counts_ties_as_half():
    x, y = np.array([1.0, 2, 2, 3]), np.array([2.0, 2, 1])
    wins = sum((xi > yj) + 0.5 * (xi == yj) for xi in x for yj in y)
    assert stats.mann_whitney(x, y).estimate == pytest.approx(wins / 12)


def test_superiority_interval_covers_the_true_value():
    rng = np.random.default_rng(RNG_SEED)
    shift, n = 0.5, 30
    truth = sps.norm.cdf(shift / np.sqrt(2))  # P(X > Y) for unit normals
    x, y = rng.normal(shift, 1, (1000, n)), rng.normal(0, 1, (1000, n))
    ps = (x[:, :, None] > y[:, None, :]).mean(axis=(1, 2))
    covered = [lo <= truth <= hi for lo, hi in (stats.superiority_ci(p, n, n) for p in ps)]
    assert 0.93 <= np.mean(covered) <= 0.97


def test_superiority_mde_has_the_stated_power_in_simulation():
    n = 50
    mde = stats.superiority_mde(n, n)
    shift = np.sqrt(2) * sps.norm.ppf(0.5 + mde)  # normal shift with P(X > Y) = 0.5 + mde
    rng = np.random.default_rng(RNG_SEED)
    x, y = rng.normal(shift, 1, (1000, n)), rng.normal(0, 1, (1000, n))
    p = sps.mannwhitneyu(x, y, alternative="greater", axis=1).pvalue
    assert np.mean(p <= stats.ALPHA) == pytest.approx(stats.POWER, abs=0.04)


# ---------------------------------------------------------------- non-inferiority
def test_non_inferiority_p_value_agrees_with_its_interval():
    for cells in [(120, 20, 25, 135), (120, 10, 35, 135), (40, 3, 4, 13), (150, 0, 0, 150)]:
        result = stats.noninferiority(*outcomes(*cells), margin=0.05)
        assert result.confidence == pytest.approx(0.9)
        assert (result.p_value <= stats.ALPHA) == (result.ci[0] > -0.05)


def test_non_inferiority_verdicts():
    equal = stats.noninferiority(*outcomes(400, 30, 30, 540), margin=0.05)
    worse = stats.noninferiority(*outcomes(400, 10, 90, 500), margin=0.05)
    small = stats.noninferiority(*outcomes(10, 2, 2, 6), margin=0.05)
    assert stats.decide(equal, 0.05).kind == stats.HELD
    assert stats.decide(worse, 0.05).kind == stats.DID_NOT_HOLD
    assert stats.decide(small, 0.05).kind == stats.UNDERPOWERED


# ---------------------------------------------------------------- verdicts
def test_clear_effect_holds():
    verdict = stats.decide(stats.mcnemar(*outcomes(50, 40, 5, 205)), stats.SMALLEST_EFFECT[2])
    assert verdict.kind == stats.HELD and "exact McNemar" in verdict.reason


def test_no_effect_with_enough_examples_did_not_hold():
    result = stats.mcnemar(*outcomes(800, 50, 50, 1100))
    assert result.mde < stats.SMALLEST_EFFECT[2]
    assert stats.decide(result, stats.SMALLEST_EFFECT[2]).kind == stats.DID_NOT_HOLD


def test_too_few_examples_is_underpowered_and_says_the_mde():
    result = stats.mcnemar(*outcomes(20, 3, 1, 16))
    verdict = stats.decide(result, stats.SMALLEST_EFFECT[2])
    assert verdict.kind == stats.UNDERPOWERED
    assert f"{100 * result.mde:.1f} points" in verdict.reason


def test_an_effect_measured_the_other_way_did_not_hold_even_at_low_power():
    """300 examples cannot detect 2 points (MDE > 2), but an interval wholly on the wrong side
    refutes the claim: 8 examples only the claimed-weaker attack breaks, 1 the other way."""
    result = stats.mcnemar(*outcomes(70, 1, 8, 221), alternative="greater")
    assert result.mde > stats.SMALLEST_EFFECT[2] and result.ci[1] < 0
    verdict = stats.decide(result, stats.SMALLEST_EFFECT[2])
    assert verdict.kind == stats.DID_NOT_HOLD and "excludes every effect" in verdict.reason
    # the same counts in the claimed direction: not significant at this n, the interval reaches 2 points
    assert stats.decide(stats.mcnemar(*outcomes(70, 4, 1, 225)), stats.SMALLEST_EFFECT[2]).kind == stats.UNDERPOWERED
    # a rank test with the effect reversed (probability of superiority well below 0.5)
    rng = np.random.default_rng(RNG_SEED)
    reversed_ = stats.mann_whitney(rng.lognormal(-3, 0.5, 30), rng.lognormal(-2, 0.5, 30))
    assert reversed_.ci[1] < 0.5 + stats.SMALLEST_EFFECT[1]
    assert stats.decide(reversed_, stats.SMALLEST_EFFECT[1]).kind == stats.DID_NOT_HOLD


def test_a_significant_effect_outranks_an_absent_precondition():
    """The precondition explains a null result; it never hides a significant one."""
    aligned = stats.Precondition(
        "final-state gradient misaligned with the true gradient",
        "median cosine to the true gradient",
        0.97,
        stats.ALIGNED_COSINE,
        present_below=True,
    )
    result = stats.mcnemar(*outcomes(50, 40, 5, 205))  # significant on its own
    verdict = stats.decide(result, stats.SMALLEST_EFFECT[2], aligned)
    assert verdict.kind == stats.HELD and "precondition absent" in verdict.reason
    assert "median cosine to the true gradient 0.97" in verdict.reason
    null = stats.mcnemar(*outcomes(50, 6, 5, 239))  # not significant
    assert stats.decide(null, stats.SMALLEST_EFFECT[2], aligned).kind == stats.PRECONDITION_ABSENT
    misaligned = stats.Precondition(aligned.name, aligned.statistic, 0.4, stats.ALIGNED_COSINE, present_below=True)
    assert stats.decide(result, stats.SMALLEST_EFFECT[2], misaligned).kind == stats.HELD
    assert stats.decide(null, stats.SMALLEST_EFFECT[2], misaligned).kind != stats.PRECONDITION_ABSENT


def test_missing_data_is_not_tested():
    assert stats.decide(None, stats.SMALLEST_EFFECT[3]).kind == stats.NOT_TESTED


def test_claim1_over_seeds_needs_every_seed():
    rng = np.random.default_rng(RNG_SEED)
    std = [rng.lognormal(-3, 0.5, 300) for _ in range(3)]
    slow = [rng.lognormal(-2, 0.5, 300) for _ in range(3)]  # adversarially trained: higher residuals
    verdicts = [stats.decide(stats.mann_whitney(a, s), stats.SMALLEST_EFFECT[1]) for a, s in zip(slow, std)]
    assert stats.combine(verdicts).kind == stats.HELD
    flipped = verdicts[:2] + [stats.decide(stats.mann_whitney(std[2], slow[2]), stats.SMALLEST_EFFECT[1])]
    assert flipped[2].kind == stats.DID_NOT_HOLD
    assert stats.combine(flipped).kind == stats.DID_NOT_HOLD


def test_combine_orders():
    v = {k: stats.Verdict(k, "") for k in stats.VERDICTS}
    assert stats.combine([v[stats.HELD], v[stats.UNDERPOWERED]]).kind == stats.UNDERPOWERED
    assert stats.combine([v[stats.HELD], v[stats.UNDERPOWERED]], require="any").kind == stats.HELD
    assert stats.combine([v[stats.DID_NOT_HOLD], v[stats.UNDERPOWERED]], require="any").kind == stats.UNDERPOWERED
    assert stats.combine([v[stats.HELD], v[stats.NOT_TESTED], v[stats.PRECONDITION_ABSENT]]).kind == stats.HELD
    assert stats.combine([v[stats.PRECONDITION_ABSENT], v[stats.NOT_TESTED]]).kind == stats.PRECONDITION_ABSENT
    assert stats.combine([]).kind == stats.NOT_TESTED
