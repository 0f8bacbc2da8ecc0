"""The statistics behind each verdict, and the verdict rule itself, fixed before any result.

Comparisons of two attacks (or two defenses) use the same test examples, so they are paired:
per-example outcomes (1 = correct/robust) give a 2x2 table, the one-sided exact McNemar test
(`scipy.stats.binomtest` on the discordant pairs), the accuracy difference with Newcombe's
paired score interval, and the minimum detectable effect (MDE) of that test at this n.
Claim 1 compares per-sample residuals of two independently trained models: one-sided
Mann-Whitney U (`scipy.stats.mannwhitneyu`) with the probability of superiority and
Newcombe's interval for it. Claim 5 ("competitive") is a non-inferiority question.

`decide` turns one result into a verdict, checking in this order:
1. no result (data missing)                                 -> NOT_TESTED
2. significant in the claimed direction (Holm p if set)     -> HELD (a measured precondition
   is stated beside it, present or not)
3. precondition measured and absent                         -> PRECONDITION_ABSENT
4. not significant and the interval excludes every effect that matters -> DID_NOT_HOLD
5. not significant and MDE > the smallest effect that matters -> UNDERPOWERED
6. otherwise                                                -> DID_NOT_HOLD
Step 4 was added after the first quick run (docs/results.md says why): without it a test of
low power could never refute a claim, not even one whose effect is measured in the other
direction. Steps 2 and 3 swapped after the cpu run (issue 17): a measured effect outranks its
proposed mechanism; an absent precondition may explain a null result, never hide a
significant one.
`combine` merges verdicts of several units (seeds, models, competing comparisons).
docs/results.md ("How a verdict is decided") states the rules and their power.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05  # one-sided level of every test
POWER = 0.8  # power at which the minimum detectable effect is stated
CONFIDENCE = 0.95  # two-sided confidence of the reported intervals

HELD, DID_NOT_HOLD = "held", "did not hold"
PRECONDITION_ABSENT, UNDERPOWERED, NOT_TESTED = "precondition absent", "underpowered", "not tested"
VERDICTS = (HELD, DID_NOT_HOLD, PRECONDITION_ABSENT, UNDERPOWERED, NOT_TESTED)
ALTERNATIVES = ("greater", "less")

# The smallest effect that matters per claim, as a distance from "no effect" in the claimed
# direction (ours, fixed before results): claim 1 a probability of superiority of 0.56 (the
# "small" effect of Vargha & Delaney 2000); claims 2-4 an accuracy difference of 2 percentage
# points; claim 5 a non-inferiority margin of 5 points.
SMALLEST_EFFECT = {1: 0.06, 2: 0.02, 3: 0.02, 4: 0.02, 5: 0.05}
# Claim 2's precondition: obfuscation needs a final-state gradient misaligned with the deployed
# model's true gradient; a cosine at or above this is aligned (ours). The report reads it on the
# misaligned tail (the 10th percentile of the images' cosines, report.TAIL).
ALIGNED_COSINE = 0.9

DIFFERENCE, SUPERIORITY = "accuracy difference", "probability of superiority"


@dataclass(frozen=True)
class Comparison:
    """One test's outcome. `mde` and the smallest effect are distances from `null` in the claimed
    direction, on the scale of `estimate`; `p_adjusted` is set by `holm_adjust`."""

    method: str
    alternative: str
    statistic: float
    p_value: float
    effect: str  # DIFFERENCE or SUPERIORITY
    estimate: float
    ci: tuple[float, float]
    confidence: float
    null: float  # the estimate's value at the boundary of the null hypothesis
    mde: float  # smallest detectable effect at `alpha` and `power` (inf: none)
    alpha: float
    power: float
    n: int  # examples (paired) or n1 + n2
    counts: str  # e.g. "b=12, c=3, n=300"
    p_adjusted: float | None = None
    family: int = 1  # comparisons in the Holm family

    @property
    def p(self) -> float:
        """The p-value the verdict uses: Holm-adjusted when set."""
        return self.p_value if self.p_adjusted is None else self.p_adjusted

    def rules_out(self, smallest_effect: float) -> bool:
        """Whether the interval lies wholly short of an effect of `smallest_effect` (a distance
        from the null) in the claimed direction: the data refute an effect that matters."""
        if self.alternative == "greater":
            return self.ci[1] < self.null + smallest_effect
        return self.ci[0] > self.null - smallest_effect

    def distance(self, x: float) -> str:
        """A distance from the null (an MDE, the smallest effect that matters)."""
        if not np.isfinite(x):
            return "infinite (nothing is detectable at this n)"
        if self.effect == DIFFERENCE:
            return f"{100 * x:.1f} points"
        return f"{x:.3f} (A = {self.null + (x if self.alternative == 'greater' else -x):.3f})"

    def summary(self) -> str:
        """'exact McNemar (greater): b=12, c=3, n=300 ...; p = 0.018 (Holm over 2: 0.035); ...'."""
        holm = "" if self.p_adjusted is None else f" (Holm over {self.family}: {self.p_adjusted:.3g})"
        scale, fmt = (100, "+.1f") if self.effect == DIFFERENCE else (1, ".3f")
        est, lo, hi = (format(scale * v, fmt) for v in (self.estimate, *self.ci))
        unit = " points" if self.effect == DIFFERENCE else ""
        return (
            f"{self.method} ({self.alternative}): {self.counts}; p = {self.p_value:.3g}{holm}; "
            f"{self.effect} {est} [{lo}, {hi}]{unit} ({100 * self.confidence:g} % interval); "
            f"MDE {self.distance(self.mde)} at alpha {self.alpha:g}, power {self.power:g}"
        )


@dataclass(frozen=True)
class Precondition:
    """A measured condition without which the claimed effect cannot occur."""

    name: str  # what must hold, e.g. "final-state gradient misaligned with the true gradient"
    statistic: str  # what was measured, e.g. "median cosine to the true gradient"
    value: float
    threshold: float
    present_below: bool  # present when value < threshold (else when value > threshold)

    @property
    def present(self) -> bool:
        return self.value < self.threshold if self.present_below else self.value > self.threshold

    def describe(self) -> str:
        need = "<" if self.present_below else ">"
        return f"{self.name}: {self.statistic} {self.value:.3g} (needs {need} {self.threshold:g})"


@dataclass(frozen=True)
class Verdict:
    kind: str  # one of VERDICTS
    reason: str
    result: Comparison | None = None


# ---------------------------------------------------------------- paired outcomes
def _outcomes(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: per-example outcomes must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name}: outcomes must be 0/1 (1 = correct/robust), got values {np.unique(arr)[:5]}")
    return arr.astype(bool)


def _alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative {alternative!r} is not one of {ALTERNATIVES}")
    return alternative


def paired_counts(a, b) -> tuple[int, int, int, int]:
    """(both correct, only A correct, only B correct, both wrong) over the same examples."""
    a, b = _outcomes(a, "a"), _outcomes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same examples: {a.size} vs {b.size} outcomes")
    return int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())


def wilson(correct, n, z: float = 1.96):
    """Wilson score interval of a binomial proportion (well behaved at 0 and 1; NaN for n = 0), of
    numbers or, elementwise, of arrays."""
    correct, n = np.asarray(correct, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = correct / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def _newcombe(both, a_only, b_only, neither, z):
    """Newcombe's paired interval (method 10) at normal quantile z; arrays allowed."""
    both, a_only, b_only, neither = (np.asarray(v, float) for v in (both, a_only, b_only, neither))
    n = both + a_only + b_only + neither
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    (l1, u1), (l2, u2) = wilson(both + a_only, n, z), wilson(both + b_only, n, z)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    cross = both * neither - a_only * b_only
    corrected = np.where(cross > n / 2, cross - n / 2, np.where(cross >= 0, 0.0, cross))
    phi = np.divide(corrected, np.sqrt(margins), out=np.zeros_like(n), where=margins > 0)
    d = p1 - p2
    lower = d - np.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    upper = d + np.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return lower, upper


def paired_difference_ci(both, a_only, b_only, neither, confidence: float = CONFIDENCE):
    """Interval for acc(A) - acc(B) = (a_only - b_only) / n on paired data.

    Newcombe's hybrid score interval without continuity correction (method 10 of R. G. Newcombe,
    "Improved confidence intervals for the difference between binomial proportions based on
    paired data", Stat. Med. 17:2635-2650, 1998): Wilson intervals of both accuracies combined
    with their correlation. It stays inside [-1, 1] and keeps near-nominal coverage at small
    counts, where the Wald interval fails. Counts may be arrays (vectorised)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lower, upper = _newcombe(both, a_only, b_only, neither, stats.norm.isf((1 - confidence) / 2))
    return (float(lower), float(upper)) if np.ndim(lower) == 0 else (lower, upper)


def _critical(m, alpha: float):
    """Smallest k with P(Bin(m, 1/2) >= k) <= alpha: the exact one-sided McNemar rejects at b >= k."""
    m = np.asarray(m)
    k = stats.binom.isf(alpha, m, 0.5) + 1
    k = np.where(stats.binom.sf(k - 2, m, 0.5) <= alpha, k - 1, k)  # guard isf's rounding both ways
    return np.where(stats.binom.sf(k - 1, m, 0.5) > alpha, k + 1, k)


def mcnemar_power(n: int, discordance: float, difference: float, alpha: float = ALPHA) -> float:
    """Exact power of the one-sided exact McNemar test for a true accuracy difference `difference`.

    The share of discordant examples is `discordance`, raised to `difference` where smaller (an
    effect d needs at least a share d of discordant pairs). The number m of discordant pairs is
    Bin(n, share); given m, the test rejects at b >= k(m) with b ~ Bin(m, (share + d) / (2 share)).
    Power is summed exactly over m."""
    share = max(discordance, difference)
    if share <= 0:
        return 0.0
    m = np.arange(n + 1)
    weight = stats.binom.pmf(m, n, share)
    keep = weight > 1e-15
    m, weight = m[keep], weight[keep]
    return float(np.sum(weight * stats.binom.sf(_critical(m, alpha) - 1, m, (share + difference) / (2 * share))))


def paired_mde(n: int, discordance: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable accuracy difference: the smallest d with `mcnemar_power` >= power, given the
    observed share of discordant examples (inf when even d = 1 is not detectable, n too small).
    Power rises with d, so the root is found by bisection (`scipy.optimize.brentq`)."""
    gap = lambda d: mcnemar_power(n, discordance, d, alpha) - power  # noqa: E731
    if gap(1.0) < 0:
        return float("inf")
    return float(optimize.brentq(gap, 0.0, 1.0, xtol=1e-6))


def mcnemar(
    a, b, alternative: str = "greater", *, alpha: float = ALPHA, power: float = POWER, confidence: float = CONFIDENCE
) -> Comparison:
    """Paired comparison of A and B on the same examples; "greater" claims acc(A) > acc(B).

    b = examples only A gets right, c = only B; the exact McNemar test is the binomial test of b
    among the b + c discordant pairs with p = 1/2 (`scipy.stats.binomtest`, one-sided). Effect:
    (b - c) / n with Newcombe's paired interval; MDE: `paired_mde` at the observed discordance.
    For a family of k comparisons pass alpha = ALPHA / k, so the MDE matches Holm's strictest step."""
    alternative = _alternative(alternative)
    both, a_only, b_only, neither = paired_counts(a, b)
    n, m = both + a_only + b_only + neither, a_only + b_only
    p = stats.binomtest(a_only, m, 0.5, alternative=alternative).pvalue if m else 1.0
    return Comparison(
        method="exact McNemar",
        alternative=alternative,
        statistic=float(a_only),
        p_value=float(p),
        effect=DIFFERENCE,
        estimate=(a_only - b_only) / n,
        ci=paired_difference_ci(both, a_only, b_only, neither, confidence),
        confidence=confidence,
        null=0.0,
        mde=paired_mde(n, m / n, alpha, power),
        alpha=alpha,
        power=power,
        n=n,
        counts=f"b={a_only}, c={b_only}, n={n} (A {both + a_only}/{n}, B {both + b_only}/{n})",
    )


def noninferiority(a, b, margin: float, *, alpha: float = ALPHA, power: float = POWER) -> Comparison:
    """Is A non-inferior to B: acc(A) > acc(B) - margin? (Claim 5: a DEQ against a deep baseline.)

    Decided by Newcombe's paired interval, the usual interval route to non-inferiority: held when
    the one-sided (1 - alpha) lower limit (the two-sided 1 - 2 alpha interval, reported as `ci`)
    exceeds -margin. The p-value is that interval inverted: the alpha at which the lower limit
    meets -margin (root in the normal quantile by `scipy.optimize.brentq`). The MDE is the margin
    this n could establish with the given power if A and B were equally accurate, approximated
    from the observed lower half-width h as h (1 + z_power / z_alpha) (normal planning formula)."""
    if not 0 < margin < 1:
        raise ValueError(f"margin must be in (0, 1), got {margin}")
    cells = paired_counts(a, b)
    n, d = sum(cells), (cells[1] - cells[2]) / sum(cells)
    lower, upper = _newcombe(*cells, stats.norm.isf(alpha))
    if d == -margin:
        p = 0.5
    else:  # the limit on the margin's side moves towards -margin as z grows
        limit = (
            (lambda z: float(_newcombe(*cells, z)[0]) + margin)
            if d > -margin
            else (lambda z: float(_newcombe(*cells, z)[1]) + margin)
        )
        z = optimize.brentq(limit, 0.0, 40.0) if limit(40.0) * limit(0.0) < 0 else 40.0
        p = float(stats.norm.sf(z)) if d > -margin else float(stats.norm.cdf(z))
    half = d - float(lower)
    mde = half * (1 + stats.norm.isf(1 - power) / stats.norm.isf(alpha))
    return Comparison(
        method=f"non-inferiority, margin {100 * margin:g} points",
        alternative="greater",
        statistic=d,
        p_value=p,
        effect=DIFFERENCE,
        estimate=d,
        ci=(float(lower), float(upper)),
        confidence=1 - 2 * alpha,
        null=-margin,
        mde=float(mde),
        alpha=alpha,
        power=power,
        n=n,
        counts=f"b={cells[1]}, c={cells[2]}, n={n} (A {cells[0] + cells[1]}/{n}, B {cells[0] + cells[2]}/{n})",
    )


# ---------------------------------------------------------------- several comparisons
def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    Controls the family-wise error when a claim holds if ANY of k comparisons is significant.
    When a claim must hold in EVERY unit (seeds, models) no adjustment is needed: that is an
    intersection-union test, level alpha as it stands (Berger 1982). Few lines of numpy, so no
    extra dependency (scipy has no Holm; statsmodels.multipletests is the same rule)."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or ((p < 0) | (p > 1) | np.isnan(p)).any():
        raise ValueError(f"p-values must be a 1-D sequence in [0, 1], got {p_values!r}")
    order = np.argsort(p, kind="stable")
    k = p.size
    adjusted = np.empty(k)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((k - np.arange(k)) * p[order]))
    return adjusted


def holm_adjust(results: Sequence[Comparison]) -> list[Comparison]:
    """The same results with `p_adjusted` and `family` set by Holm over all of them."""
    adjusted = holm([r.p_value for r in results])
    return [replace(r, p_adjusted=float(q), family=len(results)) for r, q in zip(results, adjusted)]


# ---------------------------------------------------------------- two independent samples
def _superiority_variance(a, n1: int, n2: int):
    """Var of the Mann-Whitney estimate of A = P(X > Y): Hanley & McNeil (1982) with both sample
    sizes replaced by (n1 + n2) / 2 - 1, Newcombe's method 5 (Stat. Med. 25:559-573, 2006)."""
    star = (n1 + n2) / 2 - 1
    return a * (1 - a) / (n1 * n2) * (1 + star * ((1 - a) / (2 - a) + a / (1 + a)))


def superiority_ci(ps: float, n1: int, n2: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Score-type interval for the probability of superiority (Newcombe 2006, method 5): the A with
    (ps - A)^2 = z^2 Var(A), roots by `scipy.optimize.brentq`. Stays in [0, 1], also at complete
    separation (ps = 0 or 1), where Wald-type and DeLong intervals collapse."""
    z2 = stats.norm.isf((1 - confidence) / 2) ** 2
    gap = lambda a: (ps - a) ** 2 - z2 * _superiority_variance(a, n1, n2)  # noqa: E731
    lower = 0.0 if ps <= 0 else optimize.brentq(gap, 0.0, min(ps, 1 - 1e-12))
    upper = 1.0 if ps >= 1 else optimize.brentq(gap, max(ps, 1e-12), 1.0)
    return float(lower), float(upper)


def superiority_mde(n1: int, n2: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest A - 1/2 the one-sided Mann-Whitney test detects with this power (normal approximation):
    A - z_power sd(A) = 1/2 + z_alpha sd_0, with sd_0^2 = (n1 + n2 + 1) / (12 n1 n2) the exact null
    variance and sd(A) from `_superiority_variance`."""
    threshold = 0.5 + stats.norm.isf(alpha) * np.sqrt((n1 + n2 + 1) / (12 * n1 * n2))
    gap = lambda a: a - stats.norm.isf(1 - power) * np.sqrt(_superiority_variance(a, n1, n2)) - threshold  # noqa: E731
    if gap(1.0) < 0:
        return float("inf")
    return float(optimize.brentq(gap, 0.5, 1.0, xtol=1e-6) - 0.5)


def mann_whitney(
    x, y, alternative: str = "greater", *, alpha: float = ALPHA, power: float = POWER, confidence: float = CONFIDENCE
) -> Comparison:
    """Independent samples (claim 1: per-sample residuals of an adversarially trained DEQ, x, and of
    the standard DEQ, y); "greater" claims x tends to exceed y. One-sided Mann-Whitney U
    (`scipy.stats.mannwhitneyu`, exact for small samples without ties). Effect: the probability
    of superiority A = P(X > Y) + P(X = Y) / 2 = U / (n1 n2) (the common-language effect size)
    with `superiority_ci`; MDE: `superiority_mde`."""
    alternative = _alternative(alternative)
    x, y = (np.asarray(v, dtype=float) for v in (x, y))
    for name, v in (("x", x), ("y", y)):
        if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
            raise ValueError(f"{name}: a sample must be a non-empty 1-D array of finite values, got shape {v.shape}")
    res = stats.mannwhitneyu(x, y, alternative=alternative)
    n1, n2 = x.size, y.size
    ps = float(res.statistic) / (n1 * n2)
    return Comparison(
        method="Mann-Whitney U",
        alternative=alternative,
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        effect=SUPERIORITY,
        estimate=ps,
        ci=superiority_ci(ps, n1, n2, confidence),
        confidence=confidence,
        null=0.5,
        mde=superiority_mde(n1, n2, alpha, power),
        alpha=alpha,
        power=power,
        n=n1 + n2,
        counts=f"n1={n1}, n2={n2}",
    )


# ---------------------------------------------------------------- verdicts
def decide(
    result: Comparison | None, smallest_effect: float, precondition: Precondition | None = None, alpha: float = ALPHA
) -> Verdict:
    """The verdict on one claim-unit, by the fixed order in the module docstring.

    `smallest_effect`: the effect that matters, as a distance from the null in the claimed
    direction on the result's scale (SMALLEST_EFFECT). A significant result holds whatever its
    size; its estimate and interval say how large it is."""
    if smallest_effect <= 0:
        raise ValueError(f"smallest_effect must be positive, got {smallest_effect}")
    if result is None:
        return Verdict(NOT_TESTED, "data missing: no comparison could be made")
    if result.p <= alpha:
        mechanism = (
            ""
            if precondition is None
            else (f"; precondition {'present' if precondition.present else 'absent'}, {precondition.describe()}")
        )
        return Verdict(HELD, f"significant at {alpha:g}: {result.summary()}{mechanism}", result)
    if precondition is not None and not precondition.present:
        return Verdict(PRECONDITION_ABSENT, f"precondition absent, {precondition.describe()}", result)
    if result.rules_out(smallest_effect):
        return Verdict(
            DID_NOT_HOLD,
            f"not significant, and the {100 * result.confidence:g} % interval excludes "
            f"every effect of the size that matters ({result.distance(smallest_effect)} "
            f"or more in the claimed direction): {result.summary()}",
            result,
        )
    if result.mde > smallest_effect:
        return Verdict(
            UNDERPOWERED,
            f"not significant, and at this n the smallest detectable effect is "
            f"{result.distance(result.mde)}, beyond the {result.distance(smallest_effect)} "
            f"that matters: {result.summary()}",
            result,
        )
    return Verdict(
        DID_NOT_HOLD,
        f"not significant although an effect of the size that matters was detectable: {result.summary()}",
        result,
    )


def combine(verdicts: Sequence[Verdict], require: str = "all") -> Verdict:
    """One verdict from several units, carrying the comparison that decides it.

    require="all" (seeds of one claim, models): an intersection-union rule, held only if every
    tested unit held; any "did not hold" decides, then any "underpowered". Claim 1 uses it over
    seeds: the claim is about adversarial training, not one lucky run, and the rule needs no
    multiplicity correction. require="any" (competing comparisons, Holm-adjusted first): held if
    any held; else underpowered if any was (the effect may hide there); else did not hold.
    Units not tested are left out; precondition absent decides only when nothing was tested.

    The deciding comparison is, among the units of the combined kind, the least favourable one
    ("all": largest p) or the most favourable one ("any": smallest p). The reason is the tally,
    plus what was missing or measured when that decides, or the MDE."""
    if require not in ("all", "any"):
        raise ValueError(f"require {require!r} is not one of ('all', 'any')")
    kinds = [v.kind for v in verdicts]
    order = ((DID_NOT_HOLD, UNDERPOWERED, HELD) if require == "all" else (HELD, UNDERPOWERED, DID_NOT_HOLD)) + (
        PRECONDITION_ABSENT,
        NOT_TESTED,
    )
    kind = next((k for k in order if k in kinds), NOT_TESTED)
    tally = ", ".join(f"{kinds.count(k)} {k}" for k in VERDICTS if k in kinds) or "no units"
    reason = f"{require} of {len(kinds)} units must hold: {tally}"
    same = [v for v in verdicts if v.kind == kind]
    with_result = [v for v in same if v.result is not None]
    pick = max if require == "all" else min
    decider = pick(with_result, key=lambda v: v.result.p) if with_result else (same[0] if same else None)
    if decider is not None and decider.kind in (NOT_TESTED, PRECONDITION_ABSENT):
        reason += f"; {decider.reason}"
    elif decider is not None and decider.kind == UNDERPOWERED and decider.result is not None:
        reason += f"; smallest detectable effect at this n: {decider.result.distance(decider.result.mde)}"
    return Verdict(kind, reason, decider.result if decider else None)


# ---------------------------------------------------------------- a paired change (training dynamics)
@dataclass(frozen=True)
class Change:
    """The change of a per-example measure between two times, on the same examples: the median of
    the paired differences (after - before), its distribution-free interval and the two-sided
    exact sign test."""

    estimate: float
    ci: tuple[float, float]
    confidence: float
    p_value: float
    increased: int
    decreased: int
    n: int  # pairs with a defined difference (ties included)

    def summary(self, digits: int = 3) -> str:
        lo, hi = (format(v, f"+.{digits}g") for v in self.ci)
        return (
            f"median change {self.estimate:+.{digits}g} [{lo}, {hi}] ({100 * self.confidence:g} % interval); "
            f"sign test: {self.increased} up, {self.decreased} down of {self.n}, p = {self.p_value:.3g}"
        )


def median_change(before, after, confidence: float = CONFIDENCE) -> Change:
    """Paired change after - before. Pairs whose difference is undefined (both infinite: both
    diverged, or a missing value) are left out; an infinite difference (one of the two diverged)
    counts with its sign. Interval: the order statistics [d_(k), d_(n-k+1)] of the sorted
    differences, k the largest rank with P(Bin(n, 1/2) < k) <= (1 - confidence) / 2 (exact for
    the median of any continuous distribution). Test: exact binomial test on the signs, ties
    dropped (`scipy.stats.binomtest`)."""
    before, after = (np.asarray(v, dtype=float) for v in (before, after))
    if before.shape != after.shape or before.ndim != 1:
        raise ValueError(f"before and after must be 1-D and of one length: {before.shape} vs {after.shape}")
    with np.errstate(invalid="ignore"):
        diff = after - before
    diff = np.sort(diff[~np.isnan(diff)])
    n = diff.size
    if n == 0:
        raise ValueError("no pair has a defined difference")
    up, down = int((diff > 0).sum()), int((diff < 0).sum())
    p = float(stats.binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0
    k = int(stats.binom.ppf((1 - confidence) / 2, n, 0.5))  # P(Bin <= k - 1) <= (1 - c) / 2 < P(Bin <= k)
    k = k if stats.binom.cdf(k - 1, n, 0.5) <= (1 - confidence) / 2 else k - 1
    ci = (float(diff[k - 1]), float(diff[n - k])) if k >= 1 else (float("-inf"), float("inf"))
    return Change(float(np.median(diff)), ci, confidence, p, up, down, n)
